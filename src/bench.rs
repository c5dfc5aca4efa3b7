//! Bench harness shared by `benches/*.rs`: CUDA-event timing for criterion's `iter_custom`, an
//! L2 flush between repeats, and a report line per case stating bytes, FLOPs, the floor, the
//! achieved fraction of it, and planned vs measured device memory.
//!
//! With `SNUG_BENCH_JSON=<file>` every [`GpuBench::report`] also appends one JSON object per line
//! to that file; the GPU bundle's `run` joins them with the PyTorch peers' lines into its report.

use std::io::Write as _;
use std::time::Duration;

use cudarc::driver::sys::{CUdevice_attribute as A, CUevent_flags};
use cudarc::driver::CudaEvent;

use crate::{Arena, Buf, Device, Error, Gpu, Plan, Result, Role};

/// Peak rates of the device, from its attributes.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct Peak {
    /// DRAM bandwidth, bytes/s (memory clock × bus width × 2).
    pub bytes_per_s: f64,
    /// SIMT f32 FMA throughput ×2, FLOP/s (SMs × f32 lanes × clock × 2).
    pub flops_per_s: f64,
    /// Special-function (exp2, rsqrt, ...) throughput, ops/s: SMs × 16 × clock.
    pub exps_per_s: f64,
    /// L2 size, bytes.
    pub l2_bytes: usize,
}

/// f32 lanes per SM by compute capability (FMA units; Volta/Ampere-100/Hopper 64 or 128).
fn f32_lanes(cc: (i32, i32)) -> f64 {
    match cc {
        (7, _) => 64.0,
        (8, 0) => 64.0,
        (8, _) => 128.0,
        (9, 0) => 128.0,
        _ => 128.0,
    }
}

impl Peak {
    /// Reads the peak rates of `gpu`.
    pub fn of(gpu: &Gpu) -> Result<Peak> {
        let mem_khz = gpu.attribute(A::CU_DEVICE_ATTRIBUTE_MEMORY_CLOCK_RATE)? as f64;
        let bus_bits = gpu.attribute(A::CU_DEVICE_ATTRIBUTE_GLOBAL_MEMORY_BUS_WIDTH)? as f64;
        let sm_khz = gpu.attribute(A::CU_DEVICE_ATTRIBUTE_CLOCK_RATE)? as f64;
        let l2 = gpu.attribute(A::CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE)?.max(0) as usize;
        let sms = gpu.sm_count()? as f64;
        let cc = gpu.compute_capability()?;
        // Newer drivers may report 0 for the (deprecated) clock attributes: fall back to the
        // datasheet figures of the GPUs this project runs on, else leave the floor unknown (NaN).
        let name = gpu.name().unwrap_or_default();
        let known = |h100: f64, h200: f64| if name.contains("H200") { h200 } else if name.contains("H100") { h100 } else { f64::NAN };
        let bytes_per_s = if mem_khz > 0.0 && bus_bits > 0.0 { mem_khz * 1e3 * bus_bits / 8.0 * 2.0 } else { known(3.35e12, 4.8e12) };
        let clock_hz = if sm_khz > 0.0 { sm_khz * 1e3 } else { known(1.98e9, 1.98e9) };
        Ok(Peak { bytes_per_s, flops_per_s: sms * f32_lanes(cc) * clock_hz * 2.0, exps_per_s: sms * 16.0 * clock_hz, l2_bytes: l2 })
    }
}

/// The work of one call: what the floor is computed from.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct Work {
    /// Bytes that must cross DRAM at least once.
    pub bytes: f64,
    /// Floating-point operations.
    pub flops: f64,
    /// Special-function-unit operations (exponentials).
    pub exps: f64,
}

/// Timing state for one GPU: two timing events and an L2-flush buffer in its own arena.
pub struct GpuBench {
    device: Device,
    gpu: Gpu,
    peak: Peak,
    start: CudaEvent,
    end: CudaEvent,
    flush: Arena,
    flush_buf: Buf<u8>,
    flush_byte: u8,
}

impl GpuBench {
    /// Sets up timing on `device` (a CUDA device).
    pub fn new(device: &Device) -> Result<GpuBench> {
        let gpu = device.gpu().ok_or_else(|| Error::Unsupported { op: "bench", what: "timing on the CPU".into() })?.clone();
        let peak = Peak::of(&gpu)?;
        let mut plan = Plan::new();
        // Twice the L2 so that a memset evicts every line of the inputs.
        let flush_buf = plan.add::<u8>("l2_flush", &[(2 * peak.l2_bytes).max(1 << 20)], Role::Workspace)?;
        let flush = Arena::new(device, &plan)?;
        let ev = || gpu.context().new_event(Some(CUevent_flags::CU_EVENT_DEFAULT)).map_err(|e| Error::driver("cuEventCreate", e));
        Ok(GpuBench { device: device.clone(), start: ev()?, end: ev()?, gpu, peak, flush, flush_buf, flush_byte: 0 })
    }

    /// The device's peak rates.
    pub fn peak(&self) -> Peak {
        self.peak
    }

    /// The GPU.
    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }

    /// Evicts L2 by writing a buffer twice its size (queued on the stream).
    pub fn flush_l2(&mut self) -> Result<()> {
        self.flush_byte = self.flush_byte.wrapping_add(1);
        self.flush.fill_bytes(self.flush_buf, self.flush_byte)
    }

    /// Total GPU time of `iters` calls of `f`, each timed alone between two events, with L2
    /// flushed before each when `flush` (for inputs that would otherwise stay in L2). Suits
    /// criterion's `iter_custom`.
    pub fn time(&mut self, iters: u64, flush: bool, mut f: impl FnMut() -> Result<()>) -> Result<Duration> {
        let stream = self.gpu.stream().clone();
        let mut total = 0.0f64;
        for _ in 0..iters {
            if flush {
                self.flush_l2()?;
            }
            self.start.record(&stream).map_err(|e| Error::driver("cuEventRecord", e))?;
            f()?;
            self.end.record(&stream).map_err(|e| Error::driver("cuEventRecord", e))?;
            total += self.start.elapsed_ms(&self.end).map_err(|e| Error::driver("cuEventElapsedTime", e))? as f64;
        }
        Ok(Duration::from_secs_f64(total / 1e3))
    }

    /// Median seconds per call over `reps` single-call timings (after 3 warm-ups).
    pub fn median_secs(&mut self, reps: usize, flush: bool, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
        for _ in 0..3 {
            self.time(1, flush, &mut f)?;
        }
        let mut v = Vec::with_capacity(reps.max(1));
        for _ in 0..reps.max(1) {
            v.push(self.time(1, flush, &mut f)?.as_secs_f64());
        }
        v.sort_by(f64::total_cmp);
        Ok(v[v.len() / 2])
    }

    /// Measures the median time of `f`, prints one line (time, bandwidth, FLOP rate, % of the
    /// floor, planned vs measured bytes) and appends it to `$SNUG_BENCH_JSON` if set.
    ///
    /// `planned_bytes` is the arena size the case planned; `measured_bytes` what the device lost
    /// in free memory when that arena was made (see [`measure_arena`]).
    #[allow(clippy::too_many_arguments)]
    pub fn report(
        &mut self,
        op: &str,
        case: &str,
        work: Work,
        planned_bytes: usize,
        measured_bytes: Option<usize>,
        flush: bool,
        f: impl FnMut() -> Result<()>,
    ) -> Result<f64> {
        let secs = self.median_secs(20, flush, f)?;
        let floor = (work.bytes / self.peak.bytes_per_s).max(work.flops / self.peak.flops_per_s).max(work.exps / self.peak.exps_per_s);
        let pct = 100.0 * floor / secs;
        let name = self.gpu.name().unwrap_or_else(|_| "?".into());
        println!(
            "bench {op} [{case}] on {name}: {:.3} us, {:.1} GB/s, {:.1} GFLOP/s, floor {:.3} us ({:.1}% of floor); bytes {} flops {} exps {}; memory planned {} measured {}",
            secs * 1e6,
            work.bytes / secs / 1e9,
            work.flops / secs / 1e9,
            floor * 1e6,
            pct,
            work.bytes,
            work.flops,
            work.exps,
            planned_bytes,
            measured_bytes.map(|b| b.to_string()).unwrap_or_else(|| "?".into())
        );
        if let Some(path) = std::env::var_os("SNUG_BENCH_JSON") {
            let line = serde_json::json!({
                "source": "snug", "op": op, "case": case, "device": name, "secs": secs,
                "bytes": work.bytes, "flops": work.flops, "exps": work.exps, "floor_secs": floor, "pct_of_floor": pct,
                "planned_bytes": planned_bytes, "measured_bytes": measured_bytes,
                "peak_bytes_per_s": self.peak.bytes_per_s, "peak_flops_per_s": self.peak.flops_per_s, "peak_exps_per_s": self.peak.exps_per_s,
            });
            let mut file = std::fs::OpenOptions::new().create(true).append(true).open(&path).map_err(|e| Error::Arena(format!("SNUG_BENCH_JSON: {e}")))?;
            writeln!(file, "{line}").map_err(|e| Error::Arena(format!("SNUG_BENCH_JSON: {e}")))?;
        }
        Ok(secs)
    }

    /// The device.
    pub fn device(&self) -> &Device {
        &self.device
    }
}

/// Makes an arena for `plan` on `device` and returns it with the drop in the device's free memory
/// that the allocation caused (granularity: the driver's page size, usually 2 MiB).
pub fn measure_arena(device: &Device, plan: &Plan) -> Result<(Arena, Option<usize>)> {
    let before = device.gpu().map(|g| g.memory_info()).transpose()?;
    let arena = Arena::new(device, plan)?;
    device.synchronize()?;
    let after = device.gpu().map(|g| g.memory_info()).transpose()?;
    Ok((arena, before.zip(after).map(|((b, _), (a, _))| b.saturating_sub(a))))
}
