//! NSDictionary / NSArray / NSNumber / NSString trees → [`AttrValue`].

use std::collections::BTreeMap;

use objc2::rc::Retained;
use objc2::runtime::AnyObject;
use objc2_foundation::{NSArray, NSDictionary, NSNumber, NSString};

use super::AttrValue;

/// Converts a property-list object (depth-limited, so a cyclic object cannot recurse forever).
pub(crate) fn to_attr(obj: &AnyObject, depth: usize) -> AttrValue {
    if depth > 16 {
        return AttrValue::Other("(too deep)".into());
    }
    if let Some(s) = obj.downcast_ref::<NSString>() {
        return AttrValue::Str(s.to_string());
    }
    if let Some(n) = obj.downcast_ref::<NSNumber>() {
        // objCType 'f'/'d' is a float; everything else (integers, BOOL) reads as i64
        let ty = n.encoding();
        return match ty {
            objc2::Encoding::Float | objc2::Encoding::Double => AttrValue::Float(n.as_f64()),
            _ => AttrValue::Int(n.as_i64()),
        };
    }
    if let Some(a) = obj.downcast_ref::<NSArray>() {
        return AttrValue::Array(a.iter().map(|o| to_attr(&o, depth + 1)).collect());
    }
    if let Some(d) = obj.downcast_ref::<NSDictionary>() {
        let (keys, values) = d.to_vecs();
        let mut map = BTreeMap::new();
        for (k, v) in keys.iter().zip(values.iter()) {
            let key = match k.downcast_ref::<NSString>() {
                Some(s) => s.to_string(),
                None => format!("{k:?}"),
            };
            map.insert(key, to_attr(v, depth + 1));
        }
        return AttrValue::Dict(map);
    }
    AttrValue::Other(format!("{obj:?}"))
}

/// Converts an optional retained dictionary.
pub(crate) fn dict_to_attr(d: Option<Retained<AnyObject>>) -> AttrValue {
    match d {
        Some(d) => to_attr(&d, 0),
        None => AttrValue::Other("nil".into()),
    }
}
