//! The crate's only `unsafe`: calls into raw-pointer APIs, each wrapped in a safe function
//! that checks every bound first.

pub(crate) mod gemm;
