//! What the host's ggml is, read at run time before anything is handed to it: the public
//! functions its ggml-base exports (which fix the layouts that differ between versions:
//! `hosts::layout_from_exports`), and tensors it builds read back through our mirror.

use std::ffi::{c_char, c_void, CStr, CString};

use super::tensor::op_name_of;
use super::{
    ggml_add, ggml_free, ggml_init, ggml_init_params, ggml_new_tensor_4d, ggml_set_name,
    ggml_set_output, ggml_tensor, ggml_type, ggml_view_2d, GGML_MAX_SRC, GGML_TENSOR_FLAG_OUTPUT,
};
use crate::hosts::HostExports;

/// Whether the ggml-base this library is bound to exports `name`: looked up in that library
/// ([`bound_ggml_base`], opened with `RTLD_NOLOAD`), else in the global scope.
fn exported(name: &CStr) -> bool {
    if let Some(path) = bound_ggml_base().and_then(|p| CString::new(p).ok()) {
        // SAFETY: RTLD_NOLOAD returns a handle only to a library already loaded (nothing is
        // loaded); the reference taken is given back below.
        let handle = unsafe { libc::dlopen(path.as_ptr(), libc::RTLD_LAZY | libc::RTLD_NOLOAD) };
        if !handle.is_null() {
            // SAFETY: a live handle and a NUL-terminated name.
            let sym = unsafe { libc::dlsym(handle, name.as_ptr()) };
            // SAFETY: the handle dlopen just returned.
            unsafe { libc::dlclose(handle) };
            return !sym.is_null();
        }
    }
    // SAFETY: dlsym with RTLD_DEFAULT and a NUL-terminated name has no preconditions.
    !unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) }.is_null()
}

/// The exports that mark layout changes.
pub(crate) fn host_exports() -> HostExports {
    HostExports {
        tensor_set_2d_async: exported(c"ggml_backend_tensor_set_2d_async"),
        build_forward_select: exported(c"ggml_build_forward_select"),
    }
}

/// `Err` naming the first field that reads otherwise than ggml wrote it.
fn expect<T: PartialEq + std::fmt::Debug>(field: &str, got: T, want: T) -> Result<(), String> {
    if got == want {
        Ok(())
    } else {
        Err(format!("{field} reads {got:?} where ggml made {want:?}"))
    }
}

/// Tensors built with the host's own functions — a 4-D tensor, a named 2-D view of it, an ADD
/// of the view, flagged OUTPUT — read back through our `ggml_tensor`: shapes, strides, type,
/// op (by ggml's name), flags, name, sources, view source and data. Every version we know
/// passes; a host whose tensor is laid out otherwise fails here, before any graph is read.
pub(crate) fn tensors_read_back() -> Result<(), String> {
    let params = ggml_init_params {
        mem_size: 64 * 1024,
        mem_buffer: std::ptr::null_mut(),
        no_alloc: false,
    };
    // SAFETY: ggml_init with a size and no buffer allocates its own memory (or returns NULL).
    let ctx = unsafe { ggml_init(params) };
    if ctx.is_null() {
        return Err("ggml_init returned NULL".into());
    }
    // SAFETY: a live context, freed right after.
    let checked = unsafe { check_in(ctx) };
    // SAFETY: the context made above; nothing of it outlives this call.
    unsafe { ggml_free(ctx) };
    checked
}

/// The checks of [`tensors_read_back`] in `ctx`.
///
/// # Safety
/// `ctx` is a live ggml context with room for three small tensors.
unsafe fn check_in(ctx: *mut c_void) -> Result<(), String> {
    // SAFETY: a live context; ggml returns a live tensor or NULL.
    let base = unsafe { ggml_new_tensor_4d(ctx, ggml_type::F32, 5, 4, 3, 2) };
    // SAFETY: NULL or a live tensor of `ctx`.
    let t = unsafe { base.as_ref() }.ok_or("ggml_new_tensor_4d returned NULL")?;
    expect("ggml_tensor.type", t.type_, ggml_type::F32)?;
    expect("ggml_tensor.ne", t.ne, [5, 4, 3, 2])?;
    expect("ggml_tensor.nb", t.nb, [4, 20, 80, 240])?;
    expect("ggml_tensor.op", op_name_of(t), "NONE".to_string())?;
    expect("ggml_tensor.flags", t.flags, 0)?;
    expect(
        "ggml_tensor.src",
        t.src[..GGML_MAX_SRC].iter().all(|s| s.is_null()),
        true,
    )?;
    expect("ggml_tensor.data", t.data.is_null(), false)?;

    let name = c"ane-abi-check";
    // SAFETY: a live tensor and a NUL-terminated name shorter than GGML_MAX_NAME.
    unsafe { ggml_set_name(base, name.as_ptr()) };
    // SAFETY: as above (ggml wrote into the same tensor).
    let t = unsafe { &*base };
    // SAFETY: the name field is NUL-terminated by ggml_set_name.
    let read = unsafe { CStr::from_ptr(t.name.as_ptr().cast::<c_char>()) };
    expect("ggml_tensor.name", read, name)?;

    // rows 1..4 of the first matrix
    // SAFETY: a live context and tensor; the view lies within the tensor.
    let view = unsafe { ggml_view_2d(ctx, base, 5, 3, 20, 20) };
    // SAFETY: NULL or a live tensor of `ctx`.
    let v = unsafe { view.as_ref() }.ok_or("ggml_view_2d returned NULL")?;
    expect("ggml_tensor.view_src", v.view_src, base)?;
    expect("ggml_tensor.src[0] of a view", v.src[0], base)?;
    expect("ggml_tensor.ne of a view", v.ne, [5, 3, 1, 1])?;
    expect("ggml_tensor.nb[1] of a view", v.nb[1], 20)?;
    expect(
        "ggml_tensor.data of a view",
        v.data as usize,
        t.data as usize + 20,
    )?;
    expect(
        "ggml_tensor.op of a view",
        op_name_of(v),
        "VIEW".to_string(),
    )?;

    // SAFETY: a live context and two live tensors of one shape.
    let sum = unsafe { ggml_add(ctx, view, view) };
    // SAFETY: a live tensor or NULL (checked next).
    unsafe { sum.as_ref() }.ok_or("ggml_add returned NULL")?;
    // SAFETY: a live tensor.
    unsafe { ggml_set_output(sum) };
    // SAFETY: as above.
    let a: &ggml_tensor = unsafe { &*sum };
    expect("ggml_tensor.op of an ADD", op_name_of(a), "ADD".to_string())?;
    expect(
        "ggml_tensor.src of an ADD",
        [a.src[0], a.src[1]],
        [view, view],
    )?;
    expect("ggml_tensor.ne of an ADD", a.ne, [5, 3, 1, 1])?;
    expect(
        "ggml_tensor.flags of an output",
        a.flags & GGML_TENSOR_FLAG_OUTPUT,
        GGML_TENSOR_FLAG_OUTPUT,
    )?;
    Ok(())
}

/// The path of the ggml-base this library is bound to (`dladdr` of one of its functions): where
/// its exports are looked up, its CPU backend searched next to, and what the features name.
pub(crate) fn bound_ggml_base() -> Option<String> {
    // SAFETY: a zeroed Dl_info is a valid out-parameter (pointers NULL).
    let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
    // SAFETY: dladdr reads the address of a function of ggml-base and fills `info`.
    let found = unsafe { libc::dladdr(ggml_init as *const c_void, &mut info) };
    if found == 0 || info.dli_fname.is_null() {
        return None;
    }
    // SAFETY: dli_fname is a NUL-terminated path owned by the dynamic loader.
    Some(
        unsafe { CStr::from_ptr(info.dli_fname) }
            .to_string_lossy()
            .into_owned(),
    )
}

/// Whether a loaded image's path is a ggml-base (`libggml-base.so.0`, `libggml-base.0.dylib`).
fn is_ggml_base(path: &str) -> bool {
    path.rsplit('/')
        .next()
        .is_some_and(|f| f.starts_with("libggml-base."))
}

/// Every libggml-base image loaded in this process: one where all is well; two means the
/// library (or the host) brought a second ggml — two registries, two loggers, a CPU backend
/// one of them cannot find.
#[cfg(target_os = "macos")]
pub(crate) fn loaded_ggml_bases() -> Vec<String> {
    // dyld's image list (libSystem; the libc crate's declarations are deprecated in favour of
    // another crate for these two functions alone)
    unsafe extern "C" {
        fn _dyld_image_count() -> u32;
        fn _dyld_get_image_name(image_index: u32) -> *const c_char;
    }
    // SAFETY: dyld's image list may be read from any thread.
    let count = unsafe { _dyld_image_count() };
    (0..count)
        .filter_map(|i| {
            // SAFETY: as above; an index past a shrunk count yields NULL, skipped below.
            let p = unsafe { _dyld_get_image_name(i) };
            // SAFETY: a non-NULL name is dyld's NUL-terminated path.
            (!p.is_null()).then(|| unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
        })
        .filter(|p| is_ggml_base(p))
        .collect()
}

/// Every libggml-base image loaded in this process (see the macOS version).
#[cfg(not(target_os = "macos"))]
pub(crate) fn loaded_ggml_bases() -> Vec<String> {
    unsafe extern "C" fn each(
        info: *mut libc::dl_phdr_info,
        _size: usize,
        data: *mut c_void,
    ) -> libc::c_int {
        // SAFETY: the loader passes a live info record and our Vec back as `data`.
        let (info, found) = unsafe { (&*info, &mut *data.cast::<Vec<String>>()) };
        if !info.dlpi_name.is_null() {
            // SAFETY: the loader's NUL-terminated path of this image.
            let name = unsafe { CStr::from_ptr(info.dlpi_name) }.to_string_lossy();
            if is_ggml_base(&name) {
                found.push(name.into_owned());
            }
        }
        0
    }
    let mut found: Vec<String> = Vec::new();
    // SAFETY: the callback only reads the records and pushes to the Vec passed as `data`,
    // which outlives the call.
    unsafe { libc::dl_iterate_phdr(Some(each), (&mut found as *mut Vec<String>).cast()) };
    found
}
