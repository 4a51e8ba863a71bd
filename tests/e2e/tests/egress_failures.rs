//! What goes wrong on the way to DWDI, each with its documented behaviour: a proxy that
//! is down or refuses the password, a certificate for another name, a token endpoint
//! that refuses or talks nonsense, an API that fails for a while, a token that expires,
//! a runaway answer — and `usage-agent ping` naming the step that fails.

use anyhow::{Context as _, Result, ensure};
use dwdi_sim::{API_PREFIX, DwdiData, DwdiOptions, DwdiSim, TOKEN_PATH};
use e2e::proxies::{ProxyProcess, free_port};
use e2e::tls::TestCa;
use e2e::{ConfigFile, compute_config_at, run_cli};
use std::sync::atomic::Ordering;
use usage_agent::backends::{Backends, prepare_offering};
use usage_agent::config::AgentConfig;
use usage_agent::runtime::{OfferingBackend, Runtime, wit};

async fn sim() -> Result<(DwdiSim, DwdiOptions, DwdiData)> {
    let data = DwdiData::generated(2, 2, &[(2024, 3)]);
    let options = DwdiOptions::default();
    Ok((DwdiSim::start(data.clone(), options.clone()).await?, options, data))
}

async fn backend_for(text: &str) -> Result<OfferingBackend> {
    let config = AgentConfig::parse(text)?;
    let backends = Backends::new(Runtime::new()?);
    backends.load_builtins_for(&config).await?;
    prepare_offering(&backends, 0, &config.offerings[0]).await
}

fn resources(data: &DwdiData) -> Vec<wit::WaldurResource> {
    data.accounts()
        .into_iter()
        .map(|backend_id| wit::WaldurResource { backend_id, offering_backend_id: None })
        .collect()
}

const PERIOD: wit::BillingPeriod = wit::BillingPeriod { year: 2024, month: 3 };

/// Runs `ping` and returns (succeeded, printed text incl. the error).
async fn ping(config: &ConfigFile) -> (bool, String) {
    match run_cli(&["ping", "--config", config.arg(), "--offering", "compute"]).await {
        Ok(out) => (true, out),
        Err(error) => (false, format!("{error:#}")),
    }
}

/// `ping` prints to its writer and returns the error; run it through a command whose
/// output survives a failure.
async fn ping_output(config: &ConfigFile) -> Result<(bool, String)> {
    use clap::Parser as _;
    let cli =
        usage_agent::cli::Cli::try_parse_from(["usage-agent", "ping", "-c", config.arg(), "--offering", "compute"])?;
    let mut out = Vec::new();
    let result = usage_agent::cli::run(cli, &mut out).await;
    let mut text = String::from_utf8(out)?;
    if let Err(error) = &result {
        text.push_str(&format!("\nerror: {error:#}"));
    }
    Ok((result.is_ok(), text))
}

#[tokio::test(flavor = "multi_thread")]
async fn ping_walks_every_step_through_a_proxy_and_tls() -> Result<()> {
    let ca = TestCa::new()?;
    let cert = ca.issue(&["127.0.0.1"])?;
    let options = DwdiOptions::default();
    let sim = DwdiSim::start_tls(DwdiData::new(), options.clone(), &cert.cert_pem, &cert.key_pem).await?;
    let proxy = ProxyProcess::microsocks(None)?;
    let extra = format!("      socks_proxy: {:?}\n{}", proxy.url("socks5h", None), ca.setting());
    let config = ConfigFile::new(&compute_config_at(&sim, &options, "127.0.0.1", &extra))?;
    let (ok, out) = ping_output(&config).await?;
    ensure!(ok, "{out}");
    for step in ["config", "proxy", "connect", "tls", "token", "api"] {
        ensure!(out.lines().any(|l| l.split_whitespace().take(2).eq([step, "ok"])), "step {step}:\n{out}");
    }
    ensure!(sim.stats().tokens_issued == 1, "{out}");
    let (ok, _) = ping(&config).await;
    ensure!(ok);
    Ok(())
}

/// Today's date in UTC, as the ping request carries it.
fn today_utc() -> String {
    jiff::Timestamp::now().to_zoned(jiff::tz::TimeZone::UTC).date().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn ping_sends_what_the_python_client_sends() -> Result<()> {
    let (sim, options, _) = sim().await?;
    let compute = compute_config_at(&sim, &options, "127.0.0.1", "");
    let storage = compute
        .replace("backend_type: cscs-dwdi-compute", "backend_type: cscs-dwdi-storage")
        .replace(
            "    backend_components:\n",
            "      storage_filesystem: lustre\n      storage_data_type: projects\n    backend_components:\n",
        )
        .replace("nodeHours:", "storage_space:")
        .replace("cpuHours:", "storage_inodes:");
    let (before, today) = (today_utc(), today_utc());
    for (text, want) in [
        (compute, format!("{API_PREFIX}/compute/usage-day?from={today}&to={today}")),
        (storage, format!("{API_PREFIX}/storage/usage-day?exact-date={today}")),
    ] {
        let (ok, out) = ping_output(&ConfigFile::new(&text)?).await?;
        ensure!(ok, "{out}");
        ensure!(out.contains("  api      ok") && out.contains("answers the backend's request for today"), "{out}");
        let sent = sim.stats().recent_urls().last().cloned().unwrap_or_default();
        // A ping at midnight UTC may ask about the next day.
        ensure!(sent == want || before != today_utc(), "sent {sent}, want {want}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn ping_fails_on_any_answer_but_a_success_naming_url_and_status() -> Result<()> {
    let (sim, options, _) = sim().await?;
    // A mistyped API URL: the simulator, strict as DWDI, answers 404.
    let base = format!("http://127.0.0.1:{}", sim.addr().port());
    let (right, wrong) = (format!("{base}{API_PREFIX}"), format!("{base}/api/v2"));
    let text = compute_config_at(&sim, &options, "127.0.0.1", "").replace(&right, &wrong);
    ensure!(text.contains(&wrong), "{text}");
    let (ok, out) = ping_output(&ConfigFile::new(&text)?).await?;
    ensure!(!ok, "a 404 passed: {out}");
    let endpoint = format!("{wrong}/compute/usage-day");
    ensure!(out.contains(&format!("  api      FAILED  DWDI answered HTTP 404 at {endpoint}: ")), "{out}");
    ensure!(!out.contains(&format!("{endpoint}?")), "the query is left out: {out}");
    ensure!(out.contains("step api failed"), "{out}");

    // Any other answer but a success fails too, with its status.
    let text = compute_config_at(&sim, &options, "127.0.0.1", "");
    for status in [400, 422, 500] {
        sim.fail_next(1, status);
        let (ok, out) = ping_output(&ConfigFile::new(&text)?).await?;
        ensure!(!ok && out.contains(&format!("  api      FAILED  DWDI answered HTTP {status} at ")), "{status}: {out}");
    }
    // A 401 is retried once with a fresh token; refused twice, it fails.
    sim.fail_next(2, 401);
    let (ok, out) = ping_output(&ConfigFile::new(&text)?).await?;
    let refused = format!("(HTTP 401) at {right}/compute/usage-day");
    ensure!(
        !ok && out.contains("  api      FAILED  credentials refused: DWDI refused the credentials")
            && out.contains(&refused),
        "{out}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_proxy_that_is_down() -> Result<()> {
    let (sim, options, data) = sim().await?;
    let port = free_port()?;
    let extra = format!("      socks_proxy: \"socks5://127.0.0.1:{port}\"\n      max_retries: 1\n");
    let text = compute_config_at(&sim, &options, "127.0.0.1", &extra);
    let backend = backend_for(&text).await?;
    let error = backend.usage_report(resources(&data), PERIOD).await.err().map(|e| e.to_string()).unwrap_or_default();
    ensure!(error.contains(&format!("cannot connect to proxy socks5://127.0.0.1:{port}")), "{error}");
    ensure!(sim.stats().api_requests == 0 && sim.stats().token_requests == 0);

    let config = ConfigFile::new(&text)?;
    let (ok, out) = ping_output(&config).await?;
    ensure!(!ok, "{out}");
    ensure!(out.contains("  proxy    FAILED  cannot connect to proxy socks5://127.0.0.1:"), "{out}");
    ensure!(out.contains("  token    skipped"), "{out}");
    ensure!(out.contains("step proxy failed"), "{out}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_proxy_password() -> Result<()> {
    let (sim, options, data) = sim().await?;
    let proxy = ProxyProcess::microsocks(Some(("alice", "right-password")))?;
    let wrong = proxy.url("socks5", Some(("alice", "wrong-password")));
    let text = compute_config_at(&sim, &options, "127.0.0.1", &format!("      socks_proxy: {wrong:?}\n"));
    let backend = backend_for(&text).await?;
    let error = backend.usage_report(resources(&data), PERIOD).await.err().map(|e| e.to_string()).unwrap_or_default();
    ensure!(error.contains("refused the connection") && error.contains("Password auth failure"), "{error}");
    ensure!(!error.contains("wrong-password"), "the password leaked: {error}");
    ensure!(sim.stats().api_requests == 0);

    let (ok, out) = ping_output(&ConfigFile::new(&text)?).await?;
    ensure!(!ok, "{out}");
    ensure!(out.contains("  proxy    ok") && out.contains("  connect  FAILED"), "{out}");
    ensure!(!out.contains("wrong-password"), "{out}");

    // tinyproxy's Basic auth refuses the CONNECT (tinyproxy 1.11 answers 401, others 407).
    let ca = TestCa::new()?;
    let cert = ca.issue(&["127.0.0.1"])?;
    let tls = DwdiSim::start_tls(DwdiData::new(), options.clone(), &cert.cert_pem, &cert.key_pem).await?;
    let tiny = ProxyProcess::tinyproxy(&[tls.addr().port()], Some(("bob", "right")))?;
    let extra = format!("      socks_proxy: {:?}\n{}", tiny.url("http", Some(("bob", "wrong-pass"))), ca.setting());
    let (ok, out) = ping_output(&ConfigFile::new(&compute_config_at(&tls, &options, "127.0.0.1", &extra))?).await?;
    ensure!(!ok && out.contains("  connect  FAILED") && out.contains("refused CONNECT"), "{out}");
    ensure!(out.contains("401 Unauthorized") || out.contains("407"), "{out}");
    ensure!(!out.contains("wrong-pass"), "{out}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_certificate_for_another_name_or_from_an_unknown_ca() -> Result<()> {
    let ca = TestCa::new()?;
    let cert = ca.issue(&["dwdi.other.example"])?;
    let options = DwdiOptions::default();
    let data = DwdiData::generated(1, 1, &[(2024, 3)]);
    let sim = DwdiSim::start_tls(data.clone(), options.clone(), &cert.cert_pem, &cert.key_pem).await?;
    let proxy = ProxyProcess::dante()?;
    let extra = format!("      socks_proxy: {:?}\n{}", proxy.url("socks5", None), ca.setting());
    let text = compute_config_at(&sim, &options, "127.0.0.1", &extra);
    let backend = backend_for(&text).await?;
    let error = backend.usage_report(resources(&data), PERIOD).await.err().map(|e| e.to_string()).unwrap_or_default();
    ensure!(
        error.contains("TLS handshake with 127.0.0.1 failed")
            && error.contains("certificate not valid for name \"127.0.0.1\""),
        "{error}"
    );
    let (ok, out) = ping_output(&ConfigFile::new(&text)?).await?;
    ensure!(!ok && out.contains("  tls      FAILED") && out.contains("not valid for name"), "{out}");

    // Without the CA bundle the system roots do not know the test CA.
    let good = ca.issue(&["127.0.0.1"])?;
    let sim = DwdiSim::start_tls(data, options.clone(), &good.cert_pem, &good.key_pem).await?;
    let text = compute_config_at(&sim, &options, "127.0.0.1", "");
    let (ok, out) = ping_output(&ConfigFile::new(&text)?).await?;
    ensure!(!ok && out.contains("  tls      FAILED") && out.contains("UnknownIssuer"), "{out}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_endpoint_that_answers_401() -> Result<()> {
    let (sim, options, data) = sim().await?;
    let proxy = ProxyProcess::microsocks(None)?;
    let text = compute_config_at(
        &sim,
        &options,
        "127.0.0.1",
        &format!("      socks_proxy: {:?}\n", proxy.url("socks5", None)),
    );
    let backend = backend_for(&text).await?;
    sim.fail_next_token(1, 401);
    let error = backend.usage_report(resources(&data), PERIOD).await.err().map(|e| e.to_string()).unwrap_or_default();
    ensure!(error.contains("rejected the client credentials"), "{error}");
    ensure!(!error.contains(&options.client_secret), "{error}");
    ensure!(sim.stats().api_requests == 0, "no API request without a token");

    // Wrong credentials for real: invalid_client, with either client-auth style.
    for style in ["client_secret_post", "client_secret_basic"] {
        let wrong = text.replace(&format!("{:?}", options.client_secret), "\"not-the-secret\"") + "";
        let wrong = wrong.replace(
            "      cscs_dwdi_client_id",
            &format!("      cscs_dwdi_oidc_auth_method: {style}\n      cscs_dwdi_client_id"),
        );
        let (ok, out) = ping_output(&ConfigFile::new(&wrong)?).await?;
        ensure!(!ok && out.contains("  token    FAILED") && out.contains("invalid_client"), "{style}: {out}");
        ensure!(!out.contains("not-the-secret"), "{out}");
        // The right secret works with the same style.
        let right = text.replace(
            "      cscs_dwdi_client_id",
            &format!("      cscs_dwdi_oidc_auth_method: {style}\n      cscs_dwdi_client_id"),
        );
        let (ok, out) = ping_output(&ConfigFile::new(&right)?).await?;
        ensure!(ok, "{style}: {out}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn token_answers_that_are_not_tokens() -> Result<()> {
    let (sim, options, _) = sim().await?;
    let config = ConfigFile::new(&compute_config_at(&sim, &options, "127.0.0.1", ""))?;
    sim.respond_next_token(1, 200, "text/html", "<html>login</html>");
    let (ok, out) = ping_output(&config).await?;
    ensure!(!ok && out.contains("  token    FAILED") && out.contains("did not answer JSON"), "{out}");
    sim.respond_next_token(1, 200, "application/json", "{\"token_type\":\"Bearer\"}");
    let (ok, out) = ping_output(&config).await?;
    ensure!(!ok && out.contains("without an access_token"), "{out}");
    // Nothing listening at the token endpoint.
    let port = free_port()?;
    let text = compute_config_at(&sim, &options, "127.0.0.1", "")
        .replace(&format!("127.0.0.1:{}{TOKEN_PATH}", sim.addr().port()), &format!("127.0.0.1:{port}{TOKEN_PATH}"));
    let (ok, out) = ping_output(&ConfigFile::new(&text)?).await?;
    ensure!(
        !ok && out.contains("  connect  FAILED") && out.contains(&format!("token endpoint 127.0.0.1:{port}")),
        "{out}"
    );
    // The same during a report: the token error names the endpoint.
    let backend = backend_for(&text).await?;
    let data = DwdiData::generated(1, 1, &[(2024, 3)]);
    let error = backend.usage_report(resources(&data), PERIOD).await.err().map(|e| e.to_string()).unwrap_or_default();
    ensure!(error.contains(&format!("token endpoint http://127.0.0.1:{port}{TOKEN_PATH} is unreachable")), "{error}");
    ensure!(!error.contains(&options.client_secret), "{error}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_api_that_never_answers_times_out() -> Result<()> {
    let (sim, options, data) = sim().await?;
    // Accepts connections and reads nothing back: only the first-byte timeout ends it.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let silent_port = silent.local_addr()?.port();
    let hold = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            open.push(socket);
        }
    });
    let text =
        compute_config_at(&sim, &options, "127.0.0.1", "      first_byte_timeout_seconds: 0.5\n      max_retries: 0\n")
            .replace(
                &format!("127.0.0.1:{}{API_PREFIX}", sim.addr().port()),
                &format!("127.0.0.1:{silent_port}{API_PREFIX}"),
            );
    let backend = backend_for(&text).await?;
    let error = backend.usage_report(resources(&data), PERIOD).await.err().map(|e| e.to_string()).unwrap_or_default();
    ensure!(error.contains("no answer from") && error.contains("within 500ms"), "{error}");
    hold.abort();
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_api_that_answers_503_twice_then_200() -> Result<()> {
    let (sim, options, data) = sim().await?;
    let proxy = ProxyProcess::dante()?;
    let text = compute_config_at(
        &sim,
        &options,
        "127.0.0.1",
        &format!("      socks_proxy: {:?}\n", proxy.url("socks5", None)),
    );
    let backend = backend_for(&text).await?;
    sim.fail_next(2, 503);
    let report = backend.usage_report(resources(&data), PERIOD).await?;
    ensure!(report.resources.iter().all(|r| r.found));
    let stats = backend.egress().stats();
    ensure!(stats.retries.load(Ordering::Relaxed) == 2, "{stats:?}");
    ensure!(sim.stats().injected_failures == 2);
    // More failures than retries: the last 503 reaches the component.
    sim.fail_next(5, 503);
    let text_limited = text.replace("    backend_components:", "      max_retries: 1\n    backend_components:");
    let limited = backend_for(&text_limited).await?;
    let error = limited.usage_report(resources(&data), PERIOD).await.err().map(|e| e.to_string()).unwrap_or_default();
    ensure!(error.contains("503"), "{error}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_401_after_token_expiry_refreshes_once_through_the_proxy() -> Result<()> {
    let (sim, options, data) = sim().await?;
    let tunnel = ProxyProcess::ssh_tunnel()?;
    let text = compute_config_at(
        &sim,
        &options,
        "127.0.0.1",
        &format!("      socks_proxy: {:?}\n", tunnel.url("socks5", None)),
    );
    let backend = backend_for(&text).await?;
    let first = backend.usage_report(resources(&data), PERIOD).await?;
    sim.expire_all_tokens();
    let second = backend.usage_report(resources(&data), PERIOD).await?;
    ensure!(first.resources.len() == second.resources.len());
    let stats = sim.stats();
    ensure!(stats.tokens_issued == 2 && stats.api_unauthorized == 1, "{stats:?}");
    ensure!(backend.egress().stats().unauthorized_retries.load(Ordering::Relaxed) == 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_callers_share_one_token_request() -> Result<()> {
    let (sim, options, _) = sim().await?;
    let backend = backend_for(&compute_config_at(&sim, &options, "127.0.0.1", "")).await?;
    let tokens = backend.egress().tokens().context("a DWDI offering authenticates with OIDC")?;
    // All sixteen are polled before the first token answer arrives: without sharing,
    // each would send its own token request.
    let results = futures::future::join_all((0..16).map(|_| tokens.bearer())).await;
    ensure!(results.iter().all(Result::is_ok));
    ensure!(sim.stats().token_requests == 1, "{:?}", sim.stats());
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_runaway_answer_is_cut_off() -> Result<()> {
    let (sim, options, data) = sim().await?;
    let text = compute_config_at(&sim, &options, "127.0.0.1", "      max_response_bytes: 64\n");
    let backend = backend_for(&text).await?;
    let error = backend.usage_report(resources(&data), PERIOD).await.err().map(|e| e.to_string()).unwrap_or_default();
    ensure!(error.contains("body size exceeds limit: 64 bytes"), "{error}");
    Ok(())
}
