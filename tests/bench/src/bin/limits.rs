//! What the per-call sandbox limits cost: the built-in compute component's usage report
//! against the DWDI simulator, on a runtime with the default limits (epoch checks
//! compiled in, memory accounting, deadline, timeout, result-size check) and on one
//! without, calls interleaved so both see the same machine. Also the smallest memory
//! limit the same call fits in, found by bisection, against the default.
//!
//! `cargo run --release -p bench --bin limits -- [accounts] [users] [runs]`
//! (defaults 300 10 15). Prints a Markdown table for BENCHMARKS.md.

use std::time::Instant;

use anyhow::{Result, bail};
use bench::median;
use dwdi_sim::{DwdiData, DwdiOptions, DwdiSim};
use usage_agent::backends::{Backends, prepare_offering};
use usage_agent::config::{AgentConfig, ComponentLimits};
use usage_agent::runtime::{CallError, Limit, OfferingBackend, Runtime, wit};

fn arg(position: usize, default: usize) -> usize {
    std::env::args().skip(1).nth(position).and_then(|a| a.parse().ok()).unwrap_or(default)
}

fn config(sim: &DwdiSim, options: &DwdiOptions) -> String {
    format!(
        "offerings:\n  - name: compute\n    backend_type: cscs-dwdi-compute\n    backend_settings:\n      cscs_dwdi_api_url: {:?}\n      cscs_dwdi_client_id: {:?}\n      cscs_dwdi_client_secret: {:?}\n      cscs_dwdi_oidc_token_url: {:?}\n    backend_components:\n      nodeHours: {{unit_factor: 1}}\n      cpuHours: {{unit_factor: 1}}\n      gpuHours: {{unit_factor: 1}}\n",
        sim.api_url(),
        options.client_id,
        options.client_secret,
        sim.token_url()
    )
}

async fn backend(runtime: Runtime, config: &AgentConfig) -> Result<OfferingBackend> {
    let backends = Backends::new(runtime);
    backends.load_builtins_for(config).await?;
    prepare_offering(&backends, 0, &config.offerings[0]).await
}

/// Milliseconds of one usage report.
async fn timed_call(backend: &OfferingBackend, resources: &[wit::WaldurResource]) -> Result<f64> {
    let started = Instant::now();
    let report = backend.usage_report(resources.to_vec(), wit::BillingPeriod { year: 2024, month: 3 }).await?;
    let elapsed = started.elapsed().as_secs_f64() * 1e3;
    if report.resources.iter().filter(|r| r.found).count() != resources.len() {
        bail!("the component did not find every account");
    }
    Ok(elapsed)
}

#[tokio::main]
async fn main() -> Result<()> {
    let (accounts, users, runs) = (arg(0, 300), arg(1, 10), arg(2, 15).max(1));
    let data = DwdiData::generated(accounts, users, &[(2024, 3)]);
    let options = DwdiOptions::default();
    let sim = DwdiSim::start(data.clone(), options.clone()).await?;
    let config = AgentConfig::parse(&config(&sim, &options))?;
    let resources: Vec<wit::WaldurResource> = data
        .accounts()
        .into_iter()
        .map(|backend_id| wit::WaldurResource { backend_id, offering_backend_id: None })
        .collect();
    let few: Vec<wit::WaldurResource> = resources.iter().take(3).cloned().collect();

    let limited = backend(Runtime::with_limits(ComponentLimits::default())?, &config).await?;
    let unlimited = backend(Runtime::without_limits()?, &config).await?;
    let backends: [(&str, &OfferingBackend); 2] = [("with limits", &limited), ("without limits", &unlimited)];

    // Warm up: token, connections, caches.
    for (_, backend) in &backends {
        timed_call(backend, &resources).await?;
    }
    let mut big: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    let mut small: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    for _ in 0..runs {
        for (i, (_, backend)) in backends.iter().enumerate() {
            big[i].push(timed_call(backend, &resources).await?);
            for _ in 0..10 {
                small[i].push(timed_call(backend, &few).await?);
            }
        }
    }

    // The smallest memory limit the large call fits in.
    let (mut low, mut high) = (1u64, ComponentLimits::default().memory_mib);
    while low < high {
        let mid = (low + high) / 2;
        let runtime = Runtime::with_limits(ComponentLimits { memory_mib: mid, ..ComponentLimits::default() })?;
        let fits = match backend(runtime, &config).await {
            Ok(b) => match b.usage_report(resources.clone(), wit::BillingPeriod { year: 2024, month: 3 }).await {
                Ok(_) => true,
                Err(CallError::Limit(e)) if e.limit == Limit::Memory => false,
                Err(other) => return Err(other.into()),
            },
            Err(_) => false,
        };
        if fits { high = mid } else { low = mid + 1 }
    }

    println!(
        "Compute usage report, {accounts} accounts × {users} users (one month, per-day rows), {runs} runs each, interleaved:\n"
    );
    println!("| call | runtime | median ms | min ms |");
    println!("|---|---|---|---|");
    for (label, series) in
        [(format!("{accounts} accounts"), &mut big), ("3 accounts (×10 per run)".to_owned(), &mut small)]
    {
        for (i, (name, _)) in backends.iter().enumerate() {
            let min = series[i].iter().copied().fold(f64::INFINITY, f64::min);
            println!("| {label} | {name} | {:.2} | {:.2} |", median(&mut series[i]), min);
        }
    }
    // Minimums too: on a shared machine the medians carry other people's load.
    let overhead = |series: &mut [Vec<f64>; 2], pick: fn(&mut Vec<f64>) -> f64| {
        let (with, without) = (pick(&mut series[0]), pick(&mut series[1]));
        (with - without) / without * 100.0
    };
    let by_median: fn(&mut Vec<f64>) -> f64 = |v| median(v);
    let by_min: fn(&mut Vec<f64>) -> f64 = |v| v.iter().copied().fold(f64::INFINITY, f64::min);
    println!(
        "\nOverhead of the limits: {:+.1} % (median) / {:+.1} % (min) on the large call, {:+.1} % / {:+.1} % on the small one.",
        overhead(&mut big, by_median),
        overhead(&mut big, by_min),
        overhead(&mut small, by_median),
        overhead(&mut small, by_min)
    );
    println!(
        "Smallest memory_mib the large call fits in: {low} MiB (default {} MiB).",
        ComponentLimits::default().memory_mib
    );
    if let Some(rss) = bench::peak_rss_mib() {
        println!("Peak RSS of the benchmark process: {rss:.0} MiB.");
    }
    Ok(())
}
