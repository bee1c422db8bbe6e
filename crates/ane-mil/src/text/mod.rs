//! The MIL text dialect: lexer, parser, printer and diagnostics.

pub mod error;
mod lexer;
pub mod parse;
pub mod print;
