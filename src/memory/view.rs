//! Typed views into arena buffers (or plain host slices).

use std::fmt;
use std::marker::PhantomData;

use crate::device::Gpu;
use crate::{Element, Error, Result};

/// Most dimensions a shape may have.
pub const MAX_RANK: usize = 8;

/// A tensor shape of up to [`MAX_RANK`] dimensions, stored inline (no allocation).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Shape {
    dims: [usize; MAX_RANK],
    rank: u8,
}

impl Shape {
    /// A shape from its dimensions; fails beyond [`MAX_RANK`] dimensions or when the element
    /// count overflows `usize`.
    pub fn new(dims: &[usize]) -> Result<Shape> {
        if dims.len() > MAX_RANK {
            return Err(Error::Shape { op: "shape", arg: "dims", expected: format!("at most {MAX_RANK} dimensions"), got: dims.to_vec() });
        }
        if dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).is_none() {
            return Err(Error::Shape { op: "shape", arg: "dims", expected: "an element count that fits in usize".into(), got: dims.to_vec() });
        }
        let mut d = [0; MAX_RANK];
        d[..dims.len()].copy_from_slice(dims);
        Ok(Shape { dims: d, rank: dims.len() as u8 })
    }

    /// The dimensions.
    pub fn dims(&self) -> &[usize] {
        &self.dims[..self.rank as usize]
    }

    /// Number of elements (1 for a scalar shape `[]`).
    pub fn numel(&self) -> usize {
        self.dims().iter().product()
    }
}

impl fmt::Debug for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.dims())
    }
}

/// Where a view's memory is.
#[derive(Clone, Copy, Debug)]
pub enum Loc<'a> {
    /// Host memory.
    Host,
    /// Device memory of this GPU handle (and its stream).
    Cuda(&'a Gpu),
}

impl Loc<'_> {
    /// Same place: both host, or the same GPU handle.
    pub fn same(&self, other: &Loc<'_>) -> bool {
        match (self, other) {
            (Loc::Host, Loc::Host) => true,
            (Loc::Cuda(a), Loc::Cuda(b)) => a.same_handle(b),
            _ => false,
        }
    }
}

impl fmt::Display for Loc<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Loc::Host => f.write_str("cpu"),
            Loc::Cuda(g) => write!(f, "cuda:{}", g.ordinal()),
        }
    }
}

/// A read-only typed view: `shape.numel()` elements of `T` at an address on the host or a GPU.
pub struct View<'a, T> {
    addr: usize,
    shape: Shape,
    loc: Loc<'a>,
    _m: PhantomData<&'a [T]>,
}

/// A mutable typed view; it never aliases another live view (the arena checks, or the borrow
/// checker does for host slices).
pub struct ViewMut<'a, T> {
    addr: usize,
    shape: Shape,
    loc: Loc<'a>,
    _m: PhantomData<&'a mut [T]>,
}

// SAFETY: a view is a (shared or unique) borrow of `[T]`; T: Element is Send + Sync plain data.
unsafe impl<T: Element> Send for View<'_, T> {}
// SAFETY: as above.
unsafe impl<T: Element> Sync for View<'_, T> {}
// SAFETY: as above; a ViewMut is a unique borrow.
unsafe impl<T: Element> Send for ViewMut<'_, T> {}

fn host_shape(op: &'static str, len: usize, dims: &[usize]) -> Result<Shape> {
    let shape = Shape::new(dims)?;
    if shape.numel() != len {
        return Err(Error::Length { op, arg: "data", expected: format!("{} (the product of shape {:?})", shape.numel(), dims), got: len });
    }
    Ok(shape)
}

/// Accessors shared by [`View`] and [`ViewMut`] (same fields, same meaning).
macro_rules! accessors {
    () => {
        /// The dimensions.
        pub fn shape(&self) -> &[usize] {
            self.shape.dims()
        }
        /// Number of elements.
        pub fn len(&self) -> usize {
            self.shape.numel()
        }
        /// Whether the view holds no element.
        pub fn is_empty(&self) -> bool {
            self.len() == 0
        }
        /// The element type.
        pub fn dtype(&self) -> crate::DType {
            T::DTYPE
        }
        /// Where the memory is.
        pub fn loc(&self) -> Loc<'a> {
            self.loc
        }
    };
}

macro_rules! device_and_reshape {
    ($ty:ident) => {
        /// The device address, for a device view.
        pub fn device_ptr(&self) -> Option<u64> {
            matches!(self.loc, Loc::Cuda(_)).then_some(self.addr as u64)
        }
        /// The address on the host or the device (for code shared by a kernel launch and its
        /// host port, which read it through the same parameter struct).
        pub(crate) fn raw_addr(&self) -> usize {
            self.addr
        }
        /// The same memory with another shape of the same element count.
        pub fn reshape(self, shape: &[usize]) -> Result<Self> {
            let s = host_shape("reshape", self.len(), shape)?;
            Ok($ty { shape: s, ..self })
        }
    };
}

impl<'a, T: Element> View<'a, T> {
    /// A view of a host slice with a shape whose element count must equal `data.len()`.
    pub fn host(data: &'a [T], shape: &[usize]) -> Result<Self> {
        let shape = host_shape("View::host", data.len(), shape)?;
        Ok(View { addr: data.as_ptr() as usize, shape, loc: Loc::Host, _m: PhantomData })
    }

    /// # Safety
    /// `addr` must point to `shape.numel()` initialised `T`s at `loc`, valid and not mutated
    /// through another path for `'a`.
    pub(crate) unsafe fn from_raw(addr: usize, shape: Shape, loc: Loc<'a>) -> Self {
        View { addr, shape, loc, _m: PhantomData }
    }

    accessors!();
    /// The elements, for a host view; `None` for device memory.
    pub fn as_slice(&self) -> Option<&'a [T]> {
        match self.loc {
            // SAFETY: a host view points to `len` initialised Ts borrowed for 'a (constructors).
            Loc::Host => Some(unsafe { std::slice::from_raw_parts(self.addr as *const T, self.len()) }),
            Loc::Cuda(_) => None,
        }
    }
    device_and_reshape!(View);

    /// Entries `start .. start + count` along the first dimension (the same memory, no copy).
    pub fn narrow(self, start: usize, count: usize) -> Result<Self> {
        let (shape, offset) = narrow_shape("View::narrow", self.shape(), start, count)?;
        Ok(View { addr: self.addr + offset * std::mem::size_of::<T>(), shape, ..self })
    }

    /// Copies the elements to a host vector; for device memory this waits for the GPU handle's
    /// stream first (a host synchronisation: for checks and tests, not for the hot path).
    pub fn to_vec(&self) -> Result<Vec<T>> {
        match self.loc {
            Loc::Host => Ok(self.as_slice().map(<[T]>::to_vec).unwrap_or_default()),
            Loc::Cuda(gpu) => {
                let mut out = vec![T::zeroed(); self.len()];
                gpu.context().bind_to_thread().map_err(|e| Error::driver("binding the context", e))?;
                // SAFETY: the view covers len() Ts of device memory on this handle; the copy is
                // queued after every kernel on its stream, and `out` is read only after the sync.
                unsafe { cudarc::driver::result::memcpy_dtoh_async(&mut out, self.addr as u64, gpu.stream().cu_stream()) }
                    .map_err(|e| Error::driver("copying a view to the host", e))?;
                gpu.synchronize()?;
                Ok(out)
            }
        }
    }
}

impl<T: Element> Clone for View<'_, T> {
    fn clone(&self) -> Self {
        View { addr: self.addr, shape: self.shape, loc: self.loc, _m: PhantomData }
    }
}

impl<'a, T: Element> ViewMut<'a, T> {
    /// A mutable view of a host slice with a shape whose element count must equal `data.len()`.
    pub fn host(data: &'a mut [T], shape: &[usize]) -> Result<Self> {
        let shape = host_shape("ViewMut::host", data.len(), shape)?;
        Ok(ViewMut { addr: data.as_mut_ptr() as usize, shape, loc: Loc::Host, _m: PhantomData })
    }

    /// # Safety
    /// `addr` must point to `shape.numel()` initialised `T`s at `loc`, valid for `'a`, with no
    /// other live view of any of those bytes.
    pub(crate) unsafe fn from_raw(addr: usize, shape: Shape, loc: Loc<'a>) -> Self {
        ViewMut { addr, shape, loc, _m: PhantomData }
    }

    accessors!();
    /// A read-only view of the same memory for as long as `self` is borrowed.
    pub fn as_view(&self) -> View<'_, T> {
        View { addr: self.addr, shape: self.shape, loc: self.loc, _m: PhantomData }
    }
    /// A shorter-lived mutable view of the same memory (to pass to an op and keep `self`).
    pub fn reborrow(&mut self) -> ViewMut<'_, T> {
        ViewMut { addr: self.addr, shape: self.shape, loc: self.loc, _m: PhantomData }
    }
    /// The elements, for a host view.
    pub fn as_slice_mut(&mut self) -> Option<&mut [T]> {
        match self.loc {
            // SAFETY: a host ViewMut is the unique borrow of `len` initialised Ts (constructors).
            Loc::Host => Some(unsafe { std::slice::from_raw_parts_mut(self.addr as *mut T, self.len()) }),
            Loc::Cuda(_) => None,
        }
    }
    /// Consumes the view into the host slice it borrows.
    pub fn into_slice_mut(self) -> Option<&'a mut [T]> {
        match self.loc {
            // SAFETY: as in `as_slice_mut`; `self` is consumed so the borrow stays unique.
            Loc::Host => Some(unsafe { std::slice::from_raw_parts_mut(self.addr as *mut T, self.len()) }),
            Loc::Cuda(_) => None,
        }
    }
    device_and_reshape!(ViewMut);

    /// The same bytes as a flat view of `U` (e.g. a region of an f32 workspace used for bf16):
    /// the byte length must be a multiple of `U`'s size and the address aligned for `U`.
    pub(crate) fn cast<U: Element>(self) -> Result<ViewMut<'a, U>> {
        let bytes = self.len() * std::mem::size_of::<T>();
        let (su, au) = (std::mem::size_of::<U>(), std::mem::align_of::<U>());
        if !bytes.is_multiple_of(su) || !self.addr.is_multiple_of(au) {
            return Err(Error::Length { op: "ViewMut::cast", arg: "self", expected: format!("a multiple of {su} bytes at an address aligned to {au}"), got: bytes });
        }
        Ok(ViewMut { addr: self.addr, shape: Shape::new(&[bytes / su])?, loc: self.loc, _m: PhantomData })
    }

    /// Splits a view into its first `at` elements and the rest, both flat (1-D; reshape them as
    /// needed): two disjoint mutable views of the same memory, e.g. one workspace carved in two.
    pub fn split_at(self, at: usize) -> Result<(Self, Self)> {
        let n = self.len();
        if at > n {
            return Err(Error::Length { op: "ViewMut::split_at", arg: "at", expected: format!("at most {n} (the view's length)"), got: at });
        }
        let (a, b) = (Shape::new(&[at])?, Shape::new(&[n - at])?);
        let tail = self.addr + at * std::mem::size_of::<T>();
        Ok((ViewMut { shape: a, ..self }, ViewMut { addr: tail, shape: b, loc: self.loc, _m: PhantomData }))
    }
}

/// The shape of entries `start .. start + count` along the first dimension, and the element
/// offset of the first.
fn narrow_shape(op: &'static str, dims: &[usize], start: usize, count: usize) -> Result<(Shape, usize)> {
    let Some((&d0, rest)) = dims.split_first() else {
        return Err(Error::Shape { op, arg: "self", expected: "at least one dimension".into(), got: dims.to_vec() });
    };
    if count == 0 || start.checked_add(count).is_none_or(|e| e > d0) {
        return Err(Error::Length { op, arg: "start..start+count", expected: format!("a non-empty range within 0..{d0}"), got: start.saturating_add(count) });
    }
    let inner: usize = rest.iter().product();
    let mut d = dims.to_vec();
    d[0] = count;
    Ok((Shape::new(&d)?, start * inner))
}

impl<T: Element> fmt::Debug for View<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "View<{}>{:?} on {}", T::DTYPE, self.shape, self.loc)
    }
}

impl<T: Element> fmt::Debug for ViewMut<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ViewMut<{}>{:?} on {}", T::DTYPE, self.shape, self.loc)
    }
}
