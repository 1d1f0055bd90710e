//! Splitting one forward pass over threads, without giving up bit-identical results.
//!
//! The forward pass hands independent pieces of work to a [`Parallel`] executor: the row
//! ranges of one matrix product, or the heads of one token's attention. Every piece writes its
//! own outputs and no float reduction is ever split, so the result is the same bits for every
//! thread count. [`Serial`] runs the pieces one after the other (the `no_std` default); under
//! `std`, [`ThreadPool`] runs them on persistent threads.

use crate::kernels::Out;

/// Runs numbered tasks, possibly concurrently.
pub trait Parallel: Sync {
    /// How many threads run tasks (1 for [`Serial`]). The forward pass splits a piece of work
    /// into at most this many tasks.
    fn threads(&self) -> usize;

    /// Runs `task(0)`, .., `task(n - 1)`, each exactly once and in any order or concurrently,
    /// and returns when all have finished. (The forward pass's tasks do not panic; if one does,
    /// [`Serial`] propagates it at once, and `ThreadPool` runs the other tasks first and then
    /// panics on the calling thread.)
    fn run(&self, n: usize, task: &(dyn Fn(usize) + Sync));
}

/// Runs every task on the calling thread, in order.
#[derive(Debug, Clone, Copy, Default)]
pub struct Serial;

impl Parallel for Serial {
    fn threads(&self) -> usize {
        1
    }

    fn run(&self, n: usize, task: &(dyn Fn(usize) + Sync)) {
        for i in 0..n {
            task(i);
        }
    }
}

/// Splits each output `j` (`outs[j] = (output, align)`, covering its rows) into `parts`
/// contiguous row ranges whose starts are multiples of `align` (except that the ranges cover
/// all rows; fewer parts when there are too few rows), and runs `task(j, range_start,
/// range_end, part)` for each, through `par` in one hand-off: part `i` takes the `i`-th range
/// of every output, one output after the other.
pub(crate) fn for_row_ranges(
    par: &dyn Parallel,
    parts: usize,
    outs: &mut [(&mut Out<'_>, usize)],
    task: &(dyn Fn(usize, usize, usize, &mut Out<'_>) + Sync),
) {
    // Rows per part and the number of parts of an output of `rows` rows.
    let split = |rows: usize, align: usize| {
        let per = rows.div_ceil(parts.max(1)).next_multiple_of(align.max(1));
        (per, rows.div_ceil(per.max(1)).max(1))
    };
    let n = outs
        .iter()
        .map(|(o, a)| split(o.rows(), *a).1)
        .max()
        .unwrap_or(0);
    if n <= 1 {
        for (j, (o, _)) in outs.iter_mut().enumerate() {
            let rows = o.rows();
            task(j, 0, rows, o);
        }
        return;
    }
    let whole = SharedOuts(outs);
    par.run(n, &|i| {
        for j in 0..whole.len() {
            let (rows, align) = whole.shape(j);
            let (per, parts) = split(rows, align);
            if i >= parts {
                continue;
            }
            let (r0, r1) = (i * per, ((i + 1) * per).min(rows));
            // SAFETY: for each output, the ranges `[i * per, (i + 1) * per)` of distinct `i`
            // are disjoint, `run` calls each `i` once, and the outputs stay exclusively
            // borrowed until `run` returns.
            let mut part = unsafe { whole.part(j, r0, r1) };
            task(j, r0, r1, &mut part);
        }
    });
}

/// A task over chunk `i` of two slices.
pub(crate) type ChunkTask<'t, A, B> = dyn Fn(usize, &mut [A], &mut [B]) + Sync + 't;

/// Runs `task(i, chunk_a_i, chunk_b_i)` for the `n` consecutive chunks of `a` (`len_a` long) and
/// `b` (`len_b` long), through `par` in `parts` groups of consecutive `i`.
pub(crate) fn for_chunks<A: Send, B: Send>(
    par: &dyn Parallel,
    parts: usize,
    n: usize,
    a: (&mut [A], usize),
    b: (&mut [B], usize),
    task: &ChunkTask<'_, A, B>,
) {
    let ((a, la), (b, lb)) = (a, b);
    let (a, b) = (&mut a[..n * la], &mut b[..n * lb]);
    let parts = parts.clamp(1, n.max(1));
    if parts == 1 {
        for (i, (ca, cb)) in a.chunks_mut(la).zip(b.chunks_mut(lb)).enumerate() {
            task(i, ca, cb);
        }
        return;
    }
    let per = n.div_ceil(parts);
    let (pa, pb) = (SharedSlice::new(a), SharedSlice::new(b));
    par.run(n.div_ceil(per), &|g| {
        for i in g * per..((g + 1) * per).min(n) {
            // SAFETY: chunk `i` of each slice is handed to exactly one task (each `g` runs once
            // and the groups of `i` are disjoint); both slices stay borrowed until `run` ends.
            let (ca, cb) = unsafe { (pa.chunk(i * la, la), pb.chunk(i * lb, lb)) };
            task(i, ca, cb);
        }
    });
}

/// A `&mut Out` shared by the tasks of one `run`, each taking a disjoint row range.
struct SharedOuts<'r, 's, 'a>(&'r mut [(&'s mut Out<'a>, usize)]);

// SAFETY: tasks only take disjoint parts (see `part`), which is what `Out: Send` allows.
unsafe impl Sync for SharedOuts<'_, '_, '_> {}

impl<'a> SharedOuts<'_, '_, 'a> {
    /// Number of outputs.
    fn len(&self) -> usize {
        self.0.len()
    }

    /// Rows and row alignment of output `j` (`j < self.len()`).
    fn shape(&self, j: usize) -> (usize, usize) {
        let (o, a) = &self.0[j];
        (o.rows(), *a)
    }

    /// Rows `r0..r1` of output `j` (`j < self.len()`).
    ///
    /// # Safety
    /// No two parts of one output that are alive at the same time may overlap.
    unsafe fn part(&self, j: usize, r0: usize, r1: usize) -> Out<'a> {
        let (o, _) = &self.0[j];
        // SAFETY: `Out::sub_rows` only narrows the range; the caller keeps live parts disjoint.
        unsafe { o.sub_rows(r0, r1) }
    }
}

/// A `&mut [T]` shared by the tasks of one `run`, each taking disjoint chunks.
struct SharedSlice<T> {
    ptr: *mut T,
    len: usize,
}

// SAFETY: tasks only take disjoint chunks, which is what `T: Send` allows.
unsafe impl<T: Send> Sync for SharedSlice<T> {}

impl<T> SharedSlice<T> {
    fn new(s: &mut [T]) -> Self {
        SharedSlice {
            ptr: s.as_mut_ptr(),
            len: s.len(),
        }
    }

    /// Elements `start..start + n`.
    ///
    /// # Safety
    /// The slice must still be exclusively borrowed for the caller, and no two chunks alive at
    /// the same time may overlap.
    #[allow(clippy::mut_from_ref)]
    unsafe fn chunk(&self, start: usize, n: usize) -> &mut [T] {
        assert!(
            start <= self.len && n <= self.len - start,
            "chunk out of range"
        );
        // SAFETY: in bounds (checked above); exclusivity is the caller's promise.
        unsafe { core::slice::from_raw_parts_mut(self.ptr.add(start), n) }
    }
}

#[cfg(feature = "std")]
pub use pool::ThreadPool;

#[cfg(feature = "std")]
mod pool {
    //! A persistent pool of worker threads with a low-latency hand-off.
    //!
    //! Why not rayon: one token of a small model is tens of matrix products of a few
    //! microseconds each, so the hand-off must cost about a microsecond; rayon's `join`/`scope`
    //! pay for work stealing and a sleep protocol on every call, and its global pool is shared
    //! with the rest of the program. Here the calling thread takes part, the workers spin on a
    //! job word for a while before they sleep, and the split is static (each piece's bounds
    //! depend only on the thread count), which is what keeps the results bit-identical.
    //!
    //! The hand-off never waits for a worker that has not started: the job word holds the job's
    //! epoch, a closed flag and the number of workers that entered. A worker enters with a
    //! compare-and-swap while the job is open; the caller, once every task is taken, closes the
    //! job and waits only for the workers that entered. A worker that was asleep or descheduled
    //! simply misses the job, so a busy machine slows the pool down to one thread at worst.

    use core::cell::UnsafeCell;
    use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::*};
    use std::sync::{Arc, Condvar, Mutex};
    use std::thread::JoinHandle;
    use std::vec::Vec;

    use super::Parallel;
    use crate::error::{Error, Result};

    /// How many times a worker polls for a new job before it sleeps (about a millisecond).
    const SPINS: u32 = 1 << 14;
    /// The job word: epoch in the high 32 bits, then the closed flag, then the entered count.
    const CLOSED: u64 = 1 << 31;
    const ENTERED: u64 = CLOSED - 1;

    /// The job of one epoch: a borrowed task, as a raw fat pointer, and its task count.
    #[derive(Clone, Copy)]
    struct Job {
        task: *const (dyn Fn(usize) + Sync),
        n: usize,
    }

    struct Shared {
        /// Epoch, closed flag and entered count (see the module documentation).
        word: AtomicU64,
        /// Written by the caller only while no worker is entered; read by entered workers.
        job: UnsafeCell<Job>,
        /// The next task index to take.
        next: AtomicUsize,
        /// Workers that entered the current job and have finished it.
        exited: AtomicU64,
        /// A task panicked on a worker.
        panicked: AtomicBool,
        stop: AtomicBool,
        /// Workers asleep (or about to sleep) on `wake`.
        sleepers: AtomicUsize,
        sleep: Mutex<()>,
        wake: Condvar,
    }

    // SAFETY: `job` is only written by `ThreadPool::run` while no worker is entered (before it
    // opens a job, and after it has closed it and seen every entered worker exit), and only
    // read by entered workers; entering (an acquire CAS on `word`) happens after the release
    // store that opened the job, so the read sees the write. `Job::task` points to a `Sync`
    // closure that outlives every entered worker's use.
    unsafe impl Sync for Shared {}
    // SAFETY: as above: a `Job` is only a pointer to a `Sync` closure and a count.
    unsafe impl Send for Shared {}

    /// A fixed set of worker threads that runs the forward pass's pieces with the calling
    /// thread. Dropping it stops and joins the workers.
    pub struct ThreadPool {
        shared: Arc<Shared>,
        workers: Vec<JoinHandle<()>>,
        /// Serializes `run` calls from different threads.
        running: Mutex<()>,
    }

    impl core::fmt::Debug for ThreadPool {
        fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
            f.debug_struct("ThreadPool")
                .field("threads", &self.threads())
                .finish()
        }
    }

    fn noop(_: usize) {}

    impl ThreadPool {
        /// A pool of `threads` threads in all: the caller of [`Parallel::run`] and
        /// `threads - 1` workers. Errors: [`Error::BadThreadCount`] for 0, [`Error::Io`] if a
        /// thread cannot be spawned.
        pub fn new(threads: usize) -> Result<ThreadPool> {
            if threads == 0 {
                return Err(Error::BadThreadCount);
            }
            let shared = Arc::new(Shared {
                word: AtomicU64::new(CLOSED),
                job: UnsafeCell::new(Job {
                    task: &noop as &(dyn Fn(usize) + Sync),
                    n: 0,
                }),
                next: AtomicUsize::new(0),
                exited: AtomicU64::new(0),
                panicked: AtomicBool::new(false),
                stop: AtomicBool::new(false),
                sleepers: AtomicUsize::new(0),
                sleep: Mutex::new(()),
                wake: Condvar::new(),
            });
            let mut pool = ThreadPool {
                shared,
                workers: Vec::new(),
                running: Mutex::new(()),
            };
            for i in 1..threads {
                let shared = Arc::clone(&pool.shared);
                let handle = std::thread::Builder::new()
                    .name(std::format!("mhmoe-{i}"))
                    .spawn(move || worker(&shared))
                    .map_err(Error::from)?;
                pool.workers.push(handle);
            }
            Ok(pool)
        }

        /// A pool with one thread per physical core (the default for desktop use).
        pub fn with_physical_cores() -> Result<ThreadPool> {
            ThreadPool::new(physical_cores())
        }
    }

    /// The number of physical cores (hyper-threads of one core count once), at least 1.
    pub fn physical_cores() -> usize {
        num_cpus::get_physical().max(1)
    }

    impl Parallel for ThreadPool {
        fn threads(&self) -> usize {
            self.workers.len() + 1
        }

        fn run(&self, n: usize, task: &(dyn Fn(usize) + Sync)) {
            if n <= 1 || self.workers.is_empty() {
                (0..n).for_each(task);
                return;
            }
            let _one_at_a_time = self.running.lock().unwrap_or_else(|e| e.into_inner());
            let s = &*self.shared;
            // SAFETY (lifetime erasure): only workers that enter this job call `task`, and this
            // function returns only after each of them has exited.
            let task_static: *const (dyn Fn(usize) + Sync + 'static) =
                unsafe { core::mem::transmute(task as *const (dyn Fn(usize) + Sync + '_)) };
            // SAFETY: the previous job is closed and every worker that entered it has exited
            // (see below), so no worker reads `job` now.
            unsafe {
                *s.job.get() = Job {
                    task: task_static,
                    n,
                }
            };
            s.next.store(0, Relaxed);
            s.exited.store(0, Relaxed);
            let epoch = (s.word.load(Relaxed) >> 32).wrapping_add(1) & 0xFFFF_FFFF;
            s.word.store(epoch << 32, SeqCst);
            if s.sleepers.load(SeqCst) > 0 {
                let _g = s.sleep.lock().unwrap_or_else(|e| e.into_inner());
                s.wake.notify_all();
            }
            let caught = take_tasks(s, task, n);
            // Every task is taken: close the job and wait for the workers that entered it.
            let entered = s.word.fetch_or(CLOSED, AcqRel) & ENTERED;
            let mut spins = 0u32;
            while s.exited.load(Acquire) < entered {
                spins += 1;
                if spins < SPINS {
                    core::hint::spin_loop();
                } else {
                    std::thread::yield_now();
                }
            }
            if let Some(p) = caught {
                std::panic::resume_unwind(p);
            }
            if s.panicked.swap(false, Relaxed) {
                panic!("a task panicked on a worker thread");
            }
        }
    }

    /// Runs tasks until none is left; a panicking task does not stop the others. Returns the
    /// first panic's payload.
    fn take_tasks(
        s: &Shared,
        task: &(dyn Fn(usize) + Sync),
        n: usize,
    ) -> Option<std::boxed::Box<dyn core::any::Any + Send>> {
        let mut panic = None;
        loop {
            let i = s.next.fetch_add(1, Relaxed);
            if i >= n {
                return panic;
            }
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| task(i)));
            if let Err(p) = r {
                panic.get_or_insert(p);
            }
        }
    }

    /// Enters the open job of epoch `epoch`, if it still is open.
    fn enter(s: &Shared, epoch: u64) -> bool {
        let mut cur = s.word.load(Acquire);
        loop {
            if cur >> 32 != epoch || cur & CLOSED != 0 {
                return false;
            }
            match s.word.compare_exchange_weak(cur, cur + 1, AcqRel, Acquire) {
                Ok(_) => return true,
                Err(v) => cur = v,
            }
        }
    }

    fn worker(s: &Shared) {
        let mut seen = s.word.load(Acquire) >> 32;
        loop {
            // Wait for a new epoch: spin, then sleep.
            let mut spins = 0u32;
            let epoch = loop {
                if s.stop.load(Acquire) {
                    return;
                }
                let e = s.word.load(Acquire) >> 32;
                if e != seen {
                    break e;
                }
                spins += 1;
                if spins < SPINS {
                    core::hint::spin_loop();
                    continue;
                }
                let g = s.sleep.lock().unwrap_or_else(|e| e.into_inner());
                s.sleepers.fetch_add(1, SeqCst);
                if s.word.load(SeqCst) >> 32 == seen && !s.stop.load(SeqCst) {
                    drop(s.wake.wait(g).unwrap_or_else(|e| e.into_inner()));
                }
                s.sleepers.fetch_sub(1, SeqCst);
                spins = 0;
            };
            seen = epoch;
            if !enter(s, epoch) {
                continue;
            }
            // SAFETY: entered (see `Shared`): `job` holds this epoch's job until we exit.
            let job = unsafe { *s.job.get() };
            // SAFETY: the task outlives our use of it: `run` waits for us to exit.
            let task = unsafe { &*job.task };
            if take_tasks(s, task, job.n).is_some() {
                s.panicked.store(true, Relaxed);
            }
            s.exited.fetch_add(1, Release);
        }
    }

    impl Drop for ThreadPool {
        fn drop(&mut self) {
            self.shared.stop.store(true, SeqCst);
            {
                let _g = self.shared.sleep.lock().unwrap_or_else(|e| e.into_inner());
                self.shared.wake.notify_all();
            }
            for w in self.workers.drain(..) {
                let _ = w.join();
            }
        }
    }
}

#[cfg(feature = "std")]
pub use pool::physical_cores;
