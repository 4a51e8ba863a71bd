//! Start-up of a fresh install: from starting the service to the end of its first
//! cycle, as systemd runs it — `check-config` (the unit's `ExecStartPre`), then `report`
//! (here `--once`, which exits after the cycle) — on a cold compiled cache (the
//! baseline: every component compiled at start) and on the cache the Debian package's
//! postinst fills (`usage-agent plugins`, the built-in components compiled at install).
//! Whole processes of the binary under test, against the simulators of its own
//! `demo --serve`; the two cases alternate, each in a fresh cache folder.
//!
//! Run: `cargo run -p bench --bin startup -- --binary PATH [--runs N]` (PATH e.g. the
//! release command's static binary; this program only starts processes and times them,
//! so its own build profile does not matter).

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use anyhow::{Context as _, Result, bail, ensure};
use bench::median;

/// Runs `binary args` with `CACHE_DIRECTORY=cache`; its wall time in milliseconds.
fn timed(binary: &Path, args: &[&str], cache: &Path) -> Result<f64> {
    let started = Instant::now();
    let output = Command::new(binary)
        .args(args)
        .env("CACHE_DIRECTORY", cache)
        .env_remove("RUST_LOG")
        .output()
        .with_context(|| format!("cannot run {}", binary.display()))?;
    let millis = started.elapsed().as_secs_f64() * 1000.0;
    ensure!(
        output.status.success(),
        "{} {args:?} failed: {}",
        binary.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(millis)
}

/// `demo --serve` of the binary under test, once its simulators answer.
fn serve_demo(binary: &Path, config: &Path) -> Result<Child> {
    let mut child = Command::new(binary)
        .arg("demo")
        .arg("--serve")
        .arg(config)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot start demo --serve")?;
    let stdout = child.stdout.take().context("no stdout")?;
    let ready = BufReader::new(stdout).lines().map_while(Result::ok).any(|l| l.contains("Ctrl-C stops the simulators"));
    if !ready {
        let _ = child.kill();
        bail!("demo --serve stopped before its simulators were up");
    }
    Ok(child)
}

struct Start {
    check_config: f64,
    report: f64,
}

/// One start of the service: check-config, then one cycle.
fn start(binary: &Path, config: &str, cache: &Path) -> Result<Start> {
    let check_config = timed(binary, &["check-config", "-c", config], cache)?;
    let report = timed(binary, &["report", "--once", "-c", config], cache)?;
    Ok(Start { check_config, report })
}

fn main() -> Result<()> {
    let mut binary = None;
    let mut runs = 5usize;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--binary" => binary = args.next().map(PathBuf::from),
            "--runs" => runs = args.next().context("--runs needs a number")?.parse().context("--runs")?,
            other => bail!("unknown argument {other:?}; usage: startup --binary PATH [--runs N]"),
        }
    }
    let binary = binary.context("usage: startup --binary PATH [--runs N]")?;
    let dir = tempfile::tempdir()?;
    let config_path = dir.path().join("demo.yaml");
    let config = config_path.to_string_lossy().into_owned();
    let mut demo = serve_demo(&binary, &config_path)?;

    let result = (|| -> Result<()> {
        // The first cycle writes the demo's usage; every measured one then finds it
        // unchanged, cold or warm alike.
        start(&binary, &config, &dir.path().join("first"))?;
        let (mut cold, mut warm, mut warm_up) = (Vec::new(), Vec::new(), Vec::new());
        for run in 0..runs {
            let cache = dir.path().join(format!("cold-{run}"));
            cold.push(start(&binary, &config, &cache)?);
            let cache = dir.path().join(format!("warm-{run}"));
            // What postinst runs.
            warm_up.push(timed(&binary, &["plugins"], &cache)?);
            warm.push(start(&binary, &config, &cache)?);
        }
        let row = |name: &str, starts: &[Start]| {
            let mut pre: Vec<f64> = starts.iter().map(|s| s.check_config).collect();
            let mut report: Vec<f64> = starts.iter().map(|s| s.report).collect();
            let mut total: Vec<f64> = starts.iter().map(|s| s.check_config + s.report).collect();
            println!("| {name} | {:.0} | {:.0} | {:.0} |", median(&mut pre), median(&mut report), median(&mut total));
        };
        println!(
            "Binary: {} ({} bytes); median of {runs} runs.\n",
            binary.display(),
            std::fs::metadata(&binary)?.len()
        );
        println!("| compiled cache | check-config (ms) | report --once (ms) | start to first cycle (ms) |");
        println!("|---|---:|---:|---:|");
        row("cold (baseline)", &cold);
        row("filled at install", &warm);
        println!("\nFilling the cache (`usage-agent plugins`, the postinst step): {:.0} ms", median(&mut warm_up));
        Ok(())
    })();
    let _ = demo.kill();
    let _ = demo.wait();
    result
}
