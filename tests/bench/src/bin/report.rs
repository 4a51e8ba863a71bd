//! One report cycle for N compute resources × U users over P billing periods, with
//! latency added by both simulators to every request: the sync engine's first cycle
//! (everything new), its second cycle (nothing changed), and the one-by-one baseline
//! (`bench::baseline`: one resource at a time, its own component call and listings,
//! `set_user_usage` per user — how the Python agent works) on a fresh Waldur, which
//! must end up holding exactly what the engine stored.
//!
//! Beside each time: the floor, the writes Waldur cannot batch (one `set_usage` per
//! resource-month with a change, one per-user write per component usage with a change,
//! counted from what the simulator holds before and after) × latency ÷ concurrency.
//! Then the phases of a month timed one by one against the loaded Waldur, to show where
//! the time beyond the floor goes.
//!
//! With `--timeline` the engine talks to Waldur through a recording proxy
//! (`bench::timeline`) and each engine cycle is cut into head (before the first write),
//! writes at full concurrency, idle write slots and tail (after the last write), with
//! what Waldur was asked meanwhile.
//!
//! `cargo run --release -p bench --bin report -- --resources 1000 [--users 10]
//! [--periods 2] [--latency-ms 5] [--concurrency 8] [--no-baseline] [--timeline]`
//!
//! Run one size per process: the peak memory printed is the process's.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use bench::store::{Snapshot, Unbatchable, same_contents};
use bench::timeline::{Breakdown, Recorder, breakdown};
use bench::{baseline, peak_rss_mib, timed};
use dwdi_sim::{DwdiData, DwdiOptions, DwdiSim};
use jiff::Timestamp;
use jiff::tz::TimeZone;
use usage_agent::backends::Backends;
use usage_agent::config::AgentConfig;
use usage_agent::period::Month;
use usage_agent::report::{
    CycleOptions, FixedClock, OfferingSummary, ReportTarget, StopFlag, prepare_targets, report_offering,
};
use usage_agent::runtime::{Runtime, wit};
use waldur_sim::{RequestCounts, WaldurOptions, WaldurSim, uuid_from};

/// The moment of the cycles: mid-month, so the current month is written with `now`
/// (not held back or left out near its edges) whatever the day the benchmark runs.
const NOW: &str = "2024-06-15T12:00:00Z";
const TOKEN: &str = "bench-token";

struct Args {
    resources: usize,
    users: usize,
    periods: u32,
    latency: Duration,
    concurrency: usize,
    baseline: bool,
    timeline: bool,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        resources: 100,
        users: 10,
        periods: 2,
        latency: Duration::from_millis(5),
        concurrency: 8,
        baseline: true,
        timeline: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| anyhow::anyhow!("{flag} needs a value"));
        match flag.as_str() {
            "--resources" => args.resources = value()?.parse()?,
            "--users" => args.users = value()?.parse()?,
            "--periods" => args.periods = value()?.parse()?,
            "--latency-ms" => args.latency = Duration::from_millis(value()?.parse()?),
            "--concurrency" => args.concurrency = value()?.parse()?,
            "--no-baseline" => args.baseline = false,
            "--timeline" => args.timeline = true,
            other => bail!("unknown flag {other}"),
        }
    }
    if args.periods == 0 {
        bail!("--periods: at least 1");
    }
    Ok(args)
}

fn account(i: usize) -> String {
    format!("acct{i:05}")
}

/// One row per user and account on the 1st of each month, on one cluster; the values
/// differ from month to month.
fn dwdi_data(args: &Args, months: &[Month]) -> DwdiData {
    let mut data = DwdiData::new();
    for (k, month) in months.iter().enumerate() {
        let day = format!("{month}-01");
        for i in 0..args.resources {
            for u in 0..args.users {
                let node = ((i * 31 + u * 7 + k * 13) % 100) as f64 / 4.0 + 0.25;
                data.add_compute("alps", &account(i), &format!("u{i:05}_{u:02}"), &day, node, node * 128.0, 0.0);
            }
        }
    }
    data
}

/// A fresh Waldur with the offering, its resources and one linked offering user per
/// account. The token is staff: Waldur lets only staff back-fill a past billing period
/// of a usage-billed component, and the cycle writes `--periods` months.
async fn waldur(args: &Args, today: Month) -> Result<(WaldurSim, String)> {
    let waldur =
        bench::apart(WaldurSim::start(WaldurOptions { latency: args.latency, ..WaldurOptions::default() })).await?;
    waldur.add_token(TOKEN, "staff", true);
    waldur.set_today(i32::from(today.first_day().year()), today.first_day().month() as u32, 15);
    let offering = uuid_from("bench offering");
    waldur.add_offering(&offering, "bench", &["nodeHours", "cpuHours"]);
    for i in 0..args.resources {
        waldur.add_resource(&offering, &uuid_from(&account(i)), &account(i), "", "OK");
        waldur.add_offering_user(&offering, &format!("u{i:05}_00"));
    }
    Ok((waldur, offering))
}

fn config(args: &Args, dwdi: &DwdiSim, options: &DwdiOptions, waldur_url: &str, offering: &str) -> String {
    format!(
        "timezone: UTC\nreporting_periods: {}\nwaldur_max_concurrency: {}\nofferings:\n  - name: bench\n    waldur_api_url: {:?}\n    waldur_api_token: {TOKEN}\n    waldur_offering_uuid: {offering}\n    backend_type: cscs-dwdi-compute\n    backend_settings:\n      cscs_dwdi_api_url: {:?}\n      cscs_dwdi_client_id: {:?}\n      cscs_dwdi_client_secret: {:?}\n      cscs_dwdi_oidc_token_url: {:?}\n    backend_components:\n      nodeHours: {{unit_factor: 1}}\n      cpuHours: {{unit_factor: 1}}\n",
        args.periods,
        args.concurrency,
        waldur_url,
        dwdi.api_url(),
        options.client_id,
        options.client_secret,
        dwdi.token_url()
    )
}

async fn target(text: &str) -> Result<(ReportTarget, CycleOptions)> {
    let config = AgentConfig::parse(text)?;
    let mut targets = prepare_targets(&config, &Backends::new(Runtime::new()?)).await?;
    let options = CycleOptions::from_config(&config)?;
    match targets.pop() {
        Some(target) if targets.is_empty() => Ok((target, options)),
        _ => bail!("the config has one offering"),
    }
}

struct Row {
    run: &'static str,
    seconds: f64,
    dwdi: u64,
    waldur: RequestCounts,
    /// set_usage and per-user write requests the run made.
    set_usage: usize,
    per_user: usize,
    needed: Unbatchable,
    timeline: Option<Breakdown>,
}

async fn engine_cycle(
    run: &'static str,
    target: &ReportTarget,
    options: &CycleOptions,
    dwdi: &DwdiSim,
    waldur: &WaldurSim,
    recorder: Option<&Recorder>,
) -> Result<Row> {
    let before = Snapshot::of(waldur);
    dwdi.reset_stats();
    waldur.reset_counters();
    let clock = FixedClock(NOW.parse()?);
    if let Some(recorder) = recorder {
        recorder.take();
    }
    let start = Instant::now();
    let (summary, seconds): (OfferingSummary, f64) =
        timed(report_offering(target, options, &clock, &StopFlag::default())).await;
    let timeline = recorder.map(|r| breakdown(&r.take(), start, Instant::now(), options.concurrency));
    if summary.has_failures() || summary.skipped > 0 {
        bail!("{run}: {summary} {:?}", summary.errors);
    }
    eprintln!("  {run}: {summary}");
    Ok(Row {
        run,
        seconds,
        dwdi: dwdi.stats().api_requests,
        waldur: waldur.requests(),
        set_usage: summary.totals_submitted,
        per_user: summary.user_usage_writes,
        needed: Unbatchable::between(&before, &Snapshot::of(waldur)),
        timeline,
    })
}

async fn baseline_cycle(target: &ReportTarget, months: &[Month], dwdi: &DwdiSim, waldur: &WaldurSim) -> Result<Row> {
    let before = Snapshot::of(waldur);
    dwdi.reset_stats();
    waldur.reset_counters();
    let options = baseline::Options {
        months: months.to_vec(),
        rules: baseline::Rules::Report,
        user_usage: true,
        now: NOW.parse()?,
        time_zone: TimeZone::UTC,
    };
    let (summary, seconds) = timed(baseline::run(target, &options)).await;
    let summary = summary?;
    eprintln!("  {summary}");
    Ok(Row {
        run: "baseline: one by one, first cycle",
        seconds,
        dwdi: dwdi.stats().api_requests,
        waldur: waldur.requests(),
        set_usage: summary.set_usage,
        per_user: summary.set_user_usage,
        needed: Unbatchable::between(&before, &Snapshot::of(waldur)),
        timeline: None,
    })
}

/// One phase of a month timed alone against the loaded Waldur: its wall time and the
/// requests it made.
struct Phase {
    what: String,
    seconds: f64,
    requests: u64,
}

async fn phases(
    args: &Args,
    target: &ReportTarget,
    month: Month,
    dwdi: &DwdiSim,
    waldur: &WaldurSim,
) -> Result<Vec<Phase>> {
    let mut phases = Vec::new();
    let billing_period = month.first_day().to_string();
    let client = &target.waldur;
    let requested: Vec<wit::WaldurResource> = (0..args.resources)
        .map(|i| wit::WaldurResource { backend_id: account(i), offering_backend_id: None })
        .collect();
    dwdi.reset_stats();
    let (report, seconds) = timed(target.backend_now().usage_report(requested, month.billing_period())).await;
    report?;
    phases.push(Phase {
        what: format!("component call, {} resources (DWDI requests)", args.resources),
        seconds,
        requests: dwdi.stats().api_requests,
    });
    macro_rules! listing {
        ($what:expr, $call:expr) => {{
            waldur.reset_counters();
            let (list, seconds) = timed($call).await;
            let items = list?.len();
            phases.push(Phase {
                what: format!("{} ({items} items; pages)", $what),
                seconds,
                requests: waldur.requests().total,
            });
        }};
    }
    listing!("resources listing", client.resources(&target.offering_uuid));
    listing!("offering users listing", client.offering_users(&target.offering_uuid));
    listing!("component usages listing, one month", client.component_usages(&target.offering_uuid, &billing_period));
    listing!(
        "per-user usages listing, one month",
        client.component_user_usages(&target.offering_uuid, &billing_period)
    );
    Ok(phases)
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = parse_args()?;
    let now: Timestamp = NOW.parse()?;
    let current = Month::containing(now, &TimeZone::UTC);
    let months = current.back(args.periods);
    let options = DwdiOptions { latency: args.latency, ..DwdiOptions::default() };
    let dwdi = bench::apart(DwdiSim::start(dwdi_data(&args, &months), options.clone())).await?;

    let (waldur_sim, offering) = waldur(&args, current).await?;
    let recorder = if args.timeline { Some(bench::apart(Recorder::start(waldur_sim.addr())).await?) } else { None };
    let url = recorder.as_ref().map_or_else(|| waldur_sim.url(), Recorder::url);
    let (engine_target, cycle_options) = target(&config(&args, &dwdi, &options, &url, &offering)).await?;
    let recording = recorder.as_ref();
    let mut rows =
        vec![engine_cycle("first cycle", &engine_target, &cycle_options, &dwdi, &waldur_sim, recording).await?];
    rows.push(
        engine_cycle("second cycle (unchanged)", &engine_target, &cycle_options, &dwdi, &waldur_sim, recording).await?,
    );
    if rows[1].waldur.writes > 0 {
        bail!("the second cycle wrote to Waldur");
    }
    let engine_peak = peak_rss_mib().unwrap_or(f64::NAN);
    let phases = phases(&args, &engine_target, current, &dwdi, &waldur_sim).await?;
    let mut stored = None;
    if args.baseline {
        let (fresh, offering) = waldur(&args, current).await?;
        let (baseline_target, _) = target(&config(&args, &dwdi, &options, &fresh.url(), &offering)).await?;
        let row = baseline_cycle(&baseline_target, &months, &dwdi, &fresh).await?;
        if row.needed != rows[0].needed {
            bail!("the baseline needed {:?} writes, the engine {:?}", row.needed, rows[0].needed);
        }
        rows.push(row);
        stored = Some(same_contents("report", &waldur_sim, &fresh)?);
    }

    println!(
        "resources {} × users {} × {} periods ({}), latency {:?} per request, concurrency {}",
        args.resources,
        args.users,
        args.periods,
        months.iter().map(Month::to_string).collect::<Vec<_>>().join(", "),
        args.latency,
        args.concurrency,
    );
    println!(
        "peak RSS {engine_peak:.0} MiB after the engine's cycles, {:.0} MiB at the end (host and simulators in one process)",
        peak_rss_mib().unwrap_or(f64::NAN)
    );
    if let Some((totals, users)) = stored {
        println!("engine and baseline stored the same: {totals} component usages, {users} per-user usages");
    }
    println!();
    println!(
        "| run | wall s | floor s ({} ms) | floor s (as served) | ratio to served floor | DWDI requests | Waldur requests (reads / writes) | set_usage | per-user writes | unbatchable writes |",
        args.latency.as_millis()
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for row in &rows {
        // The floor of the work at the engine's concurrency (the baseline runs one
        // request at a time, so its own floor is 8× this): nominal, and with each write
        // as long as the simulator took to serve it.
        let floor = row.needed.floor(args.latency, args.concurrency);
        let served = row.needed.served_floor(&row.waldur, args.concurrency).filter(|f| *f > 0.0);
        let ratio = served.map_or_else(|| "–".to_owned(), |f| format!("{:.2}", row.seconds / f));
        println!(
            "| {} | {:.2} | {:.3} | {} | {ratio} | {} | {} ({} / {}) | {} | {} | {} |",
            row.run,
            row.seconds,
            floor,
            served.map_or_else(|| "–".to_owned(), |f| format!("{f:.3}")),
            row.dwdi,
            row.waldur.total,
            row.waldur.reads,
            row.waldur.writes,
            row.set_usage,
            row.per_user,
            row.needed.total()
        );
    }
    for row in &rows {
        if let Some(timeline) = &row.timeline {
            println!("\n{}", timeline.markdown(&format!("Engine, {}", row.run)));
        }
    }
    println!("\nPhases of one month ({current}), each timed alone against the loaded Waldur:\n");
    println!("| phase | ms | requests |");
    println!("|---|---:|---:|");
    for phase in phases {
        println!("| {} | {:.1} | {} |", phase.what, phase.seconds * 1000.0, phase.requests);
    }
    Ok(())
}
