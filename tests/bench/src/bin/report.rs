//! One report cycle for N compute resources × U users, with latency added by both
//! simulators to every request, in three runs: the first cycle (everything new), a
//! second cycle (nothing changed), and the sequential baseline (one resource at a time,
//! per-resource listings: how the Python agent works) on a fresh Waldur.
//!
//! `cargo run --release -p bench --bin report -- --resources 1000 [--users 10]
//! [--latency-ms 5] [--concurrency 8] [--no-baseline]`
//!
//! Run one size per process: the peak memory printed is the process's.

use std::time::Duration;

use anyhow::{Result, bail};
use bench::{peak_rss_mib, timed};
use dwdi_sim::{DwdiData, DwdiOptions, DwdiSim};
use usage_agent::backends::Backends;
use usage_agent::config::AgentConfig;
use usage_agent::period::Month;
use usage_agent::report::{CycleOptions, OfferingSummary, StopFlag, SystemClock, prepare_targets, report_offering};
use usage_agent::runtime::Runtime;
use waldur_sim::{WaldurOptions, WaldurSim, uuid_from};

struct Args {
    resources: usize,
    users: usize,
    latency: Duration,
    concurrency: usize,
    baseline: bool,
}

fn parse_args() -> Result<Args> {
    let mut args =
        Args { resources: 100, users: 10, latency: Duration::from_millis(5), concurrency: 8, baseline: true };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| anyhow::anyhow!("{flag} needs a value"));
        match flag.as_str() {
            "--resources" => args.resources = value()?.parse()?,
            "--users" => args.users = value()?.parse()?,
            "--latency-ms" => args.latency = Duration::from_millis(value()?.parse()?),
            "--concurrency" => args.concurrency = value()?.parse()?,
            "--no-baseline" => args.baseline = false,
            other => bail!("unknown flag {other}"),
        }
    }
    Ok(args)
}

fn account(i: usize) -> String {
    format!("acct{i:05}")
}

/// One row per user and account on the 1st of `month`, on one cluster.
fn dwdi_data(args: &Args, month: Month) -> DwdiData {
    let mut data = DwdiData::new();
    let day = format!("{month}-01");
    for i in 0..args.resources {
        for u in 0..args.users {
            let node = ((i * 31 + u * 7) % 100) as f64 / 4.0 + 0.25;
            data.add_compute("alps", &account(i), &format!("u{i:05}_{u:02}"), &day, node, node * 128.0, 0.0);
        }
    }
    data
}

async fn waldur(args: &Args) -> Result<(WaldurSim, String)> {
    let waldur = WaldurSim::start(WaldurOptions { latency: args.latency, ..WaldurOptions::default() }).await?;
    waldur.add_token("bench-token", "provider", false);
    let offering = uuid_from("bench offering");
    waldur.add_offering(&offering, "bench", &["nodeHours", "cpuHours"]);
    for i in 0..args.resources {
        waldur.add_resource(&offering, &uuid_from(&account(i)), &account(i), "", "OK");
        // One linked offering user per account.
        waldur.add_offering_user(&offering, &format!("u{i:05}_00"));
    }
    Ok((waldur, offering))
}

fn config(dwdi: &DwdiSim, options: &DwdiOptions, waldur: &WaldurSim, offering: &str, concurrency: usize) -> String {
    format!(
        "reporting_periods: 1\nwaldur_max_concurrency: {concurrency}\nofferings:\n  - name: bench\n    waldur_api_url: {:?}\n    waldur_api_token: bench-token\n    waldur_offering_uuid: {offering}\n    backend_type: cscs-dwdi-compute\n    backend_settings:\n      cscs_dwdi_api_url: {:?}\n      cscs_dwdi_client_id: {:?}\n      cscs_dwdi_client_secret: {:?}\n      cscs_dwdi_oidc_token_url: {:?}\n    backend_components:\n      nodeHours: {{unit_factor: 1}}\n      cpuHours: {{unit_factor: 1}}\n",
        waldur.url(),
        dwdi.api_url(),
        options.client_id,
        options.client_secret,
        dwdi.token_url()
    )
}

struct Row {
    run: &'static str,
    seconds: f64,
    dwdi: u64,
    waldur: u64,
    writes: u64,
    summary: OfferingSummary,
}

async fn cycle(run: &'static str, text: &str, sequential: bool, dwdi: &DwdiSim, waldur: &WaldurSim) -> Result<Row> {
    let config = AgentConfig::parse(text)?;
    let targets = prepare_targets(&config, &Backends::new(Runtime::new()?)).await?;
    let mut options = CycleOptions::from_config(&config)?;
    options.sequential = sequential;
    if sequential {
        options.concurrency = 1;
    }
    dwdi.reset_stats();
    waldur.reset_counters();
    let (summary, seconds) = timed(report_offering(&targets[0], &options, &SystemClock, &StopFlag::default())).await;
    if summary.failed > 0 {
        bail!("{run}: {summary} {:?}", summary.errors);
    }
    let counts = waldur.requests();
    Ok(Row { run, seconds, dwdi: dwdi.stats().api_requests, waldur: counts.total, writes: counts.writes, summary })
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = parse_args()?;
    let month = Month::containing(jiff::Timestamp::now(), &jiff::tz::TimeZone::UTC);
    let options = DwdiOptions { latency: args.latency, ..DwdiOptions::default() };
    let dwdi = DwdiSim::start(dwdi_data(&args, month), options.clone()).await?;

    let (waldur_sim, offering) = waldur(&args).await?;
    let text = config(&dwdi, &options, &waldur_sim, &offering, args.concurrency);
    let mut rows = vec![cycle("first cycle", &text, false, &dwdi, &waldur_sim).await?];
    rows.push(cycle("second cycle (unchanged)", &text, false, &dwdi, &waldur_sim).await?);
    if args.baseline {
        let (fresh, offering) = waldur(&args).await?;
        let text = config(&dwdi, &options, &fresh, &offering, 1);
        rows.push(cycle("baseline: sequential, first cycle", &text, true, &dwdi, &fresh).await?);
    }
    println!(
        "resources {} × users {}, latency {:?} per request, concurrency {}, peak RSS {:.0} MiB (host and both simulators in one process)",
        args.resources,
        args.users,
        args.latency,
        args.concurrency,
        peak_rss_mib().unwrap_or(f64::NAN)
    );
    println!("| run | wall s | DWDI requests | Waldur requests | of which writes | floor s |");
    println!("|---|---:|---:|---:|---:|---:|");
    for row in rows {
        // The floor: writes at the allowed concurrency, each one round trip.
        let lanes = if row.run.starts_with("baseline") { 1.0 } else { args.concurrency as f64 };
        let floor = row.writes as f64 / lanes * args.latency.as_secs_f64();
        println!(
            "| {} | {:.2} | {} | {} | {} | {:.2} |",
            row.run, row.seconds, row.dwdi, row.waldur, row.writes, floor
        );
        eprintln!("  {}", row.summary);
    }
    Ok(())
}
