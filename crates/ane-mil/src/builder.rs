//! Writing programs in Rust: each op's result type is inferred as it is added.
//!
//! ```
//! use ane_mil::{builder::FunctionBuilder, ir::{Arg, Literal, Program}, types::{DType, ValueType}};
//! let mut f = FunctionBuilder::new("main", "ios18");
//! let x = f.input("x", ValueType::tensor(DType::Fp16, [1, 8, 1, 4]));
//! let perm = f.constant("perm", Literal::int32s(&[0, 3, 2, 1]));
//! let y = f.op("y", "transpose", &[("perm", Arg::Var(perm)), ("x", Arg::Var(x))]).unwrap();
//! f.output(&y).unwrap();
//! let mut p = Program::new();
//! p.functions.push(f.finish());
//! assert!(ane_mil::print_program(&p).contains("tensor<fp16, [1, 4, 1, 8]> y = transpose("));
//! ```

use std::collections::HashMap;

use crate::check::{check_statement, CheckErrorKind};
use crate::ir::{Arg, Function, Literal, Param, Statement};
use crate::types::ValueType;

/// Builds one function, checking each statement as it is added.
#[derive(Debug)]
pub struct FunctionBuilder {
    func: Function,
    env: HashMap<String, (ValueType, Option<Literal>)>,
}

impl FunctionBuilder {
    /// A function `name<opset>` with no parameters yet.
    pub fn new(name: &str, opset: &str) -> Self {
        FunctionBuilder {
            func: Function {
                name: name.to_string(),
                opset: opset.to_string(),
                params: Vec::new(),
                body: Vec::new(),
                outputs: Vec::new(),
            },
            env: HashMap::new(),
        }
    }

    /// Adds a parameter; returns its name.
    pub fn input(&mut self, name: &str, ty: ValueType) -> String {
        self.func.params.push(Param {
            name: name.to_string(),
            ty: ty.clone(),
        });
        self.env.insert(name.to_string(), (ty, None));
        name.to_string()
    }

    /// Adds `TYPE name = const()[name = string("name"), val = value];`.
    ///
    /// # Panics
    /// If `value` is a dict, which is not a value.
    pub fn constant(&mut self, name: &str, value: Literal) -> String {
        let ty = value.value_type().expect("a const value has a type");
        self.func.body.push(Statement {
            ty: ty.clone(),
            name: name.to_string(),
            op: "const".to_string(),
            args: Vec::new(),
            attributes: vec![
                ("name".to_string(), Literal::string(name)),
                ("val".to_string(), value.clone()),
            ],
        });
        self.env.insert(name.to_string(), (ty, Some(value)));
        name.to_string()
    }

    /// Adds `TYPE name = op(args)[name = string("name")];` with the type inferred.
    pub fn op(
        &mut self,
        name: &str,
        op: &str,
        args: &[(&str, Arg)],
    ) -> Result<String, CheckErrorKind> {
        self.op_with_attributes(name, op, args, Vec::new())
    }

    /// Like [`op`](Self::op), with extra attributes after `name` (constexpr ops take their operands there).
    pub fn op_with_attributes(
        &mut self,
        name: &str,
        op: &str,
        args: &[(&str, Arg)],
        attributes: Vec<(String, Literal)>,
    ) -> Result<String, CheckErrorKind> {
        if self.env.contains_key(name) {
            return Err(CheckErrorKind::Redefined(name.to_string()));
        }
        let mut attrs = vec![("name".to_string(), Literal::string(name))];
        attrs.extend(attributes);
        let mut s = Statement {
            ty: ValueType::Scalar(crate::types::DType::Bool),
            name: name.to_string(),
            op: op.to_string(),
            args: args
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
            attributes: attrs,
        };
        let env = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.clone()))
            .collect();
        // The placeholder type fails the declared-type check; take the inferred one from it.
        let ty = match check_statement(&s, &env, None) {
            Ok(c) => c.ty,
            Err(CheckErrorKind::TypeMismatch { inferred, .. }) => inferred,
            Err(e) => return Err(e),
        };
        s.ty = ty.clone();
        let konst = match (op, s.attributes.iter().find(|(k, _)| k == "val")) {
            ("const", Some((_, v))) => Some(v.clone()),
            _ => None,
        };
        self.func.body.push(s);
        self.env.insert(name.to_string(), (ty, konst));
        Ok(name.to_string())
    }

    /// Adds `W = constexpr_affine_dequantize()[...]`: `(quantized - zero_point) · scale` along
    /// `axis`, with every operand in the attribute block as the ANE compiler expects.
    /// `scale` and `zero_point` are scalars or 1-D literals (one value per index of `axis`).
    pub fn affine_dequantize(
        &mut self,
        name: &str,
        quantized: crate::ir::BlobRef,
        scale: Literal,
        zero_point: Literal,
        axis: i32,
    ) -> Result<String, CheckErrorKind> {
        self.op_with_attributes(
            name,
            "constexpr_affine_dequantize",
            &[],
            vec![
                ("axis".to_string(), Literal::int32(axis)),
                ("quantized_data".to_string(), Literal::Blob(quantized)),
                ("scale".to_string(), scale),
                ("zero_point".to_string(), zero_point),
            ],
        )
    }

    /// The type of a name in scope.
    pub fn type_of(&self, name: &str) -> Option<&ValueType> {
        self.env.get(name).map(|(t, _)| t)
    }

    /// Marks `name` as a function output.
    pub fn output(&mut self, name: &str) -> Result<(), CheckErrorKind> {
        if !self.env.contains_key(name) {
            return Err(CheckErrorKind::Undefined(name.to_string()));
        }
        self.func.outputs.push(name.to_string());
        Ok(())
    }

    /// The finished function.
    pub fn finish(self) -> Function {
        self.func
    }
}
