//! Progress of long commands: a bar redrawn in place on a terminal, plain log lines
//! otherwise (journald and CI logs do not want carriage returns).
//!
//! Deliberately dependency-free: one `\r`-redrawn line on stderr. The bar and the log
//! lines share stderr through one [`Screen`]: its lock is held while a log line clears
//! the bar, is written whole and redraws the bar below it, so a line is never cut by a
//! redraw (which the ticker does from another thread) nor by another line.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tracing_subscriber::fmt::MakeWriter;

use crate::period::Month;

/// How often the bar is redrawn.
const TICK: Duration = Duration::from_millis(200);

/// Clears the line the cursor is on.
const CLEAR_LINE: &[u8] = b"\r\x1b[2K";

/// The process's stderr, for log lines and the bar.
static STDERR: LazyLock<Screen> = LazyLock::new(|| Screen::new(Box::new(std::io::stderr())));

/// The screen log lines and the bar are written to: stderr (or, in tests, a buffer).
pub(crate) fn stderr_screen() -> Screen {
    STDERR.clone()
}

/// One output shared by log lines and a bar, behind one lock.
#[derive(Clone)]
pub(crate) struct Screen(Arc<Mutex<ScreenState>>);

struct ScreenState {
    out: Box<dyn Write + Send>,
    /// The bar on screen, if one is shown: redrawn after every log line.
    bar: Option<String>,
}

impl Screen {
    pub(crate) fn new(out: Box<dyn Write + Send>) -> Self {
        Self(Arc::new(Mutex::new(ScreenState { out, bar: None })))
    }

    fn lock(&self) -> MutexGuard<'_, ScreenState> {
        // A writer that panicked mid-line leaves nothing worth refusing output for.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Writes one whole log line (or several), above the bar when one is shown.
    fn write_lines(&self, lines: &[u8]) {
        let mut screen = self.lock();
        let ScreenState { out, bar } = &mut *screen;
        // Output errors (a closed stderr) have nowhere to be reported.
        if bar.is_some() {
            let _ = out.write_all(CLEAR_LINE);
        }
        let _ = out.write_all(lines);
        if let Some(bar) = bar {
            let _ = out.write_all(bar.as_bytes());
        }
        let _ = out.flush();
    }

    /// Shows `bar` in place of the one shown, if any.
    fn draw(&self, bar: String) {
        let mut screen = self.lock();
        let _ = screen.out.write_all(CLEAR_LINE);
        let _ = screen.out.write_all(bar.as_bytes());
        let _ = screen.out.flush();
        screen.bar = Some(bar);
    }

    /// Removes the bar, if one is shown.
    fn clear(&self) {
        let mut screen = self.lock();
        if screen.bar.take().is_some() {
            let _ = screen.out.write_all(CLEAR_LINE);
            let _ = screen.out.flush();
        }
    }
}

/// What `tracing` writes one event to: the event's text is collected, then written
/// whole under the screen's lock when the event is done.
pub(crate) struct LogLine<'a> {
    screen: &'a Screen,
    text: Vec<u8>,
}

impl Write for LogLine<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.text.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LogLine<'_> {
    fn drop(&mut self) {
        if !self.text.is_empty() {
            self.screen.write_lines(&self.text);
        }
    }
}

impl<'a> MakeWriter<'a> for Screen {
    type Writer = LogLine<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        LogLine { screen: self, text: Vec::with_capacity(256) }
    }
}

/// Counters of a run measured in resource-months.
pub(crate) struct Progress {
    inner: Arc<Counters>,
}

struct Counters {
    screen: Screen,
    /// Whether the screen is a terminal: a bar, rather than a log line per month.
    terminal: bool,
    started: Mutex<Option<Instant>>,
    months: AtomicU64,
    resources: AtomicU64,
    months_done: AtomicU64,
    done: AtomicU64,
    last_month: Mutex<Option<Month>>,
}

impl Progress {
    /// Progress on stderr: a bar when it is a terminal.
    pub(crate) fn new() -> Self {
        Self::on(stderr_screen(), std::io::stderr().is_terminal())
    }

    /// Progress on `screen`, with a bar if `terminal`.
    fn on(screen: Screen, terminal: bool) -> Self {
        Self {
            inner: Arc::new(Counters {
                screen,
                terminal,
                started: Mutex::new(None),
                months: AtomicU64::new(0),
                resources: AtomicU64::new(0),
                months_done: AtomicU64::new(0),
                done: AtomicU64::new(0),
                last_month: Mutex::new(None),
            }),
        }
    }

    pub(crate) fn start(&self, months: usize, resources: usize) {
        self.inner.months.store(months as u64, Ordering::Relaxed);
        self.inner.resources.store(resources as u64, Ordering::Relaxed);
        if let Ok(mut started) = self.inner.started.lock() {
            *started = Some(Instant::now());
        }
    }

    pub(crate) fn resource_done(&self) {
        self.inner.done.fetch_add(1, Ordering::Relaxed);
    }

    /// A month is done: on a terminal the bar shows it; otherwise one log line says so.
    pub(crate) fn month_done(&self, month: Month) {
        self.inner.months_done.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut last) = self.inner.last_month.lock() {
            *last = Some(month);
        }
        if !self.inner.terminal {
            tracing::info!("{}", self.inner.line());
        }
    }

    /// Starts redrawing the bar, when stderr is a terminal.
    pub(crate) fn spawn_ticker(&self) -> Option<tokio::task::JoinHandle<()>> {
        if !self.inner.terminal {
            return None;
        }
        let inner = self.inner.clone();
        Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval(TICK);
            loop {
                tick.tick().await;
                inner.draw();
            }
        }))
    }

    /// Stops the bar and clears its line.
    pub(crate) fn finish(&self, ticker: Option<tokio::task::JoinHandle<()>>) {
        if let Some(ticker) = ticker {
            ticker.abort();
        }
        self.inner.screen.clear();
    }
}

impl Counters {
    /// `2024-03: 3/12 months, 600/2400 resource-months, 45.2/s, about 0:40 left`.
    fn line(&self) -> String {
        let months = self.months.load(Ordering::Relaxed);
        let months_done = self.months_done.load(Ordering::Relaxed);
        let total = months * self.resources.load(Ordering::Relaxed);
        let done = self.done.load(Ordering::Relaxed).min(total);
        let elapsed = self.started.lock().ok().and_then(|s| *s).map(|s| s.elapsed()).unwrap_or_default();
        let rate = if elapsed.as_secs_f64() > 0.0 { done as f64 / elapsed.as_secs_f64() } else { 0.0 };
        let left = if rate > 0.0 { clock((total - done) as f64 / rate) } else { "?".to_owned() };
        let month = self.last_month.lock().ok().and_then(|m| *m).map(|m| format!("{m} done: ")).unwrap_or_default();
        format!("{month}{months_done}/{months} months, {done}/{total} resource-months, {rate:.1}/s, about {left} left")
    }

    fn draw(&self) {
        let months = self.months.load(Ordering::Relaxed);
        let total = months * self.resources.load(Ordering::Relaxed);
        if total == 0 {
            return;
        }
        let done = self.done.load(Ordering::Relaxed).min(total);
        const WIDTH: u64 = 24;
        let filled = (done * WIDTH / total) as usize;
        let bar = format!("[{}{}]", "#".repeat(filled), "-".repeat(WIDTH as usize - filled));
        self.screen.draw(format!("{bar} {}", self.line()));
    }
}

/// Seconds as `m:ss` or `h:mm:ss`.
fn clock(seconds: f64) -> String {
    let s = seconds.round().max(0.0) as u64;
    if s >= 3600 {
        format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
    } else {
        format!("{}:{:02}", s / 60, s % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_reads_like_a_clock() {
        assert_eq!(clock(0.4), "0:00");
        assert_eq!(clock(75.0), "1:15");
        assert_eq!(clock(3725.0), "1:02:05");
    }

    /// A buffer standing in for the terminal.
    #[derive(Clone, Default)]
    struct Output(Arc<Mutex<Vec<u8>>>);

    impl Write for Output {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap_or_else(PoisonError::into_inner).extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// The lines a terminal shows for `bytes`: `\r` + erase-line empties the line the
    /// cursor is on, `\n` ends it; what is left unended is the bar.
    fn terminal_lines(bytes: &[u8]) -> (Vec<String>, String) {
        let (mut lines, mut current, mut rest) = (Vec::new(), Vec::new(), bytes);
        while let Some(&byte) = rest.first() {
            if rest.starts_with(CLEAR_LINE) {
                current.clear();
                rest = &rest[CLEAR_LINE.len()..];
                continue;
            }
            if byte == b'\n' {
                lines.push(String::from_utf8_lossy(&current).into_owned());
                current.clear();
            } else {
                current.push(byte);
            }
            rest = &rest[1..];
        }
        (lines, String::from_utf8_lossy(&current).into_owned())
    }

    #[test]
    fn log_lines_from_many_threads_and_a_redrawn_bar_never_cut_each_other() -> anyhow::Result<()> {
        const THREADS: usize = 8;
        const LINES: usize = 300;
        let output = Output::default();
        let screen = Screen::new(Box::new(output.clone()));
        let progress = Progress::on(screen.clone(), true);
        progress.start(2, THREADS * LINES / 2);
        let dispatch = tracing::Dispatch::new(super::super::logging::subscriber(
            super::super::LogFormat::Text,
            "info",
            false,
            screen,
        ));
        let done = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|scope| {
            // The ticker's work, as fast as it goes.
            scope.spawn(|| {
                while !done.load(Ordering::Relaxed) {
                    progress.inner.draw();
                }
            });
            let writers: Vec<_> = (0..THREADS)
                .map(|thread| {
                    let (dispatch, progress) = (&dispatch, &progress);
                    scope.spawn(move || {
                        tracing::dispatcher::with_default(dispatch, || {
                            for line in 0..LINES {
                                progress.resource_done();
                                tracing::info!("thread {thread} line {line} {}", "x".repeat(line % 97));
                            }
                        });
                    })
                })
                .collect();
            for writer in writers {
                let _ = writer.join();
            }
            done.store(true, Ordering::Relaxed);
        });
        progress.finish(None);

        let bytes = output.0.lock().unwrap_or_else(PoisonError::into_inner).clone();
        let (lines, left) = terminal_lines(&bytes);
        assert_eq!(left, "", "the finished bar is cleared");
        assert_eq!(lines.len(), THREADS * LINES, "every line once, no bar on a line of its own");
        let mut seen = std::collections::BTreeSet::new();
        for line in &lines {
            let (head, text) = line.split_once("INFO ").unwrap_or_default();
            assert!(!head.contains('[') && !head.contains("months"), "a bar in a log line: {line:?}");
            let words: Vec<&str> = text.split_once(": ").map_or(text, |(_, message)| message).split(' ').collect();
            let [_, thread, _, number, tail] = words[..] else { panic!("a cut line: {line:?}") };
            let number: usize = number.parse()?;
            assert_eq!(tail, "x".repeat(number % 97), "a cut line: {line:?}");
            assert!(seen.insert((thread.to_owned(), number)), "twice: {line:?}");
        }
        Ok(())
    }

    #[test]
    fn the_line_counts_resource_months() -> anyhow::Result<()> {
        let progress = Progress::new();
        progress.start(3, 4);
        for _ in 0..4 {
            progress.resource_done();
        }
        progress.month_done(Month::new(2024, 1)?);
        let line = progress.inner.line();
        assert!(line.starts_with("2024-01 done: 1/3 months, 4/12 resource-months, "), "{line}");
        Ok(())
    }
}
