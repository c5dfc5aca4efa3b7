//! Fixed-footprint memory: a [`Plan`] lists every buffer before anything is allocated, an
//! [`Arena`] makes exactly one allocation of [`Plan::total_bytes`] and hands out typed views.
//!
//! ```
//! use snug::{Arena, Device, Plan, Role};
//! let mut plan = Plan::new();
//! let w = plan.add::<f32>("layer0.weight", &[64, 32], Role::Param)?;
//! let g = plan.add::<f32>("layer0.weight.grad", &[64, 32], Role::Grad)?;
//! assert_eq!(plan.total_bytes(), 2 * 64 * 32 * 4);
//! let mut arena = Arena::new(&Device::Cpu, &plan)?;
//! arena.upload(w, &vec![1.0; 64 * 32])?;
//! let b = arena.borrow();
//! let (w_view, g_view) = (b.read(w)?, b.write(g)?);
//! assert_eq!(w_view.shape(), &[64, 32]);
//! assert!(b.write(g).is_err()); // a second mutable view of the same bytes is refused
//! # drop((w_view, g_view));
//! # Ok::<(), snug::Error>(())
//! ```

mod arena;
mod plan;
mod view;

pub use arena::{Arena, Borrows};
pub use plan::{Buf, BufId, BufferInfo, Plan, Role, ALIGN};
pub use view::{Loc, Shape, View, ViewMut, MAX_RANK};
