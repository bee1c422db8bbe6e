//! Choosing and creating an engine: [`EngineKind`], [`EngineChoice`] (`auto` or one engine)
//! and the settings of every engine in one [`EngineConfig`]. Nothing here reads the
//! environment: a program that wants `GGML_ANE_ENGINE` parses it ([`EngineChoice`] is
//! `FromStr`) and passes the result.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use super::apple::AppleConfig;
use super::coreml::CoreMlConfig;
use super::reference::{ReferenceConfig, ReferenceEngine};
use super::Engine;
use crate::error::{Error, Result};

/// Which engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum EngineKind {
    /// The CPU reference engine (every platform).
    Reference,
    /// The private `_ANEInMemoryModel` path (macOS).
    Apple,
    /// Public Core ML (macOS).
    CoreMl,
}

impl EngineKind {
    /// Lower-case name as used in `GGML_ANE_ENGINE`.
    pub fn as_str(self) -> &'static str {
        match self {
            EngineKind::Reference => "reference",
            EngineKind::Apple => "apple",
            EngineKind::CoreMl => "coreml",
        }
    }
}

impl fmt::Display for EngineKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An engine choice: one engine, or `auto` (best available).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EngineChoice {
    /// Try apple, then coreml, then reference.
    Auto,
    /// Exactly this engine.
    Only(EngineKind),
}

impl FromStr for EngineChoice {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s.trim().to_ascii_lowercase().as_str() {
            "" | "auto" => EngineChoice::Auto,
            "reference" | "ref" | "cpu" => EngineChoice::Only(EngineKind::Reference),
            "apple" | "ane" => EngineChoice::Only(EngineKind::Apple),
            "coreml" => EngineChoice::Only(EngineKind::CoreMl),
            other => return Err(Error::UnknownEngine(other.to_string())),
        })
    }
}

/// The settings of every engine; [`create`] passes each engine its own.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct EngineConfig {
    /// The reference engine's settings.
    pub reference: ReferenceConfig,
    /// The apple engine's settings.
    pub apple: AppleConfig,
    /// The coreml engine's settings.
    pub coreml: CoreMlConfig,
}

/// Creates the engine `choice` names. `Auto` takes the first available of apple, coreml and
/// reference.
pub fn create(choice: EngineChoice, config: &EngineConfig) -> Result<Arc<dyn Engine>> {
    create_explained(choice, config).map(|(engine, _)| engine)
}

/// [`create`], and for `Auto` why each engine before the one picked was passed over (one
/// line each; empty when the first was available or the choice was explicit).
pub fn create_explained(
    choice: EngineChoice,
    config: &EngineConfig,
) -> Result<(Arc<dyn Engine>, Vec<String>)> {
    match choice {
        EngineChoice::Only(kind) => Ok((create_kind(kind, config)?, Vec::new())),
        EngineChoice::Auto => {
            let mut passed_over = Vec::new();
            for kind in [EngineKind::Apple, EngineKind::CoreMl] {
                match create_kind(kind, config) {
                    Ok(engine) => return Ok((engine, passed_over)),
                    Err(e) => passed_over.push(e.to_string()),
                }
            }
            Ok((create_kind(EngineKind::Reference, config)?, passed_over))
        }
    }
}

fn create_kind(kind: EngineKind, config: &EngineConfig) -> Result<Arc<dyn Engine>> {
    match kind {
        EngineKind::Reference => Ok(Arc::new(ReferenceEngine::with_config(
            config.reference.clone(),
        ))),
        #[cfg(target_os = "macos")]
        EngineKind::Apple => Ok(Arc::new(super::apple::AppleEngine::new(&config.apple)?)),
        #[cfg(target_os = "macos")]
        EngineKind::CoreMl => Ok(Arc::new(super::coreml::CoreMlEngine::new(&config.coreml)?)),
        #[cfg(not(target_os = "macos"))]
        other => {
            // the settings exist on every platform; only the engines are macOS's
            let _ = (&config.apple, &config.coreml);
            Err(unavailable(other))
        }
    }
}

/// Why an Apple engine cannot be created on this platform.
#[cfg(not(target_os = "macos"))]
fn unavailable(kind: EngineKind) -> Error {
    Error::EngineUnavailable {
        kind,
        reason: format!(
            "needs macOS on Apple silicon (this is {} {})",
            std::env::consts::OS,
            std::env::consts::ARCH
        ),
    }
}
