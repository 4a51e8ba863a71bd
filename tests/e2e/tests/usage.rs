//! `usage-agent usage` end to end: the real host runs the real components, built from
//! `guest/`, against the DWDI and OIDC simulator.

use anyhow::{Context as _, Result};
use dwdi_sim::{DwdiData, DwdiOptions, DwdiSim};
use e2e::{ConfigFile, NODE_AND_CPU, cents, compute_config, dwdi_access, parse_json, run_cli, total};

const MONTH: (i32, u32) = (2024, 3);

async fn sim_with(data: DwdiData) -> Result<(DwdiSim, DwdiOptions)> {
    let options = DwdiOptions::default();
    Ok((DwdiSim::start(data, options.clone()).await?, options))
}

#[tokio::test(flavor = "multi_thread")]
async fn compute_month_matches_the_data_to_the_cent() -> Result<()> {
    let data = DwdiData::generated(5, 4, &[MONTH, (2024, 4)]);
    let accounts = data.accounts();
    let (sim, options) = sim_with(data.clone()).await?;
    let config = ConfigFile::new(&compute_config(&sim, &options, "", NODE_AND_CPU))?;
    let mut args = vec!["usage", "-c", config.arg(), "--month", "2024-03", "--json"];
    for account in &accounts {
        args.extend(["--resource", account.as_str()]);
    }
    let json = parse_json(&run_cli(&args).await?)?;
    for account in &accounts {
        let expected = data.compute_usage(account, None, "2024-03-01", "2024-03-31");
        assert_eq!(total(&json, 0, account, "nodeHours"), Some(cents(expected.node_hours).as_str()), "{account}");
        assert_eq!(total(&json, 0, account, "cpuHours"), Some(cents(expected.cpu_hours).as_str()), "{account}");
        // Users appear once per day and cluster upstream; the report has one entry each, summed.
        let users = &json[0]["resources"]
            .as_array()
            .and_then(|list| list.iter().find(|r| r["backend_id"] == account.as_str()))
            .map(|r| r["users"].clone())
            .unwrap_or_default();
        assert_eq!(users.as_object().map(|u| u.len()), Some(expected.users.len()), "{account}");
        for (user, (node, cpu, _)) in &expected.users {
            assert_eq!(users[user]["nodeHours"], cents(*node).as_str(), "{account}/{user}");
            assert_eq!(users[user]["cpuHours"], cents(*cpu).as_str(), "{account}/{user}");
        }
    }
    // All accounts fit in one request, and one token served it.
    let stats = sim.stats();
    assert_eq!(stats.api_count("/compute/usage-month/account"), 1);
    assert_eq!(stats.tokens_issued, 1);
    assert!(stats.recent_urls().iter().any(|u| u.contains("from=2024-03&to=2024-03")));
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn cluster_filter_and_gpu_component() -> Result<()> {
    let data = DwdiData::generated(2, 3, &[MONTH]);
    // Account 0 runs on both clusters in the generated data.
    let account = data.accounts()[0].clone();
    let (sim, options) = sim_with(data.clone()).await?;
    let components = format!(
        "{NODE_AND_CPU}      gpu: {{measured_unit: gpu-hours, unit_factor: 2, accounting_type: usage, label: GPU}}\n"
    );
    let config = ConfigFile::new(&compute_config(&sim, &options, "", &components))?;
    let with_cluster = format!("{account}@ALPS");
    let out =
        run_cli(&["usage", "-c", config.arg(), "--month", "2024-03", "--json", "--resource", &with_cluster]).await?;
    let json = parse_json(&out)?;
    let alps = data.compute_usage(&account, Some("alps"), "2024-03-01", "2024-03-31");
    let all = data.compute_usage(&account, None, "2024-03-01", "2024-03-31");
    assert!(alps.node_hours < all.node_hours, "the test data must differ per cluster");
    assert_eq!(total(&json, 0, &account, "nodeHours"), Some(cents(alps.node_hours).as_str()));
    // unit_factor 2 multiplies.
    assert_eq!(total(&json, 0, &account, "gpu"), Some(cents(alps.gpu_hours * 2.0).as_str()));
    assert!(sim.stats().recent_urls().iter().any(|u| u.contains("cluster=alps")));
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn configured_cluster_applies_when_the_resource_has_none() -> Result<()> {
    let data = DwdiData::generated(1, 2, &[MONTH]);
    let account = data.accounts()[0].clone();
    let (sim, options) = sim_with(data.clone()).await?;
    let config = ConfigFile::new(&compute_config(&sim, &options, "      cscs_dwdi_cluster: eiger\n", NODE_AND_CPU))?;
    let json = parse_json(
        &run_cli(&["usage", "-c", config.arg(), "--month", "2024-03", "--json", "--resource", &account]).await?,
    )?;
    let eiger = data.compute_usage(&account, Some("eiger"), "2024-03-01", "2024-03-31");
    assert_eq!(total(&json, 0, &account, "nodeHours"), Some(cents(eiger.node_hours).as_str()));
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn compute_days_use_the_day_endpoint() -> Result<()> {
    let data = DwdiData::generated(2, 2, &[MONTH]);
    let account = data.accounts()[1].clone();
    let (sim, options) = sim_with(data.clone()).await?;
    let config = ConfigFile::new(&compute_config(&sim, &options, "", NODE_AND_CPU))?;
    let out = run_cli(&[
        "usage",
        "-c",
        config.arg(),
        "--from",
        "2024-03-05",
        "--to",
        "2024-03-09",
        "--json",
        "--resource",
        &account,
    ])
    .await?;
    let expected = data.compute_usage(&account, None, "2024-03-05", "2024-03-09");
    assert_eq!(total(&parse_json(&out)?, 0, &account, "nodeHours"), Some(cents(expected.node_hours).as_str()));
    assert_eq!(sim.stats().api_count("/compute/usage-day/account"), 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_account_without_data_reports_zero_and_not_found() -> Result<()> {
    let data = DwdiData::generated(1, 2, &[MONTH]);
    let (sim, options) = sim_with(data).await?;
    let config = ConfigFile::new(&compute_config(&sim, &options, "", NODE_AND_CPU))?;
    let json = parse_json(
        &run_cli(&["usage", "-c", config.arg(), "--month", "2024-03", "--json", "--resource", "ghost"]).await?,
    )?;
    assert_eq!(total(&json, 0, "ghost", "nodeHours"), Some("0.00"));
    assert_eq!(json[0]["resources"][0]["found"], false);
    // The table says so too.
    let table = run_cli(&["usage", "-c", config.arg(), "--month", "2024-03", "--resource", "ghost"]).await?;
    assert!(table.contains("0.00 (no data)"), "{table}");
    Ok(())
}

fn storage_config(sim: &DwdiSim, options: &DwdiOptions, mapping: &[(&str, &str)], extra: &str) -> String {
    let mapping: String = mapping.iter().map(|(id, path)| format!("        {id:?}: {path:?}\n")).collect();
    format!(
        "offerings:\n  - name: storage\n    backend_type: cscs-dwdi-storage\n    backend_settings:\n{}{extra}      storage_path_mapping:\n{mapping}    backend_components:\n      storage_space: {{measured_unit: GB, unit_factor: 0.000000001, accounting_type: usage, label: Storage Space (GB)}}\n      storage_inodes: {{measured_unit: count, unit_factor: 1, accounting_type: usage, label: File Count}}\n",
        dwdi_access(sim, options)
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn storage_maps_paths_both_ways_and_converts_bytes_to_gb() -> Result<()> {
    let mut data = DwdiData::new();
    data.add_storage(
        "lustre",
        "projects",
        Some("cscs"),
        "/store/projects/proj123",
        "2024-03-10",
        1_500_000_000_000,
        42,
    );
    data.add_storage(
        "lustre",
        "projects",
        Some("cscs"),
        "/store/projects/proj123",
        "2024-03-20",
        2_250_000_000_000,
        50,
    );
    data.add_storage("lustre", "projects", Some("cscs"), "/store/direct", "2024-03-02", 5_000_000_000, 7);
    data.add_storage("lustre", "scratch", Some("cscs"), "/store/projects/proj123", "2024-03-20", 9, 9);
    let (sim, options) = sim_with(data).await?;
    let settings = "      storage_filesystem: lustre\n      storage_data_type: projects\n      storage_tenant: cscs\n";
    let config =
        ConfigFile::new(&storage_config(&sim, &options, &[("project_123", "/store/projects/proj123")], settings))?;
    let out = run_cli(&[
        "usage",
        "-c",
        config.arg(),
        "--month",
        "2024-03",
        "--json",
        "--resource",
        "project_123",
        "--resource",
        "/store/direct",
    ])
    .await?;
    let json = parse_json(&out)?;
    // The latest snapshot of the month, bytes × 1e-9.
    assert_eq!(total(&json, 0, "project_123", "storage_space"), Some("2250.00"));
    assert_eq!(total(&json, 0, "project_123", "storage_inodes"), Some("50.00"));
    // A backend id that is a path is used as it is.
    assert_eq!(total(&json, 0, "/store/direct", "storage_space"), Some("5.00"));
    let urls = sim.stats().recent_urls();
    assert!(urls.iter().any(|u| u.contains("exact-month=2024-03") && u.contains("tenant=cscs")), "{urls:?}");

    // Daily: the snapshot of the last day asked for.
    let out = run_cli(&[
        "usage",
        "-c",
        config.arg(),
        "--from",
        "2024-03-01",
        "--to",
        "2024-03-15",
        "--json",
        "--resource",
        "project_123",
    ])
    .await?;
    assert!(sim.stats().recent_urls().iter().any(|u| u.contains("exact-date=2024-03-15")));
    let json = parse_json(&out)?;
    assert_eq!(json[0]["resources"][0]["found"], false, "no snapshot on the 15th: {json}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_component_that_maps_to_nothing_is_a_start_up_error() -> Result<()> {
    let (sim, options) = sim_with(DwdiData::new()).await?;
    let components = format!(
        "{NODE_AND_CPU}      licences: {{measured_unit: seats, unit_factor: 1, accounting_type: usage, label: Licences}}\n"
    );
    let config = ConfigFile::new(&compute_config(&sim, &options, "", &components))?;
    let err =
        run_cli(&["usage", "-c", config.arg(), "--resource", "a"]).await.err().context("the config must be refused")?;
    let message = format!("{err:#}");
    assert!(message.starts_with("offerings[0].backend_components.licences"), "{message}");
    assert_eq!(sim.stats().api_requests, 0, "nothing may be asked before the config is valid");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_settings_are_named_like_the_seed() -> Result<()> {
    let (sim, options) = sim_with(DwdiData::new()).await?;
    let config = ConfigFile::new(&storage_config(&sim, &options, &[], "      storage_data_type: projects\n"))?;
    let err =
        run_cli(&["usage", "-c", config.arg(), "--resource", "a"]).await.err().context("the config must be refused")?;
    assert_eq!(format!("{err:#}"), "offerings[0].backend_settings.storage_filesystem: missing");

    let text =
        compute_config(&sim, &options, "", NODE_AND_CPU).replace("      cscs_dwdi_oidc_token_url", "      ignored");
    let config = ConfigFile::new(&text)?;
    let err =
        run_cli(&["usage", "-c", config.arg(), "--resource", "a"]).await.err().context("the config must be refused")?;
    assert!(format!("{err:#}").ends_with("offerings[0].backend_settings.cscs_dwdi_oidc_token_url: missing"), "{err:#}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_expired_token_is_refreshed_mid_run() -> Result<()> {
    use usage_agent::backends::{Backends, prepare_offering};
    use usage_agent::config::AgentConfig;
    use usage_agent::runtime::{Runtime, wit};

    let data = DwdiData::generated(2, 2, &[MONTH]);
    let account = data.accounts()[0].clone();
    let (sim, options) = sim_with(data.clone()).await?;
    let config = AgentConfig::parse(&compute_config(&sim, &options, "", NODE_AND_CPU))?;
    let backends = Backends::new(Runtime::new()?);
    backends.load_builtins_for(&config).await?;
    let backend = prepare_offering(&backends, 0, &config.offerings[0]).await?;
    let resources = vec![wit::WaldurResource { backend_id: account.clone(), offering_backend_id: None }];
    let period = wit::BillingPeriod { year: 2024, month: 3 };
    let first = backend.usage_report(resources.clone(), period).await?;
    // The token is still cached by the host, but the server has forgotten it.
    sim.expire_all_tokens();
    let second = backend.usage_report(resources, period).await?;
    let values = |r: &wit::Report| r.resources[0].totals.iter().map(|a| a.value).collect::<Vec<_>>();
    assert_eq!(values(&first), values(&second));
    let stats = sim.stats();
    assert_eq!(stats.tokens_issued, 2, "one token, then one refresh");
    assert_eq!(stats.api_unauthorized, 1, "exactly one request was refused");
    assert_eq!(backend.egress().stats().unauthorized_retries.load(std::sync::atomic::Ordering::Relaxed), 1);
    Ok(())
}

/// Every command that runs components takes them from the plugins folder as `report`
/// does: a backend type that exists only there works in `usage`, `ping` and
/// `check-config`, and without the folder it is unknown.
#[tokio::test(flavor = "multi_thread")]
async fn a_backend_type_from_the_plugins_folder_serves_every_command() -> Result<()> {
    let (sim, options) = sim_with(DwdiData::new()).await?;
    let text = format!(
        "offerings:\n  - name: site\n    waldur_api_url: http://127.0.0.1:9/api/\n    waldur_api_token: unused\n    waldur_offering_uuid: 11111111-2222-4333-8444-555555555555\n    backend_type: probe\n    backend_settings:\n{}      probe: env\n    backend_components:\n      status: {{unit_factor: 1}}\n",
        dwdi_access(&sim, &options)
    );
    let config = ConfigFile::new(&text)?;
    let plugins = config.dir.path().join("plugins");
    std::fs::create_dir(&plugins)?;
    let plugins = plugins.to_str().context("temp path is not UTF-8")?;

    let unknown = run_cli(&["usage", "-c", config.arg(), "--plugins-dir", plugins, "--resource", "r1"])
        .await
        .err()
        .context("no component serves probe yet")?;
    let unknown = format!("{unknown:#}");
    assert!(
        unknown.contains("no component serves backend type \"probe\"") && unknown.contains("has no probe.wasm"),
        "{unknown}"
    );

    std::fs::copy(e2e::components::PROBE, config.dir.path().join("plugins/probe.wasm"))?;
    let json = parse_json(
        &run_cli(&["usage", "-c", config.arg(), "--plugins-dir", plugins, "--resource", "r1", "--json"]).await?,
    )?;
    assert_eq!(json[0]["backend_type"], "probe");
    assert_eq!(total(&json, 0, "r1", "status"), Some("0.00"), "{json}");
    let checked = run_cli(&["check-config", "-c", config.arg(), "--plugins-dir", plugins]).await?;
    assert!(checked.contains("backend    probe 0.0.1 (") && checked.contains("probe.wasm"), "{checked}");
    let pinged = run_cli(&["ping", "-c", config.arg(), "--plugins-dir", plugins]).await?;
    assert!(pinged.contains("config   ok"), "{pinged}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_filesystem_that_selects_nothing_gets_a_hint() -> Result<()> {
    let mut data = DwdiData::new();
    data.add_storage("lustre", "projects", None, "/store/projects/p1", "2024-03-10", 1_000_000_000, 1);
    let (sim, options) = sim_with(data).await?;
    let settings = |fs: &str| format!("      storage_filesystem: {fs}\n      storage_data_type: projects\n");
    let mapping = [("p1", "/store/projects/p1"), ("p2", "/store/projects/p2")];
    let usage = |config: ConfigFile| async move {
        run_cli(&["usage", "-c", config.arg(), "--month", "2024-03", "--resource", "p1", "--resource", "p2"]).await
    };
    let wrong = usage(ConfigFile::new(&storage_config(&sim, &options, &mapping, &settings("scratch")))?).await?;
    assert!(
        wrong.contains("note: storage: the backend found none of the 2 resources upstream")
            && wrong.contains("storage_filesystem"),
        "{wrong}"
    );
    // One resource with data is enough to say nothing.
    let right = usage(ConfigFile::new(&storage_config(&sim, &options, &mapping, &settings("lustre")))?).await?;
    assert!(right.contains("(no data)") && !right.contains("note:"), "{right}");
    Ok(())
}

/// Runs `usage-agent ARGS…` in this process: what it printed, and its error.
async fn run_cli_with_error(args: &[&str]) -> Result<(String, Option<String>)> {
    use clap::Parser as _;
    let mut argv = vec!["usage-agent"];
    argv.extend_from_slice(args);
    let mut out = Vec::new();
    let outcome = usage_agent::cli::run(usage_agent::cli::Cli::try_parse_from(argv)?, &mut out).await;
    Ok((String::from_utf8(out)?, outcome.err().map(|e| format!("{e:#}"))))
}

/// `usage` checks the answer as a report cycle does: what breaks the contract is an
/// error, never a row, and the command fails; the rest is printed.
#[tokio::test(flavor = "multi_thread")]
async fn usage_prints_no_row_the_contract_forbids() -> Result<()> {
    let (sim, options) = sim_with(DwdiData::new()).await?;
    let text = format!(
        "offerings:\n  - name: site\n    backend_type: probe\n    backend_settings:\n{}      probe: contract\n    backend_components:\n      status: {{unit_factor: 1}}\n",
        dwdi_access(&sim, &options)
    );
    let config = ConfigFile::new(&text)?;
    let plugins = config.dir.path().join("plugins");
    std::fs::create_dir(&plugins)?;
    std::fs::copy(e2e::components::PROBE, plugins.join("probe.wasm"))?;
    let plugins = plugins.to_str().context("temp path is not UTF-8")?;
    let mut args = vec!["usage", "-c", config.arg(), "--plugins-dir", plugins, "--month", "2024-03"];
    for id in ["r0", "r1", "r2", "r3"] {
        args.extend(["--resource", id]);
    }
    let wanted = [
        "offering site 2024-03: resource r1: unusable answer from the backend, nothing submitted for it: reported as not found upstream, yet with usage",
        "offering site 2024-03: resource r2: the backend reported it more than once",
        "offering site 2024-03: the backend reported 1 resource(s) nobody asked for (stranger); not printed",
    ];

    let (table, error) = run_cli_with_error(&args).await?;
    let error = error.context("a contract broken must fail the command")?;
    for want in wanted {
        assert!(error.contains(want), "missing {want:?} in {error}");
    }
    // Printed: r0 (1.50) and r3 (not found, zero: allowed); nothing of r1 (5), r2 or
    // the stranger (9).
    let rows: Vec<&str> = table.lines().skip(1).collect();
    assert_eq!(rows.len(), 2, "{table}");
    assert!(rows[0].contains("r0") && rows[0].contains("1.50"), "{table}");
    assert!(rows[1].contains("r3") && rows[1].contains("0.00 (no data)"), "{table}");
    for absent in ["r1", "r2", "stranger", "5.00", "9.00", "2.00"] {
        assert!(!table.contains(absent), "{absent} printed:\n{table}");
    }

    args.push("--json");
    let (json, error) = run_cli_with_error(&args).await?;
    assert!(error.is_some(), "--json fails alike");
    let json = parse_json(&json)?;
    let ids: Vec<&str> = json[0]["resources"]
        .as_array()
        .map(|list| list.iter().filter_map(|r| r["backend_id"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(ids, ["r0", "r3"], "{json}");
    let errors: Vec<&str> =
        json[0]["errors"].as_array().map(|list| list.iter().filter_map(|e| e.as_str()).collect()).unwrap_or_default();
    assert_eq!(errors.len(), wanted.len(), "{json}");
    for (error, want) in errors.iter().zip(wanted) {
        assert!(error.starts_with(want), "{error} is not {want}");
    }
    // The probe asked nothing of DWDI.
    assert_eq!(sim.stats().api_requests, 0);
    Ok(())
}
