//! The egress rules, proven with the `probe` test component: a component reaches only
//! its `cscs_dwdi_api_url`, gets the token without seeing it, and cannot set
//! credentials of its own.

use anyhow::Result;
use dwdi_sim::{DwdiData, DwdiOptions, DwdiSim};
use e2e::probe_backend;
use usage_agent::runtime::{CallError, wit};

async fn probe(sim: &DwdiSim, options: &DwdiOptions, probe_settings: &str) -> Result<Result<wit::Report, CallError>> {
    let backend = probe_backend("probe", sim, options, probe_settings).await?;
    let resources = vec![wit::WaldurResource { backend_id: "r".into(), offering_backend_id: None }];
    Ok(backend.usage_report(resources, wit::BillingPeriod { year: 2024, month: 3 }).await)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_allowed_api_gets_the_token_and_other_hosts_are_denied() -> Result<()> {
    let options = DwdiOptions::default();
    let sim = DwdiSim::start(DwdiData::new(), options.clone()).await?;
    // The API itself: the host attaches the bearer token, the simulator accepts it (400:
    // authorised, but no parameters).
    let allowed = format!("      probe: fetch\n      url: \"{}/compute/usage-day\"\n", sim.api_url());
    let report = probe(&sim, &options, &allowed).await??;
    assert_eq!(report.resources[0].totals[0].value, 400.0);
    assert_eq!(sim.stats().api_unauthorized, 0);

    // Same host, another port: denied before any connection is made.
    let other = sim.api_url().replace(&sim.addr().port().to_string(), "9");
    let denied = format!("      probe: fetch\n      url: \"{other}/x\"\n");
    let error = probe(&sim, &options, &denied).await?.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(error.contains("HttpRequestDenied") && error.contains("denied by the egress allow-list"), "{error}");

    // Another host entirely.
    let denied = "      probe: fetch\n      url: \"https://example.org/\"\n";
    let error = probe(&sim, &options, denied).await?.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(error.contains("HttpRequestDenied"), "{error}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn components_cannot_set_credentials() -> Result<()> {
    let options = DwdiOptions::default();
    let sim = DwdiSim::start(DwdiData::new(), options.clone()).await?;
    for header in ["authorization", "proxy-authorization", "cookie"] {
        let settings = format!(
            "      probe: set-header\n      header: {header}\n      url: \"{}/compute/usage-day\"\n",
            sim.api_url()
        );
        let error = probe(&sim, &options, &settings).await?.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            error.contains(&format!("header {header} refused")) && error.contains("Forbidden"),
            "{header}: {error}"
        );
    }
    assert_eq!(sim.stats().api_requests, 0, "no forged request may leave");
    Ok(())
}

/// `probe: request` settings (6-space indent) with a method, a URL, headers and a body.
fn request(method: &str, url: &str, headers: &str, body: Option<&str>) -> String {
    let body = body.map(|b| format!("      body: {b:?}\n")).unwrap_or_default();
    format!("      probe: request\n      method: {method}\n      url: {url:?}\n      headers: {{{headers}}}\n{body}")
}

#[tokio::test(flavor = "multi_thread")]
async fn only_bodiless_gets_under_the_api_path_with_allowed_headers_leave() -> Result<()> {
    let options = DwdiOptions::default();
    let sim = DwdiSim::start(DwdiData::new(), options.clone()).await?;
    let api = sim.api_url();
    let origin = api.trim_end_matches(dwdi_sim::API_PREFIX).to_owned();
    let authority = origin.trim_start_matches("http://").to_owned();
    let cases = [
        request("POST", &format!("{api}/compute/usage-day"), "", Some("x=1")),
        request("DELETE", &format!("{api}/compute/usage-day"), "", None),
        request("GET", &format!("{api}/compute/usage-day"), "", Some("payload")),
        request("GET", &format!("{origin}{}", dwdi_sim::TOKEN_PATH), "", None),
        request("GET", &format!("{api}/../../realms/x"), "", None),
        request("GET", &format!("{api}/%2e%2e/%2e%2e/realms"), "", None),
        request("GET", &format!("{api}//compute/usage-day"), "", None),
        request("GET", &format!("http://user:pw@{authority}{}/compute/usage-day", dwdi_sim::API_PREFIX), "", None),
        request("GET", &format!("{api}/compute/usage-day"), "x-forwarded-for: 10.0.0.1", None),
        request("GET", &format!("{api}/compute/usage-day"), "x-http-method-override: DELETE", None),
    ];
    for settings in &cases {
        let error = probe(&sim, &options, settings).await?.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            error.contains("HttpRequestDenied") && error.contains("denied by the egress allow-list"),
            "{settings}: {error}"
        );
    }
    // The upstream saw none of them, and no token was fetched for them.
    let stats = sim.stats();
    assert_eq!(stats.requests_by_path.len(), 0, "{:?}", stats.requests_by_path);
    assert_eq!(stats.tokens_issued, 0);

    // An allowed GET with an allowed header still goes out, with the token.
    let ok = request("GET", &format!("{api}/compute/usage-day"), "accept: application/json", None);
    let report = probe(&sim, &options, &ok).await??;
    assert_eq!(report.resources[0].totals[0].value, 400.0);
    assert_eq!(sim.stats().api_requests, 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_path_answering_401_fetches_two_tokens_not_one_per_request() -> Result<()> {
    e2e::log::capture();
    let options = DwdiOptions::default();
    let sim = DwdiSim::start(DwdiData::new(), options.clone()).await?;
    sim.fail_next(1000, 401);
    let settings =
        format!("      probe: many-401\n      count: 50\n      url: \"{}/compute/usage-day\"\n", sim.api_url());
    let backend = probe_backend("probe-401", &sim, &options, &settings).await?;
    let resources = vec![wit::WaldurResource { backend_id: "r".into(), offering_backend_id: None }];
    let report = backend.usage_report(resources, wit::BillingPeriod { year: 2024, month: 3 }).await?;
    assert_eq!(report.resources[0].totals[0].value, 50.0);
    // Upstream: one retry with a fresh token, then every 401 final.
    let stats = sim.stats();
    assert_eq!(stats.tokens_issued, 2, "{stats:?}");
    assert_eq!(stats.api_requests, 51);
    // Host: one 401 retried, 49 left final by the refresh rate limit.
    let egress = backend.egress().stats();
    assert_eq!(egress.unauthorized_retries.load(std::sync::atomic::Ordering::Relaxed), 1);
    assert_eq!(egress.unauthorized_final.load(std::sync::atomic::Ordering::Relaxed), 49);
    assert_eq!(backend.egress().tokens().map(|t| t.counts().0), Some(2));
    // Not silently: the call's 50 final 401s are one warning with the count.
    let log = e2e::log::text();
    let said: Vec<&str> = log.lines().filter(|l| l.contains("probe-401") && l.contains("HTTP 401")).collect();
    assert_eq!(said.len(), 1, "{said:#?}");
    assert!(
        said[0].contains("WARN") && said[0].contains("50 request(s) of this call ended in HTTP 401"),
        "{}",
        said[0]
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn distinct_paths_do_not_grow_the_metrics() -> Result<()> {
    let options = DwdiOptions::default();
    let sim = DwdiSim::start(DwdiData::new(), options.clone()).await?;
    let settings = format!("      probe: paths\n      count: 200\n      url: \"{}/compute\"\n", sim.api_url());
    let backend = probe_backend("probe-paths", &sim, &options, &settings).await?;
    let resources = vec![wit::WaldurResource { backend_id: "r".into(), offering_backend_id: None }];
    let report = backend.usage_report(resources, wit::BillingPeriod { year: 2024, month: 3 }).await?;
    assert_eq!(report.resources[0].totals[0].value, 200.0);
    // Upstream: 200 distinct API paths (and the token endpoint).
    let stats = sim.stats();
    assert_eq!(stats.requests_by_path.keys().filter(|p| p.starts_with(dwdi_sim::API_PREFIX)).count(), 200);
    // Host: one series, endpoint "other".
    let text = usage_agent::metrics::global().render();
    let series: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("usage_agent_upstream_requests_total{") && l.contains("offering=\"probe-paths\""))
        .collect();
    assert_eq!(
        series,
        ["usage_agent_upstream_requests_total{offering=\"probe-paths\",endpoint=\"other\",status=\"404\"} 200"]
    );
    Ok(())
}
