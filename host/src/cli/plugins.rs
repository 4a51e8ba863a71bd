//! `usage-agent plugins`: which component serves each backend type, and why a file in
//! the plugins folder does not. It loads and validates exactly as `report` does at
//! start-up (with the same cache), so an operator can check a file before the running
//! agent picks it up, and copy the digest into a pin. It exits non-zero when a file meant
//! for a backend type it lists was refused or is misnamed.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Result;

use crate::runtime::{Source, WIT_PACKAGE};

#[derive(Debug, Clone, clap::Args)]
pub struct PluginsArgs {
    /// The agent config: its backend types, pins and folders (default: every built-in
    /// backend type, the default folders, no setup check).
    #[arg(short = 'c', long = "config", visible_alias = "config-file", value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub plugins: super::PluginsDirArg,
}

pub(crate) async fn run(args: PluginsArgs, out: &mut (dyn Write + Send)) -> Result<()> {
    let config = args.config.as_deref().map(super::load_config).transpose()?;
    let plugins = super::serving_components(config.as_ref(), args.config.as_deref(), &args.plugins).await?;
    let options = plugins.options();
    let missing = if options.dir.is_dir() { "" } else { " (missing: the built-in components serve)" };
    writeln!(out, "plugins folder: {}{missing}", options.dir.display())?;
    match &options.cache_dir {
        Some(dir) => writeln!(out, "compiled cache: {}", dir.display())?,
        None => writeln!(out, "compiled cache: none (no cache folder is configured or known)")?,
    }
    for status in plugins.status().await {
        writeln!(out, "\n{}", status.backend_type)?;
        if let Some(plugin) = &status.serving {
            let loaded = &plugin.loaded;
            let source = match &loaded.source {
                Source::Builtin => "default (built in)".to_owned(),
                Source::File(path) => format!("file {}", path.display()),
            };
            let at = jiff::Timestamp::try_from(loaded.loaded_at)
                .map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
                .unwrap_or_default();
            writeln!(out, "  source:     {source}")?;
            writeln!(out, "  component:  {} {}", loaded.info.name, loaded.info.version)?;
            writeln!(out, "  wit:        {WIT_PACKAGE}@{}", loaded.wit_version)?;
            if !loaded.info.upstream.is_empty() {
                writeln!(out, "  upstream:   {}", loaded.info.upstream)?;
            }
            let decreasing = if loaded.traits.usage_may_decrease {
                "written (its values may go down within a month)"
            } else {
                "refused (a value lower than Waldur holds for the month is an anomaly)"
            };
            writeln!(out, "  decreasing: {decreasing}")?;
            writeln!(out, "  sha256:     {}", loaded.sha256)?;
            writeln!(out, "  size:       {} bytes", loaded.size)?;
            writeln!(out, "  loaded:     {at} ({})", plugin.compiled)?;
        }
        if let Some(pin) = &status.pin {
            writeln!(out, "  pinned:     sha256 {pin}")?;
        }
        if let Some((file, reason)) = &status.refused {
            writeln!(out, "  refused:    {}: {reason}", file.display())?;
        }
    }
    let strays = plugins.strays();
    if !strays.is_empty() {
        writeln!(
            out,
            "
other entries"
        )?;
        for stray in &strays {
            writeln!(out, "  {}: {}", stray.path.display(), stray.reason)?;
        }
    }
    super::check_config::fail_on_refused_files(&plugins).await
}
