//! The `usage-agent` command line.
//!
//! Each subcommand lives in a module of its own; this one parses arguments and sets up
//! logging. Commands write their results to the writer they are given, so the tests
//! run them in-process and read what an operator would see.

mod demo;
mod historical;
mod progress;
mod report;
mod usage;

use std::io::Write;
use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand, ValueEnum};

pub use demo::DemoArgs;
pub use historical::HistoricalArgs;
pub use report::{PERIOD_VARIABLE, ReportArgs};
pub use usage::UsageArgs;

/// Moves DWDI usage into Waldur through sandboxed WebAssembly backends.
#[derive(Debug, Parser)]
#[command(name = "usage-agent", version, about, propagate_version = true)]
pub struct Cli {
    /// Log line format: `text` for people, `json` (one object per line) for journald.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the usage a backend reports, without submitting anything (a dry run).
    Usage(UsageArgs),
    /// Report usage to Waldur: a cycle now, then every WALDUR_SITE_AGENT_REPORT_PERIOD_MINUTES.
    Report(ReportArgs),
    /// Load past months of one offering into Waldur (bulk back-fill, resumable).
    LoadHistoricalUsage(HistoricalArgs),
    /// Start the bundled simulators on loopback and run the main job against them.
    Demo(DemoArgs),
}

/// The config file option every command that reads one shares.
#[derive(Debug, Clone, clap::Args)]
pub struct ConfigArg {
    /// The waldur-site-agent YAML config.
    #[arg(short = 'c', long = "config", visible_alias = "config-file", value_name = "FILE")]
    pub config: PathBuf,
}

/// Runs a parsed command line; output goes to `out`.
pub async fn run(cli: Cli, out: &mut (dyn Write + Send)) -> Result<()> {
    match cli.command {
        Command::Usage(args) => usage::run(args, out).await,
        Command::Report(args) => report::run(args, out).await,
        Command::LoadHistoricalUsage(args) => historical::run(args, out).await,
        Command::Demo(args) => demo::run(args, out).await,
    }
}

/// Sets up `tracing` on stderr; `RUST_LOG` filters (default `info`).
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(progress::log_writer);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
