/*
 * QEMU TCG plugin: counts the guest instructions executed between the first instruction of a
 * "begin" function and the first instruction of an "end" function, for every such interval,
 * and prints one line per interval:
 *
 *     insn-count interval <n>: <instructions>
 *
 * Arguments: begin=<address>,end=<address> (hex with 0x, or decimal; the Thumb bit is
 * ignored). Every executed instruction adds 1 to a counter (an inline add, so the count is
 * exact and the same on every run); at `begin` the counter is remembered, at `end` the
 * difference is printed. The difference includes the marker calls themselves: measure an empty
 * interval and subtract it.
 *
 * Debian's QEMU 7.2 supports plugins (API version 1) but ships no qemu-plugin.h, so the few
 * declarations needed are written out here, exactly as that header has them.
 *
 * Build: tools/qemu-insn-count/build.sh. Run: qemu-system-arm ... -plugin
 * libinsn_count.so,begin=0x...,end=0x... -d plugin [-D log]
 */
#include <inttypes.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- from qemu-plugin.h (QEMU 7.2, QEMU_PLUGIN_VERSION 1) ---- */
typedef uint64_t qemu_plugin_id_t;
typedef struct qemu_info_t qemu_info_t;
struct qemu_plugin_tb;
struct qemu_plugin_insn;
enum qemu_plugin_cb_flags {
    QEMU_PLUGIN_CB_NO_REGS,
    QEMU_PLUGIN_CB_R_REGS,
    QEMU_PLUGIN_CB_RW_REGS,
};
enum qemu_plugin_op {
    QEMU_PLUGIN_INLINE_ADD_U64,
};
typedef void (*qemu_plugin_vcpu_tb_trans_cb_t)(qemu_plugin_id_t id, struct qemu_plugin_tb *tb);
typedef void (*qemu_plugin_vcpu_udata_cb_t)(unsigned int vcpu_index, void *userdata);
typedef void (*qemu_plugin_udata_cb_t)(qemu_plugin_id_t id, void *userdata);

void qemu_plugin_register_vcpu_tb_trans_cb(qemu_plugin_id_t id, qemu_plugin_vcpu_tb_trans_cb_t cb);
size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb *tb);
struct qemu_plugin_insn *qemu_plugin_tb_get_insn(const struct qemu_plugin_tb *tb, size_t idx);
uint64_t qemu_plugin_insn_vaddr(const struct qemu_plugin_insn *insn);
void qemu_plugin_register_vcpu_insn_exec_inline(struct qemu_plugin_insn *insn,
                                                enum qemu_plugin_op op, void *ptr, uint64_t imm);
void qemu_plugin_register_vcpu_insn_exec_cb(struct qemu_plugin_insn *insn,
                                            qemu_plugin_vcpu_udata_cb_t cb,
                                            enum qemu_plugin_cb_flags flags, void *userdata);
void qemu_plugin_register_atexit_cb(qemu_plugin_id_t id, qemu_plugin_udata_cb_t cb,
                                    void *userdata);
void qemu_plugin_outs(const char *string);
/* ---- end of qemu-plugin.h ---- */

__attribute__((visibility("default"))) int qemu_plugin_version = 1;

static uint64_t total;       /* instructions executed so far */
static uint64_t started;     /* `total` at the last begin */
static int open_interval;    /* between a begin and its end */
static unsigned intervals;
static uint64_t begin_addr, end_addr;

static void on_begin(unsigned int vcpu, void *udata)
{
    (void)vcpu;
    (void)udata;
    started = total;
    open_interval = 1;
}

static void on_end(unsigned int vcpu, void *udata)
{
    char line[96];
    (void)vcpu;
    (void)udata;
    if (!open_interval)
        return;
    open_interval = 0;
    snprintf(line, sizeof line, "insn-count interval %u: %" PRIu64 "\n", intervals++,
             total - started);
    qemu_plugin_outs(line);
}

static void on_translate(qemu_plugin_id_t id, struct qemu_plugin_tb *tb)
{
    size_t n = qemu_plugin_tb_n_insns(tb);
    (void)id;
    for (size_t i = 0; i < n; i++) {
        struct qemu_plugin_insn *insn = qemu_plugin_tb_get_insn(tb, i);
        uint64_t pc = qemu_plugin_insn_vaddr(insn) & ~(uint64_t)1;
        qemu_plugin_register_vcpu_insn_exec_inline(insn, QEMU_PLUGIN_INLINE_ADD_U64, &total, 1);
        if (pc == begin_addr)
            qemu_plugin_register_vcpu_insn_exec_cb(insn, on_begin, QEMU_PLUGIN_CB_NO_REGS, NULL);
        else if (pc == end_addr)
            qemu_plugin_register_vcpu_insn_exec_cb(insn, on_end, QEMU_PLUGIN_CB_NO_REGS, NULL);
    }
}

static void on_exit_cb(qemu_plugin_id_t id, void *udata)
{
    char line[96];
    (void)id;
    (void)udata;
    snprintf(line, sizeof line, "insn-count total: %" PRIu64 " in %u intervals\n", total,
             intervals);
    qemu_plugin_outs(line);
}

__attribute__((visibility("default"))) int qemu_plugin_install(qemu_plugin_id_t id,
                                                               const qemu_info_t *info,
                                                               int argc, char **argv)
{
    (void)info;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (strncmp(a, "arg=", 4) == 0)
            a += 4;
        if (strncmp(a, "begin=", 6) == 0)
            begin_addr = strtoull(a + 6, NULL, 0) & ~(uint64_t)1;
        else if (strncmp(a, "end=", 4) == 0)
            end_addr = strtoull(a + 4, NULL, 0) & ~(uint64_t)1;
        else {
            fprintf(stderr, "insn_count: unknown argument %s (want begin=ADDR,end=ADDR)\n", a);
            return -1;
        }
    }
    if (!begin_addr || !end_addr || begin_addr == end_addr) {
        fprintf(stderr, "insn_count: need distinct begin=ADDR and end=ADDR\n");
        return -1;
    }
    qemu_plugin_register_vcpu_tb_trans_cb(id, on_translate);
    qemu_plugin_register_atexit_cb(id, on_exit_cb, NULL);
    return 0;
}
