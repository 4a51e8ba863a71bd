//! Helpers for the end-to-end suite: run `usage-agent` commands in-process against the
//! simulators and read what they print.

/// Paths of the test components built from `tests/components/` by build.rs.
pub mod components {
    include!(concat!(env!("OUT_DIR"), "/components.rs"));
}

pub mod proxies;
pub mod tls;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Parser as _;
use dwdi_sim::{DwdiOptions, DwdiSim};
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

/// Node and CPU hours, factor 1.
pub const NODE_AND_CPU: &str = "      nodeHours: {measured_unit: node-hours, unit_factor: 1, accounting_type: usage, label: Node Hours}\n      cpuHours: {measured_unit: cpu-hours, unit_factor: 1, accounting_type: usage, label: CPU Hours}\n";

/// Rounds like Waldur: two decimals, as a string.
pub fn cents(value: f64) -> String {
    format!("{:.2}", (value * 100.0).round() / 100.0)
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

    /// Sends every log event of this test process (all threads) to a buffer, once.
    pub fn capture() {
        static INSTALLED: OnceLock<()> = OnceLock::new();
        INSTALLED.get_or_init(|| {
            let subscriber = tracing_subscriber::fmt()
                .with_writer(|| Sink)
                .with_ansi(false)
                .with_max_level(tracing::Level::INFO)
                .finish();
            let _ = tracing::subscriber::set_global_default(subscriber);
        });
    }

    /// Everything logged so far.
    pub fn text() -> String {
        String::from_utf8_lossy(&buffer().lock().unwrap_or_else(PoisonError::into_inner)).into_owned()
    }
}
