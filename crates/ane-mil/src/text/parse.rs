//! Recursive-descent parser for the MIL text dialect.
//!
//! Tolerates every spacing style real generators use: compact (`val=tensor<int32, [4]>([0,3,2,1])`,
//! `})]{` on one line) and spaced. Syntax only: names and types are checked by
//! [`crate::check`], which reports positions through the [`SourceMap`] returned here.

use half::f16;

use super::error::{ParseError, Span};
use super::lexer::{tokenize, Tok, Token};
use crate::ir::{
    Arg, BlobRef, Function, Literal, Param, Program, Statement, TensorData, TensorLiteral,
};
use crate::types::{DType, ValueType};

/// Where each part of a parsed program is in the source.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SourceMap {
    /// One entry per function, in order.
    pub functions: Vec<FunctionSpans>,
}

/// Positions inside one function.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FunctionSpans {
    /// The function's name.
    pub name: Span,
    /// Each parameter declaration.
    pub params: Vec<Span>,
    /// Each statement, from its type to its `;`.
    pub statements: Vec<Span>,
    /// The `-> (...)` output list.
    pub outputs: Span,
}

/// Parses MIL text into a [`Program`].
pub fn parse(src: &str) -> Result<Program, ParseError> {
    parse_with_spans(src).map(|(p, _)| p)
}

/// Parses MIL text and also returns where each function, parameter and statement is.
pub fn parse_with_spans(src: &str) -> Result<(Program, SourceMap), ParseError> {
    let toks = tokenize(src)?;
    let mut p = Parser {
        src,
        toks,
        pos: 0,
        map: SourceMap::default(),
    };
    let program = p.program()?;
    Ok((program, p.map))
}

struct Parser<'a> {
    src: &'a str,
    toks: Vec<Token<'a>>,
    pos: usize,
    map: SourceMap,
}

type PResult<T> = Result<T, ParseError>;

/// A nested list literal before it is checked against its declared shape.
enum Nested<'a> {
    Leaf(Token<'a>),
    List(Vec<Nested<'a>>, Span),
}

impl<'a> Parser<'a> {
    fn peek(&self) -> &Tok<'a> {
        &self.toks[self.pos].tok
    }

    fn peek_at(&self, n: usize) -> &Tok<'a> {
        let i = (self.pos + n).min(self.toks.len() - 1);
        &self.toks[i].tok
    }

    fn span(&self) -> Span {
        self.toks[self.pos].span
    }

    fn prev_span(&self) -> Span {
        self.toks[self.pos.saturating_sub(1)].span
    }

    fn bump(&mut self) -> Token<'a> {
        let t = self.toks[self.pos].clone();
        if self.pos + 1 < self.toks.len() {
            self.pos += 1;
        }
        t
    }

    fn err(&self, span: Span, msg: impl Into<String>) -> ParseError {
        ParseError::new(self.src, span, msg)
    }

    fn expected(&self, what: &str) -> ParseError {
        self.err(
            self.span(),
            format!("expected {what}, found {}", self.peek().describe()),
        )
    }

    fn eat_punct(&mut self, c: char) -> bool {
        if *self.peek() == Tok::Punct(c) {
            self.bump();
            true
        } else {
            false
        }
    }

    fn punct(&mut self, c: char) -> PResult<Span> {
        if self.eat_punct(c) {
            Ok(self.prev_span())
        } else {
            Err(self.expected(&format!("`{c}`")))
        }
    }

    fn ident(&mut self, what: &str) -> PResult<(&'a str, Span)> {
        match *self.peek() {
            Tok::Ident(s) => {
                let sp = self.span();
                self.bump();
                Ok((s, sp))
            }
            _ => Err(self.expected(what)),
        }
    }

    fn keyword(&mut self, kw: &str) -> PResult<()> {
        match *self.peek() {
            Tok::Ident(s) if s == kw => {
                self.bump();
                Ok(())
            }
            _ => Err(self.expected(&format!("`{kw}`"))),
        }
    }

    fn string(&mut self) -> PResult<String> {
        match self.peek().clone() {
            Tok::Str(s) => {
                self.bump();
                Ok(s)
            }
            _ => Err(self.expected("a string literal")),
        }
    }

    // ---- program structure ----

    fn program(&mut self) -> PResult<Program> {
        self.keyword("program")?;
        self.punct('(')?;
        let version = match *self.peek() {
            Tok::Number(n) => {
                self.bump();
                n.to_string()
            }
            _ => return Err(self.expected("a program version such as `1.3`")),
        };
        self.punct(')')?;
        let attributes = if *self.peek() == Tok::Punct('[') {
            self.attributes()?
        } else {
            Vec::new()
        };
        self.punct('{')?;
        let mut functions = Vec::new();
        while *self.peek() != Tok::Punct('}') {
            if *self.peek() == Tok::Eof {
                return Err(self.expected("`func` or `}`"));
            }
            functions.push(self.function()?);
        }
        self.bump();
        if *self.peek() != Tok::Eof {
            return Err(self.expected("end of file after the program's closing `}`"));
        }
        Ok(Program {
            version,
            attributes,
            functions,
        })
    }

    fn function(&mut self) -> PResult<Function> {
        self.keyword("func")?;
        let (name, name_span) = self.ident("a function name")?;
        if *self.peek() != Tok::Punct('<') {
            return Err(self
                .expected("`<` and an opset tag")
                .with_note("functions are written `func main<ios18>(...)`"));
        }
        self.bump();
        let (opset, _) = self.ident("an opset tag such as `ios18`")?;
        self.punct('>')?;
        self.punct('(')?;
        let mut spans = FunctionSpans {
            name: name_span,
            ..Default::default()
        };
        let mut params = Vec::new();
        if !self.eat_punct(')') {
            loop {
                let start = self.span();
                let ty = self.value_type()?;
                let (pname, _) = self.ident("a parameter name")?;
                spans.params.push(start.until(self.prev_span()));
                params.push(Param {
                    name: pname.to_string(),
                    ty,
                });
                if self.eat_punct(')') {
                    break;
                }
                if !self.eat_punct(',') {
                    return Err(self.expected("`,` or `)` in the parameter list"));
                }
            }
        }
        self.punct('{')?;
        let mut body = Vec::new();
        while !self.eat_punct('}') {
            if *self.peek() == Tok::Eof {
                return Err(self.expected("a statement or `}`"));
            }
            let start = self.span();
            body.push(self.statement()?);
            spans.statements.push(start.until(self.prev_span()));
        }
        let out_start = self.span();
        if *self.peek() != Tok::Arrow {
            return Err(self.expected("`->` and the output list"));
        }
        self.bump();
        self.punct('(')?;
        let mut outputs = Vec::new();
        loop {
            let (o, _) = self.ident("an output name")?;
            outputs.push(o.to_string());
            if self.eat_punct(')') {
                break;
            }
            if !self.eat_punct(',') {
                return Err(self.expected("`,` or `)` in the output list"));
            }
        }
        self.punct(';')?;
        spans.outputs = out_start.until(self.prev_span());
        self.map.functions.push(spans);
        Ok(Function {
            name: name.to_string(),
            opset: opset.to_string(),
            params,
            body,
            outputs,
        })
    }

    fn statement(&mut self) -> PResult<Statement> {
        let ty = self.value_type()?;
        let (name, _) = self.ident("the name of the statement's result")?;
        self.punct('=')?;
        let (op, _) = self.ident("an operator name")?;
        self.punct('(')?;
        let mut args = Vec::new();
        if !self.eat_punct(')') {
            loop {
                let (k, _) = self.ident("an argument name")?;
                self.punct('=')?;
                let v = self.arg()?;
                args.push((k.to_string(), v));
                if self.eat_punct(')') {
                    break;
                }
                if !self.eat_punct(',') {
                    return Err(self.expected("`,` or `)` in the argument list"));
                }
            }
        }
        let attributes = if *self.peek() == Tok::Punct('[') {
            self.attributes()?
        } else {
            Vec::new()
        };
        self.punct(';')?;
        Ok(Statement {
            ty,
            name: name.to_string(),
            op: op.to_string(),
            args,
            attributes,
        })
    }

    fn attributes(&mut self) -> PResult<Vec<(String, Literal)>> {
        self.punct('[')?;
        let mut out = Vec::new();
        loop {
            let (k, _) = self.ident("an attribute name")?;
            self.punct('=')?;
            out.push((k.to_string(), self.literal()?));
            if self.eat_punct(']') {
                return Ok(out);
            }
            if !self.eat_punct(',') {
                return Err(self.expected("`,` or `]` in the attribute list"));
            }
        }
    }

    fn arg(&mut self) -> PResult<Arg> {
        if self.eat_punct('(') {
            let mut names = Vec::new();
            loop {
                let (n, _) = self.ident("a variable name in the tuple")?;
                names.push(n.to_string());
                if self.eat_punct(')') {
                    return Ok(Arg::Tuple(names));
                }
                if !self.eat_punct(',') {
                    return Err(self.expected("`,` or `)` in the tuple"));
                }
            }
        }
        match *self.peek() {
            Tok::Ident(s) if !self.starts_literal(s) => {
                self.bump();
                Ok(Arg::Var(s.to_string()))
            }
            Tok::Ident(_) => Ok(Arg::Literal(self.literal()?)),
            _ => Err(self.expected("a variable name or a literal")),
        }
    }

    /// An identifier followed by `(` or `<` that names a type starts a literal.
    fn starts_literal(&self, s: &str) -> bool {
        let next = self.peek_at(1);
        let head = s == "tensor" || s == "dict" || DType::from_name(s).is_some();
        head && matches!(next, Tok::Punct('(') | Tok::Punct('<'))
    }

    // ---- types and literals ----

    fn dtype(&mut self) -> PResult<(DType, Span)> {
        let (name, sp) = self.ident("an element type such as `fp16`")?;
        DType::from_name(name).map(|d| (d, sp)).ok_or_else(|| {
            self.err(sp, format!("unknown element type `{name}`"))
                .with_note("known types: fp16, fp32, int8, uint8, int32, bool, uint64, string")
        })
    }

    fn value_type(&mut self) -> PResult<ValueType> {
        match *self.peek() {
            Tok::Ident("tensor") => {
                self.bump();
                self.punct('<')?;
                let (dtype, _) = self.dtype()?;
                self.punct(',')?;
                let at = self.span();
                let shape = self.shape()?;
                if crate::types::checked_bytes(dtype, &shape).is_none() {
                    return Err(self.err(
                        at.until(self.prev_span()),
                        format!(
                            "shape {shape:?} of {dtype} is larger than any memory (its byte count overflows)"
                        ),
                    ));
                }
                self.punct('>')?;
                Ok(ValueType::Tensor { dtype, shape })
            }
            Tok::Ident(_) => Ok(ValueType::Scalar(self.dtype()?.0)),
            _ => Err(self.expected("a type such as `tensor<fp16, [1, 64, 1, 32]>`")),
        }
    }

    fn shape(&mut self) -> PResult<Vec<usize>> {
        self.punct('[')?;
        let mut dims = Vec::new();
        if self.eat_punct(']') {
            return Ok(dims);
        }
        loop {
            let t = self.bump();
            match t.tok {
                Tok::Number(n) => match n.parse::<usize>() {
                    Ok(d) => dims.push(d),
                    Err(_) => {
                        return Err(self.err(
                            t.span,
                            format!("dimension `{n}` is not a non-negative integer"),
                        ))
                    }
                },
                _ => {
                    return Err(self.err(
                        t.span,
                        format!("expected a dimension, found {}", t.tok.describe()),
                    ))
                }
            }
            if self.eat_punct(']') {
                return Ok(dims);
            }
            if !self.eat_punct(',') {
                return Err(self.expected("`,` or `]` in the shape"));
            }
        }
    }

    fn literal(&mut self) -> PResult<Literal> {
        let start = self.span();
        match *self.peek() {
            Tok::Ident("string") => {
                self.bump();
                self.punct('(')?;
                let s = self.string()?;
                self.punct(')')?;
                Ok(Literal::String(s))
            }
            Tok::Ident("dict") => self.dict(),
            Tok::Ident("tensor") => {
                let ty = self.value_type()?;
                let ValueType::Tensor { dtype, shape } = ty else {
                    return Err(self.err(start, "expected a tensor type"));
                };
                self.punct('(')?;
                let lit = if *self.peek() == Tok::Ident("BLOBFILE") {
                    Literal::Blob(self.blobfile(dtype, shape)?)
                } else {
                    let data = self.tensor_values(dtype, &shape)?;
                    Literal::Tensor(TensorLiteral {
                        shape: Some(shape),
                        data,
                    })
                };
                self.punct(')')?;
                Ok(lit)
            }
            Tok::Ident(_) => {
                let (dtype, sp) = self.dtype()?;
                if dtype == DType::String {
                    return Err(self.err(sp, "expected `string(\"...\")`"));
                }
                self.punct('(')?;
                let tok = self.scalar_token()?;
                let data = self.convert(dtype, &[tok])?;
                self.punct(')')?;
                Ok(Literal::Tensor(TensorLiteral::scalar(data)))
            }
            _ => Err(self.expected("a literal such as `int32(1)` or `string(\"valid\")`")),
        }
    }

    fn dict(&mut self) -> PResult<Literal> {
        self.keyword("dict")?;
        self.punct('<')?;
        self.keyword("string")?;
        self.punct(',')?;
        self.keyword("string")?;
        self.punct('>')?;
        self.punct('(')?;
        self.punct('{')?;
        let mut pairs = Vec::new();
        if !self.eat_punct('}') {
            loop {
                self.punct('{')?;
                let k = self.string()?;
                self.punct(',')?;
                let v = self.string()?;
                self.punct('}')?;
                pairs.push((k, v));
                if self.eat_punct('}') {
                    break;
                }
                if !self.eat_punct(',') {
                    return Err(self.expected("`,` or `}` in the dict"));
                }
            }
        }
        self.punct(')')?;
        Ok(Literal::Dict(pairs))
    }

    fn blobfile(&mut self, dtype: DType, shape: Vec<usize>) -> PResult<BlobRef> {
        self.keyword("BLOBFILE")?;
        self.punct('(')?;
        let mut path = None;
        let mut offset = None;
        loop {
            let (k, ksp) = self.ident("`path` or `offset`")?;
            self.punct('=')?;
            match k {
                "path" => {
                    self.keyword("string")?;
                    self.punct('(')?;
                    path = Some(self.string()?);
                    self.punct(')')?;
                }
                "offset" => {
                    self.keyword("uint64")?;
                    self.punct('(')?;
                    let t = self.scalar_token()?;
                    match self.convert(DType::UInt64, &[t])? {
                        TensorData::UInt64(v) => offset = v.first().copied(),
                        _ => unreachable!("convert returns the requested type"),
                    }
                    self.punct(')')?;
                }
                other => {
                    return Err(self.err(
                        ksp,
                        format!("unknown BLOBFILE field `{other}` (expected `path` or `offset`)"),
                    ))
                }
            }
            if self.eat_punct(')') {
                break;
            }
            if !self.eat_punct(',') {
                return Err(self.expected("`,` or `)` in BLOBFILE"));
            }
        }
        let here = self.prev_span();
        Ok(BlobRef {
            dtype,
            shape,
            path: path.ok_or_else(|| self.err(here, "BLOBFILE needs `path = string(...)`"))?,
            offset: offset
                .ok_or_else(|| self.err(here, "BLOBFILE needs `offset = uint64(...)`"))?,
        })
    }

    /// A number, `true`/`false`, `inf`/`nan`, or `-inf`.
    fn scalar_token(&mut self) -> PResult<Token<'a>> {
        match *self.peek() {
            Tok::Number(_) | Tok::Ident(_) => Ok(self.bump()),
            Tok::Punct('-') if matches!(self.peek_at(1), Tok::Ident(_)) => {
                let minus = self.bump();
                let mut t = self.bump();
                // `-inf` only as one word: `- inf` is not a value
                if minus.span.end != t.span.start {
                    return Err(self.err(
                        minus.span,
                        "expected a value: `-` must touch what it negates",
                    ));
                }
                if let Tok::Ident(_) = t.tok {
                    let sp = minus.span.until(t.span);
                    t = Token {
                        tok: Tok::Number(&self.src[sp.start as usize..sp.end as usize]),
                        span: sp,
                    };
                }
                Ok(t)
            }
            _ => Err(self.expected("a value")),
        }
    }

    fn nested(&mut self) -> PResult<Nested<'a>> {
        if *self.peek() == Tok::Punct('[') {
            let start = self.span();
            self.bump();
            let mut items = Vec::new();
            if !self.eat_punct(']') {
                loop {
                    items.push(self.nested()?);
                    if self.eat_punct(']') {
                        break;
                    }
                    if !self.eat_punct(',') {
                        return Err(self.expected("`,` or `]` in the list"));
                    }
                }
            }
            Ok(Nested::List(items, start.until(self.prev_span())))
        } else {
            Ok(Nested::Leaf(self.scalar_token()?))
        }
    }

    /// Values of a tensor literal: nested to match `shape`, or flat with the right count.
    fn tensor_values(&mut self, dtype: DType, shape: &[usize]) -> PResult<TensorData> {
        let n: usize = shape.iter().product();
        let nested = self.nested()?;
        let mut leaves = Vec::new();
        match &nested {
            Nested::Leaf(t) if shape.is_empty() => leaves.push(t.clone()),
            Nested::Leaf(t) => {
                return Err(self.err(t.span, "expected `[` to open the tensor's values"));
            }
            Nested::List(items, sp) => {
                let flat = items.iter().all(|i| matches!(i, Nested::Leaf(_)));
                if flat && items.len() == n {
                    collect_leaves(&nested, &mut leaves);
                } else if let Err(msg) = check_nesting(&nested, shape) {
                    return Err(self.err(*sp, msg).with_note(format!(
                        "the type says {n} values in shape {shape:?} (written flat or nested to match)"
                    )));
                } else {
                    collect_leaves(&nested, &mut leaves);
                }
            }
        }
        self.convert(dtype, &leaves)
    }

    fn convert(&self, dtype: DType, toks: &[Token<'a>]) -> PResult<TensorData> {
        macro_rules! ints {
            ($variant:ident, $t:ty) => {{
                let mut v = Vec::with_capacity(toks.len());
                for t in toks {
                    let x = self.int_value(t)?;
                    v.push(<$t>::try_from(x).map_err(|_| {
                        self.err(t.span, format!("{x} is out of range for {}", dtype))
                    })?);
                }
                TensorData::$variant(v)
            }};
        }
        Ok(match dtype {
            DType::Fp16 => {
                let mut v = Vec::with_capacity(toks.len());
                for t in toks {
                    v.push(f16::from_f64(self.float_value(t)?));
                }
                TensorData::Fp16(v)
            }
            DType::Fp32 => {
                let mut v = Vec::with_capacity(toks.len());
                for t in toks {
                    v.push(self.float_value_f32(t)?);
                }
                TensorData::Fp32(v)
            }
            DType::Int8 => ints!(Int8, i8),
            DType::UInt8 => ints!(UInt8, u8),
            DType::Int32 => ints!(Int32, i32),
            DType::UInt64 => ints!(UInt64, u64),
            DType::Bool => {
                let mut v = Vec::with_capacity(toks.len());
                for t in toks {
                    v.push(match t.tok {
                        Tok::Ident("true") => true,
                        Tok::Ident("false") => false,
                        _ => {
                            return Err(self.err(
                                t.span,
                                format!("expected `true` or `false`, found {}", t.tok.describe()),
                            ))
                        }
                    });
                }
                TensorData::Bool(v)
            }
            DType::String => {
                let sp = toks.first().map_or(self.span(), |t| t.span);
                return Err(self.err(sp, "string tensors are not supported"));
            }
        })
    }

    fn int_value(&self, t: &Token<'a>) -> PResult<i128> {
        let Tok::Number(s) = t.tok else {
            return Err(self.err(
                t.span,
                format!("expected an integer, found {}", t.tok.describe()),
            ));
        };
        s.parse::<i128>()
            .map_err(|_| self.err(t.span, format!("`{s}` is not an integer")))
    }

    fn float_value(&self, t: &Token<'a>) -> PResult<f64> {
        let s = match t.tok {
            Tok::Number(s) | Tok::Ident(s) => s,
            _ => {
                return Err(self.err(
                    t.span,
                    format!("expected a number, found {}", t.tok.describe()),
                ))
            }
        };
        parse_float(s).ok_or_else(|| self.err(t.span, format!("`{s}` is not a number")))
    }

    fn float_value_f32(&self, t: &Token<'a>) -> PResult<f32> {
        let s = match t.tok {
            Tok::Number(s) | Tok::Ident(s) => s,
            _ => {
                return Err(self.err(
                    t.span,
                    format!("expected a number, found {}", t.tok.describe()),
                ))
            }
        };
        // Decimal text parses straight to f32 (one correct rounding); hex floats are exact in f64.
        let direct = if is_hex(s) {
            None
        } else {
            special_or_decimal_f32(s)
        };
        direct
            .or_else(|| parse_float(s).map(|x| x as f32))
            .ok_or_else(|| self.err(t.span, format!("`{s}` is not a number")))
    }
}

fn collect_leaves<'a>(n: &Nested<'a>, out: &mut Vec<Token<'a>>) {
    match n {
        Nested::Leaf(t) => out.push(t.clone()),
        Nested::List(items, _) => items.iter().for_each(|i| collect_leaves(i, out)),
    }
}

fn check_nesting(n: &Nested<'_>, shape: &[usize]) -> Result<(), String> {
    match (n, shape.split_first()) {
        (Nested::Leaf(_), None) => Ok(()),
        (Nested::List(items, _), Some((&d, rest))) => {
            if items.len() != d {
                return Err(format!(
                    "a list here has {} values where the shape needs {d}",
                    items.len()
                ));
            }
            items.iter().try_for_each(|i| check_nesting(i, rest))
        }
        (Nested::Leaf(_), Some(_)) => Err("a value stands where a nested list is needed".into()),
        (Nested::List(..), None) => Err("the lists are nested deeper than the shape".into()),
    }
}

fn is_hex(s: &str) -> bool {
    let s = s.strip_prefix('-').unwrap_or(s);
    s.starts_with("0x") || s.starts_with("0X")
}

fn special_or_decimal_f32(s: &str) -> Option<f32> {
    match s {
        "inf" => Some(f32::INFINITY),
        "-inf" => Some(f32::NEG_INFINITY),
        "nan" | "-nan" => Some(f32::NAN),
        _ => s
            .parse::<f32>()
            .ok()
            .filter(|_| s.bytes().any(|b| b.is_ascii_digit())),
    }
}

/// Parses decimal, `inf`/`nan`, or C hex-float text (`0x1p-3`, `-0x1.8p+1`).
pub(crate) fn parse_float(s: &str) -> Option<f64> {
    match s {
        "inf" => return Some(f64::INFINITY),
        "-inf" => return Some(f64::NEG_INFINITY),
        "nan" | "-nan" => return Some(f64::NAN),
        _ => {}
    }
    if !is_hex(s) {
        return s
            .parse::<f64>()
            .ok()
            .filter(|_| s.bytes().any(|b| b.is_ascii_digit()));
    }
    let (neg, body) = match s.strip_prefix('-') {
        Some(b) => (true, b),
        None => (false, s),
    };
    let body = &body[2..];
    let (mant, exp) = match body.find(['p', 'P']) {
        Some(i) => (&body[..i], body[i + 1..].parse::<i32>().ok()?),
        None => (body, 0),
    };
    let (int, frac) = mant.split_once('.').unwrap_or((mant, ""));
    if int.is_empty() && frac.is_empty() {
        return None;
    }
    let mut v = 0f64;
    for c in int.chars() {
        v = v * 16.0 + c.to_digit(16)? as f64;
    }
    let mut scale = 1.0 / 16.0;
    for c in frac.chars() {
        v += c.to_digit(16)? as f64 * scale;
        scale /= 16.0;
    }
    let v = v * 2f64.powi(exp);
    Some(if neg { -v } else { v })
}
