//! Egress cost: a DWDI request through each proxy kind versus direct, over keep-alive
//! and on a new connection, plain and TLS; and the token cache hit rate during a large
//! report. Prints Markdown tables for BENCHMARKS.md.
//!
//! `cargo run --release -p bench --bin egress [-- REQUESTS]` (needs the proxy packages
//! that tests/run-all installs, and root for sshd).

use std::time::Instant;

use anyhow::{Context, Result};
use bench::median;
use dwdi_sim::{API_PREFIX, DwdiData, DwdiOptions, DwdiSim, TOKEN_PATH};
use e2e::proxies::ProxyProcess;
use e2e::tls::TestCa;
use http_body_util::BodyExt as _;
use usage_agent::backends::{Backends, prepare_offering};
use usage_agent::config::AgentConfig;
use usage_agent::egress::Egress;
use usage_agent::runtime::{Runtime, wit};

const NODE: &str =
    "      nodeHours: {measured_unit: node-hours, unit_factor: 1, accounting_type: usage, label: Node Hours}\n";

fn config_text(sim: &DwdiSim, options: &DwdiOptions, extra: &str) -> String {
    let base = format!("{}://127.0.0.1:{}", sim.scheme(), sim.addr().port());
    format!(
        "offerings:\n  - name: compute\n    backend_type: cscs-dwdi-compute\n    backend_settings:\n\
         \x20     cscs_dwdi_api_url: \"{base}{API_PREFIX}\"\n      cscs_dwdi_oidc_token_url: \"{base}{TOKEN_PATH}\"\n\
         \x20     cscs_dwdi_client_id: {:?}\n      cscs_dwdi_client_secret: {:?}\n{extra}    backend_components:\n{NODE}",
        options.client_id, options.client_secret
    )
}

/// One GET, read to the end; the answer's size.
async fn one_request(egress: &Egress, url: &str, status: u16) -> Result<usize> {
    let response = egress.get(url).await?;
    anyhow::ensure!(response.status() == status, "HTTP {}", response.status());
    let body = response.into_body().collect().await.map_err(|e| anyhow::anyhow!("{e:?}"))?;
    Ok(body.to_bytes().len())
}

/// Median microseconds per request over one keep-alive connection (`ROUNDS` of `n`).
async fn per_request(egress: &Egress, url: &str, status: u16, n: usize) -> Result<f64> {
    one_request(egress, url, status).await.context("warm-up")?;
    let mut rounds = Vec::new();
    for _ in 0..ROUNDS {
        let start = Instant::now();
        for _ in 0..n {
            one_request(egress, url, status).await?;
        }
        rounds.push(start.elapsed().as_secs_f64() * 1e6 / n as f64);
    }
    Ok(median(&mut rounds))
}

const ROUNDS: usize = 3;

/// Per request over keep-alive for a small and a large answer, and a new connection
/// (proxy handshake and TLS included), all in median microseconds.
async fn measure(sim: &DwdiSim, options: &DwdiOptions, extra: &str, n: usize) -> Result<[f64; 3]> {
    let config = AgentConfig::parse(&config_text(sim, options, extra))?;
    let egress = Egress::new("bench", &config.offerings[0])?;
    // The reachability check: a 400 with a one-line JSON detail.
    let small = format!("{}/compute/usage-day", sim.api_url());
    let large = format!("{}/compute/usage-month/account?from=2024-03&to=2024-03&account=project_000", sim.api_url());
    let small_us = per_request(&egress, &small, 400, n).await?;
    let large_us = per_request(&egress, &large, 200, n).await?;
    let uri: http::Uri = large.parse()?;
    let mut opens = Vec::new();
    for _ in 0..50 {
        let start = Instant::now();
        let stream = egress.connector().open(&uri).await?;
        opens.push(start.elapsed().as_secs_f64() * 1e6);
        drop(stream);
    }
    Ok([small_us, large_us, median(&mut opens)])
}

#[tokio::main]
async fn main() -> Result<()> {
    let n: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(100);
    let data = DwdiData::generated(20, 5, &[(2024, 3)]);
    let options = DwdiOptions::default();
    let ca = TestCa::new()?;
    let cert = ca.issue(&["127.0.0.1"])?;
    let plain = DwdiSim::start(data.clone(), options.clone()).await?;
    let tls = DwdiSim::start_tls(data.clone(), options.clone(), &cert.cert_pem, &cert.key_pem).await?;

    let microsocks = ProxyProcess::microsocks(None)?;
    let dante = ProxyProcess::dante()?;
    let tiny = ProxyProcess::tinyproxy(&[plain.addr().port(), tls.addr().port()], None)?;
    let ssh = ProxyProcess::ssh_tunnel()?;
    let routes: Vec<(&str, Option<String>)> = vec![
        ("direct (baseline)", None),
        ("socks5 microsocks", Some(microsocks.url("socks5", None))),
        ("socks5h microsocks", Some(microsocks.url("socks5h", None))),
        ("socks4 dante", Some(dante.url("socks4", None))),
        ("socks5 dante", Some(dante.url("socks5", None))),
        ("http tinyproxy", Some(tiny.url("http", None))),
        ("socks5 ssh -D", Some(ssh.url("socks5", None))),
    ];

    let config = AgentConfig::parse(&config_text(&plain, &options, ""))?;
    let probe = Egress::new("bench", &config.offerings[0])?;
    let small_size = one_request(&probe, &format!("{}/compute/usage-day", plain.api_url()), 400).await?;
    let large_size = one_request(
        &probe,
        &format!("{}/compute/usage-month/account?from=2024-03&to=2024-03&account=project_000", plain.api_url()),
        200,
    )
    .await?;
    println!(
        "Per request: sequential GETs over one keep-alive connection, answer read to the end, median of {ROUNDS} rounds of {n}; small = the reachability check ({small_size} B answer), large = one account-month ({large_size} B). New connection: TCP + proxy handshake (+ TLS), median of 50.\n"
    );
    println!(
        "| route | plain small (µs) | plain large (µs) | plain new conn. (µs) | TLS small (µs) | TLS large (µs) | TLS new conn. (µs) |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (name, proxy) in &routes {
        let proxy_line = proxy.as_ref().map(|p| format!("      socks_proxy: {p:?}\n")).unwrap_or_default();
        let [ps, pl, po] = measure(&plain, &options, &proxy_line, n).await.with_context(|| format!("{name} plain"))?;
        let tls_extra = format!("{proxy_line}{}", ca.setting());
        let [ts, tl, to] = measure(&tls, &options, &tls_extra, n).await.with_context(|| format!("{name} TLS"))?;
        println!("| {name} | {ps:.0} | {pl:.0} | {po:.0} | {ts:.0} | {tl:.0} | {to:.0} |");
    }

    // Token cache during a large report: 5000 accounts, many DWDI requests in flight.
    let big = DwdiData::generated(5000, 3, &[(2024, 3)]);
    let sim = DwdiSim::start(big.clone(), options.clone()).await?;
    let extra = format!("      socks_proxy: {:?}\n", microsocks.url("socks5", None));
    let config = AgentConfig::parse(&config_text(&sim, &options, &extra))?;
    let backends = Backends::new(Runtime::new()?);
    backends.load_builtins_for(&config).await?;
    let backend = prepare_offering(&backends, 0, &config.offerings[0]).await?;
    let resources: Vec<wit::WaldurResource> = big
        .accounts()
        .into_iter()
        .map(|backend_id| wit::WaldurResource { backend_id, offering_backend_id: None })
        .collect();
    let start = Instant::now();
    let report = backend.usage_report(resources.clone(), wit::BillingPeriod { year: 2024, month: 3 }).await?;
    let first = start.elapsed().as_secs_f64();
    // Mid-run expiry: the next report's first requests get 401 and share one refresh.
    sim.expire_all_tokens();
    let start = Instant::now();
    let again = backend.usage_report(resources, wit::BillingPeriod { year: 2024, month: 3 }).await?;
    let second = start.elapsed().as_secs_f64();
    let (fetched, served) = backend.egress().tokens().map(|t| t.counts()).unwrap_or_default();
    let stats = sim.stats();
    println!(
        "\nToken cache, two reports of 5000 accounts through socks5 (microsocks), all tokens expired between them:\n"
    );
    println!("| DWDI requests | token look-ups | tokens fetched | hit rate | 401 retries | report 1 | report 2 |");
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    println!(
        "| {} | {served} | {fetched} | {:.2} % | {} | {first:.2} s ({} upstream) | {second:.2} s ({} upstream) |",
        stats.api_requests,
        100.0 * (1.0 - fetched as f64 / served.max(1) as f64),
        backend.egress().stats().unauthorized_retries.load(std::sync::atomic::Ordering::Relaxed),
        report.upstream_requests,
        again.upstream_requests,
    );
    Ok(())
}
