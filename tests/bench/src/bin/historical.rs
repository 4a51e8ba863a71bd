//! `load-historical-usage` at scale: 12 months × 200 resources × 10 users, 5 ms added to
//! every simulator request, with and without per-user usage, batched and one resource
//! and one user at a time (the Python tool's way, the baseline: the same code path in
//! `Strategy::OneByOne`). Each run starts from an empty Waldur; the batched runs are
//! then repeated over the loaded months, which must write nothing.
//!
//! Run: `cargo run --release -p bench --bin historical [-- --accounts N --users N --months N]`.

use std::time::Duration;

use anyhow::{Result, bail};
use dwdi_sim::{DwdiData, DwdiOptions, DwdiSim};
use usage_agent::backends::Backends;
use usage_agent::config::{AgentConfig, Secret};
use usage_agent::historical::{self, HistoricalOptions, HistoricalSummary, NoObserver, Strategy};
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
}

fn size_from_args() -> Result<Size> {
    let mut size = Size { accounts: 200, users: 10, months: 12 };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let value = args.get(i + 1).map(|v| v.parse::<usize>());
        match (args[i].as_str(), value) {
            ("--accounts", Some(Ok(n))) => size.accounts = n,
            ("--users", Some(Ok(n))) => size.users = n,
            ("--months", Some(Ok(n))) if (1..=12).contains(&n) => size.months = n as u32,
            (flag, _) => bail!("{flag}: expected --accounts N, --users N or --months 1..12"),
        }
        i += 2;
    }
    Ok(size)
}

/// One measured run.
struct Row {
    label: String,
    summary: HistoricalSummary,
    seconds: f64,
    waldur: waldur_sim::RequestCounts,
    dwdi_requests: u64,
}

/// A fresh Waldur with the offering and its resources, and a config pointing at it.
async fn fresh_waldur(
    dwdi: &DwdiSim,
    options: &DwdiOptions,
    data: &DwdiData,
) -> Result<(WaldurSim, String, AgentConfig)> {
    let waldur = WaldurSim::start(WaldurOptions { latency: LATENCY, ..WaldurOptions::default() }).await?;
    waldur.add_token(STAFF, "admin", true);
    waldur.set_today(2024, 6, 15);
    let offering = uuid_from("bench compute");
    waldur.add_offering(&offering, "compute", &["nodeHours", "cpuHours"]);
    for account in data.accounts() {
        waldur.add_resource(&offering, &uuid_from(&account), &account, "", "OK");
    }
    let text = format!(
        "timezone: UTC\nofferings:\n  - name: compute\n    waldur_api_url: {url:?}\n    waldur_api_token: unused\n    waldur_offering_uuid: {offering}\n    backend_type: cscs-dwdi-compute\n    backend_settings:\n      cscs_dwdi_api_url: {api:?}\n      cscs_dwdi_client_id: {id:?}\n      cscs_dwdi_client_secret: {secret:?}\n      cscs_dwdi_oidc_token_url: {token:?}\n    backend_components:\n      nodeHours: {{measured_unit: node-hours, unit_factor: 1, accounting_type: usage, label: Node Hours}}\n      cpuHours: {{measured_unit: cpu-hours, unit_factor: 1, accounting_type: usage, label: CPU Hours}}\n",
        url = waldur.url(),
        api = dwdi.api_url(),
        id = options.client_id,
        secret = options.client_secret,
        token = dwdi.token_url(),
    );
    Ok((waldur, offering, AgentConfig::parse(&text)?))
}

async fn measure(
    label: &str,
    waldur: &WaldurSim,
    dwdi: &DwdiSim,
    config: &AgentConfig,
    offering: &str,
    options: &HistoricalOptions,
) -> Result<Row> {
    let backends = Backends::new(Runtime::new()?);
    let target = historical::prepare(config, offering, Some(Secret::new(STAFF)), &backends).await?;
    waldur.reset_counters();
    dwdi.reset_stats();
    let (summary, seconds) = bench::timed(historical::load(&target, options, &StopFlag::default(), &NoObserver)).await;
    let summary = summary?;
    if summary.failed > 0 {
        bail!("{label}: {summary}\n{:?}", summary.errors);
    }
    let stats = dwdi.stats();
    eprintln!("{label}: {summary}");
    Ok(Row {
        label: label.to_owned(),
        summary,
        seconds,
        waldur: waldur.requests(),
        dwdi_requests: stats.api_requests + stats.token_requests,
    })
}

#[tokio::main]
async fn main() -> Result<()> {
    let size = size_from_args()?;
    let months: Vec<(i32, u32)> = (1..=size.months).map(|m| (2023, m)).collect();
    eprintln!("generating DWDI data: {} accounts × {} users × {} months", size.accounts, size.users, size.months);
    let data = DwdiData::generated(size.accounts, size.users, &months);
    let dwdi_options = DwdiOptions { latency: LATENCY, ..DwdiOptions::default() };
    let dwdi = DwdiSim::start(data.clone(), dwdi_options.clone()).await?;
    let base = HistoricalOptions {
        months: months.iter().map(|&(y, m)| Month::new(y as i16, m as i8)).collect::<Result<_>>()?,
        user_usage: true,
        dry_run: false,
        reconcile_stale: false,
        resources: Vec::new(),
        concurrency: DEFAULT_CONCURRENCY,
        strategy: Strategy::Batched,
        time_zone: jiff::tz::TimeZone::UTC,
    };
    let mut rows = Vec::new();
    let mut stored = Vec::new();
    for (user_usage, what) in [(true, "totals + per-user"), (false, "totals only (--skip-user-usage)")] {
        for (strategy, how) in [(Strategy::Batched, "batched"), (Strategy::OneByOne, "one by one (baseline)")] {
            let (waldur, offering, config) = fresh_waldur(&dwdi, &dwdi_options, &data).await?;
            let options = HistoricalOptions { user_usage, strategy, ..base.clone() };
            rows.push(measure(&format!("{what}, {how}"), &waldur, &dwdi, &config, &offering, &options).await?);
            stored.push((what, how, waldur.usages().len(), waldur.user_usages().len()));
            if strategy == Strategy::Batched {
                rows.push(
                    measure(&format!("{what}, {how}, second run"), &waldur, &dwdi, &config, &offering, &options)
                        .await?,
                );
                if rows.last().is_some_and(|r| r.waldur.writes > 0) {
                    bail!("a second run wrote to Waldur");
                }
            }
        }
    }
    for pair in stored.chunks(2) {
        if let [(what, _, a_totals, a_users), (_, _, b_totals, b_users)] = pair
            && (a_totals != b_totals || a_users != b_users)
        {
            bail!("{what}: batched stored {a_totals}/{a_users}, one by one {b_totals}/{b_users}");
        }
    }

    println!(
        "{} months × {} resources × {} users, {} ms added to every simulator request, write concurrency {} (batched), release build\n",
        size.months,
        size.accounts,
        size.users,
        LATENCY.as_millis(),
        DEFAULT_CONCURRENCY
    );
    println!(
        "| run | wall time | Waldur requests (reads / writes) | DWDI requests | totals written | user usages written |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    for row in &rows {
        println!(
            "| {} | {:.2} s | {} ({} / {}) | {} | {} | {} |",
            row.label,
            row.seconds,
            row.waldur.total,
            row.waldur.reads,
            row.waldur.writes,
            row.dwdi_requests,
            row.summary.totals_submitted,
            row.summary.user_usages_submitted
        );
    }
    for (what, _, totals, users) in stored.iter().step_by(2) {
        println!("\n{what}: both ways stored {totals} component usages and {users} per-user usages.");
    }
    if let Some(peak) = bench::peak_rss_mib() {
        println!("\nPeak RSS of the benchmark process (simulators included): {peak:.0} MiB");
    }
    Ok(())
}
