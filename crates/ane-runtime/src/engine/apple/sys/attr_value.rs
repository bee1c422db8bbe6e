//! The parsed form of the framework's `modelAttributes` dictionary: plain Rust, so the layout
//! code that reads it is tested everywhere.

use std::collections::BTreeMap;

/// A property-list value as read from an NSDictionary / NSArray / NSNumber / NSString.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum AttrValue {
    /// NSDictionary with string keys.
    Dict(BTreeMap<String, AttrValue>),
    /// NSArray.
    Array(Vec<AttrValue>),
    /// NSNumber holding an integer.
    Int(i64),
    /// NSNumber holding a float.
    Float(f64),
    /// NSString.
    Str(String),
    /// Anything else (kept so a dump shows it was there).
    Other(String),
}

impl AttrValue {
    /// `self[key]` for dictionaries.
    pub(crate) fn get(&self, key: &str) -> Option<&AttrValue> {
        match self {
            AttrValue::Dict(d) => d.get(key),
            _ => None,
        }
    }

    /// The integer value (floats with no fraction count).
    pub(crate) fn as_int(&self) -> Option<i64> {
        match self {
            AttrValue::Int(i) => Some(*i),
            AttrValue::Float(f) if f.fract() == 0.0 => Some(*f as i64),
            _ => None,
        }
    }

    /// The elements of an array.
    pub(crate) fn as_array(&self) -> Option<&[AttrValue]> {
        match self {
            AttrValue::Array(a) => Some(a),
            _ => None,
        }
    }

    /// The string value.
    pub(crate) fn as_str(&self) -> Option<&str> {
        match self {
            AttrValue::Str(s) => Some(s),
            _ => None,
        }
    }
}
