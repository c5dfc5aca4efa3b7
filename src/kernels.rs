//! The kernel images embedded at build time and their ptxas statistics.
//!
//! `build.rs` compiles every `kernels/<name>.cu` into one fatbin (SASS for each arch in
//! [`archs`] plus PTX for the lowest) and records `-Xptxas -v` for every kernel and arch.

/// One compiled kernel file.
#[derive(Debug)]
pub struct ModuleImage {
    /// File stem: `adamw` for `kernels/adamw.cu`.
    pub name: &'static str,
    /// The fatbin; empty when nvcc was not available at build time.
    pub fatbin: &'static [u8],
    /// ptxas statistics, one entry per (kernel, arch).
    pub kernels: &'static [KernelStats],
}

/// What `ptxas -v` reported for one kernel on one arch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct KernelStats {
    /// `extern "C"` name, e.g. `adamw_f32`.
    pub name: &'static str,
    /// SM version, e.g. 90 for sm_90.
    pub arch: u32,
    /// Registers per thread.
    pub registers: u32,
    /// Named barriers used.
    pub barriers: u32,
    /// Static shared memory per block, bytes.
    pub shared_bytes: u64,
    /// Stack frame per thread, bytes (local memory).
    pub stack_bytes: u64,
    /// Register spill stores, bytes.
    pub spill_store_bytes: u64,
    /// Register spill loads, bytes.
    pub spill_load_bytes: u64,
}

mod generated {
    #[allow(unused_imports)] // KernelStats is unused when the build had no nvcc
    use super::{KernelStats, ModuleImage};
    include!(concat!(env!("OUT_DIR"), "/kernels.rs"));
}

/// Whether nvcc compiled the kernels into this build.
pub fn compiled() -> bool {
    generated::NVCC.is_some()
}

/// Path of the nvcc that compiled the kernels, if any.
pub fn nvcc() -> Option<&'static str> {
    generated::NVCC
}

/// nvcc's version (e.g. `13.0.88`), empty without nvcc.
pub fn nvcc_version() -> &'static str {
    generated::NVCC_VERSION
}

/// SM versions with embedded SASS; PTX is embedded for the lowest.
pub fn archs() -> &'static [u32] {
    generated::ARCHS
}

/// Every kernel file of the crate (listed even when it was not compiled).
pub fn modules() -> &'static [ModuleImage] {
    generated::MODULES
}

/// The image of one kernel file.
pub fn module(name: &str) -> Option<&'static ModuleImage> {
    generated::MODULES.iter().find(|m| m.name == name)
}
