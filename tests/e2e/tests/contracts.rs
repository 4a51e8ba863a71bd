//! Two contract versions in one host: the real compute backend built against the frozen
//! `waldur:usage@2.0.0` (`tests/components/compute-v2`), dropped into the plugins
//! folder, and the built-in `waldur:usage@3.1.0` inference backend report into one
//! Waldur in one run, each landing exactly the simulator's numbers. A component of the
//! world `managing-backend` is served through its reporting interface. (Swaps between
//! the two versions while the agent runs are in `hot_swap.rs`.)

use std::collections::BTreeMap;

use anyhow::{Context as _, Result};
use dwdi_sim::DwdiData;
use e2e::{ComputeSims, NODE_AND_CPU, cents, components, dwdi_access, run_cli};
use waldur_sim::{WaldurOptions, uuid_from};

const TOKEN: &str = "provider-token";

#[tokio::test(flavor = "multi_thread")]
async fn a_component_of_the_older_contract_serves_beside_the_current_ones() -> Result<()> {
    let now = jiff::Zoned::now().with_time_zone(jiff::tz::TimeZone::UTC);
    let (year, month) = (i32::from(now.year()), now.month() as u32);
    let mut data = DwdiData::generated(3, 2, &[(year, month)]);
    data.add_inference_cost("llm-a", year, month, 40.75);
    data.add_inference_cost("llm-b", year, month, 0.25);
    // The resources' `offering_backend_id` as Waldur has it, in capitals: 3.0.0 hands it
    // over as it is, the 2.0.0 binding lower-cases it into the cluster 2.0.0 expects.
    let sims = ComputeSims::start(&data, WaldurOptions::default(), "compute", TOKEN, "Alps").await?;
    let inference = uuid_from("inference");
    sims.waldur.add_offering(&inference, "inference", &["token_cost"]);
    for id in ["llm-a", "llm-b"] {
        sims.waldur.add_resource(&inference, &uuid_from(id), id, "", "OK");
    }

    let dir = tempfile::tempdir()?;
    std::fs::create_dir(dir.path().join("plugins"))?;
    std::fs::copy(components::COMPUTE_V2, dir.path().join("plugins/cscs-dwdi-compute.wasm"))?;
    let access = dwdi_access(&sims.dwdi, &sims.options);
    let text = format!(
        "timezone: UTC\nreporting_periods: 1\nplugins_dir: plugins\nofferings:\n  - name: compute\n    waldur_api_url: {url:?}\n    waldur_api_token: {TOKEN}\n    waldur_offering_uuid: {}\n    backend_type: cscs-dwdi-compute\n    backend_settings:\n{access}    backend_components:\n{NODE_AND_CPU}  - name: inference\n    waldur_api_url: {url:?}\n    waldur_api_token: {TOKEN}\n    waldur_offering_uuid: {inference}\n    backend_type: cscs-dwdi-inference\n    backend_settings:\n{access}    backend_components:\n      token_cost: {{measured_unit: EUR, unit_factor: 1, accounting_type: usage, label: Inference cost}}\n",
        sims.offering,
        url = sims.waldur.url(),
    );
    let config = dir.path().join("config.yaml");
    std::fs::write(&config, text)?;
    let config = config.to_str().context("temp path is not UTF-8")?;

    // Each backend type says which contract serves it.
    let listing = run_cli(&["plugins", "-c", config]).await?;
    let section = |backend_type: &str| -> String {
        let start = listing.find(&format!("\n{backend_type}\n")).map_or(listing.len(), |i| i + 1);
        let rest = &listing[start..];
        rest[..rest[1..].find("\n\n").map_or(rest.len(), |i| i + 1)].to_owned()
    };
    let compute = section("cscs-dwdi-compute");
    assert!(compute.contains("wit:        waldur:usage@2.0.0") && compute.contains("0.1.0-wit2"), "{listing}");
    assert!(!compute.contains("upstream:"), "2.0.0 names no upstream: {compute}");
    let inference_listing = section("cscs-dwdi-inference");
    assert!(inference_listing.contains("wit:        waldur:usage@3.1.0"), "{listing}");
    // A DWDI backend says its values may go down; a 2.0.0 one cannot say it.
    assert!(inference_listing.contains("decreasing: written"), "{listing}");
    assert!(compute.contains("decreasing: refused"), "{listing}");
    assert!(inference_listing.contains("upstream:   DWDI"), "{listing}");

    let out = run_cli(&["report", "-c", config, "--once"]).await?;
    assert!(out.contains("cscs-dwdi-compute 0.1.0-wit2") && out.contains("cscs-dwdi-inference 0.1.0"), "{out}");
    assert_eq!(out.matches(" 0 failed").count(), 2, "{out}");

    let stored: BTreeMap<(String, String), String> =
        sims.waldur.usages().into_iter().map(|u| ((u.resource_uuid, u.component_type), u.amount)).collect();
    let (first, last) = (format!("{year:04}-{month:02}-01"), now.date().last_of_month().to_string());
    for account in data.accounts() {
        let expected = data.compute_usage(&account, Some("alps"), &first, &last);
        assert!(expected.node_hours > 0.0, "{account} has no usage on alps");
        for (component, value) in [("nodeHours", expected.node_hours), ("cpuHours", expected.cpu_hours)] {
            let got = stored.get(&(uuid_from(&account), component.to_owned()));
            assert_eq!(got, Some(&cents(value)), "{account} {component}");
        }
    }
    for (id, cost) in [("llm-a", "40.75"), ("llm-b", "0.25")] {
        let got = stored.get(&(uuid_from(id), "token_cost".to_owned()));
        assert_eq!(got.map(String::as_str), Some(cost), "{id}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_option_the_older_contract_cannot_carry_refuses_its_file() -> Result<()> {
    let data = DwdiData::generated(1, 1, &[(2024, 3)]);
    let sims = ComputeSims::start(&data, WaldurOptions::default(), "compute", TOKEN, "").await?;
    let dir = tempfile::tempdir()?;
    std::fs::create_dir(dir.path().join("plugins"))?;
    std::fs::copy(components::COMPUTE_V2, dir.path().join("plugins/cscs-dwdi-compute.wasm"))?;
    let text = format!(
        "timezone: UTC\nplugins_dir: plugins\nofferings:\n  - name: compute\n    waldur_api_url: {:?}\n    waldur_api_token: {TOKEN}\n    waldur_offering_uuid: {}\n    backend_type: cscs-dwdi-compute\n    backend_settings:\n{}    backend_components:\n      nodeHours: {{unit_factor: 1, options: {{scale: \"2\"}}}}\n",
        sims.waldur.url(),
        sims.offering,
        dwdi_access(&sims.dwdi, &sims.options)
    );
    let config = dir.path().join("config.yaml");
    std::fs::write(&config, text)?;
    let config = config.to_str().context("temp path is not UTF-8")?;
    // The file is refused for what its contract cannot carry (and `plugins` fails)…
    let (listing, ended) = e2e::run_cli_ending(&["plugins", "-c", config]).await;
    assert!(ended.is_err(), "{listing}");
    assert!(
        listing.contains(
            "setup of offerings[0] (compute) failed: backend_components.nodeHours: option \"scale\" cannot be passed to a component built against waldur:usage@2.0.0, which knows only dwdi_metric"
        ),
        "{listing}"
    );
    // …and the built-in, which could carry it, refuses an option it does not know.
    let error = run_cli(&["check-config", "-c", config]).await;
    let message = format!("{:#}", error.err().context("check-config accepted an option nobody knows")?);
    assert!(
        message.contains(
            "backend_components.nodeHours: unknown option \"scale\"; cscs-dwdi-compute knows only dwdi_metric"
        ),
        "{message}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_component_that_also_manages_is_served_through_its_reporting_interface() -> Result<()> {
    use usage_agent::runtime::{CallError, Runtime, Source, wit};
    let runtime = Runtime::new()?;
    let bytes = std::fs::read(components::MANAGING)?;
    let loaded = runtime.load(&bytes, Source::File(components::MANAGING.into())).await?;
    // Built against the frozen 3.0.0, served by the 3.1.0 binding, without usage-traits.
    assert_eq!((loaded.wit_version.as_str(), loaded.info.upstream.as_str()), ("3.0.0", "Site Manager"));
    assert!(!loaded.traits.usage_may_decrease);
    assert_eq!(loaded.info.operations, [wit::Operation::UsageReport, wit::Operation::Manage]);
    let backends = usage_agent::backends::Backends::new(runtime);
    backends.install("managing", loaded);
    let text = "offerings:\n  - name: site\n    backend_type: managing\n    backend_settings:\n      upstream:\n        urls: [\"http://127.0.0.1:9/api\"]\n        auth: {type: none}\n    backend_components:\n      cpu: {unit_factor: 1}\n";
    let config = usage_agent::config::AgentConfig::parse(text)?;
    let backend = usage_agent::backends::prepare_offering(&backends, 0, &config.offerings[0]).await?;
    let resources = vec![wit::WaldurResource { backend_id: "a".into(), offering_backend_id: Some("Alps".into()) }];
    let report = backend.usage_report(resources.clone(), wit::BillingPeriod { year: 2024, month: 3 }).await?;
    assert_eq!(report.resources.len(), 1);
    assert_eq!((report.resources[0].found, report.resources[0].totals[0].value), (true, 0.5));
    let day = wit::Date { year: 2024, month: 3, day: 1 };
    match backend.daily_report(resources, day, day).await {
        Err(error @ CallError::Backend { error: wit::BackendError::InvalidRequest(_), .. }) => assert_eq!(
            error.to_string(),
            "invalid request: managing reports whole months only, not 2024-03-01 to 2024-03-01"
        ),
        other => anyhow::bail!("expected an invalid request, got {other:?}"),
    }
    Ok(())
}

/// The `managing` component (3.0.0: it cannot say its values may go down) serving one
/// offering of `resources` with components cpu and gpu on a fresh Waldur, each resource
/// reporting 0.5 of both; `omit` is the offering's `omit_anomalous_usage_components`.
struct Anomalies {
    waldur: waldur_sim::WaldurSim,
    text: String,
    target: usage_agent::report::ReportTarget,
}

impl Anomalies {
    const NOW: &str = "2024-03-15T12:00:00Z";

    async fn start(resources: &[&str], omit: bool) -> Result<Self> {
        use usage_agent::runtime::{Runtime, Source};
        let waldur = waldur_sim::WaldurSim::start(WaldurOptions::default()).await?;
        waldur.add_token(TOKEN, "provider", false);
        waldur.set_today(2024, 3, 15);
        let offering = uuid_from("site");
        waldur.add_offering(&offering, "site", &["cpu", "gpu"]);
        for id in resources {
            waldur.add_resource(&offering, &uuid_from(id), id, "", "OK");
        }
        let text = format!(
            "timezone: UTC\nreporting_periods: 1\nofferings:\n  - name: site\n    waldur_api_url: {:?}\n    waldur_api_token: {TOKEN}\n    waldur_offering_uuid: {offering}\n    omit_anomalous_usage_components: {omit}\n    backend_type: managing\n    backend_settings:\n      upstream:\n        urls: [\"http://127.0.0.1:9/api\"]\n        auth: {{type: none}}\n    backend_components:\n      cpu: {{unit_factor: 1}}\n      gpu: {{unit_factor: 1}}\n",
            waldur.url()
        );
        let runtime = Runtime::new()?;
        let loaded =
            runtime.load(&std::fs::read(components::MANAGING)?, Source::File(components::MANAGING.into())).await?;
        let backends = usage_agent::backends::Backends::new(runtime);
        backends.install("managing", loaded);
        let config = usage_agent::config::AgentConfig::parse(&text)?;
        let mut targets = usage_agent::report::prepare_targets(&config, &backends).await?;
        let target = targets.pop().context("one target")?;
        Ok(Self { waldur, text, target })
    }

    /// What Waldur holds: (resource backend id, component) → amount.
    fn stored(&self, resources: &[&str]) -> BTreeMap<(String, String), String> {
        let ids: BTreeMap<String, &str> = resources.iter().map(|id| (uuid_from(id), *id)).collect();
        self.waldur
            .usages()
            .into_iter()
            .filter_map(|u| Some(((ids.get(&u.resource_uuid)?.to_string(), u.component_type), u.amount)))
            .collect()
    }
}

fn holds(entries: &[(&str, &str, &str)]) -> BTreeMap<(String, String), String> {
    entries.iter().map(|(r, c, v)| (((*r).to_owned(), (*c).to_owned()), (*v).to_owned())).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backend_that_cannot_say_its_usage_may_decrease_has_a_lower_value_refused() -> Result<()> {
    // `a` went down on cpu; `b` is new and writes as usual.
    let world = Anomalies::start(&["a", "b"], false).await?;
    world.waldur.seed_usage(&uuid_from("a"), "cpu", "0.75", "2024-03-01");
    let summary = e2e::cycle_at(&world.target, &world.text, Anomalies::NOW).await?;
    assert_eq!((summary.failed, summary.submitted), (1, 1), "{summary:?}");
    assert_eq!(
        summary.errors,
        [
            "offering site 2024-03: resource a: usage anomaly: cpu 0.50 (Waldur holds 0.75) is lower than Waldur holds; nothing of the month is written for it: managing 1.0.0 does not declare that its usage may decrease (omit_anomalous_usage_components: true writes the components that did not go down)"
        ]
    );
    // Nothing of `a`'s month was written: not the lower cpu, not the new gpu.
    let expected = holds(&[("a", "cpu", "0.75"), ("b", "cpu", "0.50"), ("b", "gpu", "0.50")]);
    assert_eq!(world.stored(&["a", "b"]), expected);
    assert_eq!(world.waldur.requests().set_usage, 1, "only b's set_usage was sent");
    // Every cycle says it again, and writes nothing more.
    let again = e2e::cycle_at(&world.target, &world.text, Anomalies::NOW).await?;
    assert_eq!((again.failed, again.unchanged), (1, 1), "{again:?}");
    assert_eq!(world.stored(&["a", "b"]), expected);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn omit_anomalous_usage_components_leaves_out_only_what_went_down() -> Result<()> {
    // `a` went down on cpu only; `c` on both, so nothing is left to write for it.
    let world = Anomalies::start(&["a", "c"], true).await?;
    world.waldur.seed_usage(&uuid_from("a"), "cpu", "0.75", "2024-03-01");
    world.waldur.seed_usage(&uuid_from("c"), "cpu", "0.60", "2024-03-01");
    world.waldur.seed_usage(&uuid_from("c"), "gpu", "0.90", "2024-03-01");
    let summary = e2e::cycle_at(&world.target, &world.text, Anomalies::NOW).await?;
    assert_eq!((summary.failed, summary.submitted), (1, 1), "{summary:?}");
    assert_eq!(summary.errors.len(), 1, "{summary:?}");
    assert!(
        summary.errors[0].starts_with(
            "offering site 2024-03: resource c: usage anomaly: cpu 0.50 (Waldur holds 0.60), gpu 0.50 (Waldur holds 0.90) is lower than Waldur holds; nothing of the month is written for it"
        ) && summary.errors[0].ends_with("(every component it measures went down)"),
        "{summary:?}"
    );
    let expected = holds(&[("a", "cpu", "0.75"), ("a", "gpu", "0.50"), ("c", "cpu", "0.60"), ("c", "gpu", "0.90")]);
    assert_eq!(world.stored(&["a", "c"]), expected);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_usage_with_per_user_usages_takes_no_part_and_a_dwdi_backend_may_go_down() -> Result<()> {
    // As in the Python agent, a stored usage with per-user usages under it is not
    // compared: the lower value is written.
    let world = Anomalies::start(&["a"], false).await?;
    let usage = world.waldur.seed_usage(&uuid_from("a"), "cpu", "0.75", "2024-03-01");
    world.waldur.seed_user_usage(&usage, "alice", "0.75");
    let summary = e2e::cycle_at(&world.target, &world.text, Anomalies::NOW).await?;
    assert_eq!((summary.failed, summary.submitted), (0, 1), "{summary:?}");
    assert_eq!(world.stored(&["a"]), holds(&[("a", "cpu", "0.50"), ("a", "gpu", "0.50")]));

    // The built-in DWDI backends say their values may go down: a lower total is written.
    let data = DwdiData::generated(2, 1, &[(2024, 3)]);
    let sims = ComputeSims::start(&data, WaldurOptions::default(), "compute", TOKEN, "").await?;
    sims.waldur.set_today(2024, 3, 15);
    let account = data.accounts()[0].clone();
    sims.waldur.seed_usage(&uuid_from(&account), "nodeHours", "999999.00", "2024-03-01");
    let text = format!(
        "timezone: UTC\nreporting_periods: 1\nofferings:\n  - name: compute\n    waldur_api_url: {:?}\n    waldur_api_token: {TOKEN}\n    waldur_offering_uuid: {}\n    backend_type: cscs-dwdi-compute\n    backend_settings:\n{}    backend_components:\n{NODE_AND_CPU}",
        sims.waldur.url(),
        sims.offering,
        dwdi_access(&sims.dwdi, &sims.options)
    );
    let targets = e2e::report_targets(&text).await?;
    assert!(targets[0].backend.backend().traits.usage_may_decrease);
    let summary = e2e::cycle_at(&targets[0], &text, Anomalies::NOW).await?;
    assert_eq!(summary.failed, 0, "{summary:?}");
    let expected = data.compute_usage(&account, None, "2024-03-01", "2024-03-31").node_hours;
    let stored = sims
        .waldur
        .usages()
        .into_iter()
        .find(|u| u.resource_uuid == uuid_from(&account) && u.component_type == "nodeHours");
    assert_eq!(stored.map(|u| u.amount), Some(cents(expected)));
    Ok(())
}
