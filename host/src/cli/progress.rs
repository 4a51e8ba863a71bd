//! Progress of long commands: a bar redrawn in place on a terminal, plain log lines
//! otherwise (journald and CI logs do not want carriage returns).
//!
//! Deliberately dependency-free: one `\r`-redrawn line on stderr. Log lines share
//! stderr, so the log writer ([`log_writer`]) clears the bar before each line and the
//! next tick draws it again below.

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::period::Month;

/// Set while a bar is on screen.
static BAR_SHOWN: AtomicBool = AtomicBool::new(false);

/// How often the bar is redrawn.
const TICK: Duration = Duration::from_millis(200);

/// The writer of log lines: stderr, with the bar cleared first when one is shown.
pub(crate) fn log_writer() -> std::io::Stderr {
    let stderr = std::io::stderr();
    if BAR_SHOWN.swap(false, Ordering::SeqCst) {
        let _ = stderr.lock().write_all(b"\r\x1b[2K");
    }
    stderr
}

/// Counters of a run measured in resource-months.
pub(crate) struct Progress {
    inner: Arc<Counters>,
}

struct Counters {
    terminal: bool,
    started: Mutex<Option<Instant>>,
    months: AtomicU64,
    resources: AtomicU64,
    months_done: AtomicU64,
    done: AtomicU64,
    last_month: Mutex<Option<Month>>,
}

impl Progress {
    pub(crate) fn new() -> Self {
        Self {
            inner: Arc::new(Counters {
                terminal: std::io::stderr().is_terminal(),
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
        if BAR_SHOWN.swap(false, Ordering::SeqCst) {
            let _ = std::io::stderr().lock().write_all(b"\r\x1b[2K");
        }
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
        let mut stderr = std::io::stderr().lock();
        let _ = write!(stderr, "\r\x1b[2K{bar} {}", self.line());
        let _ = stderr.flush();
        BAR_SHOWN.store(true, Ordering::SeqCst);
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
