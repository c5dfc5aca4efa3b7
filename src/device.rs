//! Devices: the host CPU and CUDA GPUs.
//!
//! Opening CUDA never panics: on a machine without libcuda it returns [`Error::NoCuda`], without
//! a GPU [`Error::NoDevice`]. A [`Gpu`] handle owns one stream; every op launched through views of
//! arenas on that handle runs on that stream, in order. Kernel modules are loaded from the
//! embedded fatbins on first use and cached per handle; a cuBLAS handle is created on first use.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, OnceLock};

use cudarc::driver::{result, sys, CudaContext, CudaFunction, CudaModule, CudaStream, DeviceRepr, LaunchConfig, PushKernelArg};

use crate::{kernels, Error, Result};

/// Where buffers live and ops run.
#[derive(Clone, Debug)]
pub enum Device {
    /// The host; ops run their CPU twins.
    Cpu,
    /// A CUDA GPU with its own stream.
    Cuda(Gpu),
}

impl Device {
    /// Opens CUDA device `ordinal` with a new stream.
    ///
    /// Returns [`Error::NoCuda`] when the driver library is missing and [`Error::NoDevice`] when
    /// the driver reports no such device; never panics.
    pub fn cuda(ordinal: usize) -> Result<Device> {
        Gpu::open(ordinal).map(Device::Cuda)
    }

    /// The GPU handle, if this is a CUDA device.
    pub fn gpu(&self) -> Option<&Gpu> {
        match self {
            Device::Cpu => None,
            Device::Cuda(g) => Some(g),
        }
    }

    /// Waits until all work queued on this device's stream has finished (no-op on the CPU).
    pub fn synchronize(&self) -> Result<()> {
        match self {
            Device::Cpu => Ok(()),
            Device::Cuda(g) => g.synchronize(),
        }
    }

    /// Whether `self` and `other` are the same device handle (same GPU and same stream).
    pub fn same(&self, other: &Device) -> bool {
        match (self, other) {
            (Device::Cpu, Device::Cpu) => true,
            (Device::Cuda(a), Device::Cuda(b)) => a.same_handle(b),
            _ => false,
        }
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(g) => write!(f, "cuda:{}", g.ordinal()),
        }
    }
}

/// A handle on one CUDA GPU: its context, one stream, cached kernel modules and a lazy cuBLAS
/// handle. Clones share all of them.
#[derive(Clone)]
pub struct Gpu {
    inner: Arc<GpuInner>,
}

struct GpuInner {
    ordinal: usize,
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    modules: Mutex<HashMap<&'static str, Arc<CudaModule>>>,
    functions: Mutex<HashMap<(&'static str, &'static str), CudaFunction>>,
    blas: OnceLock<std::result::Result<Arc<cudarc::cublas::CudaBlas>, String>>,
    /// Held from setting the cuBLAS handle's workspace to queuing the GEMMs that use it.
    blas_lock: Mutex<()>,
}

impl fmt::Debug for Gpu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Gpu(cuda:{})", self.inner.ordinal)
    }
}

/// Whether the CUDA driver library can be loaded, without touching it otherwise.
pub fn driver_present() -> bool {
    // SAFETY: only tries to dlopen libcuda and drops the handle; no driver call is made.
    unsafe { sys::is_culib_present() }
}

/// Number of CUDA devices, or why there are none.
pub fn cuda_device_count() -> Result<usize> {
    if !driver_present() {
        return Err(Error::NoCuda("libcuda could not be loaded (no NVIDIA driver on this machine)".into()));
    }
    match result::init() {
        Ok(()) => {}
        Err(e) if e.0 == sys::cudaError_enum::CUDA_ERROR_NO_DEVICE => return Ok(0),
        Err(e) => return Err(Error::NoCuda(format!("cuInit failed: {e}"))),
    }
    CudaContext::device_count().map(|c| c.max(0) as usize).map_err(|e| Error::driver("cuDeviceGetCount", e))
}

impl Gpu {
    /// Opens device `ordinal` (see [`Device::cuda`]).
    pub fn open(ordinal: usize) -> Result<Gpu> {
        let count = cuda_device_count()?;
        if ordinal >= count {
            return Err(Error::NoDevice { ordinal, count, reason: None });
        }
        let ctx = CudaContext::new(ordinal).map_err(|e| Error::NoDevice { ordinal, count, reason: Some(e.to_string()) })?;
        let stream = ctx.new_stream().map_err(|e| Error::driver("creating a stream", e))?;
        Ok(Gpu {
            inner: Arc::new(GpuInner {
                ordinal,
                ctx,
                stream,
                modules: Mutex::new(HashMap::new()),
                functions: Mutex::new(HashMap::new()),
                blas: OnceLock::new(), blas_lock: Mutex::new(()),
            }),
        })
    }

    /// Whether two handles are the same (same GPU, same stream).
    pub fn same_handle(&self, other: &Gpu) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// The device ordinal.
    pub fn ordinal(&self) -> usize {
        self.inner.ordinal
    }

    /// The cudarc context.
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.inner.ctx
    }

    /// The stream every op on this handle runs on.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.inner.stream
    }

    /// Device name as the driver reports it.
    pub fn name(&self) -> Result<String> {
        self.inner.ctx.name().map_err(|e| Error::driver("cuDeviceGetName", e))
    }

    /// (major, minor) compute capability.
    pub fn compute_capability(&self) -> Result<(i32, i32)> {
        self.inner.ctx.compute_capability().map_err(|e| Error::driver("compute capability", e))
    }

    /// (free, total) device memory in bytes.
    pub fn memory_info(&self) -> Result<(usize, usize)> {
        self.inner.ctx.mem_get_info().map_err(|e| Error::driver("cuMemGetInfo", e))
    }

    /// A device attribute.
    pub fn attribute(&self, attr: sys::CUdevice_attribute) -> Result<i32> {
        self.inner.ctx.attribute(attr).map_err(|e| Error::driver(format!("attribute {attr:?}"), e))
    }

    /// Number of streaming multiprocessors.
    pub fn sm_count(&self) -> Result<u32> {
        self.attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT).map(|v| v.max(1) as u32)
    }

    /// Waits for this handle's stream.
    pub fn synchronize(&self) -> Result<()> {
        self.inner.stream.synchronize().map_err(|e| Error::driver("stream synchronize", e))
    }

    /// The kernel `kernel` of module `module` (the file `kernels/<module>.cu`), loading the module
    /// from the embedded fatbin on first use. `op` names the caller in errors.
    pub fn function(&self, op: &'static str, module: &'static str, kernel: &'static str) -> Result<CudaFunction> {
        let mut fns = self.inner.functions.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = fns.get(&(module, kernel)) {
            return Ok(f.clone());
        }
        let image = kernels::module(module).ok_or_else(|| Error::Unsupported { op, what: format!("kernel file kernels/{module}.cu") })?;
        if image.fatbin.is_empty() {
            return Err(Error::KernelsNotBuilt { op });
        }
        let m = {
            let mut mods = self.inner.modules.lock().unwrap_or_else(|p| p.into_inner());
            match mods.get(module) {
                Some(m) => m.clone(),
                None => {
                    let ptx = cudarc::nvrtc::Ptx::from_binary(image.fatbin.to_vec());
                    let m = self.inner.ctx.load_module(ptx).map_err(|e| Error::driver(format!("loading kernels/{module}.cu's fatbin"), e))?;
                    mods.insert(module, m.clone());
                    m
                }
            }
        };
        let f = m.load_function(kernel).map_err(|e| Error::driver(format!("{op}: looking up kernel {kernel}"), e))?;
        fns.insert((module, kernel), f.clone());
        Ok(f)
    }

    /// Launches `kernel` with one by-value parameter struct (the convention of every snug
    /// kernel: `extern "C" __global__ void k(const SnugXParams p)`), checking the launch result.
    ///
    /// # Safety
    /// `params` must be the struct the kernel declares, and every pointer in it must be valid for
    /// the accesses the kernel makes with the given launch shape: callers obtain the pointers
    /// from views whose lengths they validated against the struct's sizes.
    pub(crate) unsafe fn launch<P: DeviceRepr>(
        &self,
        op: &'static str,
        module: &'static str,
        kernel: &'static str,
        cfg: LaunchConfig,
        params: &P,
    ) -> Result<()> {
        let f = self.function(op, module, kernel)?;
        let mut b = self.inner.stream.launch_builder(&f);
        b.arg(params);
        // SAFETY: forwarded to the caller (see # Safety).
        unsafe { b.launch(cfg) }.map_err(|e| Error::driver(format!("{op}: launching {kernel}"), e))?;
        Ok(())
    }

    /// The cuBLAS handle bound to this handle's stream, created on first use. snug's GEMMs set its
    /// workspace on every call while holding [`Gpu::cublas_lock`]; code that calls cuBLAS through
    /// this handle directly must hold that lock too and set its own workspace.
    pub fn cublas(&self) -> Result<Arc<cudarc::cublas::CudaBlas>> {
        self.inner
            .blas
            .get_or_init(|| {
                // SAFETY: only dlopens libcublas; a missing library is reported, not a panic.
                if !unsafe { cudarc::cublas::sys::is_culib_present() } {
                    return Err("libcublas could not be loaded".to_string());
                }
                let blas = cudarc::cublas::CudaBlas::new(self.inner.stream.clone()).map_err(|e| e.to_string())?;
                // bf16 outputs: no split-K partial sums reduced in bf16 (cuBLAS's default allows
                // it); every product accumulates and reduces in f32, then rounds once.
                // SAFETY: a live handle, a valid enum value.
                let st = unsafe { cudarc::cublas::sys::cublasSetMathMode(*blas.handle(), cudarc::cublas::sys::cublasMath_t::CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION) };
                if st != cudarc::cublas::sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
                    return Err(format!("cublasSetMathMode: {st:?}"));
                }
                Ok(Arc::new(blas))
            })
            .clone()
            .map_err(|message| Error::Cublas { context: "creating the handle".into(), message })
    }
}

impl Gpu {
    /// Serialises users of the shared cuBLAS handle: hold the guard from `cublasSetWorkspace` until
    /// the last call that uses that workspace has been queued (clones of a `Gpu`, possibly on other
    /// threads, share the handle).
    pub fn cublas_lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.inner.blas_lock.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What `snug info` reports about a CUDA device.
#[derive(Clone, Debug, serde::Serialize)]
pub struct CudaDeviceInfo {
    /// Ordinal.
    pub ordinal: usize,
    /// Name.
    pub name: String,
    /// Compute capability, e.g. "9.0".
    pub compute_capability: String,
    /// Total memory, bytes.
    pub total_memory: usize,
    /// Multiprocessors.
    pub sm_count: u32,
    /// Whether this build carries SASS for it (else the driver JIT-compiles the embedded PTX).
    pub sass_embedded: bool,
}

/// Lists the CUDA devices, or says why there are none.
pub fn cuda_devices() -> Result<Vec<CudaDeviceInfo>> {
    let n = cuda_device_count()?;
    let mut v = Vec::with_capacity(n);
    for i in 0..n {
        let g = Gpu::open(i)?;
        let (ma, mi) = g.compute_capability()?;
        let sm = (ma * 10 + mi) as u32;
        v.push(CudaDeviceInfo {
            ordinal: i,
            name: g.name()?,
            compute_capability: format!("{ma}.{mi}"),
            total_memory: g.memory_info()?.1,
            sm_count: g.sm_count()?,
            sass_embedded: kernels::archs().contains(&sm),
        });
    }
    Ok(v)
}
