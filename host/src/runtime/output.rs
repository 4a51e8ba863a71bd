//! A component's stdout and stderr, forwarded to the host log.
//!
//! A component has no terminal and no files, but its language runtime may still print
//! (a Rust panic message goes to stderr). Discarding that would hide the one clue an
//! operator has; passing it through raw would let a component flood the log or forge
//! log lines. So each line is logged on its own, prefixed with the component's name,
//! cut to [`LINE_BYTES`], with control characters escaped, and at most
//! [`BYTES_PER_CALL`] bytes per stream and call are kept; the rest is counted and
//! reported in one line when the call ends.

use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// Longest line kept; the rest of a longer line is dropped (and counted).
pub(crate) const LINE_BYTES: usize = 1024;
/// Output kept per stream and call.
pub(crate) const BYTES_PER_CALL: usize = 16 * 1024;
/// Lines of stderr quoted in a trap's error message.
const LAST_LINES: usize = 4;

/// Which stream a sink serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// Splits bytes into bounded lines. Pure, so the bounds are unit-tested.
#[derive(Debug, Default)]
pub(crate) struct LineBuffer {
    pending: Vec<u8>,
    /// The pending line was longer than [`LINE_BYTES`].
    cut: bool,
    kept: usize,
    dropped: usize,
}

impl LineBuffer {
    /// Takes `bytes`, returning the complete lines (without their newline).
    pub(crate) fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        let mut lines = Vec::new();
        for &byte in bytes {
            if self.kept >= BYTES_PER_CALL {
                self.dropped += 1;
                continue;
            }
            self.kept += 1;
            if byte == b'\n' {
                lines.push(self.take_line());
            } else if self.pending.len() < LINE_BYTES {
                self.pending.push(byte);
            } else {
                self.cut = true;
                self.dropped += 1;
            }
        }
        lines
    }

    /// The unfinished last line, if any.
    pub(crate) fn finish(&mut self) -> Option<String> {
        (!self.pending.is_empty() || self.cut).then(|| self.take_line())
    }

    /// Bytes not logged: beyond the per-call budget or cut from long lines.
    pub(crate) fn dropped(&self) -> usize {
        self.dropped
    }

    fn take_line(&mut self) -> String {
        let mut line = clean(&self.pending);
        if self.cut {
            line.push_str(" […]");
        }
        self.pending.clear();
        self.cut = false;
        line
    }
}

/// Text safe for one log line: invalid UTF-8 replaced, control characters escaped (a
/// component must not be able to move the cursor of an operator's terminal or end a
/// JSON log line).
fn clean(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    escape_controls(text.strip_suffix('\r').unwrap_or(&text))
}

/// Whether `c` must not reach a log line or terminal as it is: a control character (CR,
/// LF, ESC, NUL, …; a tab is harmless) or an invisible one that reorders or breaks what
/// is shown (bidirectional overrides, zero-width characters, line and paragraph
/// separators).
pub(crate) fn needs_escape(c: char) -> bool {
    (c.is_control() && c != '\t')
        || matches!(c, '\u{200b}'..='\u{200f}' | '\u{2028}'..='\u{202e}' | '\u{2060}'..='\u{2069}' | '\u{feff}')
}

/// `text` with every character [`needs_escape`] names written as an escape (`\n`,
/// `\u{1b}`), so it stays one line and shows what was there.
pub(crate) fn escape_controls(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if needs_escape(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

struct SinkState {
    component: String,
    stream: Stream,
    lines: LineBuffer,
    /// The last lines logged, for error messages (a panic's message is among them).
    last: std::collections::VecDeque<String>,
}

impl SinkState {
    fn log(&mut self, line: String) {
        if line.trim().is_empty() {
            return;
        }
        match self.stream {
            Stream::Stdout => {
                tracing::info!(component = %self.component, stream = "stdout", "[{}] {line}", self.component)
            }
            Stream::Stderr => {
                tracing::warn!(component = %self.component, stream = "stderr", "[{}] {line}", self.component)
            }
        }
        if self.last.len() == LAST_LINES {
            self.last.pop_front();
        }
        self.last.push_back(line);
    }
}

impl Drop for SinkState {
    fn drop(&mut self) {
        if let Some(line) = self.lines.finish() {
            self.log(line);
        }
        let dropped = self.lines.dropped();
        if dropped > 0 {
            tracing::warn!(
                component = %self.component, stream = self.stream.name(),
                "[{}] {dropped} more bytes of {} not logged (at most {BYTES_PER_CALL} bytes per call, {LINE_BYTES} per line)",
                self.component, self.stream.name()
            );
        }
    }
}

/// One stream of one call: every handle the component opens on it shares this state.
#[derive(Clone)]
pub(crate) struct ComponentOutput {
    state: Arc<Mutex<SinkState>>,
}

impl ComponentOutput {
    pub(crate) fn new(component: &str, stream: Stream) -> Self {
        let state = SinkState {
            component: component.to_owned(),
            stream,
            lines: LineBuffer::default(),
            last: Default::default(),
        };
        Self { state: Arc::new(Mutex::new(state)) }
    }

    fn lock(&self) -> MutexGuard<'_, SinkState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn accept(&self, bytes: &[u8]) {
        let mut state = self.lock();
        for line in state.lines.push(bytes) {
            state.log(line);
        }
    }

    /// The last few lines written so far, the unfinished one included, joined by ` | `.
    pub(crate) fn last_lines(&self) -> Option<String> {
        let state = self.lock();
        let mut lines: Vec<String> = state.last.iter().cloned().collect();
        if !state.lines.pending.is_empty() {
            lines.push(clean(&state.lines.pending));
        }
        (!lines.is_empty()).then(|| lines.join(" | "))
    }
}

impl IsTerminal for ComponentOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for ComponentOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

// Writes never block and never fail: output past the budget is counted and dropped, so
// a chatty component neither stalls nor traps on it.
impl OutputStream for ComponentOutput {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.accept(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 * 1024)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for ComponentOutput {
    async fn ready(&mut self) {}
}

impl AsyncWrite for ComponentOutput {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        self.accept(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_split_cut_and_cleaned() {
        let mut buffer = LineBuffer::default();
        assert_eq!(buffer.push(b"one\ntw"), vec!["one".to_owned()]);
        assert_eq!(buffer.push(b"o\r\n\x1b[2Jthree\n"), vec!["two".to_owned(), "\\u{1b}[2Jthree".to_owned()]);
        let long = vec![b'x'; LINE_BYTES + 10];
        let lines = buffer.push(&[long.as_slice(), b"\n"].concat());
        assert_eq!(lines.len(), 1);
        assert!(lines[0].starts_with(&"x".repeat(LINE_BYTES)) && lines[0].ends_with(" […]"), "{}", lines[0]);
        assert_eq!(buffer.dropped(), 10);
        assert_eq!(buffer.push(b"tail"), Vec::<String>::new());
        assert_eq!(buffer.finish().as_deref(), Some("tail"));
        assert_eq!(buffer.finish(), None);
    }

    #[test]
    fn controls_and_invisible_characters_are_escaped() {
        assert_eq!(escape_controls("a\r\nb\x1b[2J\tc"), "a\\r\\nb\\u{1b}[2J\tc");
        assert_eq!(escape_controls("x\u{202e}y\u{2028}z"), "x\\u{202e}y\\u{2028}z");
        assert_eq!(escape_controls("grüße, 名前"), "grüße, 名前");
    }

    #[test]
    fn output_beyond_the_budget_is_dropped_and_counted() {
        let mut buffer = LineBuffer::default();
        let line = [vec![b'y'; 99], vec![b'\n']].concat();
        let mut logged = 0;
        for _ in 0..1000 {
            logged += buffer.push(&line).len();
        }
        assert_eq!(logged, BYTES_PER_CALL / 100);
        assert_eq!(buffer.dropped(), 100_000 - BYTES_PER_CALL);
    }
}
