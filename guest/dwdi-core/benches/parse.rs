//! Native side of the parse benchmark: plan a compute report for many accounts, feed
//! the synthetic DWDI answers to `assemble`, and print the median time. The host team
//! runs the same workload inside the component to compare.
//!
//! `cargo bench -p dwdi-core --bench parse -- [accounts] [users] [runs]`
//! (defaults 5000 20 15).

use std::time::{Duration, Instant};

use dwdi_core::{
    Backend, BillingPeriod, Component, Config, HttpAnswer, Resource, UsageReport, assemble, plan_usage_report,
    synthetic_account, synthetic_compute_answer_for,
};

fn arg(position: usize, default: usize) -> usize {
    std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .nth(position)
        .and_then(|a| a.parse().ok())
        .unwrap_or(default)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (accounts, users, runs) = (arg(0, 5000), arg(1, 20), arg(2, 15).max(1));
    let config = Config {
        settings_json: r#"{"cscs_dwdi_api_url":"http://dwdi.invalid/api/v1"}"#.to_owned(),
        components: ["nodeHours", "cpuHours", "gpuHours"].into_iter().map(|name| Component::named(name, 1.0)).collect(),
    };
    let resources: Vec<Resource> = (0..accounts).map(|i| Resource::new(&synthetic_account(i))).collect();
    let period = BillingPeriod { year: 2024, month: 5 };
    let plan = plan_usage_report(Backend::Compute, &config, &resources, period)?;
    let answers: Vec<HttpAnswer> = plan
        .requests()
        .iter()
        .map(|r| HttpAnswer { status: 200, body: synthetic_compute_answer_for(r.keys(), users).into_bytes() })
        .collect();
    let bytes: usize = answers.iter().map(|a| a.body.len()).sum();

    let mut times: Vec<Duration> = Vec::with_capacity(runs);
    let mut last: Option<UsageReport> = None;
    for _ in 0..runs {
        let start = Instant::now();
        let report = assemble(&plan, &answers)?;
        times.push(start.elapsed());
        last = Some(report);
    }
    times.sort();
    let median = times[times.len() / 2];
    let found = last.map_or(0, |r| r.resources.iter().filter(|r| r.found).count());
    println!(
        "parse {accounts} accounts x {users} users: {} requests, {:.1} MiB, median {:.1} ms \
         over {runs} runs (min {:.1} ms), {:.0} MiB/s, {found} accounts found",
        answers.len(),
        bytes as f64 / (1024.0 * 1024.0),
        median.as_secs_f64() * 1e3,
        times[0].as_secs_f64() * 1e3,
        bytes as f64 / (1024.0 * 1024.0) / median.as_secs_f64(),
    );
    Ok(())
}
