//! Checks the instruction-set features against the target, so that a wrong combination fails
//! with one sentence (a `compile_error!` in `src/kernels/mod.rs`) instead of hundreds of
//! assembler errors from the kernels' inline assembly.
//!
//! Stable Rust sets no `target_feature` cfg for Arm's DSP extension or Helium, and
//! `-C target-cpu` is not visible to `cfg` at all, so the check is made here, from the target
//! name and the rustflags cargo passes (`CARGO_ENCODED_RUSTFLAGS`: `-C target-cpu=..`,
//! `-C target-feature=..`), and its verdict is handed to the crate as
//! `cfg(mhmoe_bad_target = "..")`. Only combinations known to be wrong are flagged: a target
//! this script does not recognise (a custom target file) passes unchecked.

use std::env;

/// `-C target-cpu` values whose cores have the DSP extension (SMLAD and friends); checked
/// against the assembler of rustc 1.95's LLVM.
const DSP_CPUS: &[&str] = &[
    "cortex-m4",
    "cortex-m7",
    "cortex-m33",
    "cortex-m35p",
    "cortex-m52",
    "cortex-m55",
    "cortex-m85",
    "star-mc1",
    "star-mc3",
];

/// `-C target-cpu` values whose cores have Helium with floating point (MVE-F), which the
/// `helium` kernels use; checked the same way.
const MVE_FP_CPUS: &[&str] = &["cortex-m52", "cortex-m55", "cortex-m85", "star-mc3"];

/// Every value of `mhmoe_bad_target` (one `compile_error!` each in `src/kernels/mod.rs`).
const VERDICTS: &[&str] = &[
    "dsp-arch",
    "dsp-profile",
    "dsp-v8m",
    "dsp-core",
    "helium-arch",
    "helium-profile",
    "helium-core",
];

/// What the target is, as far as the kernels care.
enum Profile {
    /// An Arm M-profile target: whether its base architecture has the DSP extension.
    CortexM { dsp: bool, v8m_main: bool },
    /// An Arm A- or R-profile target (Linux, bare-metal Cortex-A/R, ...).
    OtherArm,
    /// An Arm target this script does not know (e.g. a custom target file): not checked.
    Unknown,
}

fn profile(target: &str) -> Profile {
    let arch = target.split('-').next().unwrap_or("");
    match arch {
        "thumbv7em" => Profile::CortexM {
            dsp: true,
            v8m_main: false,
        },
        "thumbv8m.main" => Profile::CortexM {
            dsp: false,
            v8m_main: true,
        },
        "thumbv6m" | "thumbv7m" | "thumbv8m.base" => Profile::CortexM {
            dsp: false,
            v8m_main: false,
        },
        _ if arch.starts_with("arm") || arch.starts_with("thumbv") => Profile::OtherArm,
        _ => Profile::Unknown,
    }
}

/// The last `-C target-cpu` and every `-C target-feature` entry in the rustflags.
fn codegen_flags(rustflags: &str) -> (Option<String>, Vec<String>) {
    let args: Vec<&str> = rustflags.split('\x1f').filter(|a| !a.is_empty()).collect();
    let mut cpu = None;
    let mut features = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let a = args[i];
        let opt = if a == "-C" || a == "--codegen" {
            i += 1;
            args.get(i).copied()
        } else {
            a.strip_prefix("-C")
                .or_else(|| a.strip_prefix("--codegen="))
                .filter(|o| !o.is_empty())
        };
        i += 1;
        let Some(opt) = opt else { continue };
        if let Some(v) = opt.strip_prefix("target-cpu=") {
            cpu = Some(v.to_owned());
        } else if let Some(v) = opt.strip_prefix("target-feature=") {
            features.extend(v.split(',').map(str::to_owned));
        }
    }
    (cpu, features)
}

/// `Some(true/false)` if the target features name `feature` with `+`/`-` (the last one wins).
fn explicit(features: &[String], feature: &str) -> Option<bool> {
    features.iter().rev().find_map(|f| {
        let (sign, name) = f.split_at_checked(1)?;
        (name == feature).then_some(sign == "+")
    })
}

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    println!(
        "cargo::rustc-check-cfg=cfg(mhmoe_bad_target, values({}))",
        VERDICTS
            .iter()
            .map(|v| format!("\"{v}\""))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let dsp_feature = env::var_os("CARGO_FEATURE_CORTEX_M_DSP").is_some();
    let helium_feature = env::var_os("CARGO_FEATURE_HELIUM").is_some();
    if !dsp_feature && !helium_feature {
        return;
    }
    let arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let target = env::var("TARGET").unwrap_or_default();
    let (cpu, features) = codegen_flags(&env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default());
    let cpu = cpu.filter(|c| c != "generic");
    let mut verdicts = Vec::new();

    if arch != "arm" {
        if dsp_feature {
            verdicts.push("dsp-arch");
        }
        if helium_feature {
            verdicts.push("helium-arch");
        }
    } else {
        match profile(&target) {
            Profile::Unknown => {}
            Profile::OtherArm => {
                if dsp_feature {
                    verdicts.push("dsp-profile");
                }
                if helium_feature {
                    verdicts.push("helium-profile");
                }
            }
            Profile::CortexM { dsp, v8m_main } => {
                let has_dsp = explicit(&features, "dsp").unwrap_or(match &cpu {
                    Some(c) => DSP_CPUS.contains(&c.as_str()),
                    None => dsp,
                });
                if dsp_feature && !has_dsp {
                    verdicts.push(if v8m_main && cpu.is_none() {
                        "dsp-v8m"
                    } else {
                        "dsp-core"
                    });
                }
                let has_mve_fp = match explicit(&features, "mve.fp") {
                    Some(v) => v,
                    None => {
                        explicit(&features, "mve") != Some(false)
                            && cpu.as_deref().is_some_and(|c| MVE_FP_CPUS.contains(&c))
                    }
                };
                if helium_feature && !has_mve_fp {
                    verdicts.push("helium-core");
                }
            }
        }
    }
    for v in verdicts {
        println!("cargo::rustc-cfg=mhmoe_bad_target=\"{v}\"");
    }
}
