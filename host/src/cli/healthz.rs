//! `usage-agent healthz`: exit 0 when healthy, 1 when not, like `waldur_site_healthz`.
//! Liveness: the report loop's heartbeat is fresher than `heartbeat_max_age_seconds`.
//! Readiness (unless `--liveness-only`): the loop's last cycle left no offering's writes
//! held (the heartbeat says), every offering's Waldur API answers to its login (token or
//! OIDC, through `global_proxy`) and its upstream's OIDC token endpoint, if it has one,
//! issues a token.

use std::io::Write;

use anyhow::{Result, bail};

use super::ConfigArg;
use crate::egress::Egress;
use crate::heartbeat;
use crate::waldur::WaldurClient;

#[derive(Debug, Clone, clap::Args)]
pub struct HealthzArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Check the heartbeat only, not the remote services.
    #[arg(long)]
    pub liveness_only: bool,
}

pub(crate) async fn run(args: HealthzArgs, out: &mut (dyn Write + Send)) -> Result<()> {
    let config = super::load_config(&args.config.config)?;
    let mut failures = Vec::new();
    let path = heartbeat::path(config.heartbeat_file.as_deref(), &args.config.config);
    let max_age = config.heartbeat_max_age();
    let mut held = Vec::new();
    match heartbeat::read(&path) {
        Ok((age, lines)) if age <= max_age => {
            held = lines;
            writeln!(out, "ok    liveness: heartbeat {} is {}s old", path.display(), age.as_secs())?
        }
        Ok((age, _)) => failures.push(format!(
            "liveness: heartbeat {} is {}s old (limit {}s)",
            path.display(),
            age.as_secs(),
            max_age.as_secs()
        )),
        Err(error) => failures.push(format!("liveness: {error:#}")),
    }
    if !args.liveness_only {
        failures.extend(held.iter().map(|line| format!("writes held after the last cycle: {line}")));
        for (index, offering) in config.offerings() {
            let name = offering.display_name(index);
            // The client a report would use: its login (token or OIDC) and global_proxy.
            match WaldurClient::for_offering(&config, index, None) {
                Ok(client) => match client.me().await {
                    Ok(_) => writeln!(out, "ok    {name}: Waldur {} ({})", client.api_url(), client.login_shown())?,
                    Err(error) => failures.push(format!("{name}: Waldur: {error}")),
                },
                Err(error) => failures.push(format!("{name}: Waldur: {error:#}")),
            }
            // Only an OIDC upstream has a token endpoint to ask; a static key or none
            // has nothing to check without calling the upstream itself.
            match Egress::new(&name, offering) {
                Ok(egress) => match egress.tokens() {
                    Some(tokens) => match tokens.bearer().await {
                        Ok(_) => writeln!(out, "ok    {name}: upstream token endpoint")?,
                        Err(error) => failures.push(format!("{name}: upstream token: {error}")),
                    },
                    None => writeln!(out, "ok    {name}: upstream credentials need no token")?,
                },
                Err(error) => failures.push(format!("{name}: upstream token: {error:#}")),
            }
        }
    }
    for failure in &failures {
        writeln!(out, "FAIL  {failure}")?;
    }
    if !failures.is_empty() {
        bail!("unhealthy: {} check(s) failed", failures.len());
    }
    Ok(())
}
