//! The memory plan: every buffer of a model, named, typed and placed, before any allocation.

use std::collections::HashMap;
use std::fmt;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};

use super::view::Shape;
use crate::{DType, Element, Error, Result};

/// Alignment of every buffer's byte offset (and of the arena's base address).
pub const ALIGN: usize = 256;

/// What a buffer is for; reports group bytes by role.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[non_exhaustive]
pub enum Role {
    /// Trainable parameters (f32 master weights, or their low-precision copies).
    Param,
    /// Gradients of parameters.
    Grad,
    /// Optimizer state (AdamW moments, step counters, EMA weights).
    Optimizer,
    /// Activations alive only within a forward or backward pass.
    Activation,
    /// Tensors kept from forward for backward.
    Saved,
    /// Scratch space of ops.
    Workspace,
    /// Data fed in (batch inputs, targets) and small scalars read back (loss, norms).
    Io,
}

impl Role {
    /// All roles, in report order.
    pub const ALL: [Role; 7] = [Role::Param, Role::Grad, Role::Optimizer, Role::Activation, Role::Saved, Role::Workspace, Role::Io];

    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Role::Param => "param",
            Role::Grad => "grad",
            Role::Optimizer => "optimizer",
            Role::Activation => "activation",
            Role::Saved => "saved",
            Role::Workspace => "workspace",
            Role::Io => "io",
        }
    }
}

/// One planned buffer.
#[derive(Clone, Debug)]
pub struct BufferInfo {
    /// Unique name within the plan, e.g. `node.3.in_proj.weight`.
    pub name: String,
    /// Shape.
    pub shape: Shape,
    /// Element type.
    pub dtype: DType,
    /// Role.
    pub role: Role,
    /// Byte offset from the arena base; a multiple of [`ALIGN`].
    pub offset: usize,
    /// Bytes used (`numel * dtype.size()`, not rounded).
    pub bytes: usize,
}

impl BufferInfo {
    /// The byte range `[offset, offset + bytes)`.
    pub fn range(&self) -> std::ops::Range<usize> {
        self.offset..self.offset + self.bytes
    }
}

/// A typed id of a buffer in one plan. Cheap to copy; only meaningful with that plan's arenas.
pub struct Buf<T> {
    pub(crate) id: BufId,
    _t: PhantomData<fn() -> T>,
}

impl<T> Clone for Buf<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for Buf<T> {}
impl<T> fmt::Debug for Buf<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Buf#{}", self.id.index)
    }
}

impl<T> Buf<T> {
    /// The untyped id (for lists of buffers of mixed dtypes).
    pub fn id(self) -> BufId {
        self.id
    }
}

/// An untyped buffer id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BufId {
    pub(crate) plan: u64,
    pub(crate) index: u32,
}

static NEXT_PLAN: AtomicU64 = AtomicU64::new(1);

/// The list of a model's buffers with their byte offsets in one allocation.
///
/// Buffers are placed in the order they are added, each at the next multiple of [`ALIGN`]. A
/// plan only grows: an [`Arena`](crate::Arena) keeps a snapshot of the plan as it was when the
/// arena was made, and refuses ids of buffers added later. `Plan` is deliberately not `Clone`: two
/// diverging copies would hand out ids that mean different buffers.
#[derive(Debug)]
pub struct Plan {
    id: u64,
    buffers: Vec<BufferInfo>,
    names: HashMap<String, u32>,
    end: usize,
}

impl Default for Plan {
    fn default() -> Self {
        Self::new()
    }
}

fn align_up(x: usize) -> Option<usize> {
    x.checked_add(ALIGN - 1).map(|v| v / ALIGN * ALIGN)
}

impl Plan {
    /// An empty plan with a process-unique identity (ids of other plans are refused).
    pub fn new() -> Plan {
        Plan { id: NEXT_PLAN.fetch_add(1, Ordering::Relaxed), buffers: Vec::new(), names: HashMap::new(), end: 0 }
    }

    /// Adds a buffer of `T` with `shape`. Names are unique; every dimension must be ≥ 1.
    pub fn add<T: Element>(&mut self, name: impl Into<String>, shape: &[usize], role: Role) -> Result<Buf<T>> {
        let name = name.into();
        if name.is_empty() {
            return Err(Error::Plan("a buffer name must not be empty".into()));
        }
        if self.names.contains_key(&name) {
            return Err(Error::Plan(format!("a buffer named {name:?} is already planned")));
        }
        if shape.contains(&0) {
            return Err(Error::Plan(format!("buffer {name:?} has shape {shape:?}; every dimension must be at least 1")));
        }
        let s = Shape::new(shape).map_err(|e| Error::Plan(format!("buffer {name:?}: {e}")))?;
        let bytes = s
            .numel()
            .checked_mul(T::DTYPE.size())
            .ok_or_else(|| Error::Plan(format!("buffer {name:?} of shape {shape:?} overflows usize bytes")))?;
        let offset = align_up(self.end).ok_or_else(|| Error::Plan("plan size overflows usize".into()))?;
        let end = offset.checked_add(bytes).ok_or_else(|| Error::Plan("plan size overflows usize".into()))?;
        align_up(end).ok_or_else(|| Error::Plan("plan size overflows usize".into()))?;
        let index = u32::try_from(self.buffers.len()).map_err(|_| Error::Plan("more than 2^32 buffers".into()))?;
        self.buffers.push(BufferInfo { name: name.clone(), shape: s, dtype: T::DTYPE, role, offset, bytes });
        self.names.insert(name, index);
        self.end = end;
        Ok(Buf { id: BufId { plan: self.id, index }, _t: PhantomData })
    }

    /// A copy with the same identity, for an arena's snapshot.
    pub(crate) fn snapshot(&self) -> Plan {
        Plan { id: self.id, buffers: self.buffers.clone(), names: self.names.clone(), end: self.end }
    }

    /// Bytes of the one allocation: the end of the last buffer rounded up to [`ALIGN`].
    pub fn total_bytes(&self) -> usize {
        // Cannot overflow: `add` checked that the aligned end fits.
        self.end.div_ceil(ALIGN) * ALIGN
    }

    /// Every buffer, in placement order.
    pub fn buffers(&self) -> &[BufferInfo] {
        &self.buffers
    }

    /// The buffer behind an id of this plan.
    pub fn info(&self, id: BufId) -> Result<&BufferInfo> {
        if id.plan != self.id {
            return Err(Error::Arena(format!("buffer #{} belongs to another plan", id.index)));
        }
        self.buffers.get(id.index as usize).ok_or_else(|| Error::Arena(format!("buffer #{} is not in this plan", id.index)))
    }

    /// The typed id of the buffer named `name`, checking its dtype.
    pub fn find<T: Element>(&self, name: &str) -> Result<Buf<T>> {
        let &index = self.names.get(name).ok_or_else(|| Error::Plan(format!("no buffer named {name:?}")))?;
        let info = &self.buffers[index as usize];
        if info.dtype != T::DTYPE {
            return Err(Error::DType { op: "Plan::find", arg: "T", expected: info.dtype.to_string(), got: T::DTYPE });
        }
        Ok(Buf { id: BufId { plan: self.id, index }, _t: PhantomData })
    }

    /// Bytes per role (sum of buffer bytes, excluding alignment padding), in [`Role::ALL`] order.
    pub fn bytes_by_role(&self) -> Vec<(Role, usize)> {
        Role::ALL
            .iter()
            .map(|&r| (r, self.buffers.iter().filter(|b| b.role == r).map(|b| b.bytes).sum()))
            .collect()
    }
}

impl fmt::Display for Plan {
    /// A table: one line per buffer, then totals per role.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{:<40} {:<10} {:<5} {:>14} {:>14}  shape", "buffer", "role", "dtype", "offset", "bytes")?;
        for b in &self.buffers {
            writeln!(f, "{:<40} {:<10} {:<5} {:>14} {:>14}  {:?}", b.name, b.role.name(), b.dtype.name(), b.offset, b.bytes, b.shape)?;
        }
        for (r, bytes) in self.bytes_by_role() {
            if bytes > 0 {
                writeln!(f, "total {:<34} {:>46}", r.name(), bytes)?;
            }
        }
        write!(f, "total (one allocation, {ALIGN}-byte aligned) {:>38}", self.total_bytes())
    }
}
