//! Shared helpers of the benchmark binaries in `src/bin/`. Each binary prints a
//! Markdown table for BENCHMARKS.md; run them with `cargo run --release -p bench --bin NAME`.

use std::future::Future;
use std::sync::OnceLock;
use std::time::Instant;

use anyhow::anyhow;
use tokio::runtime::{Builder, Runtime};

pub mod baseline;
pub mod store;
pub mod timeline;

/// Runs `start` (a simulator's or the recording proxy's start) on a runtime of its own,
/// where the tasks it spawns then live: a real Waldur or DWDI runs beside the agent, not
/// on its runtime, so a simulator's CPU work competes with the host for the cores but
/// cannot hold up the host's tasks.
pub async fn apart<T, F>(start: F) -> anyhow::Result<T>
where
    F: Future<Output = anyhow::Result<T>> + Send + 'static,
    T: Send + 'static,
{
    static SERVERS: OnceLock<std::io::Result<Runtime>> = OnceLock::new();
    let runtime = SERVERS.get_or_init(|| Builder::new_multi_thread().thread_name("servers").enable_all().build());
    let runtime = runtime.as_ref().map_err(|e| anyhow!("the servers' runtime: {e}"))?;
    runtime.spawn(start).await?
}

/// Runs `f` and returns its result and wall time in seconds.
pub async fn timed<T, F: std::future::Future<Output = T>>(f: F) -> (T, f64) {
    let start = Instant::now();
    let value = f.await;
    (value, start.elapsed().as_secs_f64())
}

/// Peak resident memory of this process in MiB (Linux `VmHWM`), if known.
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// The median of `values` (sorted in place).
pub fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}
