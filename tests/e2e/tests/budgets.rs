//! Request budgets against a hostile component: a flood of concurrent requests and a
//! retry storm in one call cost the upstream a bounded number of requests over a
//! bounded number of connections, and another offering in the same cycle keeps
//! writing to Waldur. Each test checks both sides: what the probe's DWDI saw (requests,
//! connections open at once) and what the host logged, counted and answered.
//!
//! The process runs under a 1,024-descriptor limit, as the host that once opened a
//! socket per request did when another offering's Waldur writes failed with "Too many
//! open files".

use std::sync::Once;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use e2e::SideBySide;

/// The defaults of `max_requests_in_flight` and `max_requests_per_call`
/// (`usage_agent::egress::Limits`), which these tests run with.
const IN_FLIGHT: u64 = 16;
const PER_CALL: u64 = 1000;
const RETRIES_PER_CALL: u64 = 32;

/// Lowers this process's soft descriptor limit to 1,024 once (`prlimit`, util-linux:
/// the workspace forbids the `unsafe` of a direct `setrlimit`).
fn descriptor_limit() -> Result<()> {
    static ONCE: Once = Once::new();
    let mut outcome = Ok(());
    ONCE.call_once(|| {
        outcome = std::process::Command::new("prlimit")
            .args(["--pid", &std::process::id().to_string(), "--nofile=1024:"])
            .status()
            .context("cannot run prlimit")
            .and_then(|status| {
                ensure!(status.success(), "prlimit failed: {status}");
                Ok(())
            });
    });
    outcome
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flood_of_requests_gets_the_call_budget_over_the_in_flight_slots() -> Result<()> {
    descriptor_limit()?;
    e2e::log::capture();
    let world = SideBySide::start("flood", &["r0", "r1"]).await?;
    // Answers take a while, so requests pile up: unbounded, the host would open a
    // socket for every request of the call.
    world.hostile_dwdi.set_latency(Duration::from_millis(20));
    let url = format!("{}/compute/usage-day?from=2024-03-01&to=2024-03-01", world.hostile_dwdi.api_url());
    let settings = format!("      probe: flood\n      count: 5000\n      url: {url:?}\n");
    let text = world.config("component_limits:\n  call_timeout_seconds: 120\n", &settings);
    let targets = world.targets(&text).await?;
    let (good, bad) = world.cycle(&text, &targets).await?;

    // The other offering wrote everything, in the same cycle and process.
    world.check_compute_reported(&good)?;
    // The probe got the call's budget answered and reported it (1000 answers).
    ensure!((bad.submitted, bad.failed) == (2, 0), "{bad:?}");
    ensure!(world.hostile_stored("r0").as_deref() == Some("1000.00"), "{:?}", world.hostile_stored("r0"));
    let probe_said = world.hostile_log("[probe] probe: flood:");
    ensure!(
        probe_said.len() == 1
            && probe_said[0].contains("1000 answered (HTTP 200 1000), 4000 failed (HttpRequestDenied 4000)"),
        "{probe_said:#?}"
    );

    // Upstream: exactly the budget, over at most the in-flight slots plus as many idle
    // connections.
    let seen = world.hostile_dwdi.stats();
    ensure!(seen.api_requests == PER_CALL, "DWDI saw {} requests", seen.api_requests);
    ensure!(
        seen.max_open_connections <= 2 * IN_FLIGHT,
        "{} connections open at once, more than {IN_FLIGHT} in use and {IN_FLIGHT} idle",
        seen.max_open_connections
    );
    ensure!(seen.tokens_issued == 1, "{seen:?}");

    // Host: every request past the budget denied and counted, one warning for them and
    // one line with the count; every slot back once the call is over.
    let egress = targets[1].backend.egress();
    let stats = egress.stats();
    ensure!(stats.over_request_budget.load(Ordering::Relaxed) == 5000 - PER_CALL);
    ensure!(stats.denied.load(Ordering::Relaxed) == 5000 - PER_CALL);
    ensure!(stats.requests.load(Ordering::Relaxed) == PER_CALL);
    ensure!(egress.requests_in_flight() == 0, "{} slots still taken", egress.requests_in_flight());
    let metrics = usage_agent::metrics::global().render();
    ensure!(
        metrics.contains("usage_agent_egress_denied_total{offering=\"flood\",rule=\"requests-per-call\"} 4000"),
        "{metrics}"
    );
    let warned = world
        .hostile_log("the call has sent 1000 requests, all it may (setting backend_settings.max_requests_per_call)");
    ensure!(warned.len() == 1, "{warned:#?}");
    let summed = world.hostile_log("egress denied 3999 more request(s) of this call");
    ensure!(summed.len() == 1 && summed[0].contains("requests-per-call 3999"), "{summed:#?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_retry_storm_against_a_failing_upstream_spends_the_call_retry_budget_only() -> Result<()> {
    descriptor_limit()?;
    e2e::log::capture();
    let world = SideBySide::start("storm", &["s0", "s1"]).await?;
    // Every request answers 503, which the host retries: each of the 200 requests
    // could be retried 3 times (max_retries), 600 retries in all.
    world.hostile_dwdi.fail_next(1_000_000, 503);
    let url = format!("{}/compute/usage-day?from=2024-03-01&to=2024-03-01", world.hostile_dwdi.api_url());
    let settings = format!("      probe: retry-storm\n      count: 200\n      url: {url:?}\n");
    let text = world.config("component_limits:\n  call_timeout_seconds: 120\n", &settings);
    let targets = world.targets(&text).await?;
    let (good, bad) = world.cycle(&text, &targets).await?;

    world.check_compute_reported(&good)?;
    // The component saw a 503 for each request, after the host's retries gave out.
    ensure!((bad.submitted, bad.failed) == (2, 0), "{bad:?}");
    let probe_said = world.hostile_log("[probe] probe: flood:");
    ensure!(
        probe_said.len() == 1 && probe_said[0].contains("200 answered (HTTP 503 200), 0 failed"),
        "{probe_said:#?}"
    );

    // Upstream: the requests and the call's retry budget, nothing more.
    let seen = world.hostile_dwdi.stats();
    ensure!(seen.api_requests == 200 + RETRIES_PER_CALL, "DWDI saw {} requests", seen.api_requests);
    ensure!(seen.max_open_connections <= 2 * IN_FLIGHT, "{} connections at once", seen.max_open_connections);

    // Host: the retries made, those refused counted, and said once for the call.
    let egress = targets[1].backend.egress();
    let stats = egress.stats();
    ensure!(stats.retries.load(Ordering::Relaxed) == RETRIES_PER_CALL);
    let refused = stats.retries_refused.load(Ordering::Relaxed);
    // Every request got a 503 it could have retried, except those that used all three
    // of their own retries: at most 32 / 3 of them.
    ensure!(refused >= 200 - RETRIES_PER_CALL / 3, "{refused} retries refused");
    let said = world.hostile_log(&format!(
        "{refused} retr(y/ies) of this call not made: it had made its {RETRIES_PER_CALL} (setting backend_settings.max_retries_per_call)"
    ));
    ensure!(said.len() == 1, "{said:#?}");
    ensure!(egress.requests_in_flight() == 0, "{} slots still taken", egress.requests_in_flight());
    Ok(())
}
