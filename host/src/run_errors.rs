//! The error lines of a run (a report cycle, a historical load): logged as they happen
//! and kept for the summary printed at the end.

use std::sync::Mutex;

/// Errors of one run, shared by its concurrent writes.
#[derive(Default)]
pub(crate) struct RunErrors(Mutex<Vec<String>>);

impl RunErrors {
    /// An error about the run, a month or a listing.
    pub(crate) fn push(&self, message: String) {
        tracing::error!("{message}");
        self.keep(message);
    }

    /// An error about one resource. The log line carries its backend id as `resource`,
    /// so a log reader can select every line about it.
    pub(crate) fn push_resource(&self, backend_id: &str, message: String) {
        tracing::error!(resource = backend_id, "{message}");
        self.keep(message);
    }

    /// Every error so far, oldest first.
    pub(crate) fn lines(&self) -> Vec<String> {
        self.0.lock().map(|e| e.clone()).unwrap_or_default()
    }

    fn keep(&self, message: String) {
        if let Ok(mut errors) = self.0.lock() {
            errors.push(message);
        }
    }
}
