//! Element types a buffer can hold.

use std::fmt;

/// The element type of a buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DType {
    /// IEEE binary32.
    F32,
    /// IEEE binary64 (host reference runs; GPU kernels take f32/bf16/f16).
    F64,
    /// bfloat16 storage (`half::bf16`), f32 accumulation.
    BF16,
    /// IEEE binary16 storage (`half::f16`), f32 accumulation.
    F16,
    /// Signed 32-bit integers (indices, labels).
    I32,
    /// Unsigned 32-bit integers (indices, counters).
    U32,
    /// Bytes (masks, raw storage).
    U8,
}

impl DType {
    /// Bytes per element.
    pub const fn size(self) -> usize {
        match self {
            DType::F64 => 8,
            DType::F32 | DType::I32 | DType::U32 => 4,
            DType::BF16 | DType::F16 => 2,
            DType::U8 => 1,
        }
    }

    /// Lower-case name as used in kernel names (`adamw_f32`) and messages.
    pub const fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F64 => "f64",
            DType::BF16 => "bf16",
            DType::F16 => "f16",
            DType::I32 => "i32",
            DType::U32 => "u32",
            DType::U8 => "u8",
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A Rust type that can live in an arena buffer.
///
/// Sealed: only the types with a [`DType`] implement it, so a view's element type always matches
/// the dtype its buffer was planned with.
pub trait Element: Copy + Send + Sync + bytemuck::Pod + fmt::Debug + 'static + sealed::Sealed {
    /// The dtype of this element type.
    const DTYPE: DType;
}

mod sealed {
    pub trait Sealed {}
}

macro_rules! element {
    ($($t:ty => $d:ident),*) => {$(
        impl sealed::Sealed for $t {}
        impl Element for $t { const DTYPE: DType = DType::$d; }
    )*};
}
element!(f32 => F32, f64 => F64, half::bf16 => BF16, half::f16 => F16, i32 => I32, u32 => U32, u8 => U8);
