//! IOReport's "Energy Model" channels, without sudo (macOS only).
//!
//! `libIOReport.dylib` is a private library with no header; the calls and their order are the
//! ones macmon (`src_lib/sources.rs`), mactop (`internal/app/ioreport.m`) and socpowerbud use:
//! copy the group's channels, subscribe, then per window `IOReportCreateSamples` and
//! `IOReportCreateSamplesDelta`, reading each channel's name, unit label and integer value.
//! The library is opened at run time, so a macOS without it gets an error, not a link
//! failure. Not run on hardware yet (docs/hardware-validation.md).

use std::ffi::{c_char, c_void, CStr};

use super::{ChannelEnergy, EnergyMeter};

type CfType = *const c_void;
type CfString = *const c_void;
type CfDictionary = *const c_void;
type CfMutableDictionary = *mut c_void;
type CfArray = *const c_void;
type CfIndex = isize;

const UTF8: u32 = 0x0800_0100;

#[link(name = "CoreFoundation", kind = "framework")]
extern "C" {
    fn CFRelease(cf: CfType);
    fn CFDictionaryGetCount(d: CfDictionary) -> CfIndex;
    fn CFDictionaryCreateMutableCopy(
        alloc: CfType,
        capacity: CfIndex,
        d: CfDictionary,
    ) -> CfMutableDictionary;
    fn CFDictionaryGetValue(d: CfDictionary, key: *const c_void) -> *const c_void;
    fn CFArrayGetCount(a: CfArray) -> CfIndex;
    fn CFArrayGetValueAtIndex(a: CfArray, i: CfIndex) -> *const c_void;
    fn CFStringCreateWithCString(alloc: CfType, s: *const c_char, encoding: u32) -> CfString;
    fn CFStringGetCString(s: CfString, buf: *mut c_char, size: CfIndex, encoding: u32) -> u8;
}

type CopyChannelsFn = unsafe extern "C" fn(CfString, CfString, u64, u64, u64) -> CfDictionary;
type SubscribeFn = unsafe extern "C" fn(
    *const c_void,
    CfMutableDictionary,
    *mut CfMutableDictionary,
    u64,
    CfType,
) -> CfType;
type SamplesFn = unsafe extern "C" fn(CfType, CfMutableDictionary, CfType) -> CfDictionary;
type DeltaFn = unsafe extern "C" fn(CfDictionary, CfDictionary, CfType) -> CfDictionary;
type ChannelStringFn = unsafe extern "C" fn(CfDictionary) -> CfString;
type IntegerFn = unsafe extern "C" fn(CfDictionary, i32) -> i64;

/// The IOReport entry points, looked up once.
struct Api {
    copy_channels_in_group: CopyChannelsFn,
    create_subscription: SubscribeFn,
    create_samples: SamplesFn,
    create_samples_delta: DeltaFn,
    channel_name: ChannelStringFn,
    unit_label: ChannelStringFn,
    integer_value: IntegerFn,
}

fn load_api() -> Result<Api, String> {
    const LIB: &CStr = c"/usr/lib/libIOReport.dylib";
    // SAFETY: dlopen of a constant NUL-terminated path; the handle is never closed, so the
    // symbols below stay valid for the life of the process.
    let handle = unsafe { libc::dlopen(LIB.as_ptr(), libc::RTLD_NOW) };
    if handle.is_null() {
        return Err(format!("power: cannot open {}", LIB.to_string_lossy()));
    }
    let sym = |name: &CStr| {
        // SAFETY: a live handle and a NUL-terminated name.
        let p = unsafe { libc::dlsym(handle, name.as_ptr()) };
        if p.is_null() {
            Err(format!("power: {} missing", name.to_string_lossy()))
        } else {
            Ok(p)
        }
    };
    // each transmute turns a symbol into the C function of that name, with the signature
    // every IOReport client declares (macmon `sources.rs:144-160`)
    // SAFETY: those are the functions' signatures, and a data pointer and a function pointer
    // have the same size on macOS.
    unsafe {
        Ok(Api {
            copy_channels_in_group: std::mem::transmute::<*mut c_void, CopyChannelsFn>(sym(
                c"IOReportCopyChannelsInGroup",
            )?),
            create_subscription: std::mem::transmute::<*mut c_void, SubscribeFn>(sym(
                c"IOReportCreateSubscription",
            )?),
            create_samples: std::mem::transmute::<*mut c_void, SamplesFn>(sym(
                c"IOReportCreateSamples",
            )?),
            create_samples_delta: std::mem::transmute::<*mut c_void, DeltaFn>(sym(
                c"IOReportCreateSamplesDelta",
            )?),
            channel_name: std::mem::transmute::<*mut c_void, ChannelStringFn>(sym(
                c"IOReportChannelGetChannelName",
            )?),
            unit_label: std::mem::transmute::<*mut c_void, ChannelStringFn>(sym(
                c"IOReportChannelGetUnitLabel",
            )?),
            integer_value: std::mem::transmute::<*mut c_void, IntegerFn>(sym(
                c"IOReportSimpleGetIntegerValue",
            )?),
        })
    }
}

/// A CF string we own, from a Rust one.
fn cf_string(s: &CStr) -> CfString {
    // SAFETY: a NUL-terminated UTF-8 string; the result is owned by the caller (Create rule).
    unsafe { CFStringCreateWithCString(std::ptr::null(), s.as_ptr(), UTF8) }
}

/// A CF string's text ("" for null or one that does not fit).
fn rust_string(s: CfString) -> String {
    if s.is_null() {
        return String::new();
    }
    let mut buf = [0 as c_char; 256];
    // SAFETY: a live CFString (the caller got it from a Get function of a live object) and a
    // buffer of the size we pass; on success it holds a NUL-terminated string.
    let ok = unsafe { CFStringGetCString(s, buf.as_mut_ptr(), buf.len() as CfIndex, UTF8) };
    if ok == 0 {
        return String::new();
    }
    // SAFETY: NUL-terminated within `buf`, as CFStringGetCString succeeded.
    unsafe { CStr::from_ptr(buf.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

/// A subscription to the "Energy Model" group and its last sample.
pub(crate) struct IoReportMeter {
    api: Api,
    channels: CfMutableDictionary,
    subscribed: CfMutableDictionary,
    subscription: CfType,
    last: CfDictionary,
}

impl IoReportMeter {
    /// Subscribes to every "Energy Model" channel and takes the first sample.
    pub(crate) fn open() -> Result<Self, String> {
        let api = load_api()?;
        let group = cf_string(c"Energy Model");
        // SAFETY: a live group name and a null subgroup (all of them), as macmon calls it;
        // the result is owned (Copy rule).
        let found = unsafe { (api.copy_channels_in_group)(group, std::ptr::null(), 0, 0, 0) };
        // SAFETY: we created `group`.
        unsafe { CFRelease(group) };
        if found.is_null() {
            return Err("power: IOReport has no \"Energy Model\" group here".into());
        }
        // SAFETY: `found` is a live dictionary; the copy is owned (Create rule), and then
        // `found` is ours to release.
        let channels = unsafe {
            let copy =
                CFDictionaryCreateMutableCopy(std::ptr::null(), CFDictionaryGetCount(found), found);
            CFRelease(found);
            copy
        };
        if channels.is_null() {
            return Err("power: copying the channel list failed".into());
        }
        let mut subscribed: CfMutableDictionary = std::ptr::null_mut();
        // SAFETY: the channel dictionary is live and mutable; `subscribed` receives an owned
        // dictionary; the other arguments are 0/null as every client passes them.
        let subscription = unsafe {
            (api.create_subscription)(
                std::ptr::null(),
                channels,
                &mut subscribed,
                0,
                std::ptr::null(),
            )
        };
        if subscription.is_null() || subscribed.is_null() {
            // SAFETY: releasing what we own.
            unsafe { CFRelease(channels) };
            return Err("power: IOReportCreateSubscription failed".into());
        }
        // SAFETY: a live subscription and its channels; the sample is owned (Create rule).
        let last = unsafe { (api.create_samples)(subscription, subscribed, std::ptr::null()) };
        if last.is_null() {
            // SAFETY: releasing what we own (Drop would also release the null sample).
            unsafe {
                CFRelease(subscribed);
                CFRelease(channels);
                CFRelease(subscription);
            }
            return Err("power: IOReportCreateSamples returned nothing".into());
        }
        Ok(IoReportMeter {
            api,
            channels,
            subscribed,
            subscription,
            last,
        })
    }
}

impl EnergyMeter for IoReportMeter {
    fn since_last(&mut self) -> Result<Vec<ChannelEnergy>, String> {
        let api = &self.api;
        // SAFETY: as in `open`.
        let now =
            unsafe { (api.create_samples)(self.subscription, self.subscribed, std::ptr::null()) };
        if now.is_null() {
            return Err("power: IOReportCreateSamples returned nothing".into());
        }
        // SAFETY: two live samples of one subscription; the delta is owned (Create rule).
        let delta = unsafe { (api.create_samples_delta)(self.last, now, std::ptr::null()) };
        // SAFETY: the old sample is ours; the new one replaces it.
        unsafe { CFRelease(self.last) };
        self.last = now;
        if delta.is_null() {
            return Err("power: IOReportCreateSamplesDelta returned nothing".into());
        }
        let key = cf_string(c"IOReportChannels");
        let mut out = Vec::new();
        // SAFETY: `delta` is a live dictionary and `key` a live string; the array and its
        // items are borrowed from `delta` (Get rule), which outlives this block; each item is
        // a channel dictionary, what the IOReportChannel* getters take.
        unsafe {
            let items = CFDictionaryGetValue(delta, key);
            if !items.is_null() {
                for i in 0..CFArrayGetCount(items) {
                    let ch = CFArrayGetValueAtIndex(items, i);
                    if ch.is_null() {
                        continue;
                    }
                    out.push(ChannelEnergy {
                        name: rust_string((api.channel_name)(ch)),
                        unit: rust_string((api.unit_label)(ch)),
                        value: (api.integer_value)(ch, 0),
                    });
                }
            }
            CFRelease(key);
            CFRelease(delta);
        }
        Ok(out)
    }
}

impl Drop for IoReportMeter {
    fn drop(&mut self) {
        // SAFETY: each is owned by us, non-null (checked in `open`), and released once.
        unsafe {
            CFRelease(self.last);
            CFRelease(self.subscribed);
            CFRelease(self.channels);
            CFRelease(self.subscription);
        }
    }
}
