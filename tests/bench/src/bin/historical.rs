//! `load-historical-usage` at scale: M months × N resources × U users, 5 ms added to
//! every simulator request, with and without per-user usage: the sync engine, then the
//! engine again over the loaded months (which must write nothing), and the one-by-one
//! baseline (`bench::baseline`: one resource and one user at a time, a component call
//! and listings per resource and month, `set_user_usage` per user, one request in
//! flight — the Python tool's way). Each first run starts from an empty Waldur; the
//! baseline must end up holding exactly what the engine stored.
//!
//! Beside each time: the floor, the writes Waldur cannot batch (one `set_usage` per
//! resource-month with a change, one per-user write per component usage with a change,
//! counted from what the simulator holds before and after) × 5 ms ÷ the concurrency.
//!
//! With `--timeline` the engine talks to Waldur through a recording proxy
//! (`bench::timeline`) and each engine run is cut into head, writes at full
//! concurrency, idle write slots and tail, with what Waldur was asked meanwhile.
//!
//! Run: `cargo run --release -p bench --bin historical [-- --accounts N --users N
//! --months N --no-baseline --timeline]` (default 12 months × 200 accounts × 10 users).

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use bench::baseline;
use bench::store::{Snapshot, Unbatchable, same_contents};
use bench::timeline::{Breakdown, Recorder, breakdown};
use dwdi_sim::{DwdiData, DwdiOptions, DwdiSim};
use usage_agent::backends::Backends;
use usage_agent::config::{AgentConfig, Secret};
use usage_agent::historical::{self, HistoricalOptions, HistoricalTarget, NoObserver};
use usage_agent::period::Month;
use usage_agent::report::{DEFAULT_CONCURRENCY, StopFlag};
use usage_agent::runtime::Runtime;
use waldur_sim::{WaldurOptions, WaldurSim, uuid_from};

const LATENCY: Duration = Duration::from_millis(5);
const STAFF: &str = "bench-staff-token";

struct Size {
    accounts: usize,
    users: usize,
    months: u32,
    baseline: bool,
    timeline: bool,
}

fn size_from_args() -> Result<Size> {
    let mut size = Size { accounts: 200, users: 10, months: 12, baseline: true, timeline: false };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        if args[i] == "--no-baseline" || args[i] == "--timeline" {
            size.baseline &= args[i] != "--no-baseline";
            size.timeline |= args[i] == "--timeline";
            i += 1;
            continue;
        }
        let value = args.get(i + 1).map(|v| v.parse::<usize>());
        match (args[i].as_str(), value) {
            ("--accounts", Some(Ok(n))) => size.accounts = n,
            ("--users", Some(Ok(n))) => size.users = n,
            ("--months", Some(Ok(n))) if (1..=12).contains(&n) => size.months = n as u32,
            (flag, _) => bail!("{flag}: expected --accounts N, --users N, --months 1..12, --no-baseline or --timeline"),
        }
        i += 2;
    }
    Ok(size)
}

/// One measured run.
struct Row {
    label: String,
    seconds: f64,
    waldur: waldur_sim::RequestCounts,
    dwdi_requests: u64,
    set_usage: usize,
    per_user: usize,
    user_values: usize,
    needed: Unbatchable,
    timeline: Option<Breakdown>,
}

/// A fresh Waldur with the offering and its resources, and a config pointing at it.
async fn fresh_waldur(
    dwdi: &DwdiSim,
    options: &DwdiOptions,
    data: &DwdiData,
    timeline: bool,
) -> Result<(WaldurSim, Option<Recorder>, String, AgentConfig)> {
    let waldur = bench::apart(WaldurSim::start(WaldurOptions { latency: LATENCY, ..WaldurOptions::default() })).await?;
    waldur.add_token(STAFF, "admin", true);
    waldur.set_today(2024, 6, 15);
    let offering = uuid_from("bench compute");
    waldur.add_offering(&offering, "compute", &["nodeHours", "cpuHours"]);
    for account in data.accounts() {
        waldur.add_resource(&offering, &uuid_from(&account), &account, "", "OK");
    }
    let recorder = if timeline { Some(bench::apart(Recorder::start(waldur.addr())).await?) } else { None };
    let text = format!(
        "timezone: UTC\nofferings:\n  - name: compute\n    waldur_api_url: {url:?}\n    waldur_api_token: unused\n    waldur_offering_uuid: {offering}\n    backend_type: cscs-dwdi-compute\n    backend_settings:\n      cscs_dwdi_api_url: {api:?}\n      cscs_dwdi_client_id: {id:?}\n      cscs_dwdi_client_secret: {secret:?}\n      cscs_dwdi_oidc_token_url: {token:?}\n    backend_components:\n      nodeHours: {{measured_unit: node-hours, unit_factor: 1, accounting_type: usage, label: Node Hours}}\n      cpuHours: {{measured_unit: cpu-hours, unit_factor: 1, accounting_type: usage, label: CPU Hours}}\n",
        url = recorder.as_ref().map_or_else(|| waldur.url(), Recorder::url),
        api = dwdi.api_url(),
        id = options.client_id,
        secret = options.client_secret,
        token = dwdi.token_url(),
    );
    Ok((waldur, recorder, offering, AgentConfig::parse(&text)?))
}

async fn prepare(config: &AgentConfig, offering: &str) -> Result<HistoricalTarget> {
    let backends = Backends::new(Runtime::new()?);
    historical::prepare(config, offering, Some(Secret::new(STAFF)), &backends).await
}

/// The engine (`load-historical-usage`) over `options`.
async fn engine(
    label: &str,
    waldur: &WaldurSim,
    dwdi: &DwdiSim,
    target: &HistoricalTarget,
    options: &HistoricalOptions,
    recorder: Option<&Recorder>,
) -> Result<Row> {
    let before = Snapshot::of(waldur);
    waldur.reset_counters();
    dwdi.reset_stats();
    if let Some(recorder) = recorder {
        recorder.take();
    }
    let start = Instant::now();
    let (summary, seconds) = bench::timed(historical::load(target, options, &StopFlag::default(), &NoObserver)).await;
    let timeline = recorder.map(|r| breakdown(&r.take(), start, Instant::now(), options.concurrency));
    let summary = summary?;
    if summary.has_failures() || summary.skipped > 0 {
        bail!("{label}: {summary}\n{:?}", summary.errors);
    }
    let stats = dwdi.stats();
    eprintln!("{label}: {summary}");
    Ok(Row {
        label: label.to_owned(),
        seconds,
        waldur: waldur.requests(),
        dwdi_requests: stats.api_requests + stats.token_requests,
        set_usage: summary.totals_submitted,
        per_user: summary.user_usage_writes,
        user_values: summary.user_usages_submitted,
        needed: Unbatchable::between(&before, &Snapshot::of(waldur)),
        timeline,
    })
}

/// The one-by-one baseline over the same months.
async fn one_by_one(
    label: &str,
    waldur: &WaldurSim,
    dwdi: &DwdiSim,
    target: &HistoricalTarget,
    options: &HistoricalOptions,
) -> Result<Row> {
    let before = Snapshot::of(waldur);
    waldur.reset_counters();
    dwdi.reset_stats();
    let options = baseline::Options {
        months: options.months.clone(),
        rules: baseline::Rules::Historical,
        user_usage: options.user_usage,
        now: jiff::Timestamp::now(),
        time_zone: options.time_zone.clone(),
    };
    let (summary, seconds) = bench::timed(baseline::run(target, &options)).await;
    let summary = summary?;
    let stats = dwdi.stats();
    eprintln!("{label}: {summary}");
    Ok(Row {
        label: label.to_owned(),
        seconds,
        waldur: waldur.requests(),
        dwdi_requests: stats.api_requests + stats.token_requests,
        set_usage: summary.set_usage,
        per_user: summary.set_user_usage,
        user_values: summary.set_user_usage,
        needed: Unbatchable::between(&before, &Snapshot::of(waldur)),
        timeline: None,
    })
}

#[tokio::main]
async fn main() -> Result<()> {
    let size = size_from_args()?;
    let months: Vec<(i32, u32)> = (1..=size.months).map(|m| (2023, m)).collect();
    eprintln!("generating DWDI data: {} accounts × {} users × {} months", size.accounts, size.users, size.months);
    let data = DwdiData::generated(size.accounts, size.users, &months);
    let dwdi_options = DwdiOptions { latency: LATENCY, ..DwdiOptions::default() };
    let dwdi = bench::apart(DwdiSim::start(data.clone(), dwdi_options.clone())).await?;
    let base = HistoricalOptions {
        months: months.iter().map(|&(y, m)| Month::new(y as i16, m as i8)).collect::<Result<_>>()?,
        user_usage: true,
        dry_run: false,
        reconcile_stale: false,
        resources: Vec::new(),
        concurrency: DEFAULT_CONCURRENCY,
        time_zone: jiff::tz::TimeZone::UTC,
    };
    let mut rows = Vec::new();
    let mut stored = Vec::new();
    for (user_usage, what) in [(true, "totals + per-user"), (false, "totals only (--skip-user-usage)")] {
        let options = HistoricalOptions { user_usage, ..base.clone() };
        let (waldur, recorder, offering, config) = fresh_waldur(&dwdi, &dwdi_options, &data, size.timeline).await?;
        let target = prepare(&config, &offering).await?;
        let recording = recorder.as_ref();
        rows.push(engine(&format!("{what}, engine"), &waldur, &dwdi, &target, &options, recording).await?);
        let first = rows.len() - 1;
        let again = format!("{what}, engine, second run");
        rows.push(engine(&again, &waldur, &dwdi, &target, &options, recording).await?);
        if rows.last().is_some_and(|r| r.waldur.writes > 0) {
            bail!("{what}: a second run wrote to Waldur");
        }
        if size.baseline {
            let (fresh, _, offering, config) = fresh_waldur(&dwdi, &dwdi_options, &data, false).await?;
            let target = prepare(&config, &offering).await?;
            let row = one_by_one(&format!("{what}, one by one (baseline)"), &fresh, &dwdi, &target, &options).await?;
            if row.needed != rows[first].needed {
                bail!("{what}: the baseline needed {:?} writes, the engine {:?}", row.needed, rows[first].needed);
            }
            rows.push(row);
            let (totals, users) = same_contents(what, &waldur, &fresh)?;
            stored.push(format!(
                "{what}: engine and baseline stored the same {totals} component usages and {users} per-user usages."
            ));
        }
    }

    println!(
        "{} months × {} resources × {} users, {} ms added to every simulator request, write concurrency {} (engine), release build\n",
        size.months,
        size.accounts,
        size.users,
        LATENCY.as_millis(),
        DEFAULT_CONCURRENCY
    );
    println!(
        "| run | wall s | floor s ({} ms) | floor s (as served) | ratio to served floor | Waldur requests (reads / writes) | DWDI requests | set_usage | per-user writes (values) | unbatchable writes |",
        LATENCY.as_millis()
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for row in &rows {
        // The floor of the work at the engine's concurrency (a baseline runs one request
        // at a time): nominal, and with each write as long as the simulator took to serve it.
        let floor = row.needed.floor(LATENCY, DEFAULT_CONCURRENCY);
        let served = row.needed.served_floor(&row.waldur, DEFAULT_CONCURRENCY).filter(|f| *f > 0.0);
        let ratio = served.map_or_else(|| "–".to_owned(), |f| format!("{:.2}", row.seconds / f));
        println!(
            "| {} | {:.2} | {:.3} | {} | {ratio} | {} ({} / {}) | {} | {} | {} ({}) | {} |",
            row.label,
            row.seconds,
            floor,
            served.map_or_else(|| "–".to_owned(), |f| format!("{f:.3}")),
            row.waldur.total,
            row.waldur.reads,
            row.waldur.writes,
            row.dwdi_requests,
            row.set_usage,
            row.per_user,
            row.user_values,
            row.needed.total()
        );
    }
    for row in &rows {
        if let Some(timeline) = &row.timeline {
            println!("\n{}", timeline.markdown(&row.label));
        }
    }
    println!();
    for line in stored {
        println!("{line}");
    }
    if let Some(peak) = bench::peak_rss_mib() {
        println!("\nPeak RSS of the benchmark process (simulators included): {peak:.0} MiB");
    }
    Ok(())
}
