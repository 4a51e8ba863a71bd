//! `usage-agent check-config`: validates a config the way `report` would — components
//! loaded and their `setup` run for every offering, proxies and CA bundles parsed, Waldur
//! keys present, time zone known — without sending a single request. Operators run it
//! before restarting the service.

use std::io::Write;

use anyhow::Result;

use super::ConfigArg;
use crate::backends::Backends;
use crate::config::AgentConfig;
use crate::report::prepare_targets;
use crate::runtime::Runtime;

#[derive(Debug, Clone, clap::Args)]
pub struct CheckConfigArgs {
    #[command(flatten)]
    pub config: ConfigArg,
}

pub(crate) async fn run(args: CheckConfigArgs, out: &mut (dyn Write + Send)) -> Result<()> {
    let config = AgentConfig::load(&args.config.config)?;
    let backends = Backends::new(Runtime::new()?);
    let targets = prepare_targets(&config, &backends).await?;
    writeln!(
        out,
        "{}: valid; timezone {}, reporting_periods {}",
        args.config.config.display(),
        config.timezone.as_deref().unwrap_or("UTC"),
        config.reporting_periods
    )?;
    for target in &targets {
        let backend = target.backend.backend();
        let access = target.config.dwdi_access().map_err(anyhow::Error::msg)?;
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
        writeln!(out, "  dwdi       {} (token {})", access.api_url, access.token_url)?;
        writeln!(out, "  proxy      {}", access.proxy.as_ref().map(|p| p.to_string()).unwrap_or_else(|| "none".to_owned()))?;
        writeln!(out, "  waldur     {} offering {}", target.config.waldur_api_url.as_deref().unwrap_or(""), target.offering_uuid)?;
    }
    Ok(())
}
