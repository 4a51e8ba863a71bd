//! A Waldur that stops answering is noticed once, not once per pending write.
//!
//! Every request to one API URL counts here: an answer of any status closes the
//! circuit and clears the count; a timeout or a failed connection counts a miss.
//! [`MISSES_TO_OPEN`] misses in a row open it, and from then on every request to that
//! URL fails at once, without being sent, until a trial request gets an answer
//! ([`super::WaldurClient::check_answering`], which every run makes first). So a hang
//! in the middle of a cycle costs about one timeout (the requests in flight when it
//! began), and the next cycle asks once before it writes anything.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex, PoisonError};

/// Timeouts or failed connections in a row, with no answer between them, that open
/// the circuit. More than one, so that a single lost connection does not stop a cycle;
/// no more than the writes a cycle keeps in flight by default, so that those, timing
/// out together, are enough.
pub(crate) const MISSES_TO_OPEN: u32 = 3;

/// The state of one Waldur API URL.
#[derive(Debug, Default)]
pub(crate) struct Circuit(Mutex<State>);

#[derive(Debug, Default)]
struct State {
    misses: u32,
    /// Why it is open, when it is.
    open: Option<String>,
}

/// The circuit of every Waldur API URL this process has talked to.
static CIRCUITS: LazyLock<Mutex<HashMap<String, Arc<Circuit>>>> = LazyLock::new(Mutex::default);

impl Circuit {
    /// The circuit of `api_url`, shared by every client of that URL.
    pub(crate) fn of(api_url: &str) -> Arc<Circuit> {
        let mut known = CIRCUITS.lock().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(known.entry(api_url.to_owned()).or_default())
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Why requests are not sent, when the circuit is open.
    pub(crate) fn open(&self) -> Option<String> {
        self.state().open.clone()
    }

    /// Waldur answered (any status): it is there.
    pub(crate) fn answered(&self) {
        let mut state = self.state();
        state.misses = 0;
        state.open = None;
    }

    /// A request got no answer (`reason`); true when this miss opened the circuit.
    pub(crate) fn missed(&self, reason: &str) -> bool {
        let mut state = self.state();
        state.misses += 1;
        if state.misses < MISSES_TO_OPEN || state.open.is_some() {
            return false;
        }
        state.open = Some(format!("{} requests in a row got no answer; the last: {reason}", state.misses));
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn misses_in_a_row_open_it_and_an_answer_closes_it() {
        let circuit = Circuit::default();
        assert!(!circuit.missed("timeout") && !circuit.missed("timeout"));
        circuit.answered();
        assert!(!circuit.missed("timeout") && !circuit.missed("refused"));
        assert!(circuit.open().is_none(), "an answer in between starts the count again");
        assert!(circuit.missed("no answer within 1s"));
        assert!(!circuit.missed("no answer within 1s"), "opened once");
        assert_eq!(circuit.open().as_deref(), Some("3 requests in a row got no answer; the last: no answer within 1s"));
        circuit.answered();
        assert!(circuit.open().is_none());
    }
}
