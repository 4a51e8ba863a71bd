//! `usage-agent check-config`: validates a config the way `report` would — the plugins
//! folder read and its files validated, components loaded and their `setup` run for
//! every offering, proxies and CA bundles parsed, Waldur keys present, time zone known —
//! without sending a single request. Operators run it before restarting the service.

use std::io::Write;

use anyhow::Result;

use super::{ConfigArg, PluginsDirArg};
use crate::config::AgentConfig;
use crate::report::prepare_targets;

#[derive(Debug, Clone, clap::Args)]
pub struct CheckConfigArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    #[command(flatten)]
    pub plugins: PluginsDirArg,
}

pub(crate) async fn run(args: CheckConfigArgs, out: &mut (dyn Write + Send)) -> Result<()> {
    let path = &args.config.config;
    let config = AgentConfig::load(path)?;
    let plugins = super::serving_components(Some(&config), Some(path), &args.plugins).await?;
    let targets = prepare_targets(&config, plugins.backends()).await?;
    let warnings = match config.warnings.len() {
        0 => String::new(),
        1 => "; 1 warning".to_owned(),
        n => format!("; {n} warnings"),
    };
    writeln!(
        out,
        "{}: valid; timezone {}, reporting_periods {}{warnings}",
        path.display(),
        config.timezone.as_deref().unwrap_or("UTC"),
        config.reporting_periods
    )?;
    for warning in &config.warnings {
        writeln!(out, "warning    {warning}")?;
    }
    let heartbeat = crate::heartbeat::path(config.heartbeat_file.as_deref(), path);
    writeln!(out, "heartbeat  {} (stale after {} s)", heartbeat.display(), config.heartbeat_max_age().as_secs())?;
    let metrics = config.metrics_listen.map_or_else(|| "off".to_owned(), |addr| format!("http://{addr}/metrics"));
    writeln!(out, "metrics    {metrics}")?;
    writeln!(out, "plugins    {}", plugins.options().dir.display())?;
    for status in plugins.status().await {
        if let Some((file, reason)) = &status.refused {
            writeln!(out, "  refused  {}: {reason}", file.display())?;
        }
    }
    for stray in plugins.strays() {
        writeln!(
            out,
            "  {}  {}: {}",
            if stray.meant_for_served_type { "refused" } else { "ignored" },
            stray.path.display(),
            stray.reason
        )?;
    }
    for target in &targets {
        let backend = target.backend.backend();
        let components: Vec<&str> = target.config.backend_components.keys().map(String::as_str).collect();
        writeln!(out, "offerings[{}] {}:", target.index, target.name)?;
        writeln!(
            out,
            "  backend    {} {} ({}, sha256 {})",
            backend.info.name,
            backend.info.version,
            backend.source,
            &backend.sha256[..12]
        )?;
        writeln!(out, "  components {}", components.join(", "))?;
        for (name, component) in target.config.backend_components.iter().filter(|(_, c)| c.accounting_type != "usage") {
            if !target.backend.measures(name).await {
                writeln!(
                    out,
                    "  left out   {name} (accounting_type {}): {} does not measure it; not reported",
                    component.accounting_type, backend.info.name
                )?;
            }
        }
        let access = target.backend.egress().access();
        writeln!(out, "  upstream   {} ({})", access.shown_urls(), access.shown_auth())?;
        writeln!(
            out,
            "  proxy      {}",
            access.proxy.as_ref().map(|p| p.to_string()).unwrap_or_else(|| "none".to_owned())
        )?;
        writeln!(
            out,
            "  waldur     {} offering {}",
            target.config.waldur_api_url.as_deref().unwrap_or(""),
            target.offering_uuid
        )?;
    }
    fail_on_refused_files(&plugins).await
}

/// Fails when a file in the plugins folder meant for a backend type in use was refused
/// or is misnamed: the built-in component serves meanwhile, but not what the operator
/// put there. A file for a type nobody uses is only listed.
pub(super) async fn fail_on_refused_files(plugins: &crate::plugins::Plugins) -> Result<()> {
    let mut refused: Vec<String> = plugins
        .status()
        .await
        .into_iter()
        .filter_map(|status| status.refused.map(|(file, _)| file.display().to_string()))
        .collect();
    refused
        .extend(plugins.strays().into_iter().filter(|s| s.meant_for_served_type).map(|s| s.path.display().to_string()));
    if !refused.is_empty() {
        anyhow::bail!(
            "plugins folder: {} refused, see above; the component serving before keeps serving",
            refused.join(", ")
        );
    }
    Ok(())
}
