//! Helpers for the end-to-end suite: run `usage-agent` commands in-process against the
//! simulators and read what they print.

/// Paths of the test components built from `tests/components/` by build.rs.
pub mod components {
    include!(concat!(env!("OUT_DIR"), "/components.rs"));
}

pub mod proxies;
pub mod real_waldur;
pub mod tls;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Parser as _;
use dwdi_sim::{DwdiData, DwdiOptions, DwdiSim};
use usage_agent::cli::{self, Cli};

/// Runs `usage-agent ARGS…` in this process and returns what it printed.
pub async fn run_cli(args: &[&str]) -> Result<String> {
    let mut argv = vec!["usage-agent"];
    argv.extend_from_slice(args);
    let cli = Cli::try_parse_from(argv)?;
    let mut out = Vec::new();
    cli::run(cli, &mut out).await?;
    Ok(String::from_utf8(out)?)
}

/// Runs `usage-agent ARGS…` in this process: what it printed, and how it ended (a
/// failing command prints too).
pub async fn run_cli_ending(args: &[&str]) -> (String, Result<()>) {
    let mut argv = vec!["usage-agent"];
    argv.extend_from_slice(args);
    let cli = match Cli::try_parse_from(argv) {
        Ok(cli) => cli,
        Err(error) => return (String::new(), Err(error.into())),
    };
    let mut out = Vec::new();
    let ended = cli::run(cli, &mut out).await;
    (String::from_utf8_lossy(&out).into_owned(), ended)
}

/// A temp dir with a config file in it.
pub struct ConfigFile {
    pub dir: tempfile::TempDir,
    pub path: PathBuf,
}

impl ConfigFile {
    pub fn new(text: &str) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("config.yaml");
        std::fs::write(&path, text)?;
        Ok(Self { dir, path })
    }

    pub fn arg(&self) -> &str {
        self.path.to_str().unwrap_or_default()
    }
}

/// The `backend_settings` lines that point a backend at `sim` (6-space indent).
pub fn dwdi_access(sim: &DwdiSim, options: &DwdiOptions) -> String {
    format!(
        "      cscs_dwdi_api_url: {:?}\n      cscs_dwdi_client_id: {:?}\n      cscs_dwdi_client_secret: {:?}\n      cscs_dwdi_oidc_token_url: {:?}\n",
        sim.api_url(),
        options.client_id,
        options.client_secret,
        sim.token_url()
    )
}

/// A compute offering on `sim` with the given components block (6-space indent) and
/// extra settings lines.
pub fn compute_config(sim: &DwdiSim, options: &DwdiOptions, extra_settings: &str, components: &str) -> String {
    format!(
        "offerings:\n  - name: compute\n    backend_type: cscs-dwdi-compute\n    backend_settings:\n{}{extra_settings}    backend_components:\n{components}",
        dwdi_access(sim, options)
    )
}

/// A compute offering on `sim` whose URLs name `host` (`127.0.0.1`, `localhost`, …),
/// with extra settings lines (6-space indent).
pub fn compute_config_at(sim: &DwdiSim, options: &DwdiOptions, host: &str, extra: &str) -> String {
    let base = format!("{}://{host}:{}", sim.scheme(), sim.addr().port());
    format!(
        "offerings:\n  - name: compute\n    backend_type: cscs-dwdi-compute\n    backend_settings:\n\
         \x20     cscs_dwdi_api_url: \"{base}{}\"\n\
         \x20     cscs_dwdi_oidc_token_url: \"{base}{}\"\n\
         \x20     cscs_dwdi_client_id: {:?}\n      cscs_dwdi_client_secret: {:?}\n{extra}    backend_components:\n{NODE_AND_CPU}",
        dwdi_sim::API_PREFIX,
        dwdi_sim::TOKEN_PATH,
        options.client_id,
        options.client_secret
    )
}

/// The `probe` test component serving one offering named `name` on `sim`, with
/// `probe_settings` lines (6-space indent) for its behaviour.
pub async fn probe_backend(
    name: &str,
    sim: &DwdiSim,
    options: &DwdiOptions,
    probe_settings: &str,
) -> Result<usage_agent::runtime::OfferingBackend> {
    let text = format!(
        "offerings:\n  - name: {name}\n    backend_type: probe\n    backend_settings:\n{}{probe_settings}    backend_components:\n      status: {{unit_factor: 1}}\n",
        dwdi_access(sim, options)
    );
    let config = usage_agent::config::AgentConfig::parse(&text)?;
    let backends = probe_backends(usage_agent::runtime::Runtime::new()?).await?;
    usage_agent::backends::prepare_offering(&backends, 0, &config.offerings[0]).await
}

/// Backends on `runtime` with the `probe` test component serving backend type "probe".
pub async fn probe_backends(runtime: usage_agent::runtime::Runtime) -> Result<usage_agent::backends::Backends> {
    let loaded = runtime
        .load(&std::fs::read(components::PROBE)?, usage_agent::runtime::Source::File(components::PROBE.into()))
        .await?;
    let backends = usage_agent::backends::Backends::new(runtime);
    backends.install("probe", loaded);
    Ok(backends)
}

/// The report targets of config `text`, on a runtime with its component limits.
pub async fn report_targets(text: &str) -> Result<Vec<usage_agent::report::ReportTarget>> {
    let config = usage_agent::config::AgentConfig::parse(text)?;
    let runtime = usage_agent::runtime::Runtime::with_limits(config.component_limits.clone())?;
    usage_agent::report::prepare_targets(&config, &usage_agent::backends::Backends::new(runtime)).await
}

/// One cycle of `target` with the options of config `text`, at the instant `now`.
pub async fn cycle_at(
    target: &usage_agent::report::ReportTarget,
    text: &str,
    now: &str,
) -> Result<usage_agent::report::OfferingSummary> {
    use usage_agent::report::{CycleOptions, FixedClock, StopFlag, report_offering};
    let options = CycleOptions::from_config(&usage_agent::config::AgentConfig::parse(text)?)?;
    Ok(report_offering(target, &options, &FixedClock(now.parse()?), &StopFlag::default()).await)
}

/// Node and CPU hours, factor 1.
pub const NODE_AND_CPU: &str = "      nodeHours: {measured_unit: node-hours, unit_factor: 1, accounting_type: usage, label: Node Hours}\n      cpuHours: {measured_unit: cpu-hours, unit_factor: 1, accounting_type: usage, label: CPU Hours}\n";

/// Rounds like Waldur: two decimals, as a string.
pub fn cents(value: f64) -> String {
    format!("{:.2}", (value * 100.0).round() / 100.0)
}

/// A DWDI simulator and a Waldur simulator that holds one compute offering.
pub struct ComputeSims {
    pub dwdi: DwdiSim,
    pub options: DwdiOptions,
    pub waldur: waldur_sim::WaldurSim,
    /// The offering's uuid.
    pub offering: String,
}

impl ComputeSims {
    /// DWDI serving `data` with default options; Waldur with the provider token `token`
    /// and the offering `name` (uuid `uuid_from(name)`, nodeHours and cpuHours) holding
    /// one OK resource per account, in `cluster`.
    pub async fn start(
        data: &DwdiData,
        waldur_options: waldur_sim::WaldurOptions,
        name: &str,
        token: &str,
        cluster: &str,
    ) -> Result<Self> {
        use waldur_sim::{WaldurSim, uuid_from};
        let options = DwdiOptions::default();
        let dwdi = DwdiSim::start(data.clone(), options.clone()).await?;
        let waldur = WaldurSim::start(waldur_options).await?;
        waldur.add_token(token, "provider", false);
        let offering = uuid_from(name);
        waldur.add_offering(&offering, name, &["nodeHours", "cpuHours"]);
        for account in data.accounts() {
            waldur.add_resource(&offering, &uuid_from(&account), &account, cluster, "OK");
        }
        Ok(Self { dwdi, options, waldur, offering })
    }
}

/// One compute offering "ops" of three resources in the current month, on both
/// simulators, with the Waldur token `ops-token`: what the operations tests run.
pub struct OpsWorld {
    pub dwdi: DwdiSim,
    pub options: DwdiOptions,
    pub waldur: waldur_sim::WaldurSim,
    pub offering: String,
}

impl OpsWorld {
    pub async fn start() -> Result<Self> {
        let month = usage_agent::period::Month::containing(jiff::Timestamp::now(), &jiff::tz::TimeZone::UTC);
        let data = DwdiData::generated(3, 2, &[(i32::from(month.year), month.month as u32)]);
        let ComputeSims { dwdi, options, waldur, offering } =
            ComputeSims::start(&data, waldur_sim::WaldurOptions::default(), "ops", "ops-token", "").await?;
        Ok(Self { dwdi, options, waldur, offering })
    }

    /// The config text, with the heartbeat, plugins folder and cache in `dir` and
    /// `extra` top-level lines.
    pub fn config(&self, dir: &Path, extra: &str) -> String {
        format!(
            "reporting_periods: 1\nheartbeat_file: {:?}\nplugins_dir: {:?}\nplugins_cache_dir: {:?}\n{extra}offerings:\n  - name: ops\n    waldur_api_url: {:?}\n    waldur_api_token: ops-token\n    waldur_offering_uuid: {}\n    backend_type: cscs-dwdi-compute\n    backend_settings:\n{}    backend_components:\n{NODE_AND_CPU}",
            dir.join("heartbeat").display().to_string(),
            dir.join("plugins").display().to_string(),
            dir.join("cache").display().to_string(),
            self.waldur.url(),
            self.offering,
            dwdi_access(&self.dwdi, &self.options)
        )
    }
}

/// `user:password` in base64, as a Basic `Authorization` header carries it: a secret
/// the tests look for in logs.
pub fn basic_credentials(user: &str, password: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
}

/// The `examples/` folder of the repository.
pub fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples")
}

/// Reads the JSON printed by `usage --json`.
pub fn parse_json(text: &str) -> Result<serde_json::Value> {
    serde_json::from_str(text).with_context(|| format!("not JSON: {text}"))
}

/// The amount of `component` of `resource` in `usage --json` output.
pub fn total<'a>(json: &'a serde_json::Value, offering: usize, resource: &str, component: &str) -> Option<&'a str> {
    let resources = json.get(offering)?.get("resources")?.as_array()?;
    let entry = resources.iter().find(|r| r.get("backend_id").and_then(|v| v.as_str()) == Some(resource))?;
    entry.get("totals")?.get(component)?.as_str()
}

pub mod fault_proxy;

/// The host's log lines, captured for tests that check what an operator would read.
pub mod log {
    use std::io::Write;
    use std::sync::{Mutex, OnceLock, PoisonError};

    use usage_agent::cli::LogFormat;

    static LINES: OnceLock<Mutex<Vec<u8>>> = OnceLock::new();

    fn buffer() -> &'static Mutex<Vec<u8>> {
        LINES.get_or_init(|| Mutex::new(Vec::new()))
    }

    struct Sink;

    impl Write for Sink {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            buffer().lock().unwrap_or_else(PoisonError::into_inner).extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Sends every log event of this test process (all threads) at `info` to a buffer,
    /// as text lines; the first call of `capture` or `capture_json` decides the format.
    pub fn capture() {
        capture_text("info");
    }

    /// Like [`capture`], text lines filtered by `filter` (`RUST_LOG` syntax).
    pub fn capture_text(filter: &str) {
        install(LogFormat::Text, filter);
    }

    /// Like [`capture`], with the host's `--log-format json` lines, filtered by `filter`.
    pub fn capture_json(filter: &str) {
        install(LogFormat::Json, filter);
    }

    fn install(format: LogFormat, filter: &str) {
        static INSTALLED: OnceLock<()> = OnceLock::new();
        INSTALLED.get_or_init(|| {
            let _ = tracing::subscriber::set_global_default(usage_agent::cli::log_subscriber(
                format,
                filter,
                false,
                || Sink,
            ));
        });
    }

    /// Everything logged so far.
    pub fn text() -> String {
        String::from_utf8_lossy(&buffer().lock().unwrap_or_else(PoisonError::into_inner)).into_owned()
    }
}

/// A compute offering and a hostile `probe` offering side by side in one host, each on
/// a DWDI simulator of its own (so what the probe's upstream saw is its alone), both
/// writing into one Waldur simulator: what the budget and memory tests run.
pub struct SideBySide {
    /// The compute offering's DWDI.
    pub dwdi: DwdiSim,
    /// The probe's DWDI.
    pub hostile_dwdi: DwdiSim,
    pub options: DwdiOptions,
    pub waldur: waldur_sim::WaldurSim,
    pub data: DwdiData,
    compute: String,
    /// The hostile offering's name (log lines and metrics carry it) and uuid.
    hostile_name: String,
    hostile: String,
}

impl SideBySide {
    /// Waldur's "today" and the cycle's clock.
    pub const NOW: &str = "2024-03-15T12:00:00Z";
    const TOKEN: &str = "provider-token";

    /// Three compute accounts with usage in March 2024; the hostile offering, named
    /// `hostile_name` (distinct per test: the log and metrics are the process's), holds
    /// `hostile_resources` (backend ids).
    pub async fn start(hostile_name: &str, hostile_resources: &[&str]) -> Result<Self> {
        use waldur_sim::uuid_from;
        let data = DwdiData::generated(3, 2, &[(2024, 3)]);
        let ComputeSims { dwdi, options, waldur, offering: compute } =
            ComputeSims::start(&data, waldur_sim::WaldurOptions::default(), "compute", Self::TOKEN, "").await?;
        waldur.set_today(2024, 3, 15);
        let hostile_dwdi = DwdiSim::start(DwdiData::new(), options.clone()).await?;
        let hostile = uuid_from(hostile_name);
        waldur.add_offering(&hostile, hostile_name, &["usage"]);
        for id in hostile_resources {
            waldur.add_resource(&hostile, &uuid_from(&format!("{hostile_name} {id}")), id, "", "OK");
        }
        Ok(Self { dwdi, hostile_dwdi, options, waldur, data, compute, hostile_name: hostile_name.to_owned(), hostile })
    }

    /// Log lines of the hostile offering so far that contain `needle`.
    pub fn hostile_log(&self, needle: &str) -> Vec<String> {
        let offering = format!("offering={}", self.hostile_name);
        log::text().lines().filter(|l| l.contains(&offering) && l.contains(needle)).map(str::to_owned).collect()
    }

    /// The config: `top` top-level lines, compute first, then the probe on its own DWDI
    /// with `probe_settings` (6-space lines, limits settings among them).
    pub fn config(&self, top: &str, probe_settings: &str) -> String {
        format!(
            "timezone: UTC\nreporting_periods: 1\n{top}offerings:\n  - name: compute\n    waldur_api_url: {url:?}\n    waldur_api_token: {token}\n    waldur_offering_uuid: {}\n    backend_type: cscs-dwdi-compute\n    backend_settings:\n{}    backend_components:\n{NODE_AND_CPU}  - name: {hostile_name}\n    waldur_api_url: {url:?}\n    waldur_api_token: {token}\n    waldur_offering_uuid: {}\n    backend_type: probe\n    backend_settings:\n{}{probe_settings}    backend_components:\n      usage: {{unit_factor: 1}}\n",
            self.compute,
            dwdi_access(&self.dwdi, &self.options),
            self.hostile,
            dwdi_access(&self.hostile_dwdi, &self.options),
            url = self.waldur.url(),
            token = Self::TOKEN,
            hostile_name = self.hostile_name,
        )
    }

    /// The two report targets of config `text` on a runtime with its limits, the probe
    /// serving backend type "probe".
    pub async fn targets(&self, text: &str) -> Result<Vec<usage_agent::report::ReportTarget>> {
        let config = usage_agent::config::AgentConfig::parse(text)?;
        let backends =
            probe_backends(usage_agent::runtime::Runtime::with_limits(config.component_limits.clone())?).await?;
        usage_agent::report::prepare_targets(&config, &backends).await
    }

    /// One cycle of both offerings at once, in one host: (compute, hostile).
    pub async fn cycle(
        &self,
        text: &str,
        targets: &[usage_agent::report::ReportTarget],
    ) -> Result<(usage_agent::report::OfferingSummary, usage_agent::report::OfferingSummary)> {
        use usage_agent::report::{CycleOptions, FixedClock, StopFlag, report_offering};
        let [compute, hostile] = targets else { anyhow::bail!("{} targets, not 2", targets.len()) };
        let options = CycleOptions::from_config(&usage_agent::config::AgentConfig::parse(text)?)?;
        let clock = FixedClock(Self::NOW.parse()?);
        let stop = StopFlag::default();
        Ok(tokio::join!(
            report_offering(compute, &options, &clock, &stop),
            report_offering(hostile, &options, &clock, &stop)
        ))
    }

    /// Fails unless Waldur holds exactly the compute offering's node hours for every
    /// account and its summary counts none failed (written, or unchanged after an
    /// earlier cycle).
    pub fn check_compute_reported(&self, summary: &usage_agent::report::OfferingSummary) -> Result<()> {
        use waldur_sim::uuid_from;
        anyhow::ensure!(
            summary.resources == 3 && summary.failed == 0 && summary.submitted + summary.unchanged == 3,
            "the compute offering did not report everything: {summary:?}"
        );
        let stored: std::collections::BTreeMap<(String, String), String> =
            self.waldur.usages().into_iter().map(|u| ((u.resource_uuid, u.component_type), u.amount)).collect();
        for account in self.data.accounts() {
            let expected = self.data.compute_usage(&account, None, "2024-03-01", "2024-03-31");
            let got = stored.get(&(uuid_from(&account), "nodeHours".into()));
            anyhow::ensure!(got == Some(&cents(expected.node_hours)), "{account}: Waldur holds {got:?}");
        }
        Ok(())
    }

    /// What Waldur holds for the hostile offering's `id`.
    pub fn hostile_stored(&self, id: &str) -> Option<String> {
        let uuid = waldur_sim::uuid_from(&format!("{} {id}", self.hostile_name));
        self.waldur.usages().into_iter().find(|u| u.resource_uuid == uuid).map(|u| u.amount)
    }
}
