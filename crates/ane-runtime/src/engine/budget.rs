//! The per-process compile budget: the ANE's compiler stops working after about 119 compiles
//! in one process (docs/ane-notes.md#compile-budget), so every engine with a budget counts against one.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};

use super::EngineKind;
use crate::error::{Error, Result};

/// Counts compiles against a budget; shared by every engine that uses the same counter.
#[derive(Clone, Debug)]
pub struct CompileCounter {
    used: Arc<AtomicU32>,
    budget: Option<u32>,
}

impl CompileCounter {
    /// A fresh counter (tests use one each, so they do not share the process's budget).
    pub fn new(budget: Option<u32>) -> Self {
        CompileCounter {
            used: Arc::new(AtomicU32::new(0)),
            budget,
        }
    }

    /// The process-wide counter for `kind`, created with `budget` on first use.
    pub fn process(kind: EngineKind, budget: Option<u32>) -> Self {
        static COUNTERS: OnceLock<[Arc<AtomicU32>; 3]> = OnceLock::new();
        let all = COUNTERS.get_or_init(Default::default);
        let i = kind as usize;
        CompileCounter {
            used: all[i].clone(),
            budget,
        }
    }

    /// Takes one compile from the budget, or fails without taking it.
    pub fn take(&self) -> Result<()> {
        let Some(budget) = self.budget else {
            self.used.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        };
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                (u < budget).then_some(u + 1)
            })
            .map(|_| ())
            .map_err(|used| Error::BudgetExhausted { used, budget })
    }

    /// Compiles taken.
    pub fn used(&self) -> u32 {
        self.used.load(Ordering::Acquire)
    }

    /// The budget.
    pub fn budget(&self) -> Option<u32> {
        self.budget
    }
}
