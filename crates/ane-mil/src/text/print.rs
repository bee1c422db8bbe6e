//! The printer: one canonical spelling of a [`Program`] in the MIL text dialect.
//!
//! Canonical means: single spaces around `=` and after commas, four-space indents,
//! arguments and attributes in the order the IR holds them, nested brackets for
//! multi-dimensional literals. Golden files pin this output byte for byte.

use std::fmt::Write;

use half::f16;

use crate::ir::{Arg, BlobRef, Function, Literal, Program, Statement, TensorData, TensorLiteral};

/// Prints `program` as MIL text.
pub fn print_program(program: &Program) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "program({})", program.version);
    if !program.attributes.is_empty() {
        out.push('[');
        write_pairs(&mut out, &program.attributes);
        out.push_str("]\n");
    }
    out.push_str("{\n");
    for (i, f) in program.functions.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        write_function(&mut out, f);
    }
    out.push_str("}\n");
    out
}

fn write_function(out: &mut String, f: &Function) {
    let _ = write!(out, "    func {}<{}>(", f.name, f.opset);
    for (i, p) in f.params.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        let _ = write!(out, "{} {}", p.ty, p.name);
    }
    out.push_str(") {\n");
    for s in &f.body {
        write_statement(out, s);
    }
    let _ = writeln!(out, "    }} -> ({});", f.outputs.join(", "));
}

fn write_statement(out: &mut String, s: &Statement) {
    let _ = write!(out, "        {} {} = {}(", s.ty, s.name, s.op);
    for (i, (k, a)) in s.args.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        let _ = write!(out, "{k} = ");
        match a {
            Arg::Var(v) => out.push_str(v),
            Arg::Literal(l) => write_literal(out, l),
            Arg::Tuple(vs) => {
                let _ = write!(out, "({})", vs.join(", "));
            }
        }
    }
    out.push(')');
    if !s.attributes.is_empty() {
        out.push('[');
        write_pairs(out, &s.attributes);
        out.push(']');
    }
    out.push_str(";\n");
}

fn write_pairs(out: &mut String, pairs: &[(String, Literal)]) {
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        let _ = write!(out, "{k} = ");
        write_literal(out, v);
    }
}

/// Appends the spelling of one literal.
pub(crate) fn write_literal(out: &mut String, lit: &Literal) {
    match lit {
        Literal::String(s) => {
            out.push_str("string(");
            write_string(out, s);
            out.push(')');
        }
        Literal::Dict(pairs) => {
            out.push_str("dict<string, string>({");
            for (i, (k, v)) in pairs.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                out.push('{');
                write_string(out, k);
                out.push_str(", ");
                write_string(out, v);
                out.push('}');
            }
            out.push_str("})");
        }
        Literal::Blob(b) => write_blob(out, b),
        Literal::Tensor(t) => write_tensor_literal(out, t),
    }
}

fn write_blob(out: &mut String, b: &BlobRef) {
    let ty = crate::types::ValueType::tensor(b.dtype, b.shape.clone());
    let _ = write!(out, "{ty}(BLOBFILE(path = string(");
    write_string(out, &b.path);
    let _ = write!(out, "), offset = uint64({})))", b.offset);
}

fn write_tensor_literal(out: &mut String, t: &TensorLiteral) {
    match &t.shape {
        None => {
            let _ = write!(out, "{}(", t.data.dtype());
            write_element(out, &t.data, 0);
            out.push(')');
        }
        Some(shape) => {
            let _ = write!(out, "{}(", t.value_type());
            if shape.is_empty() {
                write_element(out, &t.data, 0);
            } else {
                write_nested(out, &t.data, shape, 0);
            }
            out.push(')');
        }
    }
}

/// Writes `[...]` for `shape`, starting at flat element `start`.
fn write_nested(out: &mut String, data: &TensorData, shape: &[usize], start: usize) {
    out.push('[');
    let inner = crate::types::checked_elements(&shape[1..]).unwrap_or(usize::MAX);
    for i in 0..shape[0] {
        if i > 0 {
            out.push_str(", ");
        }
        if shape.len() == 1 {
            write_element(out, data, start + i);
        } else {
            write_nested(out, data, &shape[1..], start + i * inner);
        }
    }
    out.push(']');
}

fn write_element(out: &mut String, data: &TensorData, i: usize) {
    let _ = match data {
        TensorData::Fp16(v) => write_float(out, v.get(i).map_or(f32::NAN, |x| f16::to_f32(*x))),
        TensorData::Fp32(v) => write_float(out, v.get(i).copied().unwrap_or(f32::NAN)),
        TensorData::Int8(v) => write!(out, "{}", v.get(i).copied().unwrap_or_default()),
        TensorData::UInt8(v) => write!(out, "{}", v.get(i).copied().unwrap_or_default()),
        TensorData::Int32(v) => write!(out, "{}", v.get(i).copied().unwrap_or_default()),
        TensorData::UInt64(v) => write!(out, "{}", v.get(i).copied().unwrap_or_default()),
        TensorData::Bool(v) => write!(out, "{}", v.get(i).copied().unwrap_or_default()),
    };
}

/// Shortest decimal that parses back to the same f32 (and so to the same f16).
fn write_float(out: &mut String, x: f32) -> std::fmt::Result {
    if x.is_nan() {
        out.push_str("nan");
    } else if x.is_infinite() {
        out.push_str(if x > 0.0 { "inf" } else { "-inf" });
    } else {
        write!(out, "{x}")?;
    }
    Ok(())
}

fn write_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
    out.push('"');
}
