//! # snug — train memory-hungry models as designed, in a fixed, exactly known footprint
//!
//! snug is a crate of hand-written CUDA kernels behind safe Rust APIs. A model lists every buffer
//! it will ever need — parameters, gradients, optimizer state, activations, tensors saved for
//! backward, op workspaces — in a [`Plan`] before anything is allocated; an [`Arena`] makes that
//! one allocation; ops run on typed views of it and never allocate during a step. Each op has a
//! CPU twin with the same signature, which is also the f64 reference the GPU kernels are tested
//! against.
//!
//! ```
//! use snug::ops::adamw::{adamw_step, plan_moments, AdamwConfig, AdamwTensor, Clip};
//! use snug::{Arena, Device, Plan, Role};
//!
//! // Plan first: one parameter, its gradient and its two moments.
//! let mut plan = Plan::new();
//! let w = plan.add::<f32>("w", &[256, 64], Role::Param)?;
//! let g = plan.add::<f32>("w.grad", &[256, 64], Role::Grad)?;
//! let (m, v) = plan_moments(&mut plan, "w", &[256, 64])?;
//! println!("{plan}");
//!
//! // One allocation, on the GPU when there is one, else on the host.
//! let device = Device::cuda(0).unwrap_or(Device::Cpu);
//! let mut arena = Arena::new(&device, &plan)?;
//! arena.upload(g, &vec![0.1; 256 * 64])?;
//!
//! // Disjoint views checked by the arena, then one fused step.
//! let b = arena.borrow();
//! let t = AdamwTensor { param: b.write(w)?, grad: b.read(g)?, m: b.write(m)?, v: b.write(v)?, param_bf16: None, decay: true };
//! match adamw_step(&AdamwConfig::default(), 1, Clip::None, t) {
//!     Ok(()) | Err(snug::Error::KernelsNotBuilt { .. }) => {}
//!     Err(e) => return Err(e),
//! }
//! # Ok::<(), snug::Error>(())
//! ```
#![deny(missing_docs)]
#![warn(clippy::undocumented_unsafe_blocks)]

pub mod bench;
pub mod device;
mod dtype;
mod error;
mod ffi;
pub mod kernels;
pub mod memory;
pub mod ops;
pub mod testing;

pub use device::{Device, Gpu};
pub use dtype::{DType, Element};
pub use error::{Error, Result};
pub use memory::{Arena, Borrows, Buf, BufId, BufferInfo, Loc, Plan, Role, Shape, View, ViewMut, ALIGN};

/// The crate version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
