//! The `snug` command: `snug info` today; `plan` and `train` for the seed models later.

use std::collections::BTreeMap;

use clap::{Parser, Subcommand};
use snug::kernels::{self, KernelStats};

#[derive(Parser)]
#[command(name = "snug", version, about = "Fixed-footprint training kernels: build, device and kernel report")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Version, how the kernels were built (nvcc, archs, ptxas registers/shared memory/spills per
    /// kernel) and the CUDA devices found, or why none.
    Info {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Info { json } => info(json),
    }
    std::process::ExitCode::SUCCESS
}

/// One row per kernel: the worst (max) figures over the compiled archs, plus per-arch registers.
#[derive(serde::Serialize)]
struct KernelRow {
    module: &'static str,
    kernel: &'static str,
    registers_by_arch: BTreeMap<u32, u32>,
    max_registers: u32,
    max_shared_bytes: u64,
    max_stack_bytes: u64,
    spill_bytes: u64,
}

fn rows() -> Vec<KernelRow> {
    let mut out = Vec::new();
    for m in kernels::modules() {
        let mut by: BTreeMap<&'static str, Vec<&KernelStats>> = BTreeMap::new();
        for k in m.kernels {
            by.entry(k.name).or_default().push(k);
        }
        for (kernel, ks) in by {
            out.push(KernelRow {
                module: m.name,
                kernel,
                registers_by_arch: ks.iter().map(|k| (k.arch, k.registers)).collect(),
                max_registers: ks.iter().map(|k| k.registers).max().unwrap_or(0),
                max_shared_bytes: ks.iter().map(|k| k.shared_bytes).max().unwrap_or(0),
                max_stack_bytes: ks.iter().map(|k| k.stack_bytes).max().unwrap_or(0),
                spill_bytes: ks.iter().map(|k| k.spill_store_bytes + k.spill_load_bytes).max().unwrap_or(0),
            });
        }
    }
    out
}

fn info(json: bool) {
    let devices = snug::device::cuda_devices();
    let rows = rows();
    if json {
        let v = serde_json::json!({
            "version": snug::VERSION,
            "kernels_compiled": kernels::compiled(),
            "nvcc": kernels::nvcc(),
            "nvcc_version": kernels::nvcc_version(),
            "archs": kernels::archs(),
            "ptx_arch": kernels::archs().iter().min(),
            "modules": kernels::modules().iter().map(|m| serde_json::json!({"name": m.name, "fatbin_bytes": m.fatbin.len()})).collect::<Vec<_>>(),
            "kernels": rows,
            "kernel_stats": kernels::modules().iter().flat_map(|m| m.kernels.iter()).collect::<Vec<_>>(),
            "cuda": match &devices {
                Ok(d) => serde_json::json!({"devices": d}),
                Err(e) => serde_json::json!({"devices": [], "error": e.to_string()}),
            },
        });
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        return;
    }
    println!("snug {}", snug::VERSION);
    match kernels::nvcc() {
        Some(nvcc) => {
            let archs: Vec<String> = kernels::archs().iter().map(|a| format!("sm_{a}")).collect();
            let ptx = kernels::archs().iter().min().map(|a| format!("compute_{a}")).unwrap_or_default();
            println!("kernels: compiled by nvcc {} ({nvcc})", kernels::nvcc_version());
            println!("archs:   SASS {} + PTX {ptx}", archs.join(" "));
        }
        None => println!("kernels: NOT compiled (no nvcc at build time; run scripts/install-cuda-toolchain) — CPU twins only"),
    }
    println!();
    println!("{:<14} {:<26} {:>9} {:>12} {:>10} {:>8}  registers by arch", "module", "kernel", "max regs", "static smem", "stack (B)", "spills");
    for r in &rows {
        let by: Vec<String> = r.registers_by_arch.iter().map(|(a, n)| format!("sm_{a}:{n}")).collect();
        println!(
            "{:<14} {:<26} {:>9} {:>12} {:>10} {:>8}  {}",
            r.module,
            r.kernel,
            r.max_registers,
            r.max_shared_bytes,
            r.max_stack_bytes,
            r.spill_bytes,
            by.join(" ")
        );
    }
    for m in kernels::modules().iter().filter(|m| m.kernels.is_empty()) {
        println!("{:<14} (not compiled)", m.name);
    }
    println!();
    match devices {
        Ok(d) if d.is_empty() => println!("CUDA devices: none (driver present, no device)"),
        Ok(d) => {
            for x in d {
                println!(
                    "cuda:{} {} (compute {}, {} SMs, {:.1} GiB){}",
                    x.ordinal,
                    x.name,
                    x.compute_capability,
                    x.sm_count,
                    x.total_memory as f64 / (1u64 << 30) as f64,
                    if x.sass_embedded { "" } else { " — no SASS for this arch, the driver JIT-compiles the PTX" }
                );
            }
        }
        Err(e) => println!("CUDA devices: none — {e}"),
    }
}
