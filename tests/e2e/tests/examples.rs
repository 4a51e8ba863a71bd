//! Every example config, and every config snippet of the user's README, loads as-is,
//! without a warning, and passes the components' own `setup`.

use anyhow::{Context, Result};
use e2e::examples_dir;
use usage_agent::backends::{Backends, prepare_offering};
use usage_agent::config::AgentConfig;
use usage_agent::runtime::Runtime;

async fn load_and_set_up(config: &AgentConfig) -> Result<()> {
    let backends = Backends::new(Runtime::new()?);
    backends.load_builtins_for(config).await?;
    for (index, offering) in config.offerings() {
        prepare_offering(&backends, index, offering).await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn every_example_config_loads() -> Result<()> {
    let mut seen = Vec::new();
    for entry in std::fs::read_dir(examples_dir())? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "yaml") && path.to_string_lossy().contains("config") {
            let config = AgentConfig::load(&path)?;
            // What the project ships is what it recommends: nothing to warn about.
            assert!(config.warnings.is_empty(), "{}: {:?}", path.display(), config.warnings);
            load_and_set_up(&config).await.with_context(|| path.display().to_string())?;
            seen.push(path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default());
        }
    }
    seen.sort();
    for name in [
        "cscs-dwdi-combined-config.yaml",
        "cscs-dwdi-compute-config.yaml",
        "cscs-dwdi-inference-config.yaml",
        "cscs-dwdi-storage-config.yaml",
    ] {
        assert!(seen.iter().any(|s| s == name), "{name} missing from examples/: {seen:?}");
    }
    Ok(())
}

/// The README's snippets describe one offering's keys; as an entry of `offerings` they
/// must load unchanged.
#[tokio::test(flavor = "multi_thread")]
async fn the_seed_snippets_load_as_offerings() -> Result<()> {
    let compute = r#"
backend_type: "cscs-dwdi-compute"

backend_settings:
  cscs_dwdi_api_url: "https://dwdi.cscs.ch"
  cscs_dwdi_client_id: "your_oidc_client_id"
  cscs_dwdi_client_secret: "your_oidc_client_secret"
  cscs_dwdi_oidc_token_url: "https://auth.cscs.ch/realms/cscs/protocol/openid-connect/token"
  cscs_dwdi_oidc_scope: "openid"  # Optional

backend_components:
  nodeHours:
    measured_unit: "node-hours"
    unit_factor: 1
    accounting_type: "usage"
    label: "Node Hours"

  cpuHours:
    measured_unit: "cpu-hours"
    unit_factor: 1
    accounting_type: "usage"
    label: "CPU Hours"
"#;
    let storage = r#"
backend_type: "cscs-dwdi-storage"

backend_settings:
  cscs_dwdi_api_url: "https://dwdi.cscs.ch"
  cscs_dwdi_client_id: "your_oidc_client_id"
  cscs_dwdi_client_secret: "your_oidc_client_secret"
  cscs_dwdi_oidc_token_url: "https://auth.cscs.ch/realms/cscs/protocol/openid-connect/token"

  # Storage-specific settings
  storage_filesystem: "lustre"
  storage_data_type: "projects"
  storage_tenant: "cscs"  # Optional

  # Map Waldur resource IDs to storage paths
  storage_path_mapping:
    "project_123": "/store/projects/proj123"
    "project_456": "/store/projects/proj456"

backend_components:
  storage_space:
    measured_unit: "GB"
    unit_factor: 0.000000001  # Convert bytes to GB
    accounting_type: "usage"
    label: "Storage Space (GB)"

  storage_inodes:
    measured_unit: "count"
    unit_factor: 1
    accounting_type: "usage"
    label: "File Count"
"#;
    // The inference example of the upstream plugin's README (1.0.7).
    let inference = r#"
backend_type: "cscs-dwdi-inference"

backend_settings:
  cscs_dwdi_api_url: "https://dwdi.cscs.ch"
  cscs_dwdi_client_id: "your_oidc_client_id"
  cscs_dwdi_client_secret: "your_oidc_client_secret"
  cscs_dwdi_oidc_token_url: "https://auth.cscs.ch/realms/cscs/protocol/openid-connect/token"
  cscs_dwdi_oidc_scope: "openid"  # Optional

backend_components:
  token_cost:
    measured_unit: "EUR"
    unit_factor: 1
    accounting_type: "usage"
    label: "Inference cost"
"#;
    for snippet in [compute, storage, inference] {
        let indented: String = snippet.lines().map(|line| format!("    {line}\n")).collect();
        let text = format!("offerings:\n  -\n{indented}");
        let config = AgentConfig::parse(&text)?;
        load_and_set_up(&config).await?;
    }
    // The seed's proxy settings parse too.
    for proxy in ["socks5://localhost:12345", "socks4://hostname:1080", "http://proxy.cscs.ch:8080"] {
        let text = format!(
            "offerings:\n  -\n{}",
            compute
                .replace("  cscs_dwdi_oidc_scope", &format!("  socks_proxy: {proxy:?}\n  cscs_dwdi_oidc_scope"))
                .lines()
                .map(|line| format!("    {line}\n"))
                .collect::<String>()
        );
        load_and_set_up(&AgentConfig::parse(&text)?).await?;
    }
    Ok(())
}
