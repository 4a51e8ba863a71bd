//! The config is read as the Python agent reads it. Every example config, and a config
//! written with YAML 1.1's other spellings of booleans and nulls, is read by the agent
//! and by PyYAML's `yaml.safe_load` (what waldur-site-agent reads its config with, before
//! pydantic checks it); both must agree on every value the agent uses.
//!
//! Needs `python3` with PyYAML (Debian's `python3-yaml`, which `tests/run-all`
//! installs); without it the test fails and says so. `USAGE_AGENT_PYTHON` names
//! another interpreter.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, bail};
use serde_json::Value;
use usage_agent::config::{AgentConfig, ComponentConfig, OfferingConfig};

/// Prints the file's `yaml.safe_load` as JSON (dates and other non-JSON values as text).
const DUMP: &str =
    "import json, sys, yaml\nwith open(sys.argv[1]) as f:\n    print(json.dumps(yaml.safe_load(f), default=str))\n";

/// The YAML 1.1 spellings an operator may have in a config the Python agent reads.
const YAML_1_1: &str = r#"
timezone: ~
reporting_periods: 1
log_level: Null
offerings:
  - name: "spelled the YAML 1.1 way"
    waldur_api_url: "https://waldur.example.org/api/"
    waldur_api_token: NULL
    waldur_offering_uuid: ~
    backend_type: cscs-dwdi-compute
    reporting_backend:
    verify_ssl: no
    backend_settings:
      cscs_dwdi_api_url: "https://dwdi.example/api/v1"
      cscs_dwdi_client_id: id
      cscs_dwdi_client_secret: secret
      cscs_dwdi_oidc_token_url: "https://auth.example/token"
      cscs_dwdi_oidc_scope: ~
      cscs_dwdi_cluster: null
      site_flag_on: on
      site_flag_off: Off
      site_flag_yes: YES
      site_flag_true: True
      site_flag_false: FALSE
      site_nothing:
      site_octal: 0755
    backend_components:
      nodeHours: {measured_unit: node-hours, unit_factor: 1, unit_factor_reporting: ~, accounting_type: usage, label: Node Hours}
  - name: "on"
    backend_type: cscs-dwdi-compute
    verify_ssl: On
    backend_settings: &settings
      cscs_dwdi_api_url: "https://dwdi.example/api/v1"
      cscs_dwdi_client_id: id
      cscs_dwdi_client_secret: secret
      cscs_dwdi_oidc_token_url: "https://auth.example/token"
    backend_components: &components
      nodeHours: {measured_unit: node-hours, label: Node Hours}
  - {name: "TRUE", backend_type: cscs-dwdi-compute, verify_ssl: TRUE, backend_settings: *settings, backend_components: *components}
  - {name: "y", backend_type: cscs-dwdi-compute, verify_ssl: y, backend_settings: *settings, backend_components: *components}
  - {name: "N", backend_type: cscs-dwdi-compute, verify_ssl: N, backend_settings: *settings, backend_components: *components}
  - {name: "yes", backend_type: cscs-dwdi-compute, verify_ssl: Yes, backend_settings: *settings, backend_components: *components}
"#;

/// The first interpreter that imports PyYAML.
fn python() -> Result<String> {
    let mut candidates: Vec<String> = std::env::var("USAGE_AGENT_PYTHON").into_iter().collect();
    candidates.extend(["python3".to_owned(), "/usr/bin/python3".to_owned()]);
    for candidate in &candidates {
        let imports = Command::new(candidate).args(["-c", "import yaml"]).output();
        if imports.is_ok_and(|output| output.status.success()) {
            return Ok(candidate.clone());
        }
    }
    bail!(
        "this test compares the config reading with PyYAML's, and none of {} imports PyYAML: install python3 \
         and PyYAML (Debian: apt-get install python3-yaml; tests/run-all does), or name an interpreter with \
         USAGE_AGENT_PYTHON",
        candidates.join(", ")
    )
}

/// PyYAML's reading of `path`, as JSON.
fn pyyaml(python: &str, path: &Path) -> Result<Value> {
    let output = Command::new(python).args(["-c", DUMP]).arg(path).output()?;
    if !output.status.success() {
        bail!("PyYAML cannot read {}: {}", path.display(), String::from_utf8_lossy(&output.stderr));
    }
    serde_json::from_slice(&output.stdout).with_context(|| format!("{python} printed no JSON"))
}

/// A boolean as pydantic reads PyYAML's value of a `bool` field (`y` and `n` stay
/// strings in PyYAML; pydantic makes booleans of them).
fn pydantic_bool(value: &Value) -> Option<bool> {
    match value {
        Value::Bool(b) => Some(*b),
        Value::Number(n) if n.as_u64() == Some(0) => Some(false),
        Value::Number(n) if n.as_u64() == Some(1) => Some(true),
        Value::String(s) => match s.to_ascii_lowercase().as_str() {
            "1" | "on" | "t" | "true" | "y" | "yes" => Some(true),
            "0" | "off" | "f" | "false" | "n" | "no" => Some(false),
            _ => None,
        },
        _ => None,
    }
}

/// Collects the differences between the agent's reading and PyYAML's.
struct Diff(Vec<String>);

impl Diff {
    /// `ours` against PyYAML's value of `key` in `theirs`, absent being `default`.
    fn value(&mut self, path: &str, ours: Value, theirs: &Value, key: &str, default: Value) {
        let theirs = match theirs.get(key) {
            None => default,
            Some(value) => value.clone(),
        };
        if !same(&ours, &theirs) {
            self.0.push(format!("{path}{key}: ours {ours}, PyYAML {theirs}"));
        }
    }

    fn text(&mut self, path: &str, ours: Option<&str>, theirs: &Value, key: &str) {
        self.value(path, ours.map_or(Value::Null, Value::from), theirs, key, Value::Null);
    }

    fn offering(&mut self, path: &str, ours: &OfferingConfig, theirs: &Value) {
        for (key, value) in [
            ("name", ours.name.as_deref()),
            ("waldur_api_url", ours.waldur_api_url.as_deref()),
            ("waldur_api_token", ours.waldur_api_token.as_ref().map(|t| t.expose())),
            ("waldur_offering_uuid", ours.waldur_offering_uuid.as_deref()),
            ("backend_type", ours.backend_type.as_deref()),
            ("reporting_backend", ours.reporting_backend.as_deref()),
        ] {
            self.text(path, value, theirs, key);
        }
        let verify_ssl = theirs.get("verify_ssl").map_or(Some(true), pydantic_bool);
        if verify_ssl != Some(ours.verify_ssl) {
            self.0.push(format!("{path}verify_ssl: ours {}, Python {verify_ssl:?}", ours.verify_ssl));
        }
        let settings = Value::Object(ours.backend_settings.clone());
        self.value(path, settings, theirs, "backend_settings", Value::Object(Default::default()));
        let theirs_components = theirs.get("backend_components").cloned().unwrap_or(Value::Null);
        let mut names: Vec<&String> = ours.backend_components.keys().collect();
        let mut their_names: Vec<&String> =
            theirs_components.as_object().map(|m| m.keys().collect()).unwrap_or_default();
        names.sort();
        their_names.sort();
        if names != their_names {
            self.0.push(format!("{path}backend_components: ours {names:?}, PyYAML {their_names:?}"));
        }
        for (name, component) in &ours.backend_components {
            let at = format!("{path}backend_components.{name}.");
            self.component(&at, component, &theirs_components[name.as_str()]);
        }
    }

    fn component(&mut self, path: &str, ours: &ComponentConfig, theirs: &Value) {
        self.value(path, ours.measured_unit.as_str().into(), theirs, "measured_unit", "".into());
        self.value(path, ours.unit_factor.into(), theirs, "unit_factor", 1.0.into());
        self.value(path, ours.unit_factor_reporting.into(), theirs, "unit_factor_reporting", Value::Null);
        self.value(path, ours.accounting_type.as_str().into(), theirs, "accounting_type", "usage".into());
        self.value(path, ours.label.as_str().into(), theirs, "label", "".into());
        self.text(path, ours.dwdi_metric.as_deref(), theirs, "dwdi_metric");
    }
}

/// Equal JSON, numbers compared by value (PyYAML's `1` and our `1.0` are one number).
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same(x, y)),
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(key, value)| y.get(key).is_some_and(|other| same(value, other)))
        }
        _ => a == b,
    }
}

/// The differences between the agent's reading of `path` and PyYAML's.
fn compare(python: &str, path: &Path) -> Result<Vec<String>> {
    let ours = AgentConfig::load(path)?;
    let theirs = pyyaml(python, path)?;
    let mut diff = Diff(Vec::new());
    diff.text("", ours.timezone.as_deref(), &theirs, "timezone");
    diff.value("", ours.reporting_periods.into(), &theirs, "reporting_periods", 2.into());
    diff.text("", ours.log_level.as_deref(), &theirs, "log_level");
    diff.value("", ours.waldur_max_concurrency.into(), &theirs, "waldur_max_concurrency", Value::Null);
    let offerings = theirs.get("offerings").and_then(Value::as_array).cloned().unwrap_or_default();
    if offerings.len() != ours.offerings.len() {
        diff.0.push(format!("offerings: ours {}, PyYAML {}", ours.offerings.len(), offerings.len()));
    }
    for (index, (offering, theirs)) in ours.offerings.iter().zip(&offerings).enumerate() {
        diff.offering(&format!("offerings[{index}]."), offering, theirs);
    }
    Ok(diff.0)
}

#[test]
fn every_example_and_the_yaml_1_1_spellings_read_as_pyyaml_reads_them() -> Result<()> {
    let python = python()?;
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut files: Vec<PathBuf> =
        std::fs::read_dir(&examples)?.map(|entry| entry.map(|e| e.path())).collect::<std::io::Result<_>>()?;
    files.retain(|path| path.extension().is_some_and(|e| e == "yaml"));
    files.sort();
    assert!(files.len() >= 3, "the example configs are missing from {}: {files:?}", examples.display());
    let dir = tempfile::tempdir()?;
    let spelled = dir.path().join("yaml-1.1.yaml");
    std::fs::write(&spelled, YAML_1_1)?;
    files.push(spelled);

    let mut failures = Vec::new();
    for path in &files {
        let diff = compare(&python, path).with_context(|| path.display().to_string())?;
        failures.extend(diff.into_iter().map(|d| format!("{}: {d}", path.display())));
    }
    assert!(failures.is_empty(), "the agent and PyYAML read differently:\n{}", failures.join("\n"));

    // The comparison itself is not vacuous: the 1.1 file reads as it says.
    let config = AgentConfig::load(&files[files.len() - 1])?;
    let verify: Vec<bool> = config.offerings.iter().map(|o| o.verify_ssl).collect();
    assert_eq!(verify, [false, true, true, true, false, true]);
    assert_eq!(config.offerings[0].backend_settings["site_flag_on"], Value::Bool(true));
    assert_eq!(config.offerings[0].backend_settings["site_octal"], Value::from(0o755));
    Ok(())
}
