//! Shared helpers of the benchmark binaries in `src/bin/`. Each binary prints a
//! Markdown table for BENCHMARKS.md; run them with `cargo run --release -p bench --bin NAME`.

use std::time::Instant;

pub mod baseline;
pub mod store;
pub mod timeline;

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
