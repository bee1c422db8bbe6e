//! The public Core ML path: compile a `.mlpackage`, load it for CPU + Neural Engine, predict
//! with multi-arrays that point straight into our surfaces (inputs) and `outputBackings`
//! (outputs), so no copy is made when Core ML honours them.

use std::ffi::c_void;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;

use objc2::rc::{autoreleasepool, Retained};
use objc2::runtime::{AnyObject, ProtocolObject};
use objc2::AnyThread;
use objc2_core_ml::{
    MLComputeUnits, MLDictionaryFeatureProvider, MLFeatureProvider, MLFeatureValue, MLModel,
    MLModelConfiguration, MLMultiArray, MLMultiArrayDataType, MLPredictionOptions,
};
use objc2_foundation::{NSArray, NSDictionary, NSError, NSNumber, NSString, NSURL};

use crate::layout::{SurfaceDType, TensorLayout};
use crate::surface::Surface;
use crate::sys::objc::{describe_error, ns_result, objc_try};

/// Compiles a package with `+[MLModel compileModelAtURL:error:]`, and where that fails (it is
/// reported failing on macOS 26: maderix/ANE `d3d0030`) with the completion-handler form
/// (macOS 14.4+); returns the `.mlmodelc` folder Core ML wrote (in a temporary location the
/// caller moves into its cache).
pub(crate) fn compile_package(package: &Path) -> Result<PathBuf, String> {
    compile_sync(package)
        .or_else(|first| compile_async(package).map_err(|second| format!("{first}; then {second}")))
}

fn compile_sync(package: &Path) -> Result<PathBuf, String> {
    autoreleasepool(|_| {
        let url = NSURL::fileURLWithPath(&NSString::from_str(&package.to_string_lossy()));
        #[allow(
            deprecated,
            reason = "compileModelAtURL:error: is the synchronous form; its async successor needs macOS 14.4"
        )]
        // SAFETY: a file URL to a package folder; the call is synchronous.
        let compiled = objc_try("compileModelAtURL", || unsafe {
            MLModel::compileModelAtURL_error(&url)
        })?;
        let compiled = ns_result("compileModelAtURL", compiled)?;
        compiled
            .path()
            .map(|p| PathBuf::from(p.to_string()))
            .ok_or_else(|| "compileModelAtURL returned a URL without a path".to_string())
    })
}

/// How long the completion-handler compile may take before we give up on it.
const ASYNC_COMPILE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);

fn compile_async(package: &Path) -> Result<PathBuf, String> {
    let selector = objc2::sel!(compileModelAtURL:completionHandler:);
    if !<MLModel as objc2::ClassType>::class()
        .metaclass()
        .responds_to(selector)
    {
        return Err("compileModelAtURL:completionHandler: is not available (macOS < 14.4)".into());
    }
    let (tx, rx) = std::sync::mpsc::channel::<Result<PathBuf, String>>();
    // the compiled folder may be Core ML's to remove once the handler returns: it is renamed
    // to a name of ours beside it, inside the handler
    let handler = block2::RcBlock::new(move |url: *mut NSURL, error: *mut NSError| {
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            // SAFETY: Core ML passes a valid NSURL or nil, and a valid NSError or nil, alive
            // for the handler's duration.
            let (url, error) = unsafe { (url.as_ref(), error.as_ref()) };
            let Some(url) = url else {
                return Err(error.map_or_else(
                    || "compileModelAtURL:completionHandler: gave no URL".to_string(),
                    |e| format!("compileModelAtURL:completionHandler: {}", describe_error(e)),
                ));
            };
            let from = url
                .path()
                .map(|p| PathBuf::from(p.to_string()))
                .ok_or("the compiled model URL has no path")?;
            let mut name = from.file_name().unwrap_or_default().to_os_string();
            name.push(format!(".ggml-ane-{}", std::process::id()));
            let to = from.with_file_name(name);
            std::fs::rename(&from, &to)
                .map_err(|e| format!("keeping the compiled model {}: {e}", from.display()))?;
            Ok(to)
        }))
        .unwrap_or_else(|_| Err("a panic in the compile handler".to_string()));
        let _ = tx.send(result);
    });
    autoreleasepool(|_| {
        let url = NSURL::fileURLWithPath(&NSString::from_str(&package.to_string_lossy()));
        // SAFETY: the selector exists (checked above); a file URL and a heap block Core ML
        // retains until it has called it.
        objc_try("compileModelAtURL:completionHandler:", || unsafe {
            MLModel::compileModelAtURL_completionHandler(&url, &handler)
        })
    })?;
    rx.recv_timeout(ASYNC_COMPILE_TIMEOUT).map_err(|_| {
        "compileModelAtURL:completionHandler: did not answer in 10 minutes".to_string()
    })?
}

/// A compiled model loaded for CPU + Neural Engine.
pub(crate) struct LoadedModel {
    model: Retained<MLModel>,
}

// SAFETY: MLModel is documented as thread-safe for predictions; we still serialise them
// behind the owning kernel's Mutex.
unsafe impl Send for LoadedModel {}
// SAFETY: as above.
unsafe impl Sync for LoadedModel {}

fn multi_array_type(d: SurfaceDType) -> MLMultiArrayDataType {
    match d {
        SurfaceDType::F16 => MLMultiArrayDataType::Float16,
        SurfaceDType::F32 => MLMultiArrayDataType::Float32,
    }
}

fn numbers(v: &[usize]) -> Retained<NSArray<NSNumber>> {
    let n: Vec<Retained<NSNumber>> = v.iter().map(|&x| NSNumber::new_usize(x)).collect();
    NSArray::from_retained_slice(&n)
}

/// An MLMultiArray over `ptr`, which must stay valid for the array's lifetime.
///
/// # Safety
/// `ptr` points at `layout.byte_len()` bytes that outlive the returned array.
unsafe fn wrap(ptr: *mut u8, layout: &TensorLayout) -> Result<Retained<MLMultiArray>, String> {
    let (shape, strides) = (&layout.shape, layout.element_strides());
    let ptr = NonNull::new(ptr.cast::<c_void>()).ok_or("null surface")?;
    // SAFETY: the caller guarantees the memory; no deallocator, so Core ML never frees it.
    ns_result("MLMultiArray initWithDataPointer", unsafe {
        MLMultiArray::initWithDataPointer_shape_dataType_strides_deallocator_error(
            MLMultiArray::alloc(),
            ptr,
            &numbers(shape),
            multi_array_type(layout.dtype),
            &numbers(&strides),
            None,
        )
    })
}

impl LoadedModel {
    /// Loads `mlmodelc` with `MLComputeUnits.cpuAndNeuralEngine`.
    pub(crate) fn load(mlmodelc: &Path) -> Result<Self, String> {
        autoreleasepool(|_| {
            let url = NSURL::fileURLWithPath(&NSString::from_str(&mlmodelc.to_string_lossy()));
            // SAFETY: plain object creation and a property setter.
            let config = unsafe { MLModelConfiguration::new() };
            // SAFETY: as above.
            unsafe { config.setComputeUnits(MLComputeUnits::CPUAndNeuralEngine) };
            // SAFETY: a file URL to a compiled model folder and a valid configuration.
            let model = objc_try("MLModel load", || unsafe {
                MLModel::modelWithContentsOfURL_configuration_error(&url, &config)
            })?;
            let model = ns_result("MLModel load", model)?;
            Ok(LoadedModel { model })
        })
    }

    /// One prediction: inputs read from, outputs written into, our surfaces.
    pub(crate) fn predict(
        &self,
        inputs: &[&Surface],
        outputs: &mut [&mut Surface],
    ) -> Result<(), String> {
        autoreleasepool(|_| {
            let mut in_names = Vec::new();
            let mut in_values = Vec::new();
            for s in inputs {
                // SAFETY: Core ML only reads input arrays; the surface outlives this pool, in
                // which every array over it is created and released.
                let arr = unsafe { wrap(s.as_bytes().as_ptr().cast_mut(), s.layout())? };
                in_names.push(NSString::from_str(&s.layout().name));
                // SAFETY: a valid multi-array.
                in_values.push(unsafe { MLFeatureValue::featureValueWithMultiArray(&arr) });
            }
            let keys: Vec<&NSString> = in_names.iter().map(|n| &**n).collect();
            let vals: Vec<&AnyObject> = in_values.iter().map(|v| v.as_ref()).collect();
            let dict: Retained<NSDictionary<NSString, AnyObject>> =
                NSDictionary::from_slices(&keys, &vals);
            // SAFETY: a dictionary of feature values keyed by input name.
            let provider = ns_result("MLDictionaryFeatureProvider", unsafe {
                MLDictionaryFeatureProvider::initWithDictionary_error(
                    MLDictionaryFeatureProvider::alloc(),
                    &dict,
                )
            })?;

            let mut out_names = Vec::new();
            let mut backings = Vec::new();
            let mut pointers = Vec::new();
            for s in outputs.iter_mut() {
                let layout = s.layout().clone();
                let ptr = s.as_bytes_mut().as_mut_ptr();
                // SAFETY: the output surface is exclusively borrowed for this call and outlives
                // the pool; Core ML writes at most layout.byte_len() bytes through the strides.
                backings.push(unsafe { wrap(ptr, &layout)? });
                out_names.push(NSString::from_str(&layout.name));
                pointers.push(ptr);
            }
            // SAFETY: plain object creation.
            let options = unsafe { MLPredictionOptions::new() };
            let keys: Vec<&NSString> = out_names.iter().map(|n| &**n).collect();
            let vals: Vec<&AnyObject> = backings.iter().map(|v| v.as_ref()).collect();
            // SAFETY: name → MLMultiArray, as outputBackings documents.
            unsafe { options.setOutputBackings(&NSDictionary::from_slices(&keys, &vals)) };

            let input = ProtocolObject::<dyn MLFeatureProvider>::from_ref(&*provider);
            // SAFETY: a loaded model and valid provider/options.
            let result = objc_try("prediction", || unsafe {
                self.model
                    .predictionFromFeatures_options_error(input, &options)
            })?;
            let result = ns_result("prediction", result)?;
            // Where Core ML did not write into the backing, copy its array in (strides honoured).
            for (i, s) in outputs.iter_mut().enumerate() {
                // SAFETY: a valid feature provider and name.
                let value = unsafe { result.featureValueForName(&out_names[i]) }
                    .ok_or_else(|| format!("no output `{}`", s.layout().name))?;
                // SAFETY: a feature value; nil unless it holds a multi-array.
                let arr = unsafe { value.multiArrayValue() }
                    .ok_or_else(|| format!("output `{}` is not a multi-array", s.layout().name))?;
                // SAFETY: a property getter on a live array.
                let shape: Vec<usize> = unsafe { arr.shape() }
                    .iter()
                    .map(|n| n.as_usize())
                    .collect();
                if shape != s.layout().shape {
                    return Err(format!(
                        "output `{}` came back with shape {shape:?}, not {:?}",
                        s.layout().name,
                        s.layout().shape
                    ));
                }
                // Core ML hands out the bytes inside a handler (locking a pixel buffer that
                // backs an ANE output); where they are not our backing, copy them in. A
                // panic must not unwind into Core ML's frames, so it becomes an error.
                let backing = pointers[i].cast_const();
                let target = std::cell::RefCell::new((&mut **s, Ok(())));
                let handler = block2::StackBlock::new(|bytes: NonNull<c_void>, size: isize| {
                    let mut t = target.borrow_mut();
                    let (dst, result) = &mut *t;
                    let p = bytes.as_ptr().cast::<u8>().cast_const();
                    if p == backing {
                        return;
                    }
                    let len = usize::try_from(size).unwrap_or(0);
                    *result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        // SAFETY: Core ML gives `len` readable bytes at `p` for the handler's
                        // duration; the array is alive for this scope.
                        unsafe { copy_out(&arr, p, len, dst) }
                    }))
                    .unwrap_or_else(|_| Err("a panic while copying an output".to_string()));
                });
                // SAFETY: a live array; the handler runs synchronously, before this returns,
                // and only borrows locals of this scope.
                unsafe { arr.getBytesWithHandler(&handler) };
                let (_, result) = target.into_inner();
                result?;
            }
            Ok(())
        })
    }
}

/// Copies a Core ML output array (its own strides) into our surface row by row; an array
/// whose strides reach past its `len` bytes is an error, not a read out of bounds.
///
/// # Safety
/// `p` points at `len` readable bytes of `arr`'s data and `arr` is alive.
unsafe fn copy_out(
    arr: &MLMultiArray,
    p: *const u8,
    len: usize,
    dst: &mut Surface,
) -> Result<(), String> {
    let layout = dst.layout().clone();
    let e = layout.dtype.size();
    // SAFETY: property getters on a live array.
    let (ty, strides) = unsafe { (arr.dataType(), arr.strides()) };
    if ty != multi_array_type(layout.dtype) {
        return Err(format!(
            "output `{}` came back as another type",
            layout.name
        ));
    }
    let strides: Vec<usize> = strides.iter().map(|n| n.as_usize()).collect();
    let r = layout.shape.len();
    if strides.len() != r {
        return Err(format!(
            "output `{}` came back with rank {}",
            layout.name,
            strides.len()
        ));
    }
    let mut full = [0usize; 4];
    full[4 - r..].copy_from_slice(&strides);
    let [b, c, h, w] = layout.dims;
    // the last element's offset, checked against the bytes Core ML handed over
    let last = [b, c, h, w]
        .iter()
        .zip(full)
        .try_fold(0usize, |acc, (&d, st)| {
            d.checked_sub(1)
                .and_then(|i| i.checked_mul(st))
                .and_then(|x| acc.checked_add(x))
        })
        .and_then(|x| x.checked_add(1))
        .and_then(|x| x.checked_mul(e));
    if last.is_none_or(|end| end > len) {
        return Err(format!(
            "output `{}` came back with strides {strides:?} past its {len} bytes",
            layout.name
        ));
    }
    let bytes = dst.as_bytes_mut();
    for row in 0..layout.rows() {
        let (b, ci, hi) = (row / (c * h), (row / h) % c, row % h);
        let src_off = (b * full[0] + ci * full[1] + hi * full[2]) * e;
        let dst_off = layout.row_offset(b, ci, hi);
        if full[3] == 1 {
            // SAFETY: the array holds every element of its shape at these strides.
            let src = unsafe { std::slice::from_raw_parts(p.add(src_off), w * e) };
            bytes[dst_off..dst_off + w * e].copy_from_slice(src);
        } else {
            for x in 0..w {
                // SAFETY: as above, element x of the row.
                let src =
                    unsafe { std::slice::from_raw_parts(p.add(src_off + x * full[3] * e), e) };
                bytes[dst_off + x * e..dst_off + (x + 1) * e].copy_from_slice(src);
            }
        }
    }
    Ok(())
}
