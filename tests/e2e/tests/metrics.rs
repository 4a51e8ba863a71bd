//! The metrics endpoint of the report loop, scraped while it runs against the
//! simulators: the counts the cycles imply, a refused and an accepted plugin, and which
//! component serves. Alone in its test binary, because the registry is one per process.

use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use clap::Parser as _;
use e2e::proxies::free_port;
use e2e::{ConfigFile, OpsWorld, components};
use usage_agent::report::StopFlag;
use usage_agent::runtime::sha256_hex;

const COMPUTE: &str = "cscs-dwdi-compute";

async fn scrape(port: u16) -> Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await?;
    let mut text = String::new();
    stream.read_to_string(&mut text).await?;
    let (head, body) = text.split_once("\r\n\r\n").context("no HTTP header")?;
    if !head.starts_with("HTTP/1.1 200") || !head.contains("text/plain; version=0.0.4") {
        bail!("unexpected answer: {head}");
    }
    Ok(body.to_owned())
}

/// Scrapes until `ready` holds (bounded) and returns that scrape.
async fn scrape_until(port: u16, what: &str, ready: impl Fn(&str) -> bool) -> Result<String> {
    let mut last = String::new();
    for _ in 0..600 {
        if let Ok(text) = scrape(port).await {
            if ready(&text) {
                return Ok(text);
            }
            last = text;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("waited a minute for {what}; last scrape:\n{last}")
}

/// Every sample line, checked against the text format: `name{labels} value`, the
/// value a number, and each family announced by `# TYPE` before its samples.
fn samples(text: &str) -> Result<Vec<(String, f64)>> {
    let mut typed = std::collections::HashSet::new();
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').context("# TYPE without a kind")?;
            if !["counter", "gauge", "histogram"].contains(&kind) {
                bail!("unknown type in {line}");
            }
            typed.insert(name.to_owned());
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').with_context(|| format!("no value: {line}"))?;
        let value: f64 = value.parse().with_context(|| format!("not a number: {line}"))?;
        let name = series.split('{').next().unwrap_or_default();
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .filter(|f| typed.contains(*f))
            .unwrap_or(name);
        if !typed.contains(family) {
            bail!("sample before its # TYPE: {line}");
        }
        if series.contains('{') && !series.ends_with('}') {
            bail!("unbalanced labels: {line}");
        }
        out.push((series.to_owned(), value));
    }
    Ok(out)
}

fn sample(text: &str, series: &str) -> Option<f64> {
    samples(text).ok()?.into_iter().find_map(|(s, v)| (s == series).then_some(v))
}

/// The `usage_agent_component_info` series of the compute backend type.
fn serving(text: &str) -> Vec<String> {
    let prefix = format!("usage_agent_component_info{{backend_type=\"{COMPUTE}\",");
    text.lines().filter(|l| l.starts_with(&prefix)).map(str::to_owned).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_report_loop_beats_and_serves_metrics_through_a_plugin_swap() -> Result<()> {
    let s = OpsWorld::start().await?;
    let dir = tempfile::tempdir()?;
    std::fs::create_dir(dir.path().join("plugins"))?;
    let port = free_port()?;
    let file = ConfigFile::new(&s.config(dir.path(), &format!("metrics_listen: \"127.0.0.1:{port}\"\n")))?;
    let stop = StopFlag::default();
    let cli =
        usage_agent::cli::Cli::try_parse_from(["usage-agent", "report", "-c", file.arg(), "--period-minutes", "0.01"])?;
    let usage_agent::cli::Command::Report(args) = cli.command else { bail!("not a report command") };
    let loop_stop = stop.clone();
    let task = tokio::spawn(async move {
        let mut out = Vec::new();
        usage_agent::cli::run_report_until(args, &mut out, loop_stop)
            .await
            .map(|_| String::from_utf8_lossy(&out).into_owned())
    });
    let cycles = |text: &str| sample(text, "usage_agent_cycles_total{offering=\"ops\"}").unwrap_or(0.0);

    // The built-in component serves first.
    let text = scrape_until(port, "a first cycle", |t| cycles(t) >= 1.0).await?;
    let builtin = usage_agent::builtin::component(COMPUTE).context("no built-in compute component")?;
    let lines = serving(&text);
    assert_eq!(lines.len(), 1, "{text}");
    assert!(
        lines[0].contains(&format!("sha256=\"{}\"", sha256_hex(builtin))) && lines[0].contains("source=\"builtin\""),
        "{}",
        lines[0]
    );
    assert!(lines[0].contains("wit=\"3.1.0\",upstream=\"DWDI\""), "{}", lines[0]);

    // A broken file is refused and counted; the built-in keeps serving.
    let plugin = dir.path().join("plugins").join(format!("{COMPUTE}.wasm"));
    let next = std::fs::read(components::COMPUTE_NEXT)?;
    std::fs::write(&plugin, &next[..next.len() / 2])?;
    let refused = format!("usage_agent_plugin_rejections_total{{backend_type=\"{COMPUTE}\",reason=\"not_component\"}}");
    let text = scrape_until(port, "the refusal", |t| sample(t, &refused) == Some(1.0)).await?;
    assert_eq!(serving(&text), lines, "a refused file changed what serves");
    assert_eq!(
        sample(&text, &format!("usage_agent_plugin_swaps_total{{backend_type=\"{COMPUTE}\"}}")),
        Some(0.0),
        "counted from zero"
    );

    // A good build is swapped in, and the info series follows it.
    std::fs::write(&plugin, &next)?;
    let text =
        scrape_until(port, "the swap", |t| serving(t).iter().any(|l| l.contains(components::COMPUTE_NEXT_VERSION)))
            .await?;
    let lines = serving(&text);
    assert_eq!(lines.len(), 1, "the replaced component is still listed: {lines:?}");
    assert!(
        lines[0].contains(&format!("sha256=\"{}\"", sha256_hex(&next))) && lines[0].contains("source=\"file\""),
        "{}",
        lines[0]
    );
    assert_eq!(sample(&text, &format!("usage_agent_plugin_swaps_total{{backend_type=\"{COMPUTE}\"}}")), Some(1.0));
    let swapped_at = cycles(&text);
    scrape_until(port, "two cycles on the new build", |t| cycles(t) >= swapped_at + 2.0).await?;
    stop.stop();
    let out = tokio::time::timeout(Duration::from_secs(120), task).await???;
    // The loop is over: the registry holds still and is read as the endpoint would serve it.
    let text = usage_agent::metrics::global().render();

    // What the cycles imply: three resources submitted once, unchanged afterwards.
    assert!(out.contains(": 3 resources × 1 months: 3 written,"), "{out}");
    let all = samples(&text)?;
    assert!(all.len() > 20, "{text}");
    assert_eq!(sample(&text, "usage_agent_cycles_failed_total{offering=\"ops\"}"), Some(0.0), "{text}");
    assert_eq!(sample(&text, "usage_agent_writes_held{offering=\"ops\"}"), Some(0.0), "{text}");
    assert_eq!(
        sample(&text, "usage_agent_resources_total{offering=\"ops\",outcome=\"submitted\"}"),
        Some(3.0),
        "{text}"
    );
    let unchanged = sample(&text, "usage_agent_resources_total{offering=\"ops\",outcome=\"unchanged\"}").unwrap_or(0.0);
    assert_eq!(unchanged, 3.0 * (cycles(&text) - 1.0), "{text}");
    assert_eq!(
        sample(&text, "usage_agent_waldur_requests_total{method=\"POST\",endpoint=\"set_usage/\",status=\"201\"}"),
        Some(3.0),
        "{text}"
    );
    assert!(text.contains("# TYPE usage_agent_waldur_request_duration_seconds histogram"), "{text}");
    let dwdi_calls = sample(
        &text,
        "usage_agent_upstream_requests_total{offering=\"ops\",endpoint=\"/api/v1/compute/usage-month/account\",status=\"200\"}",
    );
    assert!(dwdi_calls.is_some_and(|v| v >= cycles(&text)), "{text}");
    assert!(
        sample(&text, "usage_agent_last_success_timestamp_seconds{offering=\"ops\"}").is_some_and(|t| t > 1.7e9),
        "{text}"
    );
    assert!(text.contains("usage_agent_upstream_token_fetches_total{"), "{text}");
    assert!(!text.contains("ops-token") && !text.contains(&s.options.client_secret), "a secret in the metrics");
    // The loop wrote its heartbeat.
    assert!(usage_agent::heartbeat::age(&dir.path().join("heartbeat"))? < Duration::from_secs(300));
    Ok(())
}
