//! The token request and every API request through real proxy servers — microsocks,
//! Dante, tinyproxy and an `ssh -D` tunnel — over plain HTTP and over TLS with a CA made
//! in the test. Each case proves the route: the simulator's TCP peer is a socket owned
//! by the proxy process (or, for plain requests through an HTTP proxy, which open a
//! fresh upstream connection per request, the proxy's `Via` header).

use anyhow::{Result, bail, ensure};
use dwdi_sim::{API_PREFIX, DwdiData, DwdiOptions, DwdiSim, TOKEN_PATH};
use e2e::proxies::{PeerOwner, ProxyProcess};
use e2e::tls::TestCa;
use e2e::{ConfigFile, compute_config_at, run_cli};
use usage_agent::backends::{Backends, prepare_offering};
use usage_agent::config::AgentConfig;
use usage_agent::runtime::{OfferingBackend, Runtime, wit};

const PERIOD: wit::BillingPeriod = wit::BillingPeriod { year: 2024, month: 3 };

/// Plain HTTP or TLS, and the host name the URLs use.
#[derive(Debug, Clone, Copy)]
enum Wire {
    Plain,
    Tls,
}

/// A simulator, served plainly or over TLS with a certificate from `ca`.
async fn start_sim(wire: Wire, ca: &TestCa, names: &[&str]) -> Result<(DwdiSim, DwdiOptions, DwdiData)> {
    let data = DwdiData::generated(3, 2, &[(2024, 3)]);
    let options = DwdiOptions::default();
    let sim = match wire {
        Wire::Plain => DwdiSim::start(data.clone(), options.clone()).await?,
        Wire::Tls => {
            let cert = ca.issue(names)?;
            DwdiSim::start_tls(data.clone(), options.clone(), &cert.cert_pem, &cert.key_pem).await?
        }
    };
    Ok((sim, options, data))
}

/// The built-in components, compiled once per test.
async fn backends() -> Result<Backends> {
    let backends = Backends::new(Runtime::new()?);
    let probe = AgentConfig::parse(
        "offerings:\n  - backend_type: cscs-dwdi-compute\n    backend_settings: {cscs_dwdi_api_url: 'http://x', cscs_dwdi_client_id: a, cscs_dwdi_client_secret: b, cscs_dwdi_oidc_token_url: 'http://x'}\n    backend_components: {nodeHours: {}}\n",
    )?;
    backends.load_builtins_for(&probe).await?;
    Ok(backends)
}

/// Runs one usage report and checks every total against the data.
async fn report_matches(backend: &OfferingBackend, data: &DwdiData) -> Result<()> {
    let accounts = data.accounts();
    let resources =
        accounts.iter().map(|a| wit::WaldurResource { backend_id: a.clone(), offering_backend_id: None }).collect();
    let report = backend.usage_report(resources, PERIOD).await?;
    for account in &accounts {
        let expected = data.compute_usage(account, None, "2024-03-01", "2024-03-31");
        let got = report.resources.iter().find(|r| &r.backend_id == account);
        let node = got.and_then(|r| r.totals.iter().find(|a| a.component == "nodeHours")).map(|a| a.value);
        ensure!(
            node.is_some_and(|v| (v - expected.node_hours).abs() < 1e-6),
            "{account}: nodeHours {node:?}, expected {}",
            expected.node_hours
        );
    }
    Ok(())
}

/// Every request the simulator saw (the token request and the API requests) came
/// from the proxy.
fn came_through(sim: &DwdiSim, proxy: &ProxyProcess, case: &str) -> Result<()> {
    let stats = sim.stats();
    ensure!(stats.tokens_issued == 1, "{case}: {} tokens issued", stats.tokens_issued);
    ensure!(stats.api_requests >= 1, "{case}: no API request arrived");
    let token_requests = stats.recent.iter().filter(|r| r.uri.ends_with(TOKEN_PATH)).count();
    ensure!(token_requests == 1, "{case}: {token_requests} token requests recorded");
    // A connection may have closed before it is looked up (a busy machine, a token
    // request done long ago); it proves nothing either way. One held by another process
    // is a request that bypassed the proxy, and at least one must be seen held by it.
    let mut proven = 0;
    for record in &stats.recent {
        let Some(peer) = record.peer else { bail!("{case}: {} has no peer", record.uri) };
        let owner = if record.via.as_deref().is_some_and(|via| via.contains("tinyproxy")) {
            PeerOwner::Proxy
        } else {
            proxy.peer_owner(peer, sim.addr())?
        };
        ensure!(
            owner != PeerOwner::Other,
            "{case}: {} {} came from {peer}, which is not the proxy's\n{}",
            record.method,
            record.uri,
            proxy.log()
        );
        proven += usize::from(owner == PeerOwner::Proxy);
    }
    ensure!(proven > 0, "{case}: no request could be traced to the proxy (every connection closed)\n{}", proxy.log());
    Ok(())
}

/// One case: a report through `proxy_url` over `wire`, URLs naming `host`.
async fn case(backends: &Backends, proxy: &ProxyProcess, proxy_url: &str, wire: Wire, host: &str) -> Result<()> {
    let ca = TestCa::new()?;
    let (sim, options, data) = start_sim(wire, &ca, &["localhost", "127.0.0.1"]).await?;
    let extra = format!("      socks_proxy: {proxy_url:?}\n{}", ca.setting());
    let config = AgentConfig::parse(&compute_config_at(&sim, &options, host, &extra))?;
    let case = format!("{proxy_url} {wire:?} {host}");
    let backend = prepare_offering(backends, 0, &config.offerings[0]).await?;
    report_matches(&backend, &data).await.map_err(|e| anyhow::anyhow!("{case}: {e:#}\n{}", proxy.log()))?;
    // The backend still holds its pooled connections, so their sockets can be looked up.
    came_through(&sim, proxy, &case)?;
    drop(backend);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn microsocks_socks5_resolving_here_and_at_the_proxy() -> Result<()> {
    let backends = backends().await?;
    let proxy = ProxyProcess::microsocks(None)?;
    for wire in [Wire::Plain, Wire::Tls] {
        case(&backends, &proxy, &proxy.url("socks5", None), wire, "localhost").await?;
        case(&backends, &proxy, &proxy.url("socks5h", None), wire, "localhost").await?;
    }
    // socks5 resolved `localhost` here, socks5h let the proxy resolve it.
    let log = proxy.log();
    ensure!(log.contains("connected to 127.0.0.1:"), "{log}");
    ensure!(log.contains("connected to localhost:"), "{log}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn microsocks_with_user_and_password() -> Result<()> {
    let backends = backends().await?;
    let auth = Some(("alice", "s3cret-proxy"));
    let proxy = ProxyProcess::microsocks(auth)?;
    for wire in [Wire::Plain, Wire::Tls] {
        case(&backends, &proxy, &proxy.url("socks5", auth), wire, "127.0.0.1").await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn dante_socks4_and_socks5() -> Result<()> {
    let backends = backends().await?;
    let proxy = ProxyProcess::dante()?;
    for wire in [Wire::Plain, Wire::Tls] {
        case(&backends, &proxy, &proxy.url("socks4", None), wire, "localhost").await?;
        case(&backends, &proxy, &proxy.url("socks5", None), wire, "127.0.0.1").await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn tinyproxy_connect_for_tls_and_absolute_form_for_http() -> Result<()> {
    let backends = backends().await?;
    for auth in [None, Some(("bob", "tiny-pass"))] {
        // CONNECT is allowed only to the ports listed: the simulators' ports are not
        // known before they start, so start them first and the proxy after.
        let ca = TestCa::new()?;
        let names = ["localhost", "127.0.0.1"];
        let (plain, options, data) = start_sim(Wire::Plain, &ca, &names).await?;
        let (tls, _, tls_data) = start_sim(Wire::Tls, &ca, &names).await?;
        let proxy = ProxyProcess::tinyproxy(&[plain.addr().port(), tls.addr().port()], auth)?;
        for (sim, data) in [(&plain, &data), (&tls, &tls_data)] {
            let extra = format!("      socks_proxy: {:?}\n{}", proxy.url("http", auth), ca.setting());
            let config = AgentConfig::parse(&compute_config_at(sim, &options, "127.0.0.1", &extra))?;
            let backend = prepare_offering(&backends, 0, &config.offerings[0]).await?;
            let case = format!("tinyproxy {} auth={}", sim.scheme(), auth.is_some());
            report_matches(&backend, data).await.map_err(|e| anyhow::anyhow!("{case}: {e:#}\n{}", proxy.log()))?;
            came_through(sim, &proxy, &case)?;
        }
        // Plain requests went in absolute form, TLS through CONNECT.
        let log = proxy.log();
        ensure!(log.contains(&format!("CONNECT 127.0.0.1:{}", tls.addr().port())), "{log}");
        ensure!(log.contains(&format!("GET http://127.0.0.1:{}{API_PREFIX}", plain.addr().port())), "{log}");
        ensure!(log.contains(&format!("POST http://127.0.0.1:{}{TOKEN_PATH}", plain.addr().port())), "{log}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn ssh_dynamic_forwarding_like_the_seed() -> Result<()> {
    let backends = backends().await?;
    let tunnel = ProxyProcess::ssh_tunnel()?;
    for wire in [Wire::Plain, Wire::Tls] {
        case(&backends, &tunnel, &format!("socks5://localhost:{}", tunnel.port()), wire, "localhost").await?;
        case(&backends, &tunnel, &tunnel.url("socks5h", None), wire, "localhost").await?;
        case(&backends, &tunnel, &tunnel.url("socks4a", None), wire, "localhost").await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_usage_command_goes_through_the_proxy_too() -> Result<()> {
    // The same route from the command line, as an operator runs it.
    let proxy = ProxyProcess::microsocks(None)?;
    let ca = TestCa::new()?;
    let (sim, options, data) = start_sim(Wire::Tls, &ca, &["127.0.0.1"]).await?;
    let extra = format!("      socks_proxy: {:?}\n{}", proxy.url("socks5h", None), ca.setting());
    let config = ConfigFile::new(&compute_config_at(&sim, &options, "127.0.0.1", &extra))?;
    let account = data.accounts()[0].clone();
    let out = run_cli(&["usage", "-c", config.arg(), "--month", "2024-03", "--resource", &account]).await?;
    let expected = data.compute_usage(&account, None, "2024-03-01", "2024-03-31");
    ensure!(out.contains(&e2e::cents(expected.node_hours)), "{out}");
    ensure!(proxy.log().contains(&format!("connected to 127.0.0.1:{}", sim.addr().port())), "{}", proxy.log());
    Ok(())
}

/// An upstream-style config (waldur-site-agent 1.0.7's keys): a blank
/// `waldur_api_token`, the offering logging into Waldur by OIDC, and `global_proxy`
/// for every Waldur connection — the token request included — through the real
/// tinyproxy. The upstream (DWDI) keeps its own way: `global_proxy` is not for it.
#[tokio::test(flavor = "multi_thread")]
async fn waldur_login_by_oidc_through_global_proxy() -> Result<()> {
    use e2e::{ComputeSims, NODE_AND_CPU, cycle_at, dwdi_access, report_targets};
    const NOW: &str = "2024-03-15T12:00:00Z";
    let data = DwdiData::generated(3, 2, &[(2024, 3)]);
    let ComputeSims { dwdi, options, waldur, offering } =
        ComputeSims::start(&data, waldur_sim::WaldurOptions::default(), "compute", "static-token", "").await?;
    waldur.set_today(2024, 3, 15);
    // The site's OIDC provider: a client of its own, no scope asked (as the Python agent).
    let idp_options = DwdiOptions {
        client_id: "site-agent".into(),
        client_secret: "agent-s3cret".into(),
        scope_required: String::new(),
        ..DwdiOptions::default()
    };
    let idp = DwdiSim::start(DwdiData::new(), idp_options).await?;
    let introspection = idp.state().clone();
    waldur.accept_oidc(move |token| introspection.introspect(token));
    let proxy = ProxyProcess::tinyproxy(&[], None)?;
    let config = |global_proxy: &str| {
        format!(
            "global_proxy: {global_proxy:?}\nsentry_dsn: \"\"\ntimezone: UTC\nreporting_periods: 1\nofferings:\n  - name: compute\n    waldur_api_url: {:?}\n    waldur_api_token: \"\"\n    oidc_token_url: {:?}\n    oidc_client_id: site-agent\n    oidc_client_secret: agent-s3cret\n    waldur_offering_uuid: {offering}\n    backend_type: cscs-dwdi-compute\n    stomp_enabled: false\n    backend_settings:\n{}    backend_components:\n{NODE_AND_CPU}",
            waldur.url(),
            idp.token_url(),
            dwdi_access(&dwdi, &options)
        )
    };
    let text = config(&proxy.url("http", None));
    let targets = report_targets(&text).await?;
    let summary = cycle_at(&targets[0], &text, NOW).await?;
    ensure!(summary.failed == 0 && summary.submitted == 3, "{summary:?}\n{}", proxy.log());
    for account in data.accounts() {
        let expected = data.compute_usage(&account, None, "2024-03-01", "2024-03-31");
        let stored = waldur
            .usages()
            .into_iter()
            .find(|u| u.resource_uuid == waldur_sim::uuid_from(&account) && u.component_type == "nodeHours");
        ensure!(stored.is_some_and(|u| u.amount == e2e::cents(expected.node_hours)), "{account}");
    }
    // One token for the whole cycle, asked through the proxy; every request Waldur saw
    // came through it too; none of DWDI's did.
    let idp_stats = idp.stats();
    ensure!(idp_stats.tokens_issued == 1, "{} tokens issued", idp_stats.tokens_issued);
    ensure!(
        idp_stats.recent.iter().all(|r| r.via.as_deref().is_some_and(|v| v.contains("tinyproxy"))),
        "{idp_stats:?}"
    );
    let log = proxy.log();
    let waldur_port = waldur.addr().port();
    let proxied = log.matches(&format!("): GET http://127.0.0.1:{waldur_port}/api/")).count()
        + log.matches(&format!("): POST http://127.0.0.1:{waldur_port}/api/")).count();
    let seen = waldur.requests().total;
    ensure!(seen > 0 && proxied as u64 == seen, "Waldur saw {seen} requests, the proxy forwarded {proxied}\n{log}");
    ensure!(!log.contains(&format!(":{}/", dwdi.addr().port())), "DWDI went through global_proxy\n{log}");
    ensure!(dwdi.stats().recent.iter().all(|r| r.via.is_none()), "DWDI went through a proxy");

    // The provider revokes the token: Waldur refuses it, the agent fetches a fresh one
    // once and carries on.
    idp.expire_all_tokens();
    let again = cycle_at(&targets[0], &text, NOW).await?;
    ensure!(again.failed == 0 && again.unchanged == 3, "{again:?}");
    ensure!(idp.stats().tokens_issued == 2, "{} tokens issued", idp.stats().tokens_issued);

    // A proxy that is not there: every Waldur request fails, naming it; nothing goes
    // around it.
    let closed = format!("http://127.0.0.1:{}", e2e::proxies::free_port()?);
    let text = config(&closed);
    let before = waldur.requests().total;
    let summary = cycle_at(&report_targets(&text).await?[0], &text, NOW).await?;
    let errors = summary.errors.join("\n");
    ensure!(summary.failed == 1 && errors.contains(&format!("cannot connect to proxy {closed}")), "{errors}");
    ensure!(waldur.requests().total == before, "a request went around the proxy");
    Ok(())
}
