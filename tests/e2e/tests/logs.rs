//! `--log-format json` as journald receives it: every line one JSON object, every line
//! about a resource carrying the offering, the backend type and the resource's backend
//! id, and no secret in any line, metric or error — through a report cycle and a
//! historical load with failures in both.

use std::collections::BTreeMap;

use anyhow::{Context as _, Result};
use dwdi_sim::{DwdiData, DwdiOptions, DwdiSim};
use e2e::{ConfigFile, NODE_AND_CPU, dwdi_access, run_cli};
use serde_json::Value;
use usage_agent::period::Month;
use waldur_sim::{WaldurOptions, WaldurSim, uuid_from};

const SECRET: &str = "dwdi-s3cret-for-logs";
const TOKEN: &str = "waldur-t0ken-for-logs";
const COMPUTE: &str = "cscs-dwdi-compute";

/// The captured lines, each parsed; a line that is not a JSON object fails the test.
fn json_lines() -> Result<Vec<serde_json::Map<String, Value>>> {
    e2e::log::text()
        .lines()
        .map(|line| match serde_json::from_str(line) {
            Ok(Value::Object(object)) => Ok(object),
            _ => anyhow::bail!("not a JSON object: {line}"),
        })
        .collect()
}

fn field<'a>(line: &'a serde_json::Map<String, Value>, name: &str) -> &'a str {
    line.get(name).and_then(Value::as_str).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn json_lines_name_offering_backend_type_and_resource_and_hold_no_secret() -> Result<()> {
    e2e::log::capture_json("debug");
    let current = Month::containing(jiff::Timestamp::now(), &jiff::tz::TimeZone::UTC);
    let data = DwdiData::generated(3, 2, &[(i32::from(current.year), current.month as u32), (2024, 3)]);
    let options = DwdiOptions { client_secret: SECRET.into(), ..DwdiOptions::default() };
    let dwdi = DwdiSim::start(data.clone(), options.clone()).await?;
    let waldur = WaldurSim::start(WaldurOptions::default()).await?;
    waldur.add_token(TOKEN, "staff", true);
    let offering = uuid_from("logs");
    waldur.add_offering(&offering, "logs", &["nodeHours", "cpuHours"]);
    let accounts = data.accounts();
    for account in &accounts {
        waldur.add_resource(&offering, &uuid_from(account), account, "", "OK");
    }
    // One resource Waldur refuses, one DWDI does not know but Waldur has usage for.
    let refused = accounts[1].clone();
    waldur.reject_resource(&uuid_from(&refused), 400, serde_json::json!({"detail": "Quota exceeded."}));
    let ghost = "ghost-account";
    waldur.add_resource(&offering, &uuid_from(ghost), ghost, "", "OK");
    waldur.seed_usage(&uuid_from(ghost), "nodeHours", "12.50", &current.first_day().to_string());

    let config_text = format!(
        "reporting_periods: 1\nofferings:\n  - name: logs\n    waldur_api_url: {:?}\n    waldur_api_token: {TOKEN}\n    waldur_offering_uuid: {offering}\n    backend_type: {COMPUTE}\n    backend_settings:\n{}    backend_components:\n{NODE_AND_CPU}",
        waldur.url(),
        dwdi_access(&dwdi, &options)
    );
    let config = ConfigFile::new(&config_text)?;

    let report = run_cli(&[
        "report",
        "--once",
        "-c",
        config.arg(),
        "--plugins-dir",
        &config.dir.path().join("plugins").to_string_lossy(),
    ])
    .await;
    let report_error = format!("{:#}", report.err().context("a refused write makes --once fail")?);
    let historical = run_cli(&[
        "load-historical-usage",
        "-c",
        config.arg(),
        "-o",
        &offering,
        "-s",
        "2024-03-01",
        "-e",
        "2024-03-31",
    ])
    .await;
    let historical_error = format!("{:#}", historical.err().context("a refused write makes the load fail")?);
    // An offering Waldur does not know fails as a whole: that error line names it too.
    let lost =
        ConfigFile::new(&config_text.replace(&offering, &uuid_from("lost")).replace("name: logs", "name: lost"))?;
    let lost_report = run_cli(&[
        "report",
        "--once",
        "-c",
        lost.arg(),
        "--plugins-dir",
        &lost.dir.path().join("plugins").to_string_lossy(),
    ])
    .await;
    anyhow::ensure!(lost_report.is_err(), "an unknown offering makes --once fail");

    let lines = json_lines()?;
    let about_resources: Vec<_> = lines.iter().filter(|l| l.contains_key("resource")).collect();
    for line in &about_resources {
        assert_eq!(field(line, "offering"), "logs", "{line:?}");
        assert_eq!(field(line, "backend_type"), COMPUTE, "{line:?}");
        assert!(!field(line, "month").is_empty(), "{line:?}");
    }
    // A line whose text names a resource carries it as a field too.
    for line in &lines {
        for id in accounts.iter().map(String::as_str).chain([ghost]) {
            if field(line, "message").contains(&format!("resource {id}")) {
                assert_eq!(field(line, "resource"), id, "{line:?}");
            }
        }
    }
    // The cycle's summary line too, though it is said after the cycle.
    let summary = lines
        .iter()
        .find(|l| field(l, "message").starts_with("logs ") && field(l, "message").contains(": 4 resources × "))
        .context("no summary line")?;
    assert_eq!((field(summary, "offering"), field(summary, "backend_type")), ("logs", COMPUTE), "{summary:?}");
    let lost_error = lines
        .iter()
        .find(|l| field(l, "level") == "ERROR" && field(l, "message").starts_with("offering lost: "))
        .context("no error line for the unknown offering")?;
    assert_eq!((field(lost_error, "offering"), field(lost_error, "backend_type")), ("lost", COMPUTE), "{lost_error:?}");
    let seen = |level: &str, resource: &str, text: &str, month: &str| {
        about_resources.iter().any(|l| {
            field(l, "level") == level
                && field(l, "resource") == resource
                && field(l, "month") == month
                && field(l, "message").contains(text)
        })
    };
    let now = current.to_string();
    assert!(seen("ERROR", &refused, "Quota exceeded", &now), "the refused write in the cycle");
    assert!(seen("WARN", ghost, "absent upstream; keeping the stored value", &now), "the absent resource in the cycle");
    assert!(seen("DEBUG", &accounts[0], "usage submitted", &now), "a submitted resource");
    assert!(seen("ERROR", &refused, "Quota exceeded", "2024-03"), "the refused write in the historical load");
    assert!(
        seen("DEBUG", ghost, "absent upstream; nothing written", "2024-03"),
        "the absent resource in the historical load"
    );
    let submitted: BTreeMap<&str, &str> = about_resources
        .iter()
        .filter(|l| field(l, "message") == "usage submitted" && field(l, "month") == now)
        .map(|l| (field(l, "resource"), field(l, "usage")))
        .collect();
    assert_eq!(submitted.keys().copied().collect::<Vec<_>>(), [ghost, accounts[0].as_str(), accounts[2].as_str()]);
    // The absent resource keeps its stored node hours; only the missing CPU hours get a zero.
    assert_eq!(submitted[ghost], "cpuHours=0.00");
    assert!(submitted[accounts[0].as_str()].contains("nodeHours="), "{submitted:?}");

    // The secrets, and the Basic credentials built from the client secret, appear nowhere.
    // So do the access tokens DWDI issued.
    let basic = e2e::basic_credentials(&options.client_id, SECRET);
    let tokens = dwdi.state().issued_tokens();
    assert!(!tokens.is_empty());
    let secrets: Vec<&str> =
        [SECRET, TOKEN, basic.as_str()].into_iter().chain(tokens.iter().map(String::as_str)).collect();
    let metrics = usage_agent::metrics::global().render();
    for (what, text) in [
        ("log", e2e::log::text()),
        ("report error", report_error),
        ("historical error", historical_error),
        ("metrics", metrics),
    ] {
        for secret in &secrets {
            assert!(!text.contains(secret), "{what} holds a secret: {text}");
        }
    }
    Ok(())
}
