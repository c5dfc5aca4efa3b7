//! The one error type of the crate.

use crate::DType;

/// Result alias used by every fallible snug function.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in snug. Messages name the op, the argument, and the expected vs
/// actual value, e.g. `adamw: grad has shape [10], expected [12] (the shape of param)`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A tensor has the wrong shape.
    #[error("{op}: {arg} has shape {got:?}, expected {expected}")]
    Shape {
        /// The op or function that checked.
        op: &'static str,
        /// The argument.
        arg: &'static str,
        /// What was expected, in words.
        expected: String,
        /// The shape given.
        got: Vec<usize>,
    },
    /// A tensor has the wrong element type.
    #[error("{op}: {arg} has dtype {got}, expected {expected}")]
    DType {
        /// The op or function that checked.
        op: &'static str,
        /// The argument.
        arg: &'static str,
        /// What was expected, in words.
        expected: String,
        /// The dtype given.
        got: DType,
    },
    /// A slice or buffer has the wrong number of elements.
    #[error("{op}: {arg} has {got} elements, expected {expected}")]
    Length {
        /// The op or function that checked.
        op: &'static str,
        /// The argument.
        arg: &'static str,
        /// What was expected, in words.
        expected: String,
        /// The length given.
        got: usize,
    },
    /// A scalar argument is out of its valid range.
    #[error("{op}: {arg} is {got}, expected {expected}")]
    Value {
        /// The op or function that checked.
        op: &'static str,
        /// The argument.
        arg: &'static str,
        /// What was expected, in words.
        expected: String,
        /// The value given.
        got: String,
    },
    /// Tensors of one call live on different devices.
    #[error("{op}: {arg} is on {got}, expected {expected}")]
    DeviceMismatch {
        /// The op or function that checked.
        op: &'static str,
        /// The argument.
        arg: &'static str,
        /// The device expected.
        expected: String,
        /// The device of the argument.
        got: String,
    },
    /// A plan cannot be built as asked (duplicate name, size overflow, ...).
    #[error("plan: {0}")]
    Plan(String),
    /// A buffer id from another plan, or a view request the arena cannot grant.
    #[error("arena: {0}")]
    Arena(String),
    /// Two requested views would overlap (aliasing is refused, not UB).
    #[error("arena: {first} and {second} overlap in memory; a mutable view must not alias another view")]
    Aliased {
        /// The buffer already borrowed.
        first: String,
        /// The buffer whose view was refused.
        second: String,
    },
    /// The CUDA driver library (libcuda) is not present on this machine.
    #[error("no CUDA: {0}")]
    NoCuda(String),
    /// The driver is present but the requested GPU is not.
    #[error("no CUDA device {ordinal}: {count} device(s) present{}", .reason.as_deref().map(|r| format!(" ({r})")).unwrap_or_default())]
    NoDevice {
        /// The ordinal asked for.
        ordinal: usize,
        /// How many devices the driver reports.
        count: usize,
        /// The driver's reason, if any.
        reason: Option<String>,
    },
    /// The crate was built without nvcc, so no kernel image is embedded.
    #[error("{op}: kernels were not compiled (no nvcc at build time); run scripts/install-cuda-toolchain and rebuild")]
    KernelsNotBuilt {
        /// The op that needed a kernel.
        op: &'static str,
    },
    /// An error reported by the CUDA driver.
    #[error("CUDA driver error in {context}: {message}")]
    Driver {
        /// What snug was doing.
        context: String,
        /// The driver's error.
        message: String,
    },
    /// An error reported by cuBLAS.
    #[error("cuBLAS error in {context}: {message}")]
    Cublas {
        /// What snug was doing.
        context: String,
        /// cuBLAS's error.
        message: String,
    },
    /// The device does not have the memory a plan needs.
    #[error("out of device memory: the plan needs {needed} bytes, {free} bytes free on {device}")]
    OutOfMemory {
        /// Bytes asked for.
        needed: usize,
        /// Bytes free on the device before the allocation.
        free: usize,
        /// The device.
        device: String,
    },
    /// A checked op found a numerical problem in one item of a batch.
    #[error("{op}: item {index} of the batch: {what}")]
    Numerical {
        /// The op.
        op: &'static str,
        /// Index of the first bad item (e.g. the matrix).
        index: usize,
        /// What went wrong.
        what: String,
    },
    /// An op was asked for a combination it does not implement (e.g. f64 on the GPU).
    #[error("{op}: {what} is not supported")]
    Unsupported {
        /// The op.
        op: &'static str,
        /// What is missing.
        what: String,
    },
}

impl Error {
    pub(crate) fn driver(context: impl Into<String>, e: cudarc::driver::DriverError) -> Self {
        Error::Driver { context: context.into(), message: e.to_string() }
    }
}
