//! `usage-agent demo`: the main job against bundled simulators on loopback.
//!
//! Nothing leaves the machine: the DWDI, OIDC and Waldur simulators listen on 127.0.0.1
//! with generated data, and the config below points the real components and the real
//! report cycle at them. It runs two cycles — the second shows that unchanged data
//! writes nothing — and prints what landed in Waldur.

use std::collections::BTreeMap;
use std::io::Write;

use anyhow::Result;
use dwdi_sim::{DwdiData, DwdiOptions, DwdiSim};
use waldur_sim::{WaldurOptions, WaldurSim, uuid_from};

use super::report::run_cycle;
use crate::backends::Backends;
use crate::config::AgentConfig;
use crate::period::Month;
use crate::report::{CycleOptions, StopFlag, prepare_targets};
use crate::runtime::Runtime;

#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Compute accounts (and storage projects) in the generated data.
    #[arg(long, default_value_t = 6)]
    pub accounts: usize,
    /// Users per account in the generated data.
    #[arg(long, default_value_t = 4)]
    pub users: usize,
    /// Run no cycle: write the demo config to FILE and keep the simulators up until
    /// Ctrl-C, for trying the other commands (`report`, `healthz`, `ping`, `usage`,
    /// `load-historical-usage`, `/metrics`) against them.
    #[arg(long, value_name = "FILE")]
    pub serve: Option<std::path::PathBuf>,
}

/// Months of generated DWDI data, ending with the current one: enough to try
/// `load-historical-usage` on.
const DEMO_MONTHS: usize = 12;

const WALDUR_TOKEN: &str = "demo-staff-token";

/// The demo config: the seed's two backends, pointed at the simulators.
fn demo_config(dwdi: &DwdiSim, options: &DwdiOptions, waldur: &WaldurSim, mapping: &[(String, String)]) -> String {
    let mapping: String = mapping.iter().map(|(id, path)| format!("        {id:?}: {path:?}\n")).collect();
    let access = format!(
        "      cscs_dwdi_api_url: {api:?}\n      cscs_dwdi_client_id: {id:?}\n      cscs_dwdi_client_secret: {secret:?}\n      cscs_dwdi_oidc_token_url: {token:?}\n",
        api = dwdi.api_url(),
        id = options.client_id,
        secret = options.client_secret,
        token = dwdi.token_url(),
    );
    let waldur = format!("    waldur_api_url: {url:?}\n    waldur_api_token: {WALDUR_TOKEN:?}\n", url = waldur.url());
    format!(
        r#"timezone: "UTC"
reporting_periods: 2
offerings:
  - name: "DWDI compute (demo)"
{waldur}    waldur_offering_uuid: "{compute}"
    backend_type: "cscs-dwdi-compute"
    backend_settings:
{access}    backend_components:
      nodeHours: {{measured_unit: "node-hours", unit_factor: 1, accounting_type: "usage", label: "Node Hours"}}
      cpuHours: {{measured_unit: "cpu-hours", unit_factor: 1, accounting_type: "usage", label: "CPU Hours"}}
  - name: "DWDI storage (demo)"
{waldur}    waldur_offering_uuid: "{storage}"
    backend_type: "cscs-dwdi-storage"
    backend_settings:
{access}      storage_filesystem: "{fs}"
      storage_data_type: "{dt}"
      storage_path_mapping:
{mapping}    backend_components:
      storage_space: {{measured_unit: "GB", unit_factor: 0.000000001, accounting_type: "usage", label: "Storage Space (GB)"}}
      storage_inodes: {{measured_unit: "count", unit_factor: 1, accounting_type: "usage", label: "File Count"}}
"#,
        compute = uuid_from("demo compute offering"),
        storage = uuid_from("demo storage offering"),
        fs = dwdi_sim::GENERATED_FILESYSTEM,
        dt = dwdi_sim::GENERATED_DATA_TYPE,
    )
}

/// The simulators with the demo's offerings, users and data.
struct DemoWorld {
    dwdi: DwdiSim,
    waldur: WaldurSim,
    accounts: Vec<String>,
    /// Storage project id → path.
    mapping: Vec<(String, String)>,
    config: String,
    month: Month,
}

pub(crate) async fn run(args: DemoArgs, out: &mut (dyn Write + Send)) -> Result<()> {
    match args.serve.clone() {
        Some(path) => {
            let stop = StopFlag::default();
            super::report::spawn_signal_watch(stop.clone());
            serve_until(args, &path, out, stop).await
        }
        None => run_cycles(args, out).await,
    }
}

/// `demo --serve FILE`: the simulators stay up, the config is written to `path` with
/// a heartbeat beside it and a metrics port, until `stop` is raised.
pub async fn serve_until(
    args: DemoArgs,
    path: &std::path::Path,
    out: &mut (dyn Write + Send),
    stop: StopFlag,
) -> Result<()> {
    use anyhow::Context as _;
    let world = DemoWorld::start(&args).await?;
    let heartbeat = path.with_extension("heartbeat");
    let metrics = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .context("no free loopback port for the metrics endpoint")?;
    let text = format!(
        "# Written by `usage-agent demo --serve`: the simulators it started, until it stops.\nheartbeat_file: {:?}\nmetrics_listen: \"{metrics}\"\nplugins_dir: plugins\n{}",
        heartbeat.display().to_string(),
        world.config
    );
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?;
    let plugins = path.parent().unwrap_or(std::path::Path::new(".")).join("plugins");
    std::fs::create_dir_all(&plugins).with_context(|| format!("cannot create {}", plugins.display()))?;
    let config = path.display();
    let (compute, storage) = (uuid_from("demo compute offering"), uuid_from("demo storage offering"));
    writeln!(out, "Simulators on loopback: DWDI+OIDC {}, Waldur {}.", world.dwdi.addr(), world.waldur.addr())?;
    writeln!(
        out,
        "{} compute accounts, {} storage projects, {DEMO_MONTHS} months of data up to {}.",
        world.accounts.len(),
        world.mapping.len(),
        world.month
    )?;
    writeln!(out, "Config written to {config}. Try, in another terminal:\n")?;
    writeln!(out, "  usage-agent check-config -c {config}")?;
    writeln!(out, "  usage-agent ping -c {config} --offering \"DWDI compute (demo)\"")?;
    writeln!(
        out,
        "  usage-agent usage -c {config} --offering \"DWDI compute (demo)\" --resource {}",
        world.accounts.first().map_or("project_000", String::as_str)
    )?;
    writeln!(out, "  usage-agent report -c {config} --period-minutes 1")?;
    writeln!(out, "  usage-agent healthz -c {config}")?;
    writeln!(out, "  curl -s http://{metrics}/metrics")?;
    writeln!(
        out,
        "  usage-agent load-historical-usage -c {config} -o {compute} -s {} -e {}",
        world.month.back(DEMO_MONTHS as u32).first().map_or(world.month, |m| *m).first_day(),
        world.month.first_day()
    )?;
    writeln!(
        out,
        "\nThe plugins folder is {}; the storage offering is {storage}. Ctrl-C stops the simulators.",
        plugins.display()
    )?;
    out.flush()?;
    stop.stopped().await;
    world.dwdi.shutdown().await;
    world.waldur.shutdown().await;
    Ok(())
}

impl DemoWorld {
    async fn start(args: &DemoArgs) -> Result<Self> {
        let month = Month::containing(jiff::Timestamp::now(), &jiff::tz::TimeZone::UTC);
        let months: Vec<(i32, u32)> =
            month.back(DEMO_MONTHS as u32).iter().map(|m| (i32::from(m.year), m.month as u32)).collect();
        let data = DwdiData::generated(args.accounts, args.users, &months);
        let accounts = data.accounts();
        let paths = data.storage_paths();
        let users: Vec<String> = (0..args.accounts * args.users).map(|i| format!("user_{i:04}")).collect();
        let options = DwdiOptions::default();
        let dwdi = DwdiSim::start(data, options.clone()).await?;
        let waldur = WaldurSim::start(WaldurOptions::default()).await?;
        waldur.add_token(WALDUR_TOKEN, "demo-staff", true);

        let compute = uuid_from("demo compute offering");
        waldur.add_offering(&compute, "DWDI compute (demo)", &["nodeHours", "cpuHours"]);
        for account in &accounts {
            waldur.add_resource(&compute, &uuid_from(&format!("compute {account}")), account, "Alps", "OK");
        }
        // Offering users let Waldur link per-user usage to accounts; link every other one.
        for user in users.iter().step_by(2) {
            waldur.add_offering_user(&compute, user);
        }
        let storage = uuid_from("demo storage offering");
        waldur.add_offering(&storage, "DWDI storage (demo)", &["storage_space", "storage_inodes"]);
        // Waldur knows storage resources by project id; the mapping turns them into paths.
        let mapping: Vec<(String, String)> =
            paths.iter().enumerate().map(|(i, path)| (format!("project_{i:03}"), path.clone())).collect();
        for (id, _) in &mapping {
            waldur.add_resource(&storage, &uuid_from(&format!("storage {id}")), id, "", "OK");
        }
        let config = demo_config(&dwdi, &options, &waldur, &mapping);
        Ok(Self { dwdi, waldur, accounts, mapping, config, month })
    }
}

/// `demo`: two cycles against the simulators, then what landed in Waldur.
async fn run_cycles(args: DemoArgs, out: &mut (dyn Write + Send)) -> Result<()> {
    let DemoWorld { dwdi, waldur, accounts, mapping, config, month } = DemoWorld::start(&args).await?;
    let config = AgentConfig::parse(&config)?;
    writeln!(out, "Simulators on loopback: DWDI+OIDC {}, Waldur {}.", dwdi.addr(), waldur.addr())?;
    writeln!(
        out,
        "Reporting {} and the month before for {} compute and {} storage resources.\n",
        month,
        accounts.len(),
        mapping.len()
    )?;
    let backends = Backends::new(Runtime::with_limits(config.component_limits.clone())?);
    let targets = prepare_targets(&config, &backends).await?;
    let cycle_options = CycleOptions::from_config(&config)?;
    let stop = StopFlag::default();
    for cycle in 1..=2 {
        writeln!(out, "Cycle {cycle}:")?;
        for summary in run_cycle(&targets, &cycle_options, &stop).await {
            writeln!(out, "  {summary}")?;
            for error in &summary.errors {
                writeln!(out, "    error: {error}")?;
            }
        }
    }
    let counts = waldur.requests();
    writeln!(
        out,
        "\nWaldur received {} requests: {} set_usage, {} set_user_usages.\n",
        counts.total, counts.set_usage, counts.set_user_usages
    )?;

    // What landed in Waldur.
    let backend_ids: BTreeMap<String, String> = accounts
        .iter()
        .map(|id| (uuid_from(&format!("compute {id}")), format!("{id} (compute)")))
        .chain(mapping.iter().map(|(id, _)| (uuid_from(&format!("storage {id}")), format!("{id} (storage)"))))
        .collect();
    let user_counts = waldur.user_usages().into_iter().fold(BTreeMap::<String, usize>::new(), |mut map, u| {
        *map.entry(u.component_usage_uuid).or_default() += 1;
        map
    });
    let mut rows: Vec<[String; 5]> = Vec::new();
    for usage in waldur.usages() {
        rows.push([
            backend_ids.get(&usage.resource_uuid).cloned().unwrap_or(usage.resource_uuid.clone()),
            usage.billing_period[..7].to_owned(),
            usage.component_type.clone(),
            usage.amount.clone(),
            user_counts.get(&usage.uuid).copied().unwrap_or(0).to_string(),
        ]);
    }
    rows.sort();
    rows.insert(0, ["RESOURCE", "PERIOD", "COMPONENT", "AMOUNT", "USERS"].map(String::from));
    write_rows(out, &rows, 3)?;
    dwdi.shutdown().await;
    waldur.shutdown().await;
    Ok(())
}

/// An aligned table; column `right` is right-aligned.
pub(crate) fn write_rows<const N: usize>(
    out: &mut (dyn Write + Send),
    rows: &[[String; N]],
    right: usize,
) -> Result<()> {
    let mut widths = [0usize; N];
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    for row in rows {
        let mut line = String::new();
        for (i, (cell, width)) in row.iter().zip(widths).enumerate() {
            if i == right {
                line.push_str(&format!("{cell:>width$}  "));
            } else {
                line.push_str(&format!("{cell:<width$}  "));
            }
        }
        writeln!(out, "{}", line.trim_end())?;
    }
    Ok(())
}
