//! Formats for Apple Neural Engine programs, with no I/O beyond bytes.
//!
//! - [`ir`]: the program IR (functions, typed values, ops, literals, BLOBFILE constants);
//!   [`builder`] writes it from Rust with types inferred as you go.
//! - [`text`]: the MIL text dialect the private `_ANEInMemoryModel` compiler takes
//!   (`program(1.3)`, the buildInfo line, `func main<ios18>(...)`): a canonical printer and a
//!   parser tolerant of real generators' spacing, with line:column errors.
//!   `parse(print(p)) == p` for every program.
//! - [`check`]: name resolution and type/shape inference over the op set in [`ops`], producing
//!   resolved ops that engines execute.
//! - [`blob`]: MIL blob storage v2 weight files (coremltools reads what we write, and we read
//!   what it writes).
//! - [`rules`]: the ANE rulebook — what the hardware is shown to accept, each rule with its
//!   source; the runtime builds only programs that pass and the reference engine refuses the
//!   rest.
//! - [`coreml`]: Core ML model packages (ML Program protobuf + weights) from the same IR, for
//!   the public Core ML path; [`coreml::Package::write_to`] is the one place that touches files.

#![forbid(unsafe_code)]

pub mod blob;
pub mod builder;
pub mod check;
pub mod coreml;
pub mod ir;
pub mod ops;
pub mod rules;
pub mod text;
pub mod types;

pub use blob::{BlobError, BlobFile, BlobWriter, WeightFiles};
pub use check::{check_program, CheckError, CheckedFunction};
pub use ir::Program;
pub use text::error::ParseError;
pub use text::parse::{parse, parse_with_spans, SourceMap};
pub use text::print::print_program;
pub use types::{DType, ValueType};
