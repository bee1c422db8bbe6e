//! IOSurfaces: flat byte buffers shared with the ANE.

use objc2_core_foundation::{CFDictionary, CFNumber, CFRetained, CFString, CFType};
use objc2_io_surface::{
    kIOSurfaceAllocSize, kIOSurfaceBytesPerElement, kIOSurfaceBytesPerRow, kIOSurfaceHeight,
    kIOSurfacePixelFormat, kIOSurfaceWidth, IOSurfaceLockOptions, IOSurfaceRef,
};

/// An IOSurface of `len` bytes, created as a flat buffer (width = bytes, height 1, pixel
/// format 0), the form every working private-API client uses.
pub(crate) struct IoSurface {
    surface: CFRetained<IOSurfaceRef>,
    len: usize,
}

// SAFETY: IOSurfaces are kernel objects designed for sharing across threads and processes;
// we access the memory only between lock and unlock, from one thread at a time (the owning
// kernel's Mutex).
unsafe impl Send for IoSurface {}
// SAFETY: as above.
unsafe impl Sync for IoSurface {}

impl IoSurface {
    /// A zeroed surface of at least `len` bytes.
    pub(crate) fn new(len: usize) -> Result<Self, String> {
        let n = i64::try_from(len).map_err(|_| format!("surface of {len} bytes"))?;
        let size = CFNumber::new_i64(n);
        let one = CFNumber::new_i64(1);
        let zero = CFNumber::new_i64(0);
        // SAFETY: the kIOSurface* keys are constant CFStrings exported by IOSurface.framework.
        let keys: [&CFString; 6] = unsafe {
            [
                kIOSurfaceWidth,
                kIOSurfaceHeight,
                kIOSurfaceBytesPerElement,
                kIOSurfaceBytesPerRow,
                kIOSurfaceAllocSize,
                kIOSurfacePixelFormat,
            ]
        };
        let values: [&CFType; 6] = [&size, &one, &one, &size, &size, &zero];
        let props = CFDictionary::from_slices(&keys, &values);
        // SAFETY: a valid properties dictionary of CFString → CFNumber.
        let surface = unsafe { IOSurfaceRef::new(props.as_opaque()) }
            .ok_or_else(|| format!("IOSurfaceCreate({len} bytes) failed"))?;
        if surface.alloc_size() < len {
            return Err(format!(
                "IOSurface holds {} bytes, asked {len}",
                surface.alloc_size()
            ));
        }
        let s = IoSurface { surface, len };
        s.while_locked(false, |base| {
            // SAFETY: locked for writing; `len` bytes at the base belong to the new surface,
            // which nothing else references yet.
            unsafe { std::ptr::write_bytes(base, 0, len) }
        })?;
        Ok(s)
    }

    /// The surface as the framework takes it.
    pub(crate) fn raw(&self) -> &IOSurfaceRef {
        &self.surface
    }

    /// Runs `f` on the surface's base address while it is locked (read-only locks skip the
    /// write-back of CPU caches the hardware would otherwise wait for).
    fn while_locked<T>(&self, read_only: bool, f: impl FnOnce(*mut u8) -> T) -> Result<T, String> {
        let opts = if read_only {
            IOSurfaceLockOptions::ReadOnly
        } else {
            IOSurfaceLockOptions::empty()
        };
        // SAFETY: a live surface; a null seed pointer is allowed.
        let rc = unsafe { self.surface.lock(opts, std::ptr::null_mut()) };
        if rc != 0 {
            return Err(format!("IOSurfaceLock failed ({rc})"));
        }
        let out = f(self.surface.base_address().cast::<u8>().as_ptr());
        // SAFETY: unlocking what we locked, with the same options.
        unsafe { self.surface.unlock(opts, std::ptr::null_mut()) };
        Ok(out)
    }

    /// Copies `src` into the start of the surface.
    pub(crate) fn write(&self, src: &[u8]) -> Result<(), String> {
        if src.len() > self.len {
            return Err(format!(
                "{} bytes into a {}-byte surface",
                src.len(),
                self.len
            ));
        }
        self.while_locked(false, |base| {
            // SAFETY: locked for writing; the base address points at alloc_size() >= len
            // bytes owned by the surface, and no other reference to them exists (we hold
            // the lock and the caller holds the kernel's Mutex).
            let bytes = unsafe { std::slice::from_raw_parts_mut(base, src.len()) };
            bytes.copy_from_slice(src);
        })
    }

    /// Copies the start of the surface into `dst`.
    pub(crate) fn read(&self, dst: &mut [u8]) -> Result<(), String> {
        if dst.len() > self.len {
            return Err(format!(
                "{} bytes from a {}-byte surface",
                dst.len(),
                self.len
            ));
        }
        self.while_locked(true, |base| {
            // SAFETY: locked read-only, so only a shared view (apple-audit.md finding 24);
            // the bytes are the surface's own, as above.
            let bytes = unsafe { std::slice::from_raw_parts(base.cast_const(), dst.len()) };
            dst.copy_from_slice(bytes);
        })
    }
}

/// An IOSurface lent to the host as a surface's memory: locked for the CPU while the host
/// stages into it or reads from it, unlocked while the ANE evaluates with it. Evaluations are
/// counted, so two in flight on one input unlock it once and the last relocks it; whether it
/// is locked is kept apart from the count, so a failed lock or unlock never unbalances them.
pub(crate) struct LentIoSurface {
    surface: IoSurface,
    base: std::ptr::NonNull<u8>,
    state: std::sync::Mutex<LockState>,
    /// Alive while this surface is: requests kept for it (which hold the IOSurface) are
    /// dropped once it is gone (`alive`).
    token: std::sync::Arc<()>,
}

/// Evaluations in flight, and whether the CPU holds the lock.
struct LockState {
    evals: usize,
    locked: bool,
}

// SAFETY: the base pointer is the surface's own memory, which lives as long as `surface`;
// shared access is read-only (`bytes`), writes need `&mut self` (`bytes_mut`); the lock state
// is behind a Mutex.
unsafe impl Send for LentIoSurface {}
// SAFETY: as above.
unsafe impl Sync for LentIoSurface {}

impl LentIoSurface {
    /// A zeroed surface of `len` bytes, locked for the CPU.
    pub(crate) fn new(len: usize) -> Result<Self, String> {
        let surface = IoSurface::new(len)?;
        // SAFETY: a live surface; a null seed pointer is allowed; unlocked in `Drop` or around
        // each evaluation.
        let rc = unsafe {
            surface
                .surface
                .lock(IOSurfaceLockOptions::empty(), std::ptr::null_mut())
        };
        if rc != 0 {
            return Err(format!("IOSurfaceLock failed ({rc})"));
        }
        let base = surface.surface.base_address().cast::<u8>();
        Ok(LentIoSurface {
            surface,
            base,
            state: std::sync::Mutex::new(LockState {
                evals: 0,
                locked: true,
            }),
            token: std::sync::Arc::new(()),
        })
    }

    /// The surface, for a request.
    pub(crate) fn io_surface(&self) -> &IoSurface {
        &self.surface
    }

    /// A token that dies with this surface.
    pub(crate) fn alive(&self) -> std::sync::Weak<()> {
        std::sync::Arc::downgrade(&self.token)
    }

    /// Whether the surface can be taken in place: locked for the CPU, or in an evaluation
    /// now; not after a relock failed (it is then copied like host memory).
    pub(crate) fn usable(&self) -> bool {
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.locked || st.evals > 0
    }

    /// Every byte.
    pub(crate) fn bytes(&self) -> &[u8] {
        // SAFETY: `len` bytes at the base belong to the surface (alloc_size() >= len, checked
        // at creation); writes need `&mut self`, so none happens through us meanwhile.
        unsafe { std::slice::from_raw_parts(self.base.as_ptr().cast_const(), self.surface.len) }
    }

    /// Every byte, for writing.
    pub(crate) fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as above, and `&mut self` makes this the only reference to them.
        unsafe { std::slice::from_raw_parts_mut(self.base.as_ptr(), self.surface.len) }
    }

    /// Before an evaluation reads or writes it: unlocked for the hardware by the first of the
    /// evaluations in flight. Every `Ok` must be matched by one [`end_eval`](Self::end_eval).
    pub(crate) fn begin_eval(&self) -> Result<(), String> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if st.evals == 0 && st.locked {
            // SAFETY: we hold the lock (taken at creation or in `end_eval`), same options.
            let rc = unsafe {
                self.surface
                    .surface
                    .unlock(IOSurfaceLockOptions::empty(), std::ptr::null_mut())
            };
            if rc != 0 {
                return Err(format!("IOSurfaceUnlock before evaluation failed ({rc})"));
            }
            st.locked = false;
        }
        st.evals += 1;
        Ok(())
    }

    /// After the evaluation: locked for the CPU again by the last one in flight, so the host
    /// sees what the hardware wrote.
    pub(crate) fn end_eval(&self) -> Result<(), String> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.evals = st.evals.saturating_sub(1);
        if st.evals > 0 || st.locked {
            return Ok(());
        }
        // SAFETY: a live surface, not locked by us (checked above).
        let rc = unsafe {
            self.surface
                .surface
                .lock(IOSurfaceLockOptions::empty(), std::ptr::null_mut())
        };
        if rc != 0 {
            return Err(format!("IOSurfaceLock after evaluation failed ({rc})"));
        }
        st.locked = true;
        Ok(())
    }
}

impl Drop for LentIoSurface {
    fn drop(&mut self) {
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if st.locked {
            // SAFETY: locked by us; released right after.
            unsafe {
                self.surface
                    .surface
                    .unlock(IOSurfaceLockOptions::empty(), std::ptr::null_mut())
            };
        }
    }
}
