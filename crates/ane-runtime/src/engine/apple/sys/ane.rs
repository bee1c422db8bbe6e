//! The private `_ANE*` classes of AppleNeuralEngine.framework, declared with typed objc2
//! wrappers. Selector names and argument types follow the call sequence every working
//! project uses (docs/ane-notes.md#call-sequence); they are reverse-engineered, so each one is
//! checked, with its argument and return encodings, when the framework is opened: a missing
//! or retyped one is an error there, never an Objective-C exception or undefined behaviour
//! later. (Objective-C exceptions raised inside the framework are not caught yet: objc2's
//! `exception` feature compiles a C helper the Linux type-check cannot build; see
//! docs/hardware-validation.md.)

use std::ffi::CStr;
use std::sync::OnceLock;

use objc2::encode::{EncodeArguments, EncodeReturn};
use objc2::rc::{autoreleasepool, Retained};
use objc2::runtime::{AnyClass, AnyObject, Bool, NSObject, Sel};
use objc2::{extern_class, extern_methods, msg_send, sel};
use objc2_foundation::{NSArray, NSData, NSDictionary, NSNumber, NSString};

use super::attrs::dict_to_attr;
use super::iosurface::IoSurface;
use super::AttrValue;
use crate::sys::objc::{ns_result, objc_try};

const FRAMEWORK: &CStr =
    c"/System/Library/PrivateFrameworks/AppleNeuralEngine.framework/AppleNeuralEngine";

/// QoS for compile, load and evaluate: "Default" (21), what every working project passes.
pub(crate) const QOS: u32 = 21;

extern_class!(
    /// `_ANEInMemoryModelDescriptor`: MIL text + weights, before compilation.
    #[unsafe(super(NSObject))]
    #[name = "_ANEInMemoryModelDescriptor"]
    #[derive(Debug, PartialEq, Eq, Hash)]
    pub(crate) struct AneDescriptor;
);

impl AneDescriptor {
    extern_methods!(
        /// `+modelWithMILText:weights:optionsPlist:`; the text is UTF-8 NSData (not NSString).
        #[unsafe(method(modelWithMILText:weights:optionsPlist:))]
        #[unsafe(method_family = none)]
        unsafe fn with_mil(
            text: &NSData,
            weights: &NSDictionary<NSString, AnyObject>,
            options: Option<&NSData>,
        ) -> Option<Retained<Self>>;
    );
}

extern_class!(
    /// `_ANEInMemoryModel`: compiles, loads, evaluates.
    #[unsafe(super(NSObject))]
    #[name = "_ANEInMemoryModel"]
    #[derive(Debug, PartialEq, Eq, Hash)]
    pub(crate) struct AneModel;
);

impl AneModel {
    extern_methods!(
        #[unsafe(method(inMemoryModelWithDescriptor:))]
        #[unsafe(method_family = none)]
        unsafe fn with_descriptor(d: &AneDescriptor) -> Option<Retained<Self>>;

        #[unsafe(method(hexStringIdentifier))]
        #[unsafe(method_family = none)]
        unsafe fn hex_string_identifier(&self) -> Option<Retained<NSString>>;

        #[unsafe(method(compiledModelExists))]
        #[unsafe(method_family = none)]
        unsafe fn compiled_model_exists(&self) -> bool;

        #[unsafe(method(compileWithQoS:options:error:_))]
        #[unsafe(method_family = none)]
        unsafe fn compile_with_qos(
            &self,
            qos: u32,
            options: &NSDictionary<NSString, AnyObject>,
        ) -> Result<(), Retained<objc2_foundation::NSError>>;

        #[unsafe(method(loadWithQoS:options:error:_))]
        #[unsafe(method_family = none)]
        unsafe fn load_with_qos(
            &self,
            qos: u32,
            options: &NSDictionary<NSString, AnyObject>,
        ) -> Result<(), Retained<objc2_foundation::NSError>>;

        #[unsafe(method(evaluateWithQoS:options:request:error:_))]
        #[unsafe(method_family = none)]
        unsafe fn evaluate_with_qos(
            &self,
            qos: u32,
            options: &NSDictionary<NSString, AnyObject>,
            request: &AneRequest,
        ) -> Result<(), Retained<objc2_foundation::NSError>>;

        #[unsafe(method(unloadWithQoS:error:_))]
        #[unsafe(method_family = none)]
        unsafe fn unload_with_qos(
            &self,
            qos: u32,
        ) -> Result<(), Retained<objc2_foundation::NSError>>;

        /// The underlying `_ANEModel`.
        #[unsafe(method(model))]
        #[unsafe(method_family = none)]
        unsafe fn model(&self) -> Option<Retained<AnyObject>>;
    );
}

extern_class!(
    /// `_ANEIOSurfaceObject`: an IOSurface as the request takes it.
    #[unsafe(super(NSObject))]
    #[name = "_ANEIOSurfaceObject"]
    #[derive(Debug, PartialEq, Eq, Hash)]
    pub(crate) struct AneSurfaceObject;
);

impl AneSurfaceObject {
    extern_methods!(
        #[unsafe(method(objectWithIOSurface:))]
        #[unsafe(method_family = none)]
        unsafe fn with_surface(surface: &objc2_io_surface::IOSurfaceRef) -> Option<Retained<Self>>;
    );
}

extern_class!(
    /// `_ANERequest`: which surfaces a procedure reads and writes.
    #[unsafe(super(NSObject))]
    #[name = "_ANERequest"]
    #[derive(Debug, PartialEq, Eq, Hash)]
    pub(crate) struct AneRequest;
);

impl AneRequest {
    extern_methods!(
        #[unsafe(method(requestWithInputs:inputIndices:outputs:outputIndices:weightsBuffer:perfStats:procedureIndex:))]
        #[unsafe(method_family = none)]
        unsafe fn with_surfaces(
            inputs: &NSArray<AneSurfaceObject>,
            input_indices: &NSArray<NSNumber>,
            outputs: &NSArray<AneSurfaceObject>,
            output_indices: &NSArray<NSNumber>,
            weights_buffer: Option<&AnyObject>,
            perf_stats: Option<&AnyObject>,
            procedure_index: &NSNumber,
        ) -> Option<Retained<Self>>;
    );
}

/// Proof that the framework is open and every class and selector we call exists with the
/// argument and return types we send.
#[derive(Debug)]
pub(crate) struct Framework {
    /// `-compiledModelExists` is an optimisation: without it every program is compiled.
    has_compiled_model_exists: bool,
}

/// Opens the framework once per process and checks every class and selector.
pub(crate) fn framework() -> Result<&'static Framework, String> {
    static OPENED: OnceLock<Result<Framework, String>> = OnceLock::new();
    OPENED.get_or_init(open).as_ref().map_err(Clone::clone)
}

/// An object argument or result: every `id` encodes as `@`, whatever its class.
type Id = *mut AnyObject;
/// An `NSError **` out-parameter.
type ErrorOut = *mut *mut AnyObject;

/// Checks that `cls` (its metaclass when `class_method`) implements `sel` with exactly the
/// argument and return encodings `A` and `R`: what objc2 checks on every send in debug
/// builds, done once here so a changed private signature is an error in every build
/// instead of a debug panic or release undefined behaviour (apple-audit.md finding 11).
fn verify<A: EncodeArguments, R: EncodeReturn>(
    cls: &AnyClass,
    sel: Sel,
    class_method: bool,
) -> Result<(), String> {
    let target = if class_method { cls.metaclass() } else { cls };
    target.verify_sel::<A, R>(sel).map_err(|e| {
        let kind = if class_method { '+' } else { '-' };
        format!("{kind}[{} {sel}]: {e}", cls.name().to_string_lossy())
    })
}

fn open() -> Result<Framework, String> {
    // SAFETY: dlopen with a constant NUL-terminated path; the handle is kept for the life of
    // the process (never dlclose'd), so the classes it registers stay valid.
    let handle = unsafe { libc::dlopen(FRAMEWORK.as_ptr(), libc::RTLD_NOW) };
    if handle.is_null() {
        return Err(format!(
            "cannot open {} (not Apple silicon, or a macOS without it)",
            FRAMEWORK.to_string_lossy()
        ));
    }
    let class = |name: &CStr| {
        AnyClass::get(name).ok_or_else(|| format!("class {} missing", name.to_string_lossy()))
    };
    let desc = class(c"_ANEInMemoryModelDescriptor")?;
    verify::<(Id, Id, Id), Id>(desc, sel!(modelWithMILText:weights:optionsPlist:), true)?;
    let model = class(c"_ANEInMemoryModel")?;
    verify::<(Id,), Id>(model, sel!(inMemoryModelWithDescriptor:), true)?;
    verify::<(), Id>(model, sel!(hexStringIdentifier), false)?;
    verify::<(u32, Id, ErrorOut), Bool>(model, sel!(compileWithQoS:options:error:), false)?;
    verify::<(u32, Id, ErrorOut), Bool>(model, sel!(loadWithQoS:options:error:), false)?;
    verify::<(u32, Id, Id, ErrorOut), Bool>(
        model,
        sel!(evaluateWithQoS:options:request:error:),
        false,
    )?;
    verify::<(u32, ErrorOut), Bool>(model, sel!(unloadWithQoS:error:), false)?;
    verify::<(), Id>(model, sel!(model), false)?;
    // optional, as prefill-bench treats it (apple-audit.md finding 15)
    let has_compiled_model_exists =
        verify::<(), Bool>(model, sel!(compiledModelExists), false).is_ok();
    verify::<(&objc2_io_surface::IOSurfaceRef,), Id>(
        class(c"_ANEIOSurfaceObject")?,
        sel!(objectWithIOSurface:),
        true,
    )?;
    verify::<(Id, Id, Id, Id, Id, Id, Id), Id>(
        class(c"_ANERequest")?,
        sel!(requestWithInputs:inputIndices:outputs:outputIndices:weightsBuffer:perfStats:procedureIndex:),
        true,
    )?;
    Ok(Framework {
        has_compiled_model_exists,
    })
}

/// What `_ANEDeviceInfo` says about this machine, read once when the engine opens.
#[derive(Clone, Debug, Default)]
pub(crate) struct DeviceInfo {
    /// `+hasANE`, when the class answers it with the expected type.
    pub(crate) has_ane: Option<bool>,
    /// Every fact that could be read, as text, for `ane info` and the doctor.
    pub(crate) facts: Vec<(String, String)>,
}

/// Calls the `_ANEDeviceInfo` class methods directly with their known types (tmc's generated
/// bindings: `hasANE` BOOL, `numANECores`/`numANEs` uint32, `aneBoardType` int64,
/// `aneArchitectureType`/`aneSubType` id). Each is verified first; one that is missing or
/// typed otherwise is skipped, never called.
pub(crate) fn device_info(_fw: &Framework) -> DeviceInfo {
    let Some(cls) = AnyClass::get(c"_ANEDeviceInfo") else {
        return DeviceInfo {
            has_ane: None,
            facts: vec![("device".into(), "_ANEDeviceInfo missing".into())],
        };
    };
    let mut info = DeviceInfo::default();
    autoreleasepool(|_| {
        if verify::<(), Bool>(cls, sel!(hasANE), true).is_ok() {
            // SAFETY: class method verified above to take no arguments and return BOOL.
            let v: Bool = unsafe { msg_send![cls, hasANE] };
            info.has_ane = Some(v.as_bool());
            info.facts.push(("hasANE".into(), v.as_bool().to_string()));
        }
        if verify::<(), u32>(cls, sel!(numANECores), true).is_ok() {
            // SAFETY: verified above: no arguments, returns uint32.
            let v: u32 = unsafe { msg_send![cls, numANECores] };
            info.facts.push(("numANECores".into(), v.to_string()));
        }
        if verify::<(), u32>(cls, sel!(numANEs), true).is_ok() {
            // SAFETY: verified above: no arguments, returns uint32.
            let v: u32 = unsafe { msg_send![cls, numANEs] };
            info.facts.push(("numANEs".into(), v.to_string()));
        }
        if verify::<(), i64>(cls, sel!(aneBoardType), true).is_ok() {
            // SAFETY: verified above: no arguments, returns int64.
            let v: i64 = unsafe { msg_send![cls, aneBoardType] };
            info.facts.push(("aneBoardType".into(), v.to_string()));
        }
        if verify::<(), Id>(cls, sel!(aneArchitectureType), true).is_ok() {
            // SAFETY: verified above: no arguments, returns an object or nil.
            let v: Option<Retained<AnyObject>> = unsafe { msg_send![cls, aneArchitectureType] };
            let text = v.map_or_else(|| "nil".to_string(), |v| describe(&v));
            info.facts.push(("aneArchitectureType".into(), text));
        }
        if verify::<(), Id>(cls, sel!(aneSubType), true).is_ok() {
            // SAFETY: verified above: no arguments, returns an object or nil.
            let v: Option<Retained<AnyObject>> = unsafe { msg_send![cls, aneSubType] };
            let text = v.map_or_else(|| "nil".to_string(), |v| describe(&v));
            info.facts.push(("aneSubType".into(), text));
        }
    });
    info
}

fn describe(obj: &AnyObject) -> String {
    // SAFETY: every NSObject responds to `description`, which returns an NSString.
    let d: Option<Retained<NSString>> = unsafe { msg_send![obj, description] };
    d.map_or_else(|| "?".into(), |d| d.to_string())
}

/// A program handed to the framework: descriptor built, not yet compiled.
pub(crate) struct InMemoryModel {
    model: Retained<AneModel>,
    /// Whether `-compiledModelExists` may be asked (see [`Framework`]).
    can_ask_compiled: bool,
}

// SAFETY: the framework's model objects are used from ggml's worker threads in every known
// client; our engine serialises every call on one model behind a Mutex (see
// engine::apple::AppleKernel), so no two threads use the object at once.
unsafe impl Send for InMemoryModel {}
// SAFETY: as above; shared references only reach the object through that Mutex.
unsafe impl Sync for InMemoryModel {}

fn empty_dict() -> Retained<NSDictionary<NSString, AnyObject>> {
    NSDictionary::from_slices::<NSString>(&[], &[])
}

impl InMemoryModel {
    /// Builds the descriptor and model. `weights`: (path as written in the MIL BLOBFILE,
    /// file bytes); an empty list becomes an empty dictionary, never nil.
    pub(crate) fn new(
        fw: &Framework,
        mil_text: &str,
        weights: &[(&str, &[u8])],
    ) -> Result<Self, String> {
        autoreleasepool(|_| {
            let text = NSData::with_bytes(mil_text.as_bytes());
            let offset_key = NSString::from_str("offset");
            let data_key = NSString::from_str("data");
            let zero = NSNumber::new_u64(0);
            let mut paths = Vec::new();
            let mut entries = Vec::new();
            for &(path, bytes) in weights {
                let data = NSData::with_bytes(bytes);
                let entry: Retained<NSDictionary<NSString, AnyObject>> = NSDictionary::from_slices(
                    &[&*offset_key, &*data_key],
                    &[zero.as_ref(), data.as_ref()],
                );
                paths.push(NSString::from_str(path));
                entries.push(entry);
            }
            let keys: Vec<&NSString> = paths.iter().map(|p| &**p).collect();
            let values: Vec<&AnyObject> = entries.iter().map(|e| e.as_ref()).collect();
            let dict: Retained<NSDictionary<NSString, AnyObject>> =
                NSDictionary::from_slices(&keys, &values);
            // SAFETY: the framework is open and the selector checked; arguments are valid
            // objects of the declared types.
            let desc = objc_try("modelWithMILText:weights:optionsPlist:", || unsafe {
                AneDescriptor::with_mil(&text, &dict, None)
            })?
            .ok_or("modelWithMILText:weights:optionsPlist: returned nil")?;
            // SAFETY: as above.
            let model = objc_try("inMemoryModelWithDescriptor:", || unsafe {
                AneModel::with_descriptor(&desc)
            })?
            .ok_or("inMemoryModelWithDescriptor: returned nil")?;
            Ok(InMemoryModel {
                model,
                can_ask_compiled: fw.has_compiled_model_exists,
            })
        })
    }

    /// The content hash the framework names its temp folder and daemon cache entry after.
    pub(crate) fn hex_id(&self) -> Result<String, String> {
        // SAFETY: checked selector on a live model object.
        unsafe { self.model.hex_string_identifier() }
            .map(|s| s.to_string())
            .ok_or_else(|| "hexStringIdentifier returned nil".to_string())
    }

    /// Whether the daemon already holds a compiled artifact for this program (false when
    /// the framework cannot say: then the program is compiled).
    pub(crate) fn compiled_exists(&self) -> bool {
        // SAFETY: only sent when `open` verified the selector and its BOOL result.
        self.can_ask_compiled && autoreleasepool(|_| unsafe { self.model.compiled_model_exists() })
    }

    /// `compileWithQoS:options:error:`.
    pub(crate) fn compile(&self) -> Result<(), String> {
        autoreleasepool(|_| {
            // SAFETY: checked selector; the options dictionary is empty, not nil.
            let r = objc_try("compile", || unsafe {
                self.model.compile_with_qos(QOS, &empty_dict())
            })?;
            ns_result("compile", r)
        })
    }

    /// `loadWithQoS:options:error:`.
    pub(crate) fn load(&self) -> Result<(), String> {
        autoreleasepool(|_| {
            // SAFETY: as for compile.
            let r = objc_try("load", || unsafe {
                self.model.load_with_qos(QOS, &empty_dict())
            })?;
            ns_result("load", r)
        })
    }

    /// `unloadWithQoS:error:`; errors are reported, not fatal (the model is going away).
    pub(crate) fn unload(&self) -> Result<(), String> {
        autoreleasepool(|_| {
            // SAFETY: checked selector on a live model object.
            let r = objc_try("unload", || unsafe { self.model.unload_with_qos(QOS) })?;
            ns_result("unload", r)
        })
    }

    /// `[[model model] modelAttributes]` as a tree.
    pub(crate) fn attributes(&self) -> Result<AttrValue, String> {
        autoreleasepool(|_| {
            // SAFETY: checked selector; returns the `_ANEModel` or nil.
            let inner =
                objc_try("model", || unsafe { self.model.model() })?.ok_or("model returned nil")?;
            if !inner.class().responds_to(sel!(modelAttributes)) {
                return Err("_ANEModel does not respond to modelAttributes".into());
            }
            // SAFETY: selector checked just above; it returns an NSDictionary or nil.
            let attrs: Option<Retained<AnyObject>> = objc_try("modelAttributes", || unsafe {
                msg_send![&*inner, modelAttributes]
            })?;
            Ok(dict_to_attr(attrs))
        })
    }

    /// `evaluateWithQoS:options:request:error:`, synchronous.
    pub(crate) fn evaluate(&self, request: &Request) -> Result<(), String> {
        autoreleasepool(|_| {
            // SAFETY: checked selector; the request holds surfaces that outlive this call
            // (Request keeps them alive).
            let r = objc_try("evaluate", || unsafe {
                self.model
                    .evaluate_with_qos(QOS, &empty_dict(), &request.request)
            })?;
            ns_result("evaluate", r)
        })
    }
}

/// A request built once per (procedure, surface set) and reused for every evaluation.
pub(crate) struct Request {
    request: Retained<AneRequest>,
}

// SAFETY: only used under the owning kernel's Mutex, like InMemoryModel.
unsafe impl Send for Request {}
// SAFETY: as above.
unsafe impl Sync for Request {}

impl Request {
    /// `inputs[i]` is bound to live input `input_indices[i]` (likewise outputs).
    pub(crate) fn new(
        _fw: &Framework,
        inputs: &[&IoSurface],
        input_indices: &[usize],
        outputs: &[&IoSurface],
        output_indices: &[usize],
        procedure: usize,
    ) -> Result<Self, String> {
        autoreleasepool(|_| {
            let wrap = |s: &IoSurface| {
                // SAFETY: checked selector; the IOSurface is alive (the caller keeps it).
                unsafe { AneSurfaceObject::with_surface(s.raw()) }
                    .ok_or_else(|| "objectWithIOSurface: returned nil".to_string())
            };
            let ins = inputs
                .iter()
                .map(|s| wrap(s))
                .collect::<Result<Vec<_>, _>>()?;
            let outs = outputs
                .iter()
                .map(|s| wrap(s))
                .collect::<Result<Vec<_>, _>>()?;
            let numbers = |v: &[usize]| -> Retained<NSArray<NSNumber>> {
                let n: Vec<Retained<NSNumber>> =
                    v.iter().map(|&i| NSNumber::new_usize(i)).collect();
                NSArray::from_retained_slice(&n)
            };
            // SAFETY: checked selector; arrays hold the declared element types; weightsBuffer
            // and perfStats are nil as in every working client.
            let request = unsafe {
                AneRequest::with_surfaces(
                    &NSArray::from_retained_slice(&ins),
                    &numbers(input_indices),
                    &NSArray::from_retained_slice(&outs),
                    &numbers(output_indices),
                    None,
                    None,
                    &NSNumber::new_usize(procedure),
                )
            }
            .ok_or("requestWithInputs:... returned nil")?;
            Ok(Request { request })
        })
    }
}

/// `NSTemporaryDirectory()`: where the framework looks for `<hexStringIdentifier>/`.
pub(crate) fn temporary_directory() -> std::path::PathBuf {
    std::path::PathBuf::from(objc2_foundation::NSTemporaryDirectory().to_string())
}
