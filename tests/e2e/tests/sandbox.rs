//! Hostile components against the sandbox: each misbehaviour of the `probe` component
//! runs in the same host as the real compute component, in one report cycle. The
//! hostile offering fails with an error naming the component, the limit and the value,
//! submits nothing wrong, and the compute offering keeps reporting.
//!
//! The egress rules (allow-list, forged credentials) have their own detailed tests in
//! `egress_policy.rs`; here they appear once more only to show they fail one offering.

use std::collections::BTreeMap;

use anyhow::{Context as _, Result};
use dwdi_sim::{DwdiData, DwdiOptions, DwdiSim};
use e2e::fault_proxy::{FaultProxy, Mode};
use e2e::{ComputeSims, NODE_AND_CPU, cents, components, dwdi_access};
use usage_agent::config::{AgentConfig, ComponentLimits};
use usage_agent::report::{CycleOptions, FixedClock, OfferingSummary, StopFlag, prepare_targets, report_offering};
use usage_agent::runtime::{CallError, Limit, Runtime, Source};
use waldur_sim::{WaldurOptions, WaldurSim, uuid_from};

const TOKEN: &str = "provider-token";
const MID_MARCH: &str = "2024-03-15T12:00:00Z";
/// Generous for the real component (its calls take milliseconds against the
/// simulators), short enough that tests of endless components end soon.
const CALL_TIMEOUT: &str = "5";

/// The limits every test here runs with.
fn limits_yaml() -> String {
    format!(
        "component_limits:\n  memory_mib: 64\n  call_timeout_seconds: {CALL_TIMEOUT}\n  max_result_bytes: 1048576\n"
    )
}

/// A DWDI and a Waldur simulator; a compute offering and a hostile `probe` offering.
struct World {
    dwdi: DwdiSim,
    options: DwdiOptions,
    waldur: WaldurSim,
    data: DwdiData,
    compute: String,
    hostile: String,
}

impl World {
    async fn new(hostile_resources: &[&str]) -> Result<Self> {
        let data = DwdiData::generated(3, 2, &[(2024, 3)]);
        let ComputeSims { dwdi, options, waldur, offering: compute } =
            ComputeSims::start(&data, WaldurOptions::default(), "compute", TOKEN, "").await?;
        waldur.set_today(2024, 3, 15);
        let hostile = uuid_from("hostile");
        waldur.add_offering(&hostile, "hostile", &["usage"]);
        for id in hostile_resources {
            waldur.add_resource(&hostile, &uuid_from(&format!("hostile {id}")), id, "", "OK");
        }
        Ok(Self { dwdi, options, waldur, data, compute, hostile })
    }

    /// The config: compute first, then the probe with `probe_settings` (6-space lines)
    /// and `access` as its DWDI access lines.
    fn config(&self, probe_settings: &str, access: &str) -> String {
        format!(
            "timezone: UTC\nreporting_periods: 1\n{}offerings:\n  - name: compute\n    waldur_api_url: {url:?}\n    waldur_api_token: {TOKEN}\n    waldur_offering_uuid: {}\n    backend_type: cscs-dwdi-compute\n    backend_settings:\n{}    backend_components:\n{NODE_AND_CPU}  - name: hostile\n    waldur_api_url: {url:?}\n    waldur_api_token: {TOKEN}\n    waldur_offering_uuid: {}\n    backend_type: probe\n    backend_settings:\n{access}{probe_settings}    backend_components:\n      usage: {{unit_factor: 1}}\n",
            limits_yaml(),
            self.compute,
            dwdi_access(&self.dwdi, &self.options),
            self.hostile,
            url = self.waldur.url(),
        )
    }

    /// Runs one cycle of both offerings side by side, in one host.
    async fn cycle(&self, text: &str) -> Result<(OfferingSummary, OfferingSummary)> {
        let config = AgentConfig::parse(text)?;
        let backends = e2e::probe_backends(Runtime::with_limits(config.component_limits.clone())?).await?;
        let targets = prepare_targets(&config, &backends).await?;
        let options = CycleOptions::from_config(&config)?;
        let clock = FixedClock(MID_MARCH.parse()?);
        let stop = StopFlag::default();
        let (good, bad) = tokio::join!(
            report_offering(&targets[0], &options, &clock, &stop),
            report_offering(&targets[1], &options, &clock, &stop)
        );
        Ok((good, bad))
    }

    /// Asserts the compute offering reported everything, exactly.
    fn assert_compute_reported(&self, good: &OfferingSummary) {
        assert_eq!((good.resources, good.submitted, good.failed), (3, 3, 0), "{good:?}");
        let stored: BTreeMap<(String, String), String> =
            self.waldur.usages().into_iter().map(|u| ((u.resource_uuid, u.component_type), u.amount)).collect();
        for account in self.data.accounts() {
            let expected = self.data.compute_usage(&account, None, "2024-03-01", "2024-03-31");
            assert_eq!(
                stored.get(&(uuid_from(&account), "nodeHours".into())),
                Some(&cents(expected.node_hours)),
                "{account}"
            );
        }
    }

    /// What Waldur holds for the hostile offering: backend id → amount.
    fn hostile_stored(&self) -> BTreeMap<String, String> {
        let ids: BTreeMap<String, String> = ["r0", "r1", "r2", "r3", "r4", "r5"]
            .iter()
            .map(|id| (uuid_from(&format!("hostile {id}")), (*id).to_owned()))
            .collect();
        self.waldur.usages().into_iter().filter_map(|u| Some((ids.get(&u.resource_uuid)?.clone(), u.amount))).collect()
    }

    fn access(&self) -> String {
        dwdi_access(&self.dwdi, &self.options)
    }
}

/// Runs `settings` in the hostile offering and checks the common outcome: compute
/// reported, the hostile offering failed with `want` in its error, nothing stored for it.
async fn contained(settings: &str, want: &[&str]) -> Result<OfferingSummary> {
    let world = World::new(&["r0", "r1"]).await?;
    let (good, bad) = world.cycle(&world.config(settings, &world.access())).await?;
    world.assert_compute_reported(&good);
    assert_eq!((bad.submitted, bad.failed), (0, 2), "{bad:?}");
    let error = bad.errors.join("\n");
    // Shown with --nocapture: what an operator reads.
    eprintln!("{error}");
    for part in want {
        assert!(error.contains(part), "missing {part:?} in: {error}");
    }
    assert!(world.hostile_stored().is_empty(), "nothing from a stopped component: {:?}", world.hostile_stored());
    Ok(bad)
}

#[tokio::test(flavor = "multi_thread")]
async fn an_endless_loop_is_stopped_at_the_deadline() -> Result<()> {
    contained(
        "      probe: loop\n",
        &[&format!(
            "component probe stopped: time limit exceeded: still running after {CALL_TIMEOUT} s (setting component_limits.call_timeout_seconds)"
        )],
    )
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn unbounded_memory_growth_is_stopped_at_the_memory_limit() -> Result<()> {
    contained(
        "      probe: grow\n",
        &[
            "component probe stopped: memory limit exceeded: linear memory would grow to",
            "limit 64 MiB (setting component_limits.memory_mib)",
        ],
    )
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_huge_result_is_refused() -> Result<()> {
    contained(
        "      probe: huge-result\n      mib: 4\n",
        &[
            "component probe stopped: result size limit exceeded: returned 4.",
            "limit 1 MiB (setting component_limits.max_result_bytes)",
        ],
    )
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_panic_is_a_trap_whose_message_reaches_the_log() -> Result<()> {
    e2e::log::capture();
    contained("      probe: panic\n", &["component probe trapped", "unreachable", "panicking on purpose"]).await?;
    let log = e2e::log::text();
    assert!(log.contains("[probe] probe: panicking on purpose"), "{log}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn waiting_forever_on_a_clock_is_stopped_by_the_call_timeout() -> Result<()> {
    contained("      probe: sleep\n", &["component probe stopped: time limit exceeded"]).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn http_futures_never_answered_are_stopped_and_their_connections_closed() -> Result<()> {
    let world = World::new(&["r0", "r1"]).await?;
    // The probe's API is a server that accepts and never answers.
    let stall = FaultProxy::start(world.dwdi.addr()).await?;
    stall.set_mode(Mode::Stall);
    let access = world.access().replace(&world.dwdi.api_url(), &stall.url("/api/v1"));
    let settings =
        format!("      probe: hang-http\n      requests: 4\n      url: {:?}\n", stall.url("/api/v1/compute/usage-day"));
    let (good, bad) = world.cycle(&world.config(&settings, &access)).await?;
    world.assert_compute_reported(&good);
    assert_eq!((bad.submitted, bad.failed), (0, 2), "{bad:?}");
    assert!(bad.errors[0].contains("component probe stopped: time limit exceeded"), "{:?}", bad.errors);
    assert!(stall.accepted() >= 1, "the requests did go out");
    // The instance is gone, and with it every request it had in flight.
    assert!(stall.wait_idle(std::time::Duration::from_secs(30)).await, "{} connections still open", stall.open());
    assert!(world.hostile_stored().is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn egress_violations_fail_only_their_offering() -> Result<()> {
    let world = World::new(&["r0", "r1"]).await?;
    let api = world.dwdi.api_url();
    let mut first = None;
    for (settings, want) in [
        ("      probe: fetch\n      url: \"https://example.org/\"\n".to_owned(), "HttpRequestDenied"),
        (
            format!("      probe: set-header\n      header: authorization\n      url: \"{api}/compute/usage-day\"\n"),
            "header authorization refused",
        ),
    ] {
        let (good, bad) = world.cycle(&world.config(&settings, &world.access())).await?;
        assert_eq!(good.failed, 0, "{good:?}");
        assert_eq!((bad.submitted, bad.failed), (0, 2), "{bad:?}");
        assert!(bad.errors[0].contains(want), "{:?}", bad.errors);
        first.get_or_insert(good);
    }
    if let Some(good) = first {
        world.assert_compute_reported(&good);
    }
    assert_eq!(world.dwdi.stats().api_unauthorized, 0);
    assert!(world.hostile_stored().is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn files_environment_and_sockets_are_not_there() -> Result<()> {
    e2e::log::capture();
    let world = World::new(&["r0", "r1"]).await?;
    // A listener the probe will try to reach directly.
    let target = FaultProxy::start(world.dwdi.addr()).await?;
    let file = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
    assert!(std::path::Path::new(file).exists());
    for settings in [
        format!("      probe: read-file\n      path: {file:?}\n"),
        "      probe: env\n".to_owned(),
        format!("      probe: socket\n      addr: \"{}\"\n", target.addr()),
    ] {
        let (good, bad) = world.cycle(&world.config(&settings, &world.access())).await?;
        assert_eq!(good.failed, 0, "{good:?}");
        // The probe reports how many of its attempts succeeded: none did.
        assert_eq!((bad.failed, bad.submitted + bad.unchanged), (0, 2), "{settings}: {bad:?}");
        let stored = world.hostile_stored();
        assert_eq!(stored.get("r0").map(String::as_str), Some("0.00"), "{settings}: {stored:?}");
    }
    assert_eq!(target.accepted(), 0, "no connection may leave but through wasi:http");
    let log = e2e::log::text();
    assert!(log.contains("[probe] probe: cannot read"), "{log}");
    assert!(log.contains("[probe] probe: 0 variables, 0 arguments, HOME 0"), "{log}");
    assert!(log.contains("[probe] probe: cannot connect"), "{log}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn output_goes_to_the_log_bounded_and_prefixed() -> Result<()> {
    e2e::log::capture();
    let world = World::new(&["r0", "r1"]).await?;
    let (good, bad) = world.cycle(&world.config("      probe: print\n      lines: 2000\n", &world.access())).await?;
    assert_eq!(good.failed, 0, "{good:?}");
    assert_eq!((bad.submitted, bad.failed), (2, 0), "{bad:?}");
    let log = e2e::log::text();
    assert!(log.contains("[probe] probe says hello on stdout"), "{log}");
    // The terminal escape arrives escaped, not as a control character.
    assert!(log.contains("[probe] probe says \\u{1b}[31mred\\u{1b}[0m on stderr"), "{log}");
    assert!(!log.contains('\u{1b}'));
    assert!(log.contains(&format!("[probe] {} […]", "long".repeat(256))), "a long line is cut");
    assert!(
        log.contains("more bytes of stdout not logged") && log.contains("more bytes of stderr not logged"),
        "{log}"
    );
    assert!(!log.contains("probe line 1999"), "output beyond the budget is dropped");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn numbers_that_are_not_amounts_submit_nothing_for_their_resource() -> Result<()> {
    let ids = ["r0", "r1", "r2", "r3", "r4", "r5"];
    let world = World::new(&ids).await?;
    let (good, bad) = world.cycle(&world.config("      probe: bad-numbers\n", &world.access())).await?;
    world.assert_compute_reported(&good);
    assert_eq!((bad.submitted, bad.failed), (1, 5), "{bad:?}");
    let errors = bad.errors.join("\n");
    for want in [
        "resource r1: unusable answer from the backend, nothing submitted for it: usage = NaN is not a usage amount",
        "resource r2: unusable answer from the backend, nothing submitted for it: usage = -5 is not a usage amount",
        "resource r3: unusable answer from the backend, nothing submitted for it: usage = 1e300 is not a usage amount",
        "resource r4: unusable answer from the backend, nothing submitted for it: usage reported twice",
        "resource r5: the backend reported it more than once",
    ] {
        assert!(errors.contains(want), "missing {want:?} in {errors}");
    }
    assert_eq!(world.hostile_stored(), BTreeMap::from([("r0".to_owned(), "1.50".to_owned())]));
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_component_needing_more_instances_than_allowed_is_refused_at_load() -> Result<()> {
    let runtime = Runtime::with_limits(ComponentLimits { instances: 1, ..ComponentLimits::default() })?;
    let error = runtime
        .load(&std::fs::read(components::PROBE)?, Source::File(components::PROBE.into()))
        .await
        .err()
        .map(|e| format!("{e:#}"))
        .unwrap_or_default();
    assert!(
        error.contains("instance count limit exceeded: needs at least 2, limit 1 (setting component_limits.instances)"),
        "{error}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn limit_errors_are_typed() -> Result<()> {
    let world = World::new(&["r0"]).await?;
    let config = AgentConfig::parse(&world.config("      probe: grow\n", &world.access()))?;
    let backends = e2e::probe_backends(Runtime::with_limits(config.component_limits.clone())?).await?;
    let backend = usage_agent::backends::prepare_offering(&backends, 1, &config.offerings[1]).await?;
    let resources =
        vec![usage_agent::runtime::wit::WaldurResource { backend_id: "r0".into(), offering_backend_id: None }];
    let period = usage_agent::runtime::wit::BillingPeriod { year: 2024, month: 3 };
    match backend.usage_report(resources.clone(), period).await {
        Err(CallError::Limit(exceeded)) => {
            assert_eq!((exceeded.component.as_str(), exceeded.limit), ("probe", Limit::Memory));
        }
        other => panic!("expected a memory limit error, got {other:?}"),
    }
    // Each call has a fresh instance: the next one starts from nothing and fails alike.
    assert!(matches!(backend.usage_report(resources, period).await, Err(CallError::Limit(_))));
    Ok(())
}

/// Validating a dropped-in file runs its `setup` under the same limits as any call: a
/// setup that never returns is refused at the call timeout, and the commands that
/// validate (`plugins`, `check-config`) finish instead of hanging.
#[tokio::test(flavor = "multi_thread")]
async fn a_setup_that_never_returns_is_refused_at_the_call_timeout() -> Result<()> {
    let world = World::new(&["r0"]).await?;
    let config = e2e::ConfigFile::new(&world.config("      probe: setup-sleeps\n", &world.access()))?;
    let plugins = config.dir.path().join("plugins");
    std::fs::create_dir(&plugins)?;
    std::fs::copy(components::PROBE, plugins.join("probe.wasm"))?;
    let dir = plugins.to_string_lossy();
    let bound = std::time::Duration::from_secs(60);
    // Nothing else serves `probe`: both commands end with the refusal as their error.
    for command in ["plugins", "check-config"] {
        let outcome =
            tokio::time::timeout(bound, e2e::run_cli(&[command, "-c", config.arg(), "--plugins-dir", &dir])).await?;
        let error = format!("{:#}", outcome.err().context("nothing serves probe, so this cannot succeed")?);
        assert!(
            error.contains("probe.wasm was refused: setup of offerings[1] (hostile) failed: component probe stopped: time limit exceeded")
                && error.contains(&format!("still running after {CALL_TIMEOUT} s")),
            "{command}: {error}"
        );
    }
    Ok(())
}

/// The start of the probe's `forged-text`: what would begin a forged log line.
const FORGED_LINE: &str = "2026-01-01T00:00:00Z ERROR forged";

/// Asserts that no line of `text` holds a raw control character or starts with the
/// forged line, and that the forged text is there, escaped.
fn assert_escaped(what: &str, text: &str) {
    assert!(!text.contains(['\r', '\u{1b}']), "{what}: a raw control character in {text:?}");
    assert!(!text.lines().any(|l| l.starts_with(FORGED_LINE)), "{what}: a forged line in {text}");
    assert!(text.contains(&format!("probe\\r\\n{FORGED_LINE}")), "{what}: not escaped: {text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn component_errors_are_escaped_and_capped_in_errors_and_logs() -> Result<()> {
    e2e::log::capture();
    let world = World::new(&["r0", "r1"]).await?;
    for kind in ["message", "status"] {
        // 100 kB of text behind the forged line: the host keeps a bounded part.
        let settings = format!("      probe: forged-text\n      kind: {kind}\n      bytes: 100000\n");
        let (good, bad) = world.cycle(&world.config(&settings, &world.access())).await?;
        // The first cycle writes the compute offering; the second finds it unchanged.
        assert_eq!(good.failed, 0, "{good:?}");
        if kind == "message" {
            world.assert_compute_reported(&good);
        }
        assert_eq!((bad.submitted, bad.failed), (0, 2), "{kind}: {bad:?}");
        for error in &bad.errors {
            // Shown with --nocapture: what an operator reads.
            eprintln!("{}", error.chars().take(300).collect::<String>());
            assert!(!error.contains('\n'), "{kind}: {error:?}");
            assert_escaped(kind, error);
            // The component's part is capped at 4 KiB once composed; the offering and
            // month around it are the host's.
            assert!(error.len() < 4096 + 200, "{kind}: {} bytes", error.len());
            assert!(error.contains("more bytes)"), "{kind}: the cut is not said: {error}");
        }
    }
    // Waldur got nothing of the hostile offering; the log has no forged line.
    assert!(world.hostile_stored().is_empty(), "{:?}", world.hostile_stored());
    let log = e2e::log::text();
    assert_escaped("log", &log);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn forged_names_in_a_report_are_refused_or_escaped_never_logged_or_written_raw() -> Result<()> {
    e2e::log::capture();
    let world = World::new(&["r0", "r1"]).await?;
    let settings = "      probe: forged-text\n      kind: ids\n      bytes: 0\n";
    let (good, bad) = world.cycle(&world.config(settings, &world.access())).await?;
    world.assert_compute_reported(&good);
    // A username with CR and LF is not a name to write to Waldur, escaped or not: both
    // resources carrying it fail, each error quoting it escaped.
    assert_eq!((bad.submitted, bad.failed), (0, 2), "{bad:?}");
    let refused: Vec<&String> =
        bad.errors.iter().filter(|e| e.contains("a username with control or invisible characters")).collect();
    assert_eq!(refused.len(), 2, "{:?}", bad.errors);
    for error in &refused {
        assert!(error.contains(&format!("user probe\\r\\n{FORGED_LINE}")), "{error}");
        assert_escaped("error", error);
    }
    // The one nobody asked for is an error line quoting its id escaped.
    let error = bad.errors.iter().find(|e| e.contains("nobody asked for")).context("no error for the stranger")?;
    assert_escaped("error", error);
    // Nothing of the hostile offering reached Waldur.
    assert!(world.hostile_stored().is_empty(), "{:?}", world.hostile_stored());
    assert!(world.waldur.user_usages().iter().all(|u| !u.username.contains(FORGED_LINE)));
    assert_escaped("log", &e2e::log::text());
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_report_that_breaks_the_contract_fails_those_resources_only() -> Result<()> {
    let ids = ["r0", "r1", "r2", "r3"];
    let world = World::new(&ids).await?;
    let (good, bad) = world.cycle(&world.config("      probe: contract\n", &world.access())).await?;
    world.assert_compute_reported(&good);
    assert_eq!(bad.failed, 2, "{bad:?}");
    let errors = bad.errors.join("\n");
    for want in [
        "resource r1: unusable answer from the backend, nothing submitted for it: reported as not found upstream, yet with usage",
        "resource r2: the backend reported it more than once",
        "the backend reported 1 resource(s) nobody asked for (stranger)",
    ] {
        assert!(errors.contains(want), "missing {want:?} in {errors}");
    }
    // Neither the contradicted totals (5) nor the stranger's (9) landed.
    let stored = world.hostile_stored();
    assert_eq!(stored.get("r0").map(String::as_str), Some("1.50"), "{stored:?}");
    assert!(!stored.contains_key("r1") && !stored.contains_key("r2"), "{stored:?}");
    assert!(!stored.values().any(|v| v == "5.00" || v == "9.00"), "{stored:?}");
    Ok(())
}
