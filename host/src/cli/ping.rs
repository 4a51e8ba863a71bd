//! `usage-agent ping`: walks the way to an offering's upstream one step at a time — proxy, connection to
//! each endpoint, TLS, token, API — and says which step failed and why.
//!
//! Every other command only sees the last error of a long chain; an operator setting up
//! an `ssh -D` tunnel or a site CA needs to know *where* it breaks. The steps use the
//! same connector, TLS configuration, token source and component as a report cycle, so
//! a green ping means a cycle gets through.

use std::io::Write;
use std::time::Instant;

use anyhow::{Result, bail};

use super::{ConfigArg, PluginsDirArg};
use crate::backends::{Backends, prepare_offering};
use crate::config::OfferingConfig;
use crate::egress::Egress;
use crate::egress::connect::{self, Connector, Target};

#[derive(Debug, Clone, clap::Args)]
pub struct PingArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Only this offering (its `name` or `waldur_offering_uuid`); default: all.
    #[arg(long, value_name = "NAME")]
    pub offering: Option<String>,
    #[command(flatten)]
    pub plugins: PluginsDirArg,
}

/// The steps, in the order they are walked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The offering's settings and the component's own check of them.
    Config,
    /// A TCP connection to the proxy itself.
    Proxy,
    /// A connection to each endpoint, through the proxy when there is one.
    Connect,
    /// The TLS handshake with each https endpoint.
    Tls,
    /// An OIDC token from the token endpoint.
    Token,
    /// The component's reachability request to the API, with the token.
    Api,
}

impl Step {
    const ALL: [Step; 6] = [Step::Config, Step::Proxy, Step::Connect, Step::Tls, Step::Token, Step::Api];

    fn name(self) -> &'static str {
        match self {
            Step::Config => "config",
            Step::Proxy => "proxy",
            Step::Connect => "connect",
            Step::Tls => "tls",
            Step::Token => "token",
            Step::Api => "api",
        }
    }
}

/// Prints one step's outcome, aligned.
fn line(out: &mut (dyn Write + Send), step: Step, status: &str, detail: &str) -> Result<()> {
    let line = format!("  {:<8} {:<7} {detail}", step.name(), status);
    writeln!(out, "{}", line.trim_end())?;
    Ok(())
}

pub(crate) async fn run(args: PingArgs, out: &mut (dyn Write + Send)) -> Result<()> {
    let config = super::load_config(&args.config.config)?;
    let selected: Vec<(usize, &OfferingConfig)> = match &args.offering {
        Some(key) => vec![config.find_offering(key)?],
        None => config.offerings().collect(),
    };
    let plugins = super::serving_components(Some(&config), Some(&args.config.config), &args.plugins).await?;
    let backends = plugins.backends();
    let mut failed = Vec::new();
    for (index, offering) in selected {
        let name = offering.display_name(index);
        writeln!(out, "offering {name} ({})", offering.usage_backend().unwrap_or("?"))?;
        if let Err((step, reason)) = ping_offering(backends, index, offering, out).await {
            line(out, step, "FAILED", &reason)?;
            for later in Step::ALL.iter().skip_while(|s| **s != step).skip(1) {
                line(out, *later, "skipped", "")?;
            }
            failed.push(format!("{name}: step {} failed: {reason}", step.name()));
        }
    }
    out.flush()?;
    if !failed.is_empty() {
        bail!("ping failed for {}", failed.join("; "));
    }
    Ok(())
}

type StepResult<T> = std::result::Result<T, (Step, String)>;

async fn ping_offering(
    backends: &Backends,
    index: usize,
    offering: &OfferingConfig,
    out: &mut (dyn Write + Send),
) -> StepResult<()> {
    let io = |e: anyhow::Error| (Step::Config, format!("cannot print: {e}"));
    let backend = prepare_offering(backends, index, offering).await.map_err(|e| (Step::Config, format!("{e:#}")))?;
    let egress: &Egress = backend.egress();
    let access = egress.access();
    let api = access.shown_urls();
    let token_url = access.oidc().map(|oidc| &oidc.token_url);
    let detail = match token_url {
        Some(token_url) => format!("API {api}, token endpoint {token_url}"),
        None => format!("API {api}, {}", access.shown_auth()),
    };
    line(out, Step::Config, "ok", &detail).map_err(io)?;

    let connector = egress.connector();
    let mut targets = Vec::new();
    let roles = access.urls.iter().map(|url| ("API", url)).chain(token_url.map(|url| ("token endpoint", url)));
    for (role, url) in roles {
        let uri: http::Uri = url.as_str().parse().map_err(|e| (Step::Config, format!("{role} URL {url}: {e}")))?;
        let target = Target::of(&uri).map_err(|e| (Step::Config, format!("{role} URL {url}: {e}")))?;
        if !targets.iter().any(|(_, t)| *t == target) {
            targets.push((role, target));
        }
    }

    let via = match connector.proxy() {
        Some(proxy) => {
            let started = Instant::now();
            timed(connector, connect::connect_proxy(proxy)).await.map_err(|e| (Step::Proxy, e))?;
            line(
                out,
                Step::Proxy,
                "ok",
                &format!("{proxy} accepts connections ({} ms)", started.elapsed().as_millis()),
            )
            .map_err(io)?;
            format!(" through {proxy}")
        }
        None => {
            line(out, Step::Proxy, "ok", "none configured: direct connections").map_err(io)?;
            String::new()
        }
    };

    let mut streams = Vec::new();
    let mut reached = Vec::new();
    for (role, target) in &targets {
        let tcp = match connector.proxy() {
            Some(proxy) => {
                let socket = timed(connector, connect::connect_proxy(proxy)).await.map_err(|e| (Step::Proxy, e))?;
                let (tcp, _) = timed(connector, connect::handshake(proxy, socket, target))
                    .await
                    .map_err(|e| (Step::Connect, format!("{role} {target}: {e}")))?;
                tcp
            }
            None => timed(connector, connect::direct(target))
                .await
                .map_err(|e| (Step::Connect, format!("{role} {target}: {e}")))?,
        };
        reached.push(format!("{role} {target}"));
        streams.push((role, target, tcp));
    }
    line(out, Step::Connect, "ok", &format!("{}{via}", reached.join(", "))).map_err(io)?;

    let mut secured = Vec::new();
    for (role, target, tcp) in streams {
        if !target.https {
            continue;
        }
        connector.tls_handshake(tcp, &target.host).await.map_err(|e| (Step::Tls, format!("{role}: {e}")))?;
        secured.push(format!("{role} {}", target.host));
    }
    let tls_detail = if secured.is_empty() {
        "plain http: no TLS to check".to_owned()
    } else {
        format!("{}: certificate trusted and valid for the name", secured.join(", "))
    };
    line(out, Step::Tls, "ok", &tls_detail).map_err(io)?;

    match (egress.tokens(), token_url) {
        (Some(tokens), Some(token_url)) => {
            let started = Instant::now();
            tokens.bearer().await.map_err(|e| (Step::Token, e.to_string()))?;
            line(out, Step::Token, "ok", &format!("issued by {token_url} ({} ms)", started.elapsed().as_millis()))
                .map_err(io)?;
        }
        _ => line(out, Step::Token, "ok", "none needed: the upstream does not use OIDC").map_err(io)?,
    }

    // The upstream client asks about the current day in UTC.
    let today = super::usage::wit_date(jiff::Timestamp::now().to_zoned(jiff::tz::TimeZone::UTC).date());
    let started = Instant::now();
    backend.ping(today).await.map_err(|e| (Step::Api, e.to_string()))?;
    line(
        out,
        Step::Api,
        "ok",
        &format!("{api} answers the backend's request for today ({} ms)", started.elapsed().as_millis()),
    )
    .map_err(io)?;
    Ok(())
}

/// Bounds one connection step by the connect timeout; the error as text.
async fn timed<T>(
    connector: &Connector,
    step: impl Future<Output = std::io::Result<T>>,
) -> std::result::Result<T, String> {
    match tokio::time::timeout(connector.connect_timeout(), step).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(error)) => Err(error.to_string()),
        Err(_) => Err(format!("no answer within {:?}", connector.connect_timeout())),
    }
}
