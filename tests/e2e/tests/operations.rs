//! What operators run around the service: `check-config`, `healthz`, the heartbeat and
//! the metrics endpoint, end to end against the simulators.

use std::time::Duration;

use anyhow::Result;
use clap::Parser as _;
use dwdi_sim::{DwdiData, DwdiOptions, DwdiSim};
use e2e::{ConfigFile, NODE_AND_CPU, dwdi_access, examples_dir, run_cli};
use usage_agent::report::StopFlag;
use waldur_sim::{WaldurOptions, WaldurSim, uuid_from};

#[tokio::test(flavor = "multi_thread")]
async fn every_example_passes_check_config_and_a_broken_one_names_the_key() -> Result<()> {
    for name in ["cscs-dwdi-compute-config.yaml", "cscs-dwdi-storage-config.yaml", "cscs-dwdi-combined-config.yaml"] {
        let path = examples_dir().join(name);
        let out = run_cli(&["check-config", "-c", &path.to_string_lossy()]).await?;
        assert!(out.contains(": valid;") && out.contains("offerings[0]"), "{name}: {out}");
        assert!(!out.contains("your_oidc_client_secret"), "a secret was printed: {out}");
    }
    let text = std::fs::read_to_string(examples_dir().join("cscs-dwdi-storage-config.yaml"))?
        .replace("      storage_data_type: \"projects\"\n", "");
    let broken = ConfigFile::new(&text)?;
    let error = run_cli(&["check-config", "-c", broken.arg()]).await.err().map(|e| format!("{e:#}")).unwrap_or_default();
    assert_eq!(error, "offerings[0].backend_settings.storage_data_type: missing");
    Ok(())
}

struct Services {
    dwdi: DwdiSim,
    options: DwdiOptions,
    waldur: WaldurSim,
    offering: String,
}

async fn services() -> Result<Services> {
    let month = usage_agent::period::Month::containing(jiff::Timestamp::now(), &jiff::tz::TimeZone::UTC);
    let data = DwdiData::generated(3, 2, &[(i32::from(month.year), month.month as u32)]);
    let options = DwdiOptions::default();
    let dwdi = DwdiSim::start(data.clone(), options.clone()).await?;
    let waldur = WaldurSim::start(WaldurOptions::default()).await?;
    waldur.add_token("ops-token", "provider", false);
    let offering = uuid_from("ops");
    waldur.add_offering(&offering, "ops", &["nodeHours", "cpuHours"]);
    for account in data.accounts() {
        waldur.add_resource(&offering, &uuid_from(&account), &account, "", "OK");
    }
    Ok(Services { dwdi, options, waldur, offering })
}

fn config(s: &Services, dir: &std::path::Path, extra: &str) -> String {
    format!(
        "reporting_periods: 1\nheartbeat_file: {:?}\nplugins_dir: {:?}\nplugins_cache_dir: {:?}\n{extra}offerings:\n  - name: ops\n    waldur_api_url: {:?}\n    waldur_api_token: ops-token\n    waldur_offering_uuid: {}\n    backend_type: cscs-dwdi-compute\n    backend_settings:\n{}    backend_components:\n{NODE_AND_CPU}",
        dir.join("heartbeat").display().to_string(),
        dir.join("plugins").display().to_string(),
        dir.join("cache").display().to_string(),
        s.waldur.url(),
        s.offering,
        dwdi_access(&s.dwdi, &s.options)
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn healthz_follows_the_heartbeat_and_the_services() -> Result<()> {
    let s = services().await?;
    let dir = tempfile::tempdir()?;
    let file = ConfigFile::new(&config(&s, dir.path(), "heartbeat_max_age_seconds: 300\n"))?;
    let heartbeat = dir.path().join("heartbeat");

    // Missing heartbeat: dead.
    let error = run_cli(&["healthz", "--liveness-only", "-c", file.arg()]).await.err().map(|e| format!("{e:#}"));
    assert!(error.is_some_and(|e| e.contains("unhealthy")));
    // Fresh: alive, and both services answer.
    usage_agent::heartbeat::touch(&heartbeat)?;
    let out = run_cli(&["healthz", "-c", file.arg()]).await?;
    assert!(out.contains("ok    liveness") && out.contains("ok    ops: Waldur") && out.contains("ok    ops: DWDI token"), "{out}");
    // Stale: written 10 minutes ago.
    let old = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs() - 600;
    std::fs::write(&heartbeat, format!("{old}\n"))?;
    assert!(run_cli(&["healthz", "--liveness-only", "-c", file.arg()]).await.is_err());
    // Fresh again but Waldur down: not ready, and the failing check is named.
    usage_agent::heartbeat::touch(&heartbeat)?;
    let waldur_url = s.waldur.url();
    s.waldur.shutdown().await;
    let mut cli_out = Vec::new();
    let cli = usage_agent::cli::Cli::try_parse_from(["usage-agent", "healthz", "-c", file.arg()])?;
    let result = usage_agent::cli::run(cli, &mut cli_out).await;
    let printed = String::from_utf8(cli_out)?;
    assert!(result.is_err(), "{printed}");
    assert!(printed.contains("FAIL  ops: Waldur"), "{printed} ({waldur_url})");
    assert!(!printed.contains(&s.options.client_secret) && !printed.contains("ops-token"), "{printed}");
    Ok(())
}

/// A free loopback port for the metrics listener.
fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

async fn scrape(port: u16) -> Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await?;
    let mut text = String::new();
    stream.read_to_string(&mut text).await?;
    Ok(text)
}

/// The value of one sample line `name{labels} value`.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_report_loop_beats_and_serves_metrics() -> Result<()> {
    let s = services().await?;
    let dir = tempfile::tempdir()?;
    let port = free_port()?;
    let file = ConfigFile::new(&config(&s, dir.path(), &format!("metrics_listen: \"127.0.0.1:{port}\"\n")))?;
    let stop = StopFlag::default();
    let cli = usage_agent::cli::Cli::try_parse_from(["usage-agent", "report", "-c", file.arg(), "--period-minutes", "0.01"])?;
    let usage_agent::cli::Command::Report(args) = cli.command else { anyhow::bail!("not a report command") };
    let loop_stop = stop.clone();
    let task = tokio::spawn(async move {
        let mut out = Vec::new();
        usage_agent::cli::run_report_until(args, &mut out, loop_stop).await.map(|_| String::from_utf8_lossy(&out).into_owned())
    });
    // Wait (bounded) until two cycles were counted.
    let mut text = String::new();
    for _ in 0..600 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if let Ok(scraped) = scrape(port).await {
            text = scraped;
            if sample(&text, "usage_agent_cycles_total{offering=\"ops\"}").is_some_and(|v| v >= 2.0) {
                break;
            }
        }
    }
    stop.stop();
    let out = tokio::time::timeout(Duration::from_secs(120), task).await???;
    assert!(out.contains("ops: 3 resources"), "{out}");
    assert_eq!(sample(&text, "usage_agent_resources_total{offering=\"ops\",outcome=\"submitted\"}"), Some(3.0), "{text}");
    assert!(sample(&text, "usage_agent_resources_total{offering=\"ops\",outcome=\"unchanged\"}").is_some_and(|v| v >= 3.0), "{text}");
    assert!(text.contains("usage_agent_waldur_requests_total{method=\"POST\",endpoint=\"set_usage/\",status=\"201\"} 3"), "{text}");
    assert!(text.contains("# TYPE usage_agent_waldur_request_duration_seconds histogram"), "{text}");
    assert!(
        sample(&text, "usage_agent_dwdi_requests_total{offering=\"ops\",endpoint=\"/api/v1/compute/usage-month/account\",status=\"200\"}")
            .is_some_and(|v| v >= 2.0),
        "{text}"
    );
    assert!(text.contains("usage_agent_dwdi_token_fetches_total{"), "{text}");
    assert!(!text.contains("ops-token") && !text.contains(&s.options.client_secret), "a secret in the metrics");
    // The loop wrote its heartbeat.
    assert!(usage_agent::heartbeat::age(&dir.path().join("heartbeat"))? < Duration::from_secs(300));
    Ok(())
}
