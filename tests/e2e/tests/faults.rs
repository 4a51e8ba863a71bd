//! Fault injection: every way DWDI, the token endpoint, the proxy and Waldur can fail,
//! each checked against what Waldur ends up holding. A faulty cycle stores nothing
//! wrong (and nothing at all from a failed DWDI answer); the next cycle, with the same
//! targets and no restart, stores everything, exactly.
//!
//! Faults come from the simulators (`fail_next`, `respond_next`, `fail_route`, …) and
//! from [`FaultProxy`], a TCP proxy that stalls, refuses or cuts connections; the SOCKS
//! proxy is the real `microsocks`.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use anyhow::Result;
use dwdi_sim::{DwdiData, DwdiOptions, DwdiSim};
use e2e::fault_proxy::{FaultProxy, Mode};
use e2e::proxies::{ProxyProcess, free_port};
use e2e::{ComputeSims, NODE_AND_CPU, cents, cycle_at, report_targets};
use usage_agent::report::{OfferingSummary, ReportTarget};
use waldur_sim::{WaldurOptions, WaldurSim, uuid_from};

const TOKEN: &str = "provider-token";
const MID_MARCH: &str = "2024-03-15T12:00:00Z";
const ACCOUNTS: usize = 6;

/// Where the offering's traffic goes; each may be a [`FaultProxy`] instead of the
/// simulator itself.
#[derive(Clone)]
struct Routes {
    api_url: String,
    token_url: String,
    waldur_url: String,
    /// Extra `backend_settings` lines (6-space indent).
    settings: String,
    /// Extra top-level lines.
    top: String,
}

struct World {
    dwdi: DwdiSim,
    options: DwdiOptions,
    waldur: WaldurSim,
    data: DwdiData,
    offering: String,
}

impl World {
    async fn new() -> Result<Self> {
        let data = DwdiData::generated(ACCOUNTS, 3, &[(2024, 3)]);
        let ComputeSims { dwdi, options, waldur, offering } =
            ComputeSims::start(&data, WaldurOptions::default(), "compute", TOKEN, "").await?;
        waldur.set_today(2024, 3, 15);
        for account in data.accounts() {
            waldur.add_offering_user(&offering, &format!("{account}-nobody"));
        }
        Ok(Self { dwdi, options, waldur, data, offering })
    }

    /// Straight to the simulators, with short timeouts and few retries.
    fn direct(&self) -> Routes {
        Routes {
            api_url: self.dwdi.api_url(),
            token_url: self.dwdi.token_url(),
            waldur_url: self.waldur.url(),
            settings: "      first_byte_timeout_seconds: 2\n      connect_timeout_seconds: 2\n      max_retries: 1\n"
                .to_owned(),
            top: "waldur_timeout_seconds: 2\n".to_owned(),
        }
    }

    fn config(&self, routes: &Routes) -> String {
        format!(
            "timezone: UTC\nreporting_periods: 1\n{}offerings:\n  - name: compute\n    waldur_api_url: {:?}\n    waldur_api_token: {TOKEN}\n    waldur_offering_uuid: {}\n    backend_type: cscs-dwdi-compute\n    backend_settings:\n      cscs_dwdi_api_url: {:?}\n      cscs_dwdi_client_id: {:?}\n      cscs_dwdi_client_secret: {:?}\n      cscs_dwdi_oidc_token_url: {:?}\n{}    backend_components:\n{NODE_AND_CPU}",
            routes.top,
            routes.waldur_url,
            self.offering,
            routes.api_url,
            self.options.client_id,
            self.options.client_secret,
            routes.token_url,
            routes.settings,
        )
    }

    /// What a clean cycle stores: (backend id, type) → amount.
    fn expected_totals(&self) -> BTreeMap<(String, String), String> {
        let mut out = BTreeMap::new();
        for account in self.data.accounts() {
            let usage = self.data.compute_usage(&account, None, "2024-03-01", "2024-03-31");
            out.insert((account.clone(), "nodeHours".to_owned()), cents(usage.node_hours));
            out.insert((account.clone(), "cpuHours".to_owned()), cents(usage.cpu_hours));
        }
        out
    }

    /// (backend id, username, type) → amount.
    fn expected_users(&self) -> BTreeMap<(String, String, String), String> {
        let mut out = BTreeMap::new();
        for account in self.data.accounts() {
            let usage = self.data.compute_usage(&account, None, "2024-03-01", "2024-03-31");
            for (user, (node, cpu, _)) in usage.users {
                out.insert((account.clone(), user.clone(), "nodeHours".to_owned()), cents(node));
                out.insert((account.clone(), user, "cpuHours".to_owned()), cents(cpu));
            }
        }
        out
    }

    fn ids(&self) -> BTreeMap<String, String> {
        self.data.accounts().into_iter().map(|a| (uuid_from(&a), a)).collect()
    }

    fn stored_totals(&self) -> Vec<((String, String), String)> {
        let ids = self.ids();
        self.waldur
            .usages()
            .into_iter()
            .map(|u| ((ids.get(&u.resource_uuid).cloned().unwrap_or(u.resource_uuid), u.component_type), u.amount))
            .collect()
    }

    fn stored_users(&self) -> Vec<((String, String, String), String)> {
        let ids = self.ids();
        self.waldur
            .user_usages()
            .into_iter()
            .map(|u| {
                ((ids.get(&u.resource_uuid).cloned().unwrap_or(u.resource_uuid), u.username, u.component_type), u.usage)
            })
            .collect()
    }

    /// Everything Waldur holds is right and held once (it may be incomplete).
    fn assert_nothing_wrong(&self, case: &str) {
        let totals = self.expected_totals();
        let stored = self.stored_totals();
        for (key, amount) in &stored {
            assert_eq!(totals.get(key), Some(amount), "{case}: wrong total stored for {key:?}");
        }
        assert_eq!(
            stored.iter().map(|(k, _)| k).collect::<std::collections::BTreeSet<_>>().len(),
            stored.len(),
            "{case}: a total stored twice"
        );
        let users = self.expected_users();
        let stored = self.stored_users();
        for (key, amount) in &stored {
            assert_eq!(users.get(key), Some(amount), "{case}: wrong per-user usage stored for {key:?}");
        }
        assert_eq!(
            stored.iter().map(|(k, _)| k).collect::<std::collections::BTreeSet<_>>().len(),
            stored.len(),
            "{case}: a user usage stored twice"
        );
    }

    /// Waldur holds exactly what a clean cycle stores.
    fn assert_complete(&self, case: &str) {
        self.assert_nothing_wrong(case);
        assert_eq!(self.stored_totals().len(), self.expected_totals().len(), "{case}: totals missing");
        assert_eq!(self.stored_users().len(), self.expected_users().len(), "{case}: per-user usage missing");
    }
}

async fn cycle(target: &ReportTarget, text: &str) -> Result<OfferingSummary> {
    cycle_at(target, text, MID_MARCH).await
}

/// A cycle under a fault: it fails with `want` in an error and stores nothing wrong
/// (nothing at all if `nothing_stored`).
async fn fails(
    world: &World,
    targets: &[ReportTarget],
    text: &str,
    case: &str,
    want: &str,
    nothing_stored: bool,
) -> Result<()> {
    let first = cycle(&targets[0], text).await?;
    assert!(first.failed > 0, "{case}: the fault went unnoticed: {first:?}");
    let errors = first.errors.join("\n");
    assert!(errors.contains(want), "{case}: expected {want:?} in:\n{errors}");
    world.assert_nothing_wrong(case);
    if nothing_stored {
        assert!(world.waldur.usages().is_empty(), "{case}: something was submitted from a failed answer");
    }
    Ok(())
}

/// The fault gone, the same targets (no restart) run a cycle that stores everything,
/// then one that writes nothing.
async fn recovers(world: &World, targets: &[ReportTarget], text: &str, case: &str) -> Result<()> {
    let second = cycle(&targets[0], text).await?;
    assert_eq!(second.failed, 0, "{case}: the next cycle did not recover: {second:?}");
    world.assert_complete(case);
    world.waldur.reset_counters();
    let third = cycle(&targets[0], text).await?;
    assert_eq!((third.failed, world.waldur.requests().writes), (0, 0), "{case}: {third:?}");
    Ok(())
}

/// [`fails`], then `clear` removes the fault, then [`recovers`].
async fn fails_then_recovers(
    world: &World,
    targets: &[ReportTarget],
    text: &str,
    case: &str,
    want: &str,
    nothing_stored: bool,
    clear: impl FnOnce(),
) -> Result<()> {
    fails(world, targets, text, case, want, nothing_stored).await?;
    clear();
    recovers(world, targets, text, case).await
}

#[tokio::test(flavor = "multi_thread")]
async fn dwdi_error_statuses_submit_nothing() -> Result<()> {
    for (status, count, want) in [
        (500, 1, "DWDI answered HTTP 500"),
        (404, 1, "DWDI answered HTTP 404"),
        (503, 2, "DWDI answered HTTP 503"),
        (401, 2, "DWDI refused the credentials"),
        (403, 1, "DWDI refused the credentials"),
    ] {
        let world = World::new().await?;
        let text = world.config(&world.direct());
        let targets = report_targets(&text).await?;
        world.dwdi.fail_next(count, status);
        let case = format!("DWDI {status}");
        fails_then_recovers(&world, &targets, &text, &case, want, true, || {}).await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn dwdi_answers_that_cannot_be_used_submit_nothing() -> Result<()> {
    let account = DwdiData::generated(ACCOUNTS, 3, &[(2024, 3)]).accounts()[0].clone();
    let row = |node: &str| {
        format!(
            r#"{{"compute":[{{"account":"{account}","cluster":"alps","totalNodeHours":{node},"totalCpuHours":1,"users":[]}}]}}"#
        )
    };
    let cases: Vec<(&str, &'static str, String, &str)> = vec![
        (
            "truncated JSON",
            "application/json",
            format!(r#"{{"compute":[{{"account":"{account}","totalNo"#),
            "not valid JSON",
        ),
        ("an HTML page", "text/html", "<html><body>502 Bad Gateway</body></html>".to_owned(), "not valid JSON"),
        ("an empty body", "application/json", String::new(), "not valid JSON"),
        (
            "the wrong shape",
            "application/json",
            format!(r#"{{"compute":{{"{account}":1}}}}"#),
            "compute: expected an array",
        ),
        (
            "a string for a number",
            "application/json",
            row("\"12\""),
            "totalNodeHours: expected a number, found a string",
        ),
        ("null for a number", "application/json", row("null"), "totalNodeHours: expected a number, found null"),
        ("NaN", "application/json", row("NaN"), "not valid JSON"),
        ("an infinite number", "application/json", row("1e999"), "not valid JSON"),
        ("a negative number", "application/json", row("-3.5"), "negative value -3.5"),
        ("an absurdly large number", "application/json", row("5e20"), "implausibly large value"),
    ];
    for (case, content_type, body, want) in cases {
        let world = World::new().await?;
        let text = world.config(&world.direct());
        let targets = report_targets(&text).await?;
        world.dwdi.respond_next(1, 200, content_type, &body);
        fails_then_recovers(&world, &targets, &text, case, want, true, || {}).await?;
        assert!(
            world.dwdi.stats().api_count("/compute/usage-month/account") >= 2,
            "{case}: the component really asked DWDI"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn dwdi_timeouts_and_dropped_connections_submit_nothing() -> Result<()> {
    // An API that never answers: the first-byte timeout (2 s, one retry) fails the call.
    let world = World::new().await?;
    let proxy = FaultProxy::start(world.dwdi.addr()).await?;
    let routes = Routes { api_url: proxy.url("/api/v1"), ..world.direct() };
    let text = world.config(&routes);
    let targets = report_targets(&text).await?;
    proxy.set_mode(Mode::Stall);
    fails_then_recovers(&world, &targets, &text, "DWDI stalls", "no answer from", true, || proxy.set_mode(Mode::Pass))
        .await?;

    // A connection cut in the middle of the answer.
    let world = World::new().await?;
    let proxy = FaultProxy::start(world.dwdi.addr()).await?;
    let routes = Routes { api_url: proxy.url("/api/v1"), ..world.direct() };
    let text = world.config(&routes);
    let targets = report_targets(&text).await?;
    proxy.cut_after(400);
    fails_then_recovers(&world, &targets, &text, "DWDI connection cut", "DWDI ", true, || {}).await?;
    assert_eq!(proxy.cuts(), 1);

    // A connection refused.
    let world = World::new().await?;
    let proxy = FaultProxy::start(world.dwdi.addr()).await?;
    let routes = Routes { api_url: proxy.url("/api/v1"), ..world.direct() };
    let text = world.config(&routes);
    let targets = report_targets(&text).await?;
    proxy.set_mode(Mode::Refuse);
    fails_then_recovers(&world, &targets, &text, "DWDI refuses", "DWDI could not be reached", true, || {
        proxy.set_mode(Mode::Pass)
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn token_endpoint_failures_submit_nothing() -> Result<()> {
    for (case, want) in [
        ("HTTP 500", "answered HTTP 500"),
        ("not JSON", "did not answer JSON"),
        ("no access_token", "answered without an access_token"),
    ] {
        let world = World::new().await?;
        let text = world.config(&world.direct());
        let targets = report_targets(&text).await?;
        match case {
            "HTTP 500" => world.dwdi.fail_next_token(1, 500),
            "not JSON" => world.dwdi.respond_next_token(1, 200, "application/json", "{\"access_token\": "),
            _ => {
                world.dwdi.respond_next_token(1, 200, "application/json", r#"{"token_type":"Bearer","expires_in":300}"#)
            }
        }
        fails_then_recovers(&world, &targets, &text, &format!("token endpoint: {case}"), want, true, || {}).await?;
    }
    for (mode, want) in [(Mode::Stall, "did not answer within"), (Mode::Refuse, "is unreachable")] {
        let world = World::new().await?;
        let proxy = FaultProxy::start(world.dwdi.addr()).await?;
        let routes = Routes { token_url: format!("{}{}", proxy.url(""), dwdi_sim::TOKEN_PATH), ..world.direct() };
        let text = world.config(&routes);
        let targets = report_targets(&text).await?;
        proxy.set_mode(mode);
        let case = format!("token endpoint {mode:?}");
        fails_then_recovers(&world, &targets, &text, &case, want, true, || proxy.set_mode(Mode::Pass)).await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn proxy_failures_submit_nothing() -> Result<()> {
    // The real SOCKS server behind a fault proxy: refused, then stalled, then fine.
    let world = World::new().await?;
    let socks = ProxyProcess::microsocks(None)?;
    let proxy = FaultProxy::start(SocketAddr::from(([127, 0, 0, 1], socks.port()))).await?;
    let mut routes = world.direct();
    // The proxy's own connect timeout fires before the token request's.
    routes.settings = routes.settings.replace("connect_timeout_seconds: 2", "connect_timeout_seconds: 1");
    routes.settings.push_str(&format!("      socks_proxy: \"socks5h://{}\"\n", proxy.addr()));
    let text = world.config(&routes);
    let targets = report_targets(&text).await?;
    proxy.set_mode(Mode::Refuse);
    let first = cycle(&targets[0], &text).await?;
    assert!(first.failed > 0 && world.waldur.usages().is_empty(), "{first:?}");
    assert!(first.errors.join("\n").contains("proxy"), "{:?}", first.errors);
    proxy.set_mode(Mode::Stall);
    fails_then_recovers(&world, &targets, &text, "SOCKS proxy stalls", "proxy", true, || proxy.set_mode(Mode::Pass))
        .await?;
    assert!(proxy.accepted() >= 3, "the traffic went through the proxy");

    // No proxy listening at all; the next cycle finds one there and recovers.
    let world = World::new().await?;
    let port = free_port()?;
    let mut routes = world.direct();
    routes.settings.push_str(&format!("      socks_proxy: \"socks5h://127.0.0.1:{port}\"\n"));
    let text = world.config(&routes);
    let targets = report_targets(&text).await?;
    fails(&world, &targets, &text, "SOCKS proxy down", "cannot connect to proxy", true).await?;
    let _socks = ProxyProcess::microsocks_on(port, None)?;
    recovers(&world, &targets, &text, "SOCKS proxy down").await
}

#[tokio::test(flavor = "multi_thread")]
async fn waldur_errors_are_contained_and_the_next_cycle_recovers() -> Result<()> {
    let set_usage = "POST /api/marketplace-component-usages/set_usage/";
    let set_user_usages = "POST /api/marketplace-component-usages/{uuid}/set_user_usages/";
    let listing = "GET /api/marketplace-component-usages/";
    // The route, not the next request: the offering users are asked for beside the
    // offering, and a failure there is asked again where the links are needed (below).
    let offering = "GET /api/marketplace-provider-offerings/{uuid}/";
    type Inject = Box<dyn Fn(&WaldurSim)>;
    let cases: Vec<(&str, Inject, &str, bool)> = vec![
        ("offering 500", Box::new(move |w: &WaldurSim| w.fail_route(offering, 1, 500)), "answered HTTP 500", true),
        ("offering 403", Box::new(move |w: &WaldurSim| w.fail_route(offering, 1, 403)), "answered HTTP 403", true),
        (
            "usage listing 404",
            Box::new(move |w: &WaldurSim| w.fail_route(listing, 1, 404)),
            "cannot read Waldur's usages",
            true,
        ),
        (
            "set_usage 500",
            Box::new(move |w: &WaldurSim| w.fail_route(set_usage, 2, 500)),
            "set_usage/ answered HTTP 500",
            false,
        ),
        (
            "set_usage 400",
            Box::new(move |w: &WaldurSim| w.fail_route(set_usage, 1, 400)),
            "set_usage/ answered HTTP 400",
            false,
        ),
        (
            "set_user_usages 502",
            Box::new(move |w: &WaldurSim| w.fail_route(set_user_usages, 3, 502)),
            "per-user usage of",
            false,
        ),
    ];
    for (case, inject, want, nothing) in cases {
        let world = World::new().await?;
        let text = world.config(&world.direct());
        let targets = report_targets(&text).await?;
        inject(&world.waldur);
        fails_then_recovers(&world, &targets, &text, case, want, nothing, || world.waldur.clear_faults()).await?;
    }

    // Passing failures of reads are retried within the cycle.
    let world = World::new().await?;
    let text = world.config(&world.direct());
    let targets = report_targets(&text).await?;
    world.waldur.fail_next(2, 503);
    let summary = cycle(&targets[0], &text).await?;
    assert_eq!(summary.failed, 0, "{summary:?}");
    world.assert_complete("Waldur 503 twice");

    // The offering users, listed early beside the offering, are asked again where the
    // per-user writes need their links: one failure there costs nothing.
    let world = World::new().await?;
    let text = world.config(&world.direct());
    let targets = report_targets(&text).await?;
    let users = "GET /api/marketplace-offering-users/";
    world.waldur.fail_route(users, 1, 500);
    let summary = cycle(&targets[0], &text).await?;
    assert_eq!(summary.failed, 0, "{summary:?}");
    world.assert_complete("offering users 500 once");
    assert_eq!(world.waldur.requests().by_route.get(users).copied(), Some(2), "asked again once");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn waldur_timeouts_are_contained_and_the_next_cycle_recovers() -> Result<()> {
    let world = World::new().await?;
    let proxy = FaultProxy::start(world.waldur.addr()).await?;
    let routes =
        Routes { waldur_url: proxy.url("/api/"), top: "waldur_timeout_seconds: 1\n".to_owned(), ..world.direct() };
    let text = world.config(&routes);
    let targets = report_targets(&text).await?;
    proxy.set_mode(Mode::Stall);
    fails_then_recovers(&world, &targets, &text, "Waldur stalls", "no answer within", true, || {
        proxy.set_mode(Mode::Pass)
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_waldur_connection_dropped_halfway_loses_nothing() -> Result<()> {
    // A clean cycle through the proxy shows where the answers lie; then each cycle cuts
    // one connection: inside listings, inside the answer to the first `set_usage` (6
    // writes, all answered 201) and to the first `set_user_usages` (the 7th 201).
    // One write at a time, so every run puts the answers at the same byte offsets.
    let sequential = || "waldur_max_concurrency: 1\n".to_owned();
    let (total, writes) = {
        let world = World::new().await?;
        let proxy = FaultProxy::start(world.waldur.addr()).await?;
        let text = world.config(&Routes { waldur_url: proxy.url("/api/"), top: sequential(), ..world.direct() });
        let targets = report_targets(&text).await?;
        let summary = cycle(&targets[0], &text).await?;
        assert_eq!(summary.failed, 0, "{summary:?}");
        let writes: Vec<u64> =
            proxy.answer_starts().into_iter().filter(|(_, line)| line.contains(" 201 ")).map(|(at, _)| at).collect();
        (proxy.forwarded(), writes)
    };
    assert_eq!(writes.len(), 18, "6 set_usage and 12 set_user_usages answers: {writes:?}");
    let mut cut_writes = 0;
    for point in [total / 10, total / 2, writes[0] + 10, writes[6] + 10, total - 50] {
        let world = World::new().await?;
        let proxy = FaultProxy::start(world.waldur.addr()).await?;
        let text = world.config(&Routes { waldur_url: proxy.url("/api/"), top: sequential(), ..world.direct() });
        let targets = report_targets(&text).await?;
        proxy.cut_after(point);
        let case = format!("cut after {point} of {total} bytes");
        let first = cycle(&targets[0], &text).await?;
        assert_eq!(proxy.cuts(), 1, "{case}");
        world.assert_nothing_wrong(&case);
        if writes.iter().any(|w| point > *w && point < *w + 100) {
            // The write reached Waldur, its answer did not reach us: a failure now,
            // found unchanged (and completed) next cycle.
            assert!(first.failed > 0, "{case}: {first:?}");
            cut_writes += 1;
        }
        let second = cycle(&targets[0], &text).await?;
        assert_eq!(second.failed, 0, "{case}: {second:?}");
        world.assert_complete(&case);
        world.waldur.reset_counters();
        cycle(&targets[0], &text).await?;
        assert_eq!(world.waldur.requests().writes, 0, "{case}");
    }
    assert!(cut_writes >= 2, "cuts landed in answers to writes: {cut_writes}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_waldur_that_stops_answering_mid_cycle_costs_about_one_timeout() -> Result<()> {
    // 100 resources, two writes in flight, a one-second timeout: without the circuit,
    // the writes still pending when Waldur hangs would each wait their timeout (about
    // 45 s); with it, the cycle gives up after the writes in flight time out.
    let data = DwdiData::generated(100, 1, &[(2024, 3)]);
    let options = WaldurOptions { latency: std::time::Duration::from_millis(20), ..WaldurOptions::default() };
    let ComputeSims { dwdi, options: dwdi_options, waldur, offering } =
        ComputeSims::start(&data, options, "compute", TOKEN, "").await?;
    waldur.set_today(2024, 3, 15);
    let world = World { dwdi, options: dwdi_options, waldur, data, offering };
    let proxy = FaultProxy::start(world.waldur.addr()).await?;
    let routes = Routes {
        waldur_url: proxy.url("/api/"),
        top: "waldur_timeout_seconds: 1\nwaldur_max_concurrency: 2\n".to_owned(),
        ..world.direct()
    };
    let text = world.config(&routes);
    let targets = report_targets(&text).await?;
    let target = &targets[0];

    // Waldur hangs once ten writes have reached it.
    let hung = async {
        while world.waldur.requests().set_usage < 10 {
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
        proxy.hang();
        world.waldur.requests().total
    };
    let started = std::time::Instant::now();
    let (first, reached) = tokio::join!(cycle(target, &text), hung);
    let (first, took) = (first?, started.elapsed());
    let written = world.waldur.usages().len() / 2;
    assert!((10..60).contains(&written), "the hang came mid-cycle: {written} resources written");
    // Those written are not read back either: every resource-month fails this cycle.
    assert_eq!(first.failed, 100, "{first}");
    assert_eq!(first.errors.len(), 1, "one error for the whole hang: {:#?}", first.errors);
    let error = &first.errors[0];
    let url = proxy.url("/api/");
    assert!(error.contains(&format!("Waldur {url} did not answer")), "{error}");
    assert!(error.contains("100 resource-month(s) of 2024-03 not written or not read back"), "{error}");
    assert!(error.contains("the next cycle asks Waldur once"), "{error}");
    assert_eq!(first.held.len(), 1, "{first:?}");
    // Requests sent after the hang: those in flight and those that opened the circuit.
    let after_hang = first.waldur_calls - reached;
    assert!(after_hang <= 2 + 3, "{after_hang} requests went out to a Waldur that did not answer");
    assert!(took < std::time::Duration::from_secs(10), "the hang cost {took:?}, not about one timeout");
    assert_totals_close(&world)?;

    // The next cycle, Waldur still hung: one request, then nothing else.
    let before = target.waldur.request_count();
    let second = cycle(target, &text).await?;
    assert_eq!(target.waldur.request_count() - before, 1, "{second:?}");
    assert!(second.errors.len() == 1 && second.errors[0].contains("is not answering"), "{:?}", second.errors);
    assert_eq!(second.held.len(), 1, "{second:?}");

    // Back: the cycle after writes everything.
    proxy.set_mode(Mode::Pass);
    let third = cycle(target, &text).await?;
    assert!(!third.has_failures() && third.held.is_empty(), "{third}: {:?}", third.errors);
    assert_eq!(world.waldur.usages().len(), 200, "{third}");
    assert_totals_close(&world)
}

/// Every total Waldur holds is DWDI's to the cent (either way at a half cent: DWDI's
/// days summed in another order differ in the last bits).
fn assert_totals_close(world: &World) -> Result<()> {
    let ids = world.ids();
    for usage in world.waldur.usages() {
        let account = ids.get(&usage.resource_uuid).cloned().unwrap_or_default();
        let expected = world.data.compute_usage(&account, None, "2024-03-01", "2024-03-31");
        let value = if usage.component_type == "nodeHours" { expected.node_hours } else { expected.cpu_hours };
        let held: f64 = usage.amount.parse()?;
        anyhow::ensure!((held - value).abs() <= 0.005 + 1e-6, "{account} {}: {held} for {value}", usage.component_type);
    }
    Ok(())
}
