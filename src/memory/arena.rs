//! The arena: one allocation of a plan's total bytes, carved into typed views.

use std::alloc::Layout;
use std::cell::RefCell;
use std::ptr::NonNull;

use cudarc::driver::result;

use super::plan::{Buf, BufId, BufferInfo, Plan, Role, ALIGN};
use super::view::{Loc, View, ViewMut};
use crate::device::{Device, Gpu};
use crate::{Element, Error, Result};

enum Memory {
    /// Host memory from the global allocator, `ALIGN`-aligned, zeroed.
    Host { ptr: NonNull<u8>, layout: Option<Layout> },
    /// One `cuMemAlloc` on the GPU, zeroed on the handle's stream.
    Cuda { ptr: u64, gpu: Gpu },
}

/// The one allocation backing a [`Plan`], on the host or a GPU.
///
/// Views borrow the arena: shared views ([`Arena::view`], [`Borrows::read`]) may overlap each
/// other, a mutable view never overlaps any other live view. Device work queued through views is
/// ordered on the GPU handle's stream; dropping the arena waits for that stream before freeing.
pub struct Arena {
    plan: Plan,
    device: Device,
    mem: Memory,
    claims: RefCell<Vec<Claim>>,
}

#[derive(Clone, Copy)]
struct Claim {
    start: usize,
    end: usize,
    mutable: bool,
    index: u32,
}

// SAFETY: the arena owns its memory exclusively; `claims` is only touched through `&mut self`
// or a `Borrows` (which is !Sync because of its RefCell), so moving an arena between threads is
// sound. It is deliberately not Sync.
unsafe impl Send for Arena {}

impl Drop for Arena {
    fn drop(&mut self) {
        match &self.mem {
            Memory::Host { ptr, layout } => {
                if let Some(layout) = layout {
                    // SAFETY: allocated in `Arena::new` with exactly this layout.
                    unsafe { std::alloc::dealloc(ptr.as_ptr(), *layout) };
                }
            }
            Memory::Cuda { ptr, gpu } => {
                // Kernels queued on the stream may still use the memory: wait, then free. Errors
                // here cannot be returned; a failing free leaks rather than panicking.
                let _ = gpu.synchronize();
                let _ = gpu.context().bind_to_thread();
                // SAFETY: `ptr` came from `malloc_sync` in `Arena::new` and is freed once.
                let _ = unsafe { result::free_sync(*ptr) };
            }
        }
    }
}

impl Arena {
    /// Makes exactly one allocation of `plan.total_bytes()` on `device`, zero-filled.
    ///
    /// On a GPU, fails with [`Error::OutOfMemory`] when the device has less free memory than the
    /// plan needs; nothing is allocated then.
    pub fn new(device: &Device, plan: &Plan) -> Result<Arena> {
        let bytes = plan.total_bytes();
        let mem = match device {
            Device::Cpu => {
                if bytes == 0 {
                    Memory::Host { ptr: NonNull::<[u8; ALIGN]>::dangling().cast(), layout: None }
                } else {
                    let layout = Layout::from_size_align(bytes, ALIGN)
                        .map_err(|e| Error::Plan(format!("{bytes} bytes cannot be allocated on the host: {e}")))?;
                    // SAFETY: layout has non-zero size.
                    let p = unsafe { std::alloc::alloc_zeroed(layout) };
                    let ptr = NonNull::new(p).ok_or(Error::OutOfMemory { needed: bytes, free: 0, device: "cpu".into() })?;
                    Memory::Host { ptr, layout: Some(layout) }
                }
            }
            Device::Cuda(gpu) => {
                let (free, _) = gpu.memory_info()?;
                if bytes > free {
                    return Err(Error::OutOfMemory { needed: bytes, free, device: device.to_string() });
                }
                gpu.context().bind_to_thread().map_err(|e| Error::driver("binding the context", e))?;
                // cuMemAlloc of 0 bytes is an error; an empty plan still gets a valid base.
                // SAFETY: plain allocation; freed in Drop.
                let ptr = unsafe { result::malloc_sync(bytes.max(ALIGN)) }.map_err(|e| match e.0 {
                    cudarc::driver::sys::cudaError_enum::CUDA_ERROR_OUT_OF_MEMORY => {
                        Error::OutOfMemory { needed: bytes, free, device: device.to_string() }
                    }
                    _ => Error::driver("cuMemAlloc", e),
                })?;
                let mem = Memory::Cuda { ptr, gpu: gpu.clone() };
                // SAFETY: `ptr` is a live allocation of at least `bytes` bytes on this stream's context.
                unsafe { result::memset_d8_async(ptr, 0, bytes, gpu.stream().cu_stream()) }.map_err(|e| Error::driver("zeroing the arena", e))?;
                debug_assert_eq!(ptr as usize % ALIGN, 0);
                mem
            }
        };
        Ok(Arena { plan: plan.snapshot(), device: device.clone(), mem, claims: RefCell::new(Vec::new()) })
    }

    /// The plan this arena was made from.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// The device the memory is on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Bytes allocated (equals `plan().total_bytes()`).
    pub fn total_bytes(&self) -> usize {
        self.plan.total_bytes()
    }

    fn loc(&self) -> Loc<'_> {
        match &self.mem {
            Memory::Host { .. } => Loc::Host,
            Memory::Cuda { gpu, .. } => Loc::Cuda(gpu),
        }
    }

    fn base(&self) -> usize {
        match &self.mem {
            Memory::Host { ptr, .. } => ptr.as_ptr() as usize,
            Memory::Cuda { ptr, .. } => *ptr as usize,
        }
    }

    fn typed<T: Element>(&self, id: BufId) -> Result<&BufferInfo> {
        let info = self.plan.info(id)?;
        if info.dtype != T::DTYPE {
            // Unreachable through Buf<T> of this plan; kept so a BufId never reinterprets bytes.
            return Err(Error::DType { op: "arena", arg: "buffer", expected: info.dtype.to_string(), got: T::DTYPE });
        }
        debug_assert!(info.range().end <= self.plan.total_bytes(), "plan placed {} outside its total", info.name);
        Ok(info)
    }

    /// A read-only view of `buf`; any number may be live at once.
    pub fn view<T: Element>(&self, buf: Buf<T>) -> Result<View<'_, T>> {
        let info = self.typed::<T>(buf.id)?;
        // SAFETY: the buffer lies inside the allocation (plan invariant) and holds initialised
        // Ts (zeroed or written); `&self` excludes every ViewMut for the view's lifetime.
        Ok(unsafe { View::from_raw(self.base() + info.offset, info.shape, self.loc()) })
    }

    /// A mutable view of `buf`; `&mut self` keeps any other view from being live.
    pub fn view_mut<T: Element>(&mut self, buf: Buf<T>) -> Result<ViewMut<'_, T>> {
        let info = self.typed::<T>(buf.id)?;
        // SAFETY: in bounds as above; `&mut self` makes this the only live view.
        Ok(unsafe { ViewMut::from_raw(self.base() + info.offset, info.shape, self.loc()) })
    }

    /// Several mutable views of one dtype at once, refused with [`Error::Aliased`] if any two
    /// buffers share a byte (like `slice::get_disjoint_mut`).
    pub fn views_mut<T: Element, const N: usize>(&mut self, bufs: [Buf<T>; N]) -> Result<[ViewMut<'_, T>; N]> {
        let b = self.borrow();
        let views = bufs.iter().map(|&buf| b.write(buf)).collect::<Result<Vec<_>>>()?;
        views.try_into().map_err(|_| Error::Arena("views_mut: view count differs from N".into()))
    }

    /// Starts handing out views of mixed dtypes and mutability for one call of an op; each
    /// request is checked against the ones granted before (see [`Borrows`]).
    pub fn borrow(&mut self) -> Borrows<'_> {
        self.claims.get_mut().clear();
        Borrows { arena: self }
    }

    /// Copies `data` into `buf` (blocking: returns once the copy is done).
    pub fn upload<T: Element>(&mut self, buf: Buf<T>, data: &[T]) -> Result<()> {
        let info = self.typed::<T>(buf.id)?;
        let n = info.shape.numel();
        if data.len() != n {
            return Err(Error::Length { op: "Arena::upload", arg: "data", expected: format!("{n} (buffer {:?} of shape {:?})", info.name, info.shape), got: data.len() });
        }
        let dst = self.base() + info.offset;
        match &self.mem {
            Memory::Host { .. } => {
                // SAFETY: dst is in bounds for n Ts and `&mut self` excludes every view.
                unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), dst as *mut T, n) };
            }
            Memory::Cuda { gpu, .. } => {
                // On the arena's own stream, then wait: a copy on the legacy stream would not be
                // ordered before kernels on our (non-blocking) stream, and from pageable memory it
                // may return before the data has landed.
                gpu.context().bind_to_thread().map_err(|e| Error::driver("binding the context", e))?;
                // SAFETY: dst is in bounds for n Ts; `data` outlives the copy because we wait for
                // the stream before returning.
                unsafe { result::memcpy_htod_async(dst as u64, data, gpu.stream().cu_stream()) }
                    .map_err(|e| Error::driver(format!("upload to {}", info.name), e))?;
                gpu.synchronize()?;
            }
        }
        Ok(())
    }

    /// Copies `buf` to a new host vector, after waiting for the work queued on the stream.
    pub fn download<T: Element>(&self, buf: Buf<T>) -> Result<Vec<T>> {
        let info = self.typed::<T>(buf.id)?;
        let n = info.shape.numel();
        let src = self.base() + info.offset;
        let mut out = vec![T::zeroed(); n];
        match &self.mem {
            Memory::Host { .. } => {
                // SAFETY: src is in bounds for n initialised Ts; `&self` excludes writers.
                unsafe { std::ptr::copy_nonoverlapping(src as *const T, out.as_mut_ptr(), n) };
            }
            Memory::Cuda { gpu, .. } => {
                gpu.context().bind_to_thread().map_err(|e| Error::driver("binding the context", e))?;
                // SAFETY: src is in bounds for n Ts; queued after every kernel on the stream, and
                // `out` is only read after the stream is synchronised below.
                unsafe { result::memcpy_dtoh_async(&mut out, src as u64, gpu.stream().cu_stream()) }
                    .map_err(|e| Error::driver(format!("download of {}", info.name), e))?;
                gpu.synchronize()?;
            }
        }
        Ok(out)
    }

    /// Sets every byte of `buf` to `byte` (queued on the stream for a GPU arena). With `0xFF`
    /// every float element becomes a NaN: the tests poison outputs this way before a launch.
    pub fn fill_bytes<T: Element>(&mut self, buf: Buf<T>, byte: u8) -> Result<()> {
        let info = self.typed::<T>(buf.id)?;
        let range = info.range();
        self.fill_range(range, byte)
    }

    /// Zeroes every buffer of `role` (e.g. gradients before accumulation).
    pub fn zero_role(&mut self, role: Role) -> Result<()> {
        let ranges: Vec<_> = self.plan.buffers().iter().filter(|b| b.role == role).map(BufferInfo::range).collect();
        for r in ranges {
            self.fill_range(r, 0)?;
        }
        Ok(())
    }

    fn fill_range(&mut self, range: std::ops::Range<usize>, byte: u8) -> Result<()> {
        let dst = self.base() + range.start;
        match &self.mem {
            Memory::Host { .. } => {
                // SAFETY: the range is inside the allocation; `&mut self` excludes every view.
                unsafe { std::ptr::write_bytes(dst as *mut u8, byte, range.len()) };
            }
            Memory::Cuda { gpu, .. } => {
                gpu.context().bind_to_thread().map_err(|e| Error::driver("binding the context", e))?;
                // SAFETY: in bounds; queued on the same stream as every kernel using it.
                unsafe { result::memset_d8_async(dst as u64, byte, range.len(), gpu.stream().cu_stream()) }
                    .map_err(|e| Error::driver("cuMemsetD8Async", e))?;
            }
        }
        Ok(())
    }
}

/// Checked views of mixed dtypes from one arena, for one op call.
///
/// `read` grants a shared view unless the bytes overlap a granted mutable view; `write` grants a
/// mutable view unless the bytes overlap any granted view. The arena stays mutably borrowed while
/// any view lives, so no other path can reach the memory.
pub struct Borrows<'a> {
    arena: &'a Arena,
}

impl<'a> Borrows<'a> {
    fn claim(&self, id: BufId, mutable: bool) -> Result<&'a BufferInfo> {
        let arena: &'a Arena = self.arena;
        let info = self.plan_info(id)?;
        let (start, end) = (info.offset, info.offset + info.bytes);
        let mut claims = arena.claims.borrow_mut();
        if let Some(c) = claims.iter().find(|c| c.start < end && start < c.end && (mutable || c.mutable)) {
            let first = arena.plan.buffers()[c.index as usize].name.clone();
            return Err(Error::Aliased { first, second: info.name.clone() });
        }
        claims.push(Claim { start, end, mutable, index: id.index });
        Ok(info)
    }

    fn plan_info(&self, id: BufId) -> Result<&'a BufferInfo> {
        let arena: &'a Arena = self.arena;
        arena.plan.info(id)
    }

    /// A shared view of `buf`.
    pub fn read<T: Element>(&self, buf: Buf<T>) -> Result<View<'a, T>> {
        let arena: &'a Arena = self.arena;
        arena.typed::<T>(buf.id)?;
        let info = self.claim(buf.id, false)?;
        // SAFETY: in bounds (plan invariant); the claim list guarantees no granted mutable view
        // overlaps, and the arena is exclusively borrowed for 'a.
        Ok(unsafe { View::from_raw(arena.base() + info.offset, info.shape, arena.loc()) })
    }

    /// A mutable view of `buf`.
    pub fn write<T: Element>(&self, buf: Buf<T>) -> Result<ViewMut<'a, T>> {
        let arena: &'a Arena = self.arena;
        arena.typed::<T>(buf.id)?;
        let info = self.claim(buf.id, true)?;
        // SAFETY: in bounds; the claim list guarantees no granted view overlaps these bytes.
        Ok(unsafe { ViewMut::from_raw(arena.base() + info.offset, info.shape, arena.loc()) })
    }
}
