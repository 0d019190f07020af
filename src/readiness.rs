//! Whether the daemon is ready (`GET /readyz`), and why not.

use std::sync::{Arc, Mutex};

/// Shared readiness flag with the reason an operator should see while it is down.
#[derive(Clone)]
pub struct Readiness {
    /// `None` when ready; otherwise the reason.
    state: Arc<Mutex<Option<String>>>,
}

impl Readiness {
    pub fn not_ready(reason: impl Into<String>) -> Self {
        Self {
            state: Arc::new(Mutex::new(Some(reason.into()))),
        }
    }

    pub fn ready() -> Self {
        Self {
            state: Arc::new(Mutex::new(None)),
        }
    }

    pub fn set_ready(&self) {
        *self.lock() = None;
    }

    pub fn set_not_ready(&self, reason: impl Into<String>) {
        *self.lock() = Some(reason.into());
    }

    /// `Ok` when ready, else the reason.
    pub fn check(&self) -> Result<(), String> {
        match &*self.lock() {
            None => Ok(()),
            Some(reason) => Err(reason.clone()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        // A plain Option cannot be left half-written.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}
