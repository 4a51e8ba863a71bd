//! What the host holds on a component's behalf is the component's memory: header maps
//! and unsent requests a hostile component piles up count toward
//! `component_limits.memory_mib` with its linear memory, so the call fails naming that
//! setting while the process grows by a bounded amount, and another offering in the same
//! cycle keeps writing to Waldur.
//!
//! One test in this binary: it measures the process's peak resident set, which other
//! tests running beside it would move.

use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use e2e::SideBySide;

const MEMORY_MIB: u64 = 32;
const MIB: u64 = 1 << 20;

/// A field of `/proc/self/status` in bytes (`VmRSS`, `VmHWM`: kB there).
fn status_bytes(field: &str) -> Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let line = status.lines().find(|l| l.starts_with(field)).with_context(|| format!("no {field} in status"))?;
    let kb: u64 = line.split_whitespace().nth(1).context("no value")?.parse()?;
    Ok(kb * 1024)
}

/// The resident set now, from `/proc/self/statm` (pages; 4 KiB pages on the machines
/// this runs on, checked against `VmRSS`).
fn resident() -> Result<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm")?;
    let pages: u64 = statm.split_whitespace().nth(1).context("statm")?.parse()?;
    Ok(pages * 4096)
}

/// Runs `cycle` and returns its outcome and how far the process's peak resident set
/// rose above the resident set at its start (the peak is reset first: `clear_refs` 5).
async fn peak_growth<T>(cycle: impl std::future::Future<Output = Result<T>>) -> Result<(T, u64)> {
    std::fs::write("/proc/self/clear_refs", "5").context("cannot reset the peak resident set")?;
    let before = resident()?;
    let rss = status_bytes("VmRSS:")?;
    ensure!(before.abs_diff(rss) < 4 * MIB, "statm says {before}, status says {rss}: not 4 KiB pages?");
    let outcome = cycle.await?;
    let peak = status_bytes("VmHWM:")?;
    Ok((outcome, peak.saturating_sub(before)))
}

#[tokio::test(flavor = "multi_thread")]
async fn what_the_host_holds_for_a_component_counts_toward_memory_mib() -> Result<()> {
    e2e::log::capture();
    let top = format!("component_limits:\n  memory_mib: {MEMORY_MIB}\n");
    // 10,000 full header maps are 200 MiB (1.2 GiB at wasi-http's default 128 KiB a
    // map); then 10,000 unsent requests, each with a full map and a 60 KB path.
    // Each counts for 20 KiB (a full map) or 81 KiB (a map, the path, the entry): 32 MiB
    // hold 1,638 or 404 of them, so the probe never says it held 2,000 or 500.
    for (name, settings, held, never) in [
        ("maps", "      probe: headers\n      count: 10000\n      values: 4\n      bytes: 4096\n", "header maps", 2000),
        (
            "requests",
            "      probe: headers\n      count: 10000\n      values: 4\n      bytes: 4096\n      path_bytes: 60000\n",
            "requests not sent",
            500,
        ),
    ] {
        let world = SideBySide::start(name, &["h0", "h1"]).await?;
        let text = world.config(&top, settings);
        let targets = world.targets(&text).await?;
        // Let the compile and load settle before measuring.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let ((good, bad), growth) = peak_growth(world.cycle(&text, &targets)).await?;
        eprintln!("{held}: peak resident set {:.1} MiB above the start", growth as f64 / MIB as f64);
        // The other offering wrote (the first time) or found everything unchanged.
        world.check_compute_reported(&good)?;

        // The probe's call failed on its memory limit, naming what the host held.
        ensure!((bad.submitted, bad.failed) == (0, 2), "{bad:?}");
        let error = bad.errors.join("\n");
        // Shown with --nocapture: what an operator reads.
        eprintln!("{error}");
        for want in [
            "component probe stopped: memory limit exceeded: the host would hold ",
            held,
            &format!("limit {MEMORY_MIB} MiB (setting component_limits.memory_mib)"),
        ] {
            ensure!(error.contains(want), "missing {want:?} in {error}");
        }
        ensure!(world.hostile_stored("h0").is_none(), "nothing of a stopped call is written");
        ensure!(!world.hostile_log("probe: headers: 0 held").is_empty(), "the probe got going");
        ensure!(world.hostile_log(&format!("probe: headers: {never} held")).is_empty(), "the probe went too far");

        // The process: at most the two calls' memory limits (the probe's, and the
        // compute component's, which needs far less), and 16 MiB for what the host holds
        // beside them (answers being read, the instances, allocator slack). Unbounded,
        // the first run alone takes 200 MiB.
        let bound = 2 * MEMORY_MIB * MIB + 16 * MIB;
        ensure!(growth <= bound, "{held}: the process grew by {} MiB, more than {} MiB", growth / MIB, bound / MIB);
    }

    // One header map past its own bound stops the call at once, naming that bound.
    let world = SideBySide::start("big-map", &["h0", "h1"]).await?;
    let text = world.config(&top, "      probe: headers\n      count: 1\n      values: 10\n      bytes: 4096\n");
    let targets = world.targets(&text).await?;
    let (good, bad) = world.cycle(&text, &targets).await?;
    world.check_compute_reported(&good)?;
    ensure!((bad.submitted, bad.failed) == (0, 2), "{bad:?}");
    let error = bad.errors.join("\n");
    ensure!(
        error.contains("component probe stopped: header map size limit exceeded: a header map would hold more than 20 KiB, the most the host keeps for one"),
        "{error}"
    );
    Ok(())
}
