//! What the ANE accepts, shared by every engine that models it (the reference engine's
//! defaults, the apple and coreml engines' limits). Sources: docs/ane-notes.md.

/// Largest size of any tensor dimension the ANE loads.
pub const MAX_DIM: usize = 16384;

/// Row strides of ANE surfaces are multiples of this many bytes.
pub const ROW_ALIGNMENT: usize = 64;

/// Compiles after which the hardware's compiler fails silently in one process, as observed:
/// the reference engine's default budget, so code above meets the same wall.
pub const HARDWARE_COMPILE_WALL: u32 = 119;

/// The budget the apple engine keeps per process, safely under [`HARDWARE_COMPILE_WALL`].
pub const APPLE_COMPILE_BUDGET: u32 = 100;
