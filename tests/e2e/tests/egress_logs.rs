//! What the host writes about egress: secrets never (client secret, tokens, proxy
//! password — in logs at every level, in errors, in `Debug`), a refused destination
//! once per component and destination, and a flood of refusals as its first few and a
//! count.

use anyhow::{Context as _, Result, ensure};
use dwdi_sim::{API_PREFIX, DwdiData, DwdiOptions, DwdiSim, TOKEN_PATH};
use e2e::NODE_AND_CPU;
use e2e::proxies::ProxyProcess;
use usage_agent::backends::{Backends, prepare_offering};
use usage_agent::config::AgentConfig;
use usage_agent::runtime::{Runtime, wit};

/// Everything logged by this test binary: the egress and the HTTP and TLS stacks at
/// trace level.
fn logs() {
    e2e::log::capture_text(
        "info,usage_agent=trace,hyper=trace,hyper_util=trace,rustls=trace,tokio_rustls=trace,tokio_socks=trace,wasmtime_wasi_http=trace",
    );
}

fn logged() -> String {
    e2e::log::text()
}

const PERIOD: wit::BillingPeriod = wit::BillingPeriod { year: 2024, month: 3 };

#[tokio::test(flavor = "multi_thread")]
async fn no_secret_in_logs_errors_or_debug() -> Result<()> {
    logs();
    let data = DwdiData::generated(2, 2, &[(2024, 3)]);
    let options = DwdiOptions { client_secret: "client-s3cret-xyz".into(), ..DwdiOptions::default() };
    let sim = DwdiSim::start(data.clone(), options.clone()).await?;
    let (user, password) = ("bob", "proxy-pa55-xyz");
    let proxy = ProxyProcess::tinyproxy(&[sim.addr().port()], Some((user, password)))?;
    let base = format!("http://127.0.0.1:{}", sim.addr().port());
    let text = format!(
        "offerings:\n  - name: compute\n    backend_type: cscs-dwdi-compute\n    backend_settings:\n\
         \x20     cscs_dwdi_api_url: \"{base}{API_PREFIX}\"\n      cscs_dwdi_oidc_token_url: \"{base}{TOKEN_PATH}\"\n\
         \x20     cscs_dwdi_client_id: {:?}\n      cscs_dwdi_client_secret: {:?}\n\
         \x20     cscs_dwdi_oidc_auth_method: client_secret_basic\n      socks_proxy: {:?}\n    backend_components:\n{NODE_AND_CPU}",
        options.client_id,
        options.client_secret,
        proxy.url("http", Some((user, password)))
    );
    let config = AgentConfig::parse(&text)?;
    let backends = Backends::new(Runtime::new()?);
    backends.load_builtins_for(&config).await?;
    let backend = prepare_offering(&backends, 0, &config.offerings[0]).await?;
    let resources: Vec<wit::WaldurResource> = data
        .accounts()
        .into_iter()
        .map(|backend_id| wit::WaldurResource { backend_id, offering_backend_id: None })
        .collect();
    // A report, a refresh after the token expired, and failures of every kind.
    backend.usage_report(resources.clone(), PERIOD).await?;
    sim.expire_all_tokens();
    backend.usage_report(resources.clone(), PERIOD).await?;
    sim.fail_next_token(1, 401);
    sim.expire_all_tokens();
    let mut shown = Vec::new();
    if let Err(error) = backend.usage_report(resources.clone(), PERIOD).await {
        shown.push(format!("{error} {error:?}"));
    }
    let tokens = backend.egress().tokens().context("a DWDI offering authenticates with OIDC")?;
    if let Err(error) = tokens.bearer().await {
        shown.push(format!("{error} {error:?}"));
    }
    shown.push(format!("{config:?}"));
    shown.push(format!("{:?}", config.offerings[0].upstream_access()));
    ensure!(sim.stats().tokens_issued >= 2, "{:?}", sim.stats());

    let tokens = sim.state().issued_tokens();
    ensure!(tokens.len() >= 2);
    // base64 of user:password, as a Proxy-Authorization header carries it.
    let basic = e2e::basic_credentials(user, password);
    let log = logged();
    ensure!(
        log.contains("unauthorized") || log.contains("401") || log.lines().count() > 10,
        "the capture caught nothing:\n{log}"
    );
    let everything = format!("{log}\n{}", shown.join("\n"));
    for secret in [
        options.client_secret.as_str(),
        password,
        basic.as_str(),
        &e2e::basic_credentials(&options.client_id, &options.client_secret),
    ]
    .into_iter()
    .chain(tokens.iter().map(String::as_str))
    {
        ensure!(!everything.contains(secret), "{secret:?} appears in:\n{everything}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_denied_destination_is_logged_once_with_the_component() -> Result<()> {
    logs();
    let options = DwdiOptions::default();
    let sim = DwdiSim::start(DwdiData::new(), options.clone()).await?;
    let other = format!("http://127.0.0.1:{}/elsewhere", e2e::proxies::free_port()?);
    let backend =
        e2e::probe_backend("probe-offering", &sim, &options, &format!("      probe: fetch\n      url: \"{other}\"\n"))
            .await?;
    let resources = vec![wit::WaldurResource { backend_id: "r".into(), offering_backend_id: None }];
    for _ in 0..3 {
        let error =
            backend.usage_report(resources.clone(), PERIOD).await.err().map(|e| e.to_string()).unwrap_or_default();
        ensure!(error.contains("HttpRequestDenied"), "{error}");
    }
    let destination = other.trim_end_matches("/elsewhere");
    let lines: Vec<String> = logged()
        .lines()
        .filter(|l| l.contains("egress denied") && l.contains(destination))
        .map(str::to_owned)
        .collect();
    ensure!(lines.len() == 1, "{lines:#?}");
    ensure!(lines[0].contains("component=\"probe\"") || lines[0].contains("component=probe"), "{}", lines[0]);
    ensure!(lines[0].contains("probe-offering"), "{}", lines[0]);
    ensure!(backend.egress().stats().denied.load(std::sync::atomic::Ordering::Relaxed) == 3);
    ensure!(sim.stats().api_requests == 0);
    Ok(())
}

/// Lines of the log from now on that mention `needle`.
fn lines_with(log: &str, needle: &str) -> Vec<String> {
    log.lines().filter(|l| l.contains(needle)).map(str::to_owned).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flood_of_denied_requests_logs_the_first_few_and_a_count() -> Result<()> {
    logs();
    let options = DwdiOptions::default();
    let sim = DwdiSim::start(DwdiData::new(), options.clone()).await?;
    // 5,000 distinct destinations, none allowed; the call goes on after each denial.
    let settings = "      probe: deny-flood\n      count: 5000\n      url: \"http://h{i}.flood.invalid/x\"\n";
    let backend = e2e::probe_backend("flood-offering", &sim, &options, settings).await?;
    let resources = vec![wit::WaldurResource { backend_id: "r".into(), offering_backend_id: None }];
    let report = backend.usage_report(resources.clone(), PERIOD).await?;
    ensure!(report.resources[0].totals[0].value == 5000.0, "{report:?}");

    // Upstream: nothing reached DWDI, no token was fetched.
    let stats = sim.stats();
    ensure!(stats.api_requests == 0 && stats.tokens_issued == 0, "{stats:?}");
    // Host: every denial counted ...
    ensure!(backend.egress().stats().denied.load(std::sync::atomic::Ordering::Relaxed) == 5000);
    let metrics = usage_agent::metrics::global().render();
    ensure!(
        metrics.contains("usage_agent_egress_denied_total{offering=\"flood-offering\",rule=\"destination\"} 5000"),
        "{metrics}"
    );
    // ... the first three logged one by one, the rest in one line with the count.
    let log = logged();
    let mine = lines_with(&log, "flood-offering");
    let each = lines_with(&mine.join("\n"), ".flood.invalid");
    ensure!(each.len() == usage_agent::egress::DENIALS_LOGGED, "{each:#?}");
    let summary = lines_with(&mine.join("\n"), "more request(s) of this call");
    ensure!(summary.len() == 1, "{summary:#?}");
    ensure!(summary[0].contains("egress denied 4997 more request(s)") && summary[0].contains("destination 4997"));
    ensure!(mine.len() == 4, "four lines for 5,000 denials: {mine:#?}");

    // A call that fails after such a flood quotes three failures and the count, bounded.
    let failing = format!("{settings}      fail: true\n");
    let backend = e2e::probe_backend("flood-failing", &sim, &options, &failing).await?;
    let error = backend.usage_report(resources, PERIOD).await.err().map(|e| e.to_string()).unwrap_or_default();
    ensure!(error.contains("probe: 5000 requests failed (host: http://h0.flood.invalid/x: request denied"), "{error}");
    ensure!(error.contains("; and 4997 more)"), "{error}");
    ensure!(error.len() < 4200, "{} bytes: {error}", error.len());
    Ok(())
}
