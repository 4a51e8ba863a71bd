//! What operators run around the service: `check-config` and `healthz`, end to end
//! against the simulators. The metrics endpoint has a test binary of its own
//! (`metrics.rs`), since the registry is one per process.

use anyhow::Result;
use clap::Parser as _;
use e2e::{ConfigFile, OpsWorld, examples_dir, run_cli};

#[tokio::test(flavor = "multi_thread")]
async fn every_example_passes_check_config_and_a_broken_one_names_the_key() -> Result<()> {
    for name in ["cscs-dwdi-compute-config.yaml", "cscs-dwdi-storage-config.yaml", "cscs-dwdi-combined-config.yaml"] {
        let path = examples_dir().join(name);
        let out = run_cli(&["check-config", "-c", &path.to_string_lossy()]).await?;
        assert!(out.contains(": valid;") && out.contains("offerings[0]"), "{name}: {out}");
        assert!(!out.contains("your_oidc_client_secret"), "a secret was printed: {out}");
    }
    let text = std::fs::read_to_string(examples_dir().join("cscs-dwdi-storage-config.yaml"))?
        .replace("      storage_data_type: \"projects\"\n", "");
    let broken = ConfigFile::new(&text)?;
    let error =
        run_cli(&["check-config", "-c", broken.arg()]).await.err().map(|e| format!("{e:#}")).unwrap_or_default();
    assert_eq!(error, "offerings[0].backend_settings.storage_data_type: missing");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_limit_component_the_backend_cannot_measure_is_left_out_with_one_line() -> Result<()> {
    // As in waldur-site-agent's own combined example: a storage quota on a compute offering.
    let text = std::fs::read_to_string(examples_dir().join("cscs-dwdi-compute-config.yaml"))?.replace(
        "    backend_components:\n",
        "    backend_components:\n      storage:\n        measured_unit: \"TB\"\n        accounting_type: \"limit\"\n        label: \"Storage Allocation\"\n        unit_factor: 1\n",
    );
    let config = ConfigFile::new(&text)?;
    let out = run_cli(&["check-config", "-c", config.arg()]).await?;
    assert!(out.contains(": valid;"), "{out}");
    let left_out: Vec<&str> = out.lines().filter(|l| l.contains("left out")).collect();
    assert_eq!(
        left_out,
        ["  left out   storage (accounting_type limit): cscs-dwdi-compute does not measure it; not reported"],
        "{out}"
    );
    // As a usage component the same name is a configuration error naming it.
    let usage = ConfigFile::new(&text.replace("accounting_type: \"limit\"", "accounting_type: \"usage\""))?;
    let error = run_cli(&["check-config", "-c", usage.arg()]).await.err().map(|e| format!("{e:#}")).unwrap_or_default();
    assert!(error.contains("backend_components.storage"), "{error}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn healthz_follows_the_heartbeat_and_the_services() -> Result<()> {
    let s = OpsWorld::start().await?;
    let dir = tempfile::tempdir()?;
    let file = ConfigFile::new(&s.config(dir.path(), "heartbeat_max_age_seconds: 300\n"))?;
    let heartbeat = dir.path().join("heartbeat");

    // Missing heartbeat: dead.
    let error = run_cli(&["healthz", "--liveness-only", "-c", file.arg()]).await.err().map(|e| format!("{e:#}"));
    assert!(error.is_some_and(|e| e.contains("unhealthy")));
    // Fresh: alive, and both services answer.
    usage_agent::heartbeat::touch(&heartbeat)?;
    let out = run_cli(&["healthz", "-c", file.arg()]).await?;
    assert!(
        out.contains("ok    liveness")
            && out.contains("ok    ops: Waldur")
            && out.contains("ok    ops: upstream token endpoint"),
        "{out}"
    );
    // Stale: written 10 minutes ago.
    let old = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs() - 600;
    std::fs::write(&heartbeat, format!("{old}\n"))?;
    assert!(run_cli(&["healthz", "--liveness-only", "-c", file.arg()]).await.is_err());
    // Fresh again but Waldur down: not ready, and the failing check is named.
    usage_agent::heartbeat::touch(&heartbeat)?;
    let waldur_url = s.waldur.url();
    s.waldur.shutdown().await;
    let mut cli_out = Vec::new();
    let cli = usage_agent::cli::Cli::try_parse_from(["usage-agent", "healthz", "-c", file.arg()])?;
    let result = usage_agent::cli::run(cli, &mut cli_out).await;
    let printed = String::from_utf8(cli_out)?;
    assert!(result.is_err(), "{printed}");
    assert!(printed.contains("FAIL  ops: Waldur"), "{printed} ({waldur_url})");
    assert!(!printed.contains(&s.options.client_secret) && !printed.contains("ops-token"), "{printed}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn demo_serve_writes_a_config_the_other_commands_run_against() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("demo.yaml");
    let stop = usage_agent::report::StopFlag::default();
    let args = usage_agent::cli::DemoArgs { accounts: 3, users: 2, serve: Some(path.clone()) };
    let (serve_path, serve_stop) = (path.clone(), stop.clone());
    let demo = tokio::spawn(async move {
        let mut out = Vec::new();
        usage_agent::cli::serve_demo_until(args, &serve_path, &mut out, serve_stop)
            .await
            .map(|()| String::from_utf8_lossy(&out).into_owned())
    });
    let mut waited = 0;
    while !dir.path().join("plugins").is_dir() {
        anyhow::ensure!(waited < 600, "demo --serve wrote no config");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        waited += 1;
    }
    let config = path.to_string_lossy();
    let checked = run_cli(&["check-config", "-c", &config]).await?;
    assert!(checked.contains(": valid;") && checked.contains("metrics    http://127.0.0.1:"), "{checked}");
    assert!(checked.contains(&format!("plugins    {}", dir.path().join("plugins").display())), "{checked}");
    let reported = run_cli(&["report", "--once", "-c", &config]).await?;
    // Both months, unless this is the first 12 hours of a month (see sync::dates).
    let now = jiff::Timestamp::now();
    let current = usage_agent::period::Month::containing(now, &jiff::tz::TimeZone::UTC);
    let written = match usage_agent::sync::dates::current_month(current, now, &jiff::tz::TimeZone::UTC) {
        usage_agent::sync::dates::CurrentDate::TooEarly => 3,
        _ => 6,
    };
    for offering in ["DWDI compute (demo)", "DWDI storage (demo)"] {
        let line = reported.lines().find(|l| l.starts_with(offering)).unwrap_or_default();
        assert!(
            line.contains(&format!(": 3 resources × 2 months: {written} written,")) && line.contains(" 0 failed;"),
            "{reported}"
        );
    }
    // The data reaches back a year: a dry historical load of a month before the report's two.
    let month = usage_agent::period::Month::containing(jiff::Timestamp::now(), &jiff::tz::TimeZone::UTC);
    let start = month.back(3)[0].first_day().to_string();
    let compute = waldur_sim::uuid_from("demo compute offering");
    let loaded =
        run_cli(&["load-historical-usage", "-c", &config, "-o", &compute, "-s", &start, "-e", &start, "--dry-run"])
            .await?;
    assert!(
        loaded.contains("dry run, nothing submitted")
            && loaded.contains("3 resources × 1 months: 3 to write")
            && loaded.contains("Waldur writes: 3 set_usage, 6 per-user (12 user values)"),
        "{loaded}"
    );
    stop.stop();
    let printed = tokio::time::timeout(std::time::Duration::from_secs(30), demo).await???;
    assert!(printed.contains(&format!("Config written to {}", path.display())), "{printed}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn healthz_is_not_ready_while_a_cycle_leaves_writes_held() -> Result<()> {
    // Last month and this one, with a provider token: Waldur refuses last month's writes.
    let month = usage_agent::period::Month::containing(jiff::Timestamp::now(), &jiff::tz::TimeZone::UTC);
    let last = month.back(2)[0];
    let months = [(i32::from(last.year), last.month as u32), (i32::from(month.year), month.month as u32)];
    let data = dwdi_sim::DwdiData::generated(3, 2, &months);
    let e2e::ComputeSims { dwdi, options, waldur, offering } =
        e2e::ComputeSims::start(&data, waldur_sim::WaldurOptions::default(), "ops", "ops-token", "").await?;
    let s = e2e::OpsWorld { dwdi, options, waldur, offering };
    let dir = tempfile::tempdir()?;
    let file = ConfigFile::new(&s.config(dir.path(), "").replace("reporting_periods: 1", "reporting_periods: 2"))?;
    let cli =
        usage_agent::cli::Cli::try_parse_from(["usage-agent", "report", "-c", file.arg(), "--period-minutes", "60"])?;
    let usage_agent::cli::Command::Report(args) = cli.command else { anyhow::bail!("not a report command") };
    let stop = usage_agent::report::StopFlag::default();
    let loop_stop = stop.clone();
    let task = tokio::spawn(async move {
        let mut out = Vec::new();
        usage_agent::cli::run_report_until(args, &mut out, loop_stop).await
    });
    let heartbeat = dir.path().join("heartbeat");
    let mut waited = 0;
    let held = loop {
        if let Ok((_, held)) = usage_agent::heartbeat::read(&heartbeat)
            && !held.is_empty()
        {
            break held;
        }
        anyhow::ensure!(waited < 600, "no cycle left anything held");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        waited += 1;
    };
    assert_eq!(held, ["ops: Waldur refuses past-month writes with this token"]);
    let mut cli_out = Vec::new();
    let cli = usage_agent::cli::Cli::try_parse_from(["usage-agent", "healthz", "-c", file.arg()])?;
    let result = usage_agent::cli::run(cli, &mut cli_out).await;
    let printed = String::from_utf8(cli_out)?;
    assert!(result.is_err(), "{printed}");
    assert!(
        printed
            .contains("FAIL  writes held after the last cycle: ops: Waldur refuses past-month writes with this token"),
        "{printed}"
    );
    // Alive all the same, and a liveness check says so.
    run_cli(&["healthz", "--liveness-only", "-c", file.arg()]).await?;
    // Stopped between cycles: the loop exits cleanly.
    stop.stop();
    tokio::time::timeout(std::time::Duration::from_secs(30), task).await???;
    Ok(())
}
