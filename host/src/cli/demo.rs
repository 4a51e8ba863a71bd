//! `usage-agent demo`: the main job against bundled simulators on loopback.
//!
//! Nothing leaves the machine: the DWDI and OIDC simulators listen on 127.0.0.1 with
//! generated data, and the config below points the real components at them.

use std::io::Write;

use anyhow::Result;
use dwdi_sim::{DwdiData, DwdiOptions, DwdiSim};

use super::usage::{Period, collect, explicit_resources, write_table};
use crate::config::AgentConfig;
use crate::period::Month;

#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Accounts in the generated DWDI data.
    #[arg(long, default_value_t = 6)]
    pub accounts: usize,
    /// Users per account in the generated DWDI data.
    #[arg(long, default_value_t = 4)]
    pub users: usize,
}

/// The demo config: the seed's two backends, pointed at the simulators.
pub(crate) fn demo_config(sim: &DwdiSim, options: &DwdiOptions, storage_mapping: &[(String, String)]) -> String {
    let mapping: String = storage_mapping
        .iter()
        .map(|(id, path)| format!("        {id:?}: {path:?}\n"))
        .collect();
    let access = format!(
        "      cscs_dwdi_api_url: {api:?}\n      cscs_dwdi_client_id: {id:?}\n      cscs_dwdi_client_secret: {secret:?}\n      cscs_dwdi_oidc_token_url: {token:?}\n",
        api = sim.api_url(),
        id = options.client_id,
        secret = options.client_secret,
        token = sim.token_url(),
    );
    format!(
        r#"timezone: "Europe/Zurich"
offerings:
  - name: "DWDI compute (demo)"
    backend_type: "cscs-dwdi-compute"
    backend_settings:
{access}    backend_components:
      nodeHours: {{measured_unit: "node-hours", unit_factor: 1, accounting_type: "usage", label: "Node Hours"}}
      cpuHours: {{measured_unit: "cpu-hours", unit_factor: 1, accounting_type: "usage", label: "CPU Hours"}}
  - name: "DWDI storage (demo)"
    backend_type: "cscs-dwdi-storage"
    backend_settings:
{access}      storage_filesystem: "{fs}"
      storage_data_type: "{dt}"
      storage_path_mapping:
{mapping}    backend_components:
      storage_space: {{measured_unit: "GB", unit_factor: 0.000000001, accounting_type: "usage", label: "Storage Space (GB)"}}
      storage_inodes: {{measured_unit: "count", unit_factor: 1, accounting_type: "usage", label: "File Count"}}
"#,
        fs = dwdi_sim::GENERATED_FILESYSTEM,
        dt = dwdi_sim::GENERATED_DATA_TYPE,
    )
}

pub(crate) async fn run(args: DemoArgs, out: &mut (dyn Write + Send)) -> Result<()> {
    let now = jiff::Timestamp::now();
    let month = Month::containing(now, &crate::period::time_zone(Some("Europe/Zurich"))?);
    let months: Vec<(i32, u32)> =
        month.back(2).iter().map(|m| (i32::from(m.year), m.month as u32)).collect();
    let data = DwdiData::generated(args.accounts, args.users, &months);
    let accounts = data.accounts();
    let paths = data.storage_paths();
    let options = DwdiOptions::default();
    let sim = DwdiSim::start(data, options.clone()).await?;
    // Waldur knows storage resources by project id; the mapping turns them into paths.
    let mapping: Vec<(String, String)> =
        paths.iter().enumerate().map(|(i, path)| (format!("project_{i:03}"), path.clone())).collect();
    let config = AgentConfig::parse(&demo_config(&sim, &options, &mapping))?;
    writeln!(out, "DWDI and OIDC simulators on {}; billing month {month}.\n", sim.addr())?;
    let selected: Vec<_> = config.offerings().collect();
    let storage_ids: Vec<String> = mapping.iter().map(|(id, _)| id.clone()).collect();
    let usage = collect(&config, &selected, Period::Month(month), |_, offering| {
        if offering.usage_backend() == Some("cscs-dwdi-storage") {
            explicit_resources(&storage_ids)
        } else {
            explicit_resources(&accounts)
        }
    })
    .await?;
    write_table(out, &usage)?;
    let stats = sim.stats();
    writeln!(
        out,
        "\n{} DWDI requests, {} token(s) issued, {} refused.",
        stats.api_requests, stats.tokens_issued, stats.api_unauthorized
    )?;
    sim.shutdown().await;
    Ok(())
}
