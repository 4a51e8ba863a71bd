//! The egress rules, proven with the `probe` test component: a component reaches only
//! its `cscs_dwdi_api_url`, gets the token without seeing it, and cannot set
//! credentials of its own.

use anyhow::Result;
use dwdi_sim::{DwdiData, DwdiOptions, DwdiSim};
use e2e::probe_backend;
use usage_agent::runtime::{CallError, wit};

async fn probe(sim: &DwdiSim, options: &DwdiOptions, probe_settings: &str) -> Result<Result<wit::Report, CallError>> {
    let backend = probe_backend("probe", sim, options, probe_settings).await?;
    let resources = vec![wit::WaldurResource { backend_id: "r".into(), cluster: None }];
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
