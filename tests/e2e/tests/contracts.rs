//! Two contract versions in one host: the real compute backend built against the frozen
//! `waldur:usage@2.0.0` (`tests/components/compute-v2`), dropped into the plugins
//! folder, and the built-in `waldur:usage@3.0.0` inference backend report into one
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
    assert!(inference_listing.contains("wit:        waldur:usage@3.0.0"), "{listing}");
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
    assert_eq!((loaded.wit_version.as_str(), loaded.info.upstream.as_str()), ("3.0.0", "Site Manager"));
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
