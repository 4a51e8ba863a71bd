//! The agent configuration: waldur-site-agent's YAML, read unchanged.
//!
//! Sites already have this file for the Python agent, so every key it may carry is
//! accepted (unknown keys are ignored, as the Python agent does) and the keys this
//! host adds are optional. Loading checks shapes and host-owned settings (credentials,
//! proxy, time zone); backend-specific settings are checked by the component's own
//! `setup`, whose errors the runtime prefixes with the offering's path.
//!
//! What loading refuses and what it only warns about: a value that could write a wrong
//! number (or that the Python agent refuses too) is refused, naming the key; a key the
//! agent does not read, or one given twice, is a warning ([`lint`]), so a file written
//! for the Python agent keeps loading. [`AgentConfig::warnings`] holds them; every
//! command logs them at start and `check-config` prints them.
//!
//! The YAML is read as the Python agent reads it: PyYAML follows YAML 1.1, so `yes`,
//! `no`, `on`, `off` (any case) are booleans beside `true`/`false`, `y`/`n` are booleans
//! where a boolean is expected (as pydantic reads PyYAML's string), `~`, `null`, `Null`,
//! `NULL` and nothing at all are null, `0755` is octal, and a repeated key keeps its last
//! value ([`from_yaml`]). `host/tests/pyyaml.rs` compares the reading of every example
//! with PyYAML's.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use indexmap::IndexMap;
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::egress::connect::Proxy;

mod lint;
mod upstream_keys;

/// The largest config file read. Real ones are a few KiB; the bound keeps a wrong
/// `-c` (a device, a log file) from filling memory.
pub const MAX_FILE_BYTES: u64 = 4 * 1024 * 1024;

/// The most Waldur writes in flight per offering, in the config and the flags alike.
pub const MAX_CONCURRENCY: u16 = 1024;

/// The most months one cycle reports (`reporting_periods`), as the Python agent allows.
pub const MAX_REPORTING_PERIODS: u32 = 12;

/// `log_level` values, in any case: the Python agent's five, and `WARN` and `TRACE`.
const LOG_LEVELS: &[&str] = &["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL", "WARN", "TRACE"];

/// Settings keys the host keeps to itself besides [`DWDI_OIDC_KEYS`]: they never reach
/// a component (nor does `upstream.auth`).
const HOST_NETWORK_SETTINGS: &[&str] = &["socks_proxy", "ca_bundle"];

/// The DWDI spelling of an OIDC client, which `upstream.auth` replaces; host only.
const DWDI_OIDC_KEYS: &[&str] = &[
    "cscs_dwdi_client_id",
    "cscs_dwdi_client_secret",
    "cscs_dwdi_oidc_token_url",
    "cscs_dwdi_oidc_scope",
    "cscs_dwdi_oidc_auth_method",
];

/// A string that must never be shown: its `Debug` and `Display` print `***`.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
pub struct AgentConfig {
    /// IANA time zone for billing periods (waldur-site-agent's `timezone`); UTC when absent.
    #[serde(default)]
    pub timezone: Option<String>,
    /// Months to report each cycle: 1 = current, 2 = current and previous.
    #[serde(default = "default_reporting_periods")]
    pub reporting_periods: u32,
    /// Folder with `<backend_type>.wasm` files that replace the built-in components.
    #[serde(default)]
    pub plugins_dir: Option<PathBuf>,
    /// The report loop's heartbeat file (default `/tmp/usage-agent-report.heartbeat`).
    #[serde(default)]
    pub heartbeat_file: Option<PathBuf>,
    /// Seconds after which `healthz` calls a heartbeat stale (default 300).
    #[serde(default)]
    pub heartbeat_max_age_seconds: Option<u64>,
    /// Address for Prometheus metrics, e.g. `127.0.0.1:9105` (off when absent).
    #[serde(default)]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// `log_level` of the Python agent's config: the default log filter.
    #[serde(default)]
    pub log_level: Option<String>,
    /// Where compiled components are cached between runs.
    #[serde(default)]
    pub plugins_cache_dir: Option<PathBuf>,
    /// Per backend type, rules for its file in the plugins folder (a pinned digest).
    #[serde(default)]
    pub plugins: BTreeMap<String, PluginConfig>,
    /// Largest `.wasm` file the plugins folder accepts, in MiB (default 64).
    #[serde(default)]
    pub plugins_max_file_mib: Option<u64>,
    /// Seconds compiling one plugin file may take before it is refused (default 120).
    #[serde(default)]
    pub plugins_compile_timeout_seconds: Option<f64>,
    /// Concurrent Waldur writes per offering (default 8).
    #[serde(default)]
    pub waldur_max_concurrency: Option<usize>,
    /// Seconds one Waldur request may take, answer included (default 60).
    #[serde(default)]
    pub waldur_timeout_seconds: Option<f64>,
    /// What one component call may use; every key optional.
    #[serde(default)]
    pub component_limits: ComponentLimits,
    /// waldur-site-agent's `global_proxy`: the proxy for every Waldur connection (and
    /// a Waldur OIDC token endpoint), not for the upstream (that is `socks_proxy`).
    /// Blank: direct.
    #[serde(default)]
    pub global_proxy: Option<String>,
    pub offerings: Vec<OfferingConfig>,
    /// What the file holds that is not used as written (unknown and repeated keys),
    /// one line each; set by [`AgentConfig::parse`].
    #[serde(skip)]
    pub warnings: Vec<String>,
}

/// The limits of one component call (`component_limits`). A component that breaks one
/// is stopped, its instance discarded, and the call fails naming the limit.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ComponentLimits {
    /// Linear memory of all the component's memories together, in MiB.
    pub memory_mib: u64,
    /// Elements of all the component's tables together.
    pub table_elements: u64,
    /// Core instances one instantiation may create.
    pub instances: u64,
    /// Wall-clock seconds of one call: instantiation, guest code and the host calls it
    /// waits on (HTTP included).
    pub call_timeout_seconds: f64,
    /// Bytes of what one call may return (results and error messages).
    pub max_result_bytes: u64,
}

impl Default for ComponentLimits {
    fn default() -> Self {
        Self {
            // A compute call needs about 11 MiB for 300 accounts × 10 users and 64 MiB
            // for 1,000 × 20 (per-day rows; the `limits` benchmark); it grows with the
            // answers, so this leaves room for several thousand accounts.
            memory_mib: 512,
            table_elements: 100_000,
            instances: 32,
            // Longer than the slowest legitimate call: several upstream requests, each
            // allowed `first_byte_timeout_seconds` with retries.
            call_timeout_seconds: 600.0,
            max_result_bytes: 64 * 1024 * 1024,
        }
    }
}

impl ComponentLimits {
    /// The memory limit in bytes.
    pub fn memory_bytes(&self) -> u64 {
        self.memory_mib.saturating_mul(1024 * 1024)
    }

    /// The call timeout.
    pub fn call_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.call_timeout_seconds)
    }

    /// Checks the ranges; errors name the key.
    pub fn check(&self) -> Result<()> {
        // wasm32 addresses at most 4 GiB per memory.
        if !(1..=4096).contains(&self.memory_mib) {
            bail!("component_limits.memory_mib: must be an integer from 1 to 4096");
        }
        if self.table_elements == 0 {
            bail!("component_limits.table_elements: must be at least 1");
        }
        if self.instances == 0 {
            bail!("component_limits.instances: must be at least 1");
        }
        if !(self.call_timeout_seconds.is_finite()
            && self.call_timeout_seconds > 0.0
            && self.call_timeout_seconds <= 86_400.0)
        {
            bail!("component_limits.call_timeout_seconds: must be a number of seconds above 0 and at most 86400");
        }
        if self.max_result_bytes < 1024 {
            bail!("component_limits.max_result_bytes: must be at least 1024");
        }
        Ok(())
    }
}

/// One entry of `plugins`. Unknown keys are refused here: a misspelt pin must not
/// silently allow any file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginConfig {
    /// The only sha256 (hex) a file for this backend type may have.
    #[serde(default)]
    pub sha256: Option<String>,
}

fn default_reporting_periods() -> u32 {
    2
}

/// One entry of `offerings`.
#[derive(Clone, Deserialize)]
pub struct OfferingConfig {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub waldur_api_url: Option<String>,
    #[serde(default)]
    pub waldur_api_token: Option<Secret>,
    /// Waldur login by OIDC client credentials, used when `waldur_api_token` is blank
    /// ([`OfferingConfig::waldur_login`]).
    #[serde(default)]
    pub oidc_token_url: Option<String>,
    #[serde(default)]
    pub oidc_client_id: Option<String>,
    #[serde(default)]
    pub oidc_client_secret: Option<Secret>,
    #[serde(default = "default_true")]
    pub verify_ssl: bool,
    /// Where the backend does not say its values may go down: leave out only the
    /// components whose total went down, instead of the resource's whole month
    /// (`sync`'s anomaly rule, waldur-site-agent's key).
    #[serde(default)]
    pub omit_anomalous_usage_components: bool,
    #[serde(default)]
    pub waldur_offering_uuid: Option<String>,
    #[serde(default)]
    pub backend_type: Option<String>,
    #[serde(default)]
    pub reporting_backend: Option<String>,
    #[serde(default)]
    pub backend_settings: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    pub backend_components: IndexMap<String, ComponentConfig>,
}

impl fmt::Debug for OfferingConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Settings may hold credentials under any name: show only what a component sees.
        f.debug_struct("OfferingConfig")
            .field("name", &self.name)
            .field("waldur_api_url", &self.waldur_api_url)
            .field("waldur_api_token", &self.waldur_api_token)
            .field("oidc_token_url", &self.oidc_token_url)
            .field("oidc_client_id", &self.oidc_client_id)
            .field("oidc_client_secret", &self.oidc_client_secret)
            .field("verify_ssl", &self.verify_ssl)
            .field("omit_anomalous_usage_components", &self.omit_anomalous_usage_components)
            .field("waldur_offering_uuid", &self.waldur_offering_uuid)
            .field("backend_type", &self.backend_type)
            .field("reporting_backend", &self.reporting_backend)
            .field("backend_settings", &self.component_settings_json())
            .field("backend_components", &self.backend_components)
            .finish()
    }
}

fn default_true() -> bool {
    true
}

/// One entry of `backend_components`.
#[derive(Debug, Clone, Deserialize)]
pub struct ComponentConfig {
    #[serde(default)]
    pub measured_unit: String,
    #[serde(default = "default_factor")]
    pub unit_factor: f64,
    #[serde(default)]
    pub unit_factor_reporting: Option<f64>,
    #[serde(default = "default_accounting_type")]
    pub accounting_type: String,
    #[serde(default)]
    pub label: String,
    /// The DWDI backends' spelling of their one option; the component receives it as
    /// option `dwdi_metric`, like a key of `options`.
    #[serde(default)]
    pub dwdi_metric: Option<String>,
    /// Backend-specific settings of this component, passed to the component as they
    /// are; the component refuses, at setup, one it does not know.
    #[serde(default)]
    pub options: IndexMap<String, String>,
}

/// The DWDI backends' component option, which the config also spells as a key of its own
/// (and contract 2.0.0 as a field).
pub(crate) const DWDI_METRIC_OPTION: &str = "dwdi_metric";

impl ComponentConfig {
    /// The component's options in config order, `dwdi_metric` first when it is set.
    pub fn options(&self) -> impl Iterator<Item = (&str, &str)> {
        let metric = self.dwdi_metric.as_deref().map(|m| (DWDI_METRIC_OPTION, m));
        metric.into_iter().chain(self.options.iter().map(|(k, v)| (k.as_str(), v.as_str())))
    }
}

fn default_factor() -> f64 {
    1.0
}

fn default_accounting_type() -> String {
    "usage".to_owned()
}

/// How the host authenticates to the OIDC token endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// `client_id` and `client_secret` in the form body (the default).
    Form,
    /// HTTP Basic with `client_id:client_secret`.
    Basic,
}

/// An OIDC client-credentials client: how the host gets a bearer token.
#[derive(Debug, Clone)]
pub struct OidcClient {
    pub token_url: url::Url,
    pub client_id: String,
    pub client_secret: Secret,
    pub scope: String,
    pub client_auth: ClientAuth,
}

/// How the agent logs into an offering's Waldur, by waldur-site-agent's rule:
/// `waldur_api_token` when it is set, else the OIDC client of `oidc_token_url`,
/// `oidc_client_id` and `oidc_client_secret`.
#[derive(Debug, Clone)]
pub enum WaldurLogin {
    /// `Authorization: Token …`.
    Token(Secret),
    /// `Authorization: Bearer …` with a token of the OIDC client (client credentials in
    /// the form, no scope: what the Python agent asks for), cached and refreshed.
    Oidc(OidcClient),
}

impl WaldurLogin {
    /// How the agent logs in, without the secret, for one line.
    pub fn shown(&self) -> String {
        match self {
            WaldurLogin::Token(_) => "waldur_api_token".to_owned(),
            WaldurLogin::Oidc(oidc) => format!("OIDC client {} at {}", oidc.client_id, oidc.token_url),
        }
    }
}

/// How the host authenticates an offering's upstream requests. A component never sees
/// any of it, and may not set the header itself (`egress::policy`).
#[derive(Debug, Clone)]
pub enum UpstreamAuth {
    /// Nothing attached.
    None,
    /// One header with a value read once, at start-up, from a file or the environment:
    /// `Authorization: Bearer …` or a key header such as `X-Api-Key`.
    Static { header: http::HeaderName, value: Secret },
    /// A bearer token from an OIDC token endpoint, refreshed before it expires.
    Oidc(OidcClient),
}

/// The host-owned part of an offering's `backend_settings`: where its component may
/// send requests, and how they are authenticated, proxied and trusted.
#[derive(Debug, Clone)]
pub struct UpstreamAccess {
    /// The base URLs a component may reach: scheme, host, port and path prefix.
    pub urls: Vec<url::Url>,
    pub auth: UpstreamAuth,
    pub proxy: Option<Proxy>,
    pub ca_bundle: Option<PathBuf>,
}

impl UpstreamAccess {
    /// The OIDC client, when the upstream authenticates with one.
    pub fn oidc(&self) -> Option<&OidcClient> {
        match &self.auth {
            UpstreamAuth::Oidc(client) => Some(client),
            _ => None,
        }
    }

    /// The base URLs, for one line.
    pub fn shown_urls(&self) -> String {
        self.urls.iter().map(url::Url::as_str).collect::<Vec<_>>().join(", ")
    }

    /// How the host authenticates there, without the secret.
    pub fn shown_auth(&self) -> String {
        match &self.auth {
            UpstreamAuth::None => "no credentials".to_owned(),
            UpstreamAuth::Static { header, .. } => format!("{header} header from the config"),
            UpstreamAuth::Oidc(oidc) => format!("token {}", oidc.token_url),
        }
    }
}

/// The keys of `backend_settings` the host reads itself (besides the request limits of
/// [`crate::egress::LimitSettings`]); the component reads the others. Values are
/// checked where they are used, so each error names its key in the agent's words.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct HostSettings {
    socks_proxy: Option<serde_json::Value>,
    ca_bundle: Option<serde_json::Value>,
    upstream: Option<serde_json::Value>,
    cscs_dwdi_api_url: Option<serde_json::Value>,
    cscs_dwdi_client_id: Option<serde_json::Value>,
    cscs_dwdi_client_secret: Option<serde_json::Value>,
    cscs_dwdi_oidc_token_url: Option<serde_json::Value>,
    cscs_dwdi_oidc_scope: Option<serde_json::Value>,
    cscs_dwdi_oidc_auth_method: Option<serde_json::Value>,
}

impl HostSettings {
    fn of(settings: &serde_json::Map<String, serde_json::Value>) -> std::result::Result<Self, String> {
        // Every field takes any JSON value, so this cannot fail on a map.
        serde_json::from_value(serde_json::Value::Object(settings.clone()))
            .map_err(|e| format!("backend_settings: {e}"))
    }
}

/// A path the host reads at start-up: absolute, so that `check-config` run from one
/// folder and the service started from another read the same file.
fn absolute(path: &Path, key: &str) -> std::result::Result<(), String> {
    if path.is_absolute() {
        Ok(())
    } else {
        Err(format!(
            "{key}: {:?} is a relative path; write it in full (the agent may start in any folder)",
            path.display().to_string()
        ))
    }
}

/// A UUID as Django reads one: 32 hexadecimal digits, dashes optional (in the usual
/// places or none), any case; lower-case without dashes.
fn normalised_uuid(text: &str) -> Option<String> {
    let text = text.trim();
    let digits: String = text.chars().filter(|c| *c != '-').collect();
    let dashed_right =
        !text.contains('-') || (text.len() == 36 && [8, 13, 18, 23].iter().all(|at| text.as_bytes()[*at] == b'-'));
    (digits.len() == 32 && digits.bytes().all(|b| b.is_ascii_hexdigit()) && dashed_right)
        .then(|| digits.to_ascii_lowercase())
}

/// The warning for a key no config field takes, with the nearest field of the same
/// place when one is close.
fn unknown_key_warning(path: &lint::KeyPath) -> String {
    use lint::Step;
    let steps = &path.0;
    let fields: &[&str] = match steps.as_slice() {
        [_] => lint::fields_of::<AgentConfig>(),
        [Step::Key(list), Step::Index(_), _] if list == "offerings" => lint::fields_of::<OfferingConfig>(),
        [Step::Key(list), Step::Index(_), Step::Key(components), Step::Key(_), _]
            if list == "offerings" && components == "backend_components" =>
        {
            lint::fields_of::<ComponentConfig>()
        }
        _ => &[],
    };
    let near = path.key().and_then(|key| lint::nearest(key, fields.iter().copied()));
    format!("{path}: not a key this agent reads; ignored{}", lint::did_you_mean(near))
}

/// `backend_settings.upstream`: the spelling for a backend that is not DWDI.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct UpstreamSettings {
    urls: Vec<String>,
    auth: AuthSettings,
}

/// `backend_settings.upstream.auth`.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
enum AuthSettings {
    None,
    Bearer {
        #[serde(default)]
        value_file: Option<PathBuf>,
        #[serde(default)]
        value_env: Option<String>,
    },
    Header {
        name: String,
        #[serde(default)]
        value_file: Option<PathBuf>,
        #[serde(default)]
        value_env: Option<String>,
    },
    Oidc {
        token_url: String,
        client_id: String,
        client_secret: Secret,
        #[serde(default)]
        scope: Option<String>,
        #[serde(default)]
        auth_method: Option<String>,
    },
}

/// A secret read from exactly one of a file (trailing whitespace dropped) or an
/// environment variable; `at` is the settings path for messages.
fn secret_from(file: Option<&Path>, env: Option<&str>, at: &str) -> std::result::Result<Secret, String> {
    let value = match (file, env) {
        (Some(path), None) => {
            let key = format!("{at}.value_file");
            absolute(path, &key)?;
            read_regular_file(path, SECRET_FILE_BYTES)
                .map_err(|e| format!("{key}: cannot read {}: {e:#}", path.display()))?
                .trim_end()
                .to_owned()
        }
        (None, Some(name)) => std::env::var(name).map_err(|e| format!("{at}.value_env: {name}: {e}"))?,
        (None, None) => return Err(format!("{at}: set value_file or value_env")),
        (Some(_), Some(_)) => return Err(format!("{at}: set value_file or value_env, not both")),
    };
    if value.trim().is_empty() {
        return Err(format!("{at}: the value is empty"));
    }
    Ok(Secret::new(value))
}

/// The `client_auth` of an `auth_method` setting.
fn client_auth(method: Option<&str>, key: &str) -> std::result::Result<ClientAuth, String> {
    match method {
        None | Some("client_secret_post") | Some("form") => Ok(ClientAuth::Form),
        Some("client_secret_basic") | Some("basic") => Ok(ClientAuth::Basic),
        Some(other) => Err(format!("{key}: {other:?} is not one of client_secret_post, client_secret_basic")),
    }
}

impl AuthSettings {
    fn resolve(self) -> std::result::Result<UpstreamAuth, String> {
        const AT: &str = "backend_settings.upstream.auth";
        let header_value = |value: &Secret| {
            http::HeaderValue::from_str(value.expose())
                .map(drop)
                .map_err(|_| format!("{AT}: the value has characters no HTTP header may carry"))
        };
        Ok(match self {
            AuthSettings::None => UpstreamAuth::None,
            AuthSettings::Bearer { value_file, value_env } => {
                let token = secret_from(value_file.as_deref(), value_env.as_deref(), AT)?;
                let value = Secret::new(format!("Bearer {}", token.expose()));
                header_value(&value)?;
                UpstreamAuth::Static { header: http::header::AUTHORIZATION, value }
            }
            AuthSettings::Header { name, value_file, value_env } => {
                let header = http::HeaderName::from_bytes(name.as_bytes())
                    .map_err(|_| format!("{AT}.name: {name:?} is not an HTTP header name"))?;
                if crate::egress::policy::ALLOWED_HEADERS.contains(&header.as_str()) || header == http::header::HOST {
                    return Err(format!("{AT}.name: {name} is a header the component or the host sets"));
                }
                let value = secret_from(value_file.as_deref(), value_env.as_deref(), AT)?;
                header_value(&value)?;
                UpstreamAuth::Static { header, value }
            }
            AuthSettings::Oidc { token_url, client_id, client_secret, scope, auth_method } => {
                let token_url = parse_http_url(&token_url).map_err(|e| format!("{AT}.token_url: {e}"))?;
                UpstreamAuth::Oidc(OidcClient {
                    token_url,
                    client_id,
                    client_secret,
                    scope: scope.unwrap_or_else(|| "openid".to_owned()),
                    client_auth: client_auth(auth_method.as_deref(), &format!("{AT}.auth_method"))?,
                })
            }
        })
    }
}

/// Reads YAML text as PyYAML does (see the module docs). An error names the key path
/// and the line: `offerings[0].verify_ssl: invalid boolean at line 3, column 17`.
pub(crate) fn from_yaml<T: DeserializeOwned>(text: &str) -> Result<T> {
    from_yaml_noting(text, |_| {})
}

/// [`from_yaml`], telling `ignored` the path of every key no field takes.
fn from_yaml_noting<T: DeserializeOwned>(text: &str, mut ignored: impl FnMut(lint::KeyPath)) -> Result<T> {
    let options = serde_saphyr::options! {
        // One line per error, as every other error of the agent.
        with_snippet: false,
        legacy_octal_numbers: true,
        duplicate_keys: serde_saphyr::DuplicateKeyPolicy::LastWins,
    };
    let mut path = None;
    serde_saphyr::with_deserializer_from_str_with_options(text, options, |deserializer| {
        let mut note = |at: serde_ignored::Path<'_>| ignored(lint::KeyPath::from_ignored(&at));
        let deserializer = serde_ignored::Deserializer::new(deserializer, &mut note);
        serde_path_to_error::deserialize(deserializer).map_err(|error| {
            path = Some(error.path().to_string());
            error.into_inner()
        })
    })
    .map_err(|error| match path.filter(|path| path != ".") {
        Some(path) => anyhow!("{path}: {error}"),
        None => anyhow!("{error}"),
    })
}

/// The largest secret file (`upstream.auth.value_file`) read.
const SECRET_FILE_BYTES: u64 = 64 * 1024;

/// The text of the config file at `path`: a regular file (or a link to one) of at most
/// [`MAX_FILE_BYTES`], never a device, a FIFO or a folder.
pub fn read_file(path: &Path) -> Result<String> {
    read_regular_file(path, MAX_FILE_BYTES).with_context(|| format!("cannot read config file {}", path.display()))
}

/// The text of a regular file (or a link to one) of at most `max` bytes. A device, a
/// FIFO or a folder is refused before it is opened: opening a FIFO waits for a writer,
/// and a device may never end.
fn read_regular_file(path: &Path, max: u64) -> Result<String> {
    use std::io::Read as _;
    let kind = std::fs::metadata(path)?.file_type();
    if !kind.is_file() {
        bail!("not a regular file (it is {})", crate::plugins::describe_kind(kind));
    }
    let mut text = String::new();
    // One byte more than allowed tells a file that grew past the bound since it was looked at.
    std::fs::File::open(path)?.take(max + 1).read_to_string(&mut text)?;
    if text.len() as u64 > max {
        bail!("larger than {} KiB; is it the right file?", max >> 10);
    }
    Ok(text)
}

impl AgentConfig {
    /// Reads and checks the file at `path`.
    pub fn load(path: &Path) -> Result<Self> {
        let text = read_file(path)?;
        Self::parse(&text).with_context(|| format!("invalid config file {}", path.display()))
    }

    /// Parses and checks YAML text; what is not used as written is in `warnings`.
    pub fn parse(text: &str) -> Result<Self> {
        let mut unknown = Vec::new();
        let mut config: AgentConfig = from_yaml_noting(text, |path| unknown.push(path))?;
        config.check()?;
        let mut warnings: Vec<String> = lint::repeated_keys(text).iter().map(ToString::to_string).collect();
        let (named, unknown) = upstream_keys::name_unread(&unknown);
        warnings.extend(named);
        warnings.extend(unknown.into_iter().map(unknown_key_warning));
        for (index, offering) in config.offerings() {
            warnings.extend(offering.unknown_settings().map(|line| format!("offerings[{index}].{line}")));
        }
        warnings.extend(config.pins_for_nothing());
        config.warnings = warnings;
        Ok(config)
    }

    /// Logs the config's warnings, one line each.
    pub fn log_warnings(&self) {
        for warning in &self.warnings {
            tracing::warn!("config: {warning}");
        }
    }

    /// Pins in `plugins` for a backend type that is neither built in nor used by an
    /// offering: a misspelt type pins nothing.
    fn pins_for_nothing(&self) -> Vec<String> {
        let known: Vec<String> =
            self.backend_types().into_iter().chain(crate::builtin::types().map(str::to_owned)).collect();
        let unknown = self.plugins.keys().filter(|t| !known.contains(t));
        unknown
            .map(|t| {
                let near = lint::nearest(t, known.iter().map(String::as_str));
                format!(
                    "plugins.{t}: no offering uses this backend type and none is built in, so the pin guards nothing{}",
                    lint::did_you_mean(near)
                )
            })
            .collect()
    }

    fn check(&self) -> Result<()> {
        if self.offerings.is_empty() {
            bail!("offerings: the list is empty");
        }
        if self.heartbeat_max_age_seconds == Some(0) {
            bail!("heartbeat_max_age_seconds: must be at least 1");
        }
        if let Some(n) = self.waldur_max_concurrency
            && !(1..=usize::from(MAX_CONCURRENCY)).contains(&n)
        {
            bail!("waldur_max_concurrency: must be an integer from 1 to {MAX_CONCURRENCY}");
        }
        if let Some(level) = &self.log_level
            && !LOG_LEVELS.iter().any(|known| known.eq_ignore_ascii_case(level.trim()))
        {
            bail!("log_level: {level:?} is not a level; use DEBUG, INFO, WARNING, ERROR or CRITICAL");
        }
        if let Some(seconds) = self.waldur_timeout_seconds
            && !(seconds.is_finite() && seconds > 0.0 && seconds <= 86_400.0)
        {
            bail!("waldur_timeout_seconds: must be a number of seconds above 0 and at most 86400");
        }
        self.component_limits.check()?;
        if let Some(mib) = self.plugins_max_file_mib
            && !(1..=4096).contains(&mib)
        {
            bail!("plugins_max_file_mib: must be an integer from 1 to 4096");
        }
        if let Some(seconds) = self.plugins_compile_timeout_seconds
            && !(seconds.is_finite() && seconds > 0.0 && seconds <= 3600.0)
        {
            bail!("plugins_compile_timeout_seconds: must be a number of seconds above 0 and at most 3600");
        }
        if !(1..=MAX_REPORTING_PERIODS).contains(&self.reporting_periods) {
            bail!(
                "reporting_periods: must be an integer from 1 to {MAX_REPORTING_PERIODS} (months reported each cycle, the current one included), not {}",
                self.reporting_periods
            );
        }
        if let Some(tz) = &self.timezone {
            jiff::tz::TimeZone::get(tz).map_err(|e| anyhow::anyhow!("timezone: unknown time zone {tz:?}: {e}"))?;
        }
        self.global_proxy()?;
        for (index, offering) in self.offerings.iter().enumerate() {
            offering.check().map_err(|e| anyhow::anyhow!("offerings[{index}].{e}"))?;
        }
        self.check_each_offering_once()?;
        for (backend_type, plugin) in &self.plugins {
            if let Some(pin) = &plugin.sha256
                && !(pin.len() == 64 && pin.bytes().all(|b| b.is_ascii_hexdigit()))
            {
                bail!("plugins.{backend_type}.sha256: {pin:?} is not a sha256 digest (64 hexadecimal digits)");
            }
        }
        Ok(())
    }

    /// Two entries for one offering would report it twice, each by its own settings:
    /// refused by name, and by UUID on the same Waldur.
    fn check_each_offering_once(&self) -> Result<()> {
        for (index, offering) in self.offerings() {
            for (earlier, other) in self.offerings().take(index) {
                if offering.name.is_some() && offering.name == other.name {
                    bail!(
                        "offerings[{index}].name: {:?} is also the name of offerings[{earlier}]; give each offering once, under its own name",
                        offering.name.as_deref().unwrap_or_default()
                    );
                }
                let uuid = |o: &OfferingConfig| o.waldur_offering_uuid.as_deref().and_then(normalised_uuid);
                let url =
                    |o: &OfferingConfig| o.waldur_api_url.as_deref().map(|u| u.trim().trim_end_matches('/').to_owned());
                if uuid(offering).is_some() && uuid(offering) == uuid(other) && url(offering) == url(other) {
                    bail!(
                        "offerings[{index}].waldur_offering_uuid: the same offering as offerings[{earlier}] (same UUID on the same Waldur); give each offering once"
                    );
                }
            }
        }
        Ok(())
    }

    /// How old the heartbeat may be.
    pub fn heartbeat_max_age(&self) -> std::time::Duration {
        self.heartbeat_max_age_seconds.map(std::time::Duration::from_secs).unwrap_or(crate::heartbeat::DEFAULT_MAX_AGE)
    }

    /// The pinned digest of `backend_type`'s plugin file, lower-case.
    pub fn pinned_sha256(&self, backend_type: &str) -> Option<String> {
        self.plugins.get(backend_type)?.sha256.as_deref().map(str::to_ascii_lowercase)
    }

    /// The backend types the offerings use, each once, in order of first use.
    pub fn backend_types(&self) -> Vec<String> {
        let mut types: Vec<String> = Vec::new();
        for offering in &self.offerings {
            if let Some(t) = offering.usage_backend()
                && !types.iter().any(|known| known == t)
            {
                types.push(t.to_owned());
            }
        }
        types
    }

    /// The proxy of every Waldur connection (`global_proxy`), `None` when blank.
    pub fn global_proxy(&self) -> Result<Option<Proxy>> {
        match self.global_proxy.as_deref().map(str::trim).filter(|p| !p.is_empty()) {
            None => Ok(None),
            Some(url) => Proxy::parse(url).map(Some).map_err(|e| anyhow!("global_proxy: {e:#}")),
        }
    }

    /// The Waldur request timeout: `waldur_timeout_seconds`, else 60 s.
    pub fn waldur_timeout(&self) -> Duration {
        self.waldur_timeout_seconds.map(Duration::from_secs_f64).unwrap_or(Duration::from_secs(60))
    }

    /// The offerings, with their index in the file.
    pub fn offerings(&self) -> impl Iterator<Item = (usize, &OfferingConfig)> {
        self.offerings.iter().enumerate()
    }

    /// Finds an offering by name, or by UUID.
    pub fn find_offering(&self, key: &str) -> Result<(usize, &OfferingConfig)> {
        self.offerings()
            .find(|(_, o)| o.name.as_deref() == Some(key) || o.waldur_offering_uuid.as_deref() == Some(key))
            .ok_or_else(|| {
                let known: Vec<String> = self.offerings().map(|(i, o)| o.display_name(i)).collect();
                anyhow::anyhow!("no offering named {key:?} in the config (offerings: {})", known.join(", "))
            })
    }
}

impl OfferingConfig {
    /// The backend type that serves usage reports: `reporting_backend`, else `backend_type`.
    pub fn usage_backend(&self) -> Option<&str> {
        self.reporting_backend.as_deref().or(self.backend_type.as_deref())
    }

    /// A name for messages: the `name`, else its position.
    pub fn display_name(&self, index: usize) -> String {
        match &self.name {
            Some(name) => name.clone(),
            None => format!("offerings[{index}]"),
        }
    }

    fn check(&self) -> std::result::Result<(), String> {
        if self.usage_backend().is_none() {
            return Err("backend_type: missing (or set reporting_backend)".to_owned());
        }
        if self.backend_components.is_empty() {
            return Err("backend_components: no component configured".to_owned());
        }
        for (name, component) in &self.backend_components {
            // Every reported value is multiplied by the factor: zero would overwrite
            // real usage with zeros, a negative one could not be stored.
            let factor = |key: &str, v: f64| {
                if v.is_finite() && v > 0.0 {
                    Ok(())
                } else {
                    Err(format!("backend_components.{name}.{key}: must be a number above 0, not {v}"))
                }
            };
            factor("unit_factor", component.unit_factor)?;
            if let Some(v) = component.unit_factor_reporting {
                factor("unit_factor_reporting", v)?;
            }
            if component.dwdi_metric.is_some() && component.options.contains_key(DWDI_METRIC_OPTION) {
                return Err(format!(
                    "backend_components.{name}: dwdi_metric is set twice, as a key and in options; keep one"
                ));
            }
        }
        if let Some(url) = &self.waldur_api_url {
            parse_http_url(url).map_err(|e| format!("waldur_api_url: {e}"))?;
        }
        if let Some(uuid) = &self.waldur_offering_uuid
            && normalised_uuid(uuid).is_none()
        {
            return Err(format!(
                "waldur_offering_uuid: {uuid:?} is not a UUID (32 hexadecimal digits, with or without dashes); copy it from the offering's page in Waldur"
            ));
        }
        // A login that is meant (a blank token, or OIDC keys) is checked now; a config
        // without any is refused only by the commands that write into Waldur.
        let blank_token = self.waldur_api_token.as_ref().is_some_and(|t| t.expose().trim().is_empty());
        let oidc_keys =
            self.oidc_token_url.is_some() || self.oidc_client_id.is_some() || self.oidc_client_secret.is_some();
        if blank_token || oidc_keys {
            self.waldur_login()?;
        }
        self.upstream_access()?;
        crate::egress::Limits::from_settings(&self.backend_settings)?;
        Ok(())
    }

    /// How the agent logs into the offering's Waldur ([`WaldurLogin`]); errors name the
    /// key.
    pub fn waldur_login(&self) -> std::result::Result<WaldurLogin, String> {
        fn set(value: Option<&str>) -> Option<&str> {
            value.map(str::trim).filter(|v| !v.is_empty())
        }
        if let Some(token) = self.waldur_api_token.as_ref().filter(|t| set(Some(t.expose())).is_some()) {
            return Ok(WaldurLogin::Token(token.clone()));
        }
        let keys = [
            ("oidc_token_url", set(self.oidc_token_url.as_deref())),
            ("oidc_client_id", set(self.oidc_client_id.as_deref())),
            ("oidc_client_secret", set(self.oidc_client_secret.as_ref().map(Secret::expose))),
        ];
        match keys {
            [(_, Some(url)), (_, Some(client_id)), (_, Some(secret))] => {
                let token_url = parse_http_url(url).map_err(|e| format!("oidc_token_url: {e}"))?;
                Ok(WaldurLogin::Oidc(OidcClient {
                    token_url,
                    client_id: client_id.to_owned(),
                    client_secret: Secret::new(secret),
                    scope: String::new(),
                    client_auth: ClientAuth::Form,
                }))
            }
            [(_, None), (_, None), (_, None)] => Err(format!(
                "waldur_api_token: {} (or log into Waldur by OIDC: oidc_token_url, oidc_client_id and oidc_client_secret)",
                if self.waldur_api_token.is_some() { "blank" } else { "missing" }
            )),
            partial => {
                let missing: Vec<&str> = partial.iter().filter(|(_, v)| v.is_none()).map(|(key, _)| *key).collect();
                Err(format!(
                    "{}: missing; without waldur_api_token the offering logs into Waldur by OIDC and needs oidc_token_url, oidc_client_id and oidc_client_secret",
                    missing.join(", ")
                ))
            }
        }
    }

    /// Warnings for the `backend_settings` keys nobody reads: not the host's, and, for a
    /// built-in DWDI backend, not the backend's. A site's own backend reads keys the
    /// host cannot know, so there only a likely misspelling of a host key is named.
    fn unknown_settings(&self) -> impl Iterator<Item = String> + '_ {
        let host = lint::fields_of::<HostSettings>().iter().chain(lint::fields_of::<crate::egress::LimitSettings>());
        let host: Vec<&str> = host.copied().collect();
        let backend = self.usage_backend().unwrap_or_default().to_owned();
        let dwdi = crate::builtin::component(&backend).is_some();
        self.backend_settings.keys().filter_map(move |key| {
            if host.contains(&key.as_str()) || (dwdi && dwdi_core::SETTING_KEYS.contains(&key.as_str())) {
                return None;
            }
            if dwdi {
                let near = lint::nearest(key, host.iter().copied().chain(dwdi_core::SETTING_KEYS.iter().copied()));
                Some(format!(
                    "backend_settings.{key}: not a setting of the host or of the DWDI backends; ignored{}",
                    lint::did_you_mean(near)
                ))
            } else {
                let near = lint::nearest(key, host.iter().copied())?;
                Some(format!(
                    "backend_settings.{key}: not a setting of the host; did you mean {near}? (ignored unless {backend} reads it)"
                ))
            }
        })
    }

    /// Where the offering's component may send requests and how the host authenticates,
    /// proxies and trusts them; errors name the key. Either `upstream` (any backend) or
    /// the DWDI spelling: `cscs_dwdi_api_url` and the OIDC client of the `cscs_dwdi_*`
    /// keys. `socks_proxy` and `ca_bundle` apply to both.
    pub fn upstream_access(&self) -> std::result::Result<UpstreamAccess, String> {
        let settings = HostSettings::of(&self.backend_settings)?;
        let text = |key: &str, value: &Option<serde_json::Value>| -> std::result::Result<Option<String>, String> {
            match value {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(serde_json::Value::String(s)) if s.trim().is_empty() => {
                    Err(format!("backend_settings.{key}: empty"))
                }
                Some(serde_json::Value::String(s)) => Ok(Some(s.trim().to_owned())),
                Some(_) => Err(format!("backend_settings.{key}: must be a string")),
            }
        };
        // Parsed here so a bad proxy URL is a start-up error naming the key.
        let proxy = text("socks_proxy", &settings.socks_proxy)?
            .map(|url| Proxy::parse(&url))
            .transpose()
            .map_err(|e| format!("backend_settings.socks_proxy: {e:#}"))?;
        let ca_bundle = text("ca_bundle", &settings.ca_bundle)?.map(PathBuf::from);
        if let Some(path) = &ca_bundle {
            absolute(path, "backend_settings.ca_bundle")?;
        }
        if let Some(upstream) = &settings.upstream {
            // One way to say it: an OIDC client given twice could differ.
            if let Some(key) = DWDI_OIDC_KEYS.iter().find(|key| self.backend_settings.contains_key(**key)) {
                return Err(format!(
                    "backend_settings.{key}: set the OIDC client in upstream.auth or in the cscs_dwdi_* keys, not both"
                ));
            }
            let upstream: UpstreamSettings =
                serde_json::from_value(upstream.clone()).map_err(|e| format!("backend_settings.upstream: {e}"))?;
            if upstream.urls.is_empty() {
                return Err("backend_settings.upstream.urls: the list is empty".to_owned());
            }
            let urls = upstream
                .urls
                .iter()
                .enumerate()
                .map(|(i, url)| parse_http_url(url).map_err(|e| format!("backend_settings.upstream.urls[{i}]: {e}")))
                .collect::<std::result::Result<Vec<_>, String>>()?;
            return Ok(UpstreamAccess { urls, auth: upstream.auth.resolve()?, proxy, ca_bundle });
        }
        let required = |key: &str, value: &Option<serde_json::Value>| -> std::result::Result<String, String> {
            text(key, value)?.ok_or_else(|| format!("backend_settings.{key}: missing"))
        };
        let api_url = parse_http_url(&required("cscs_dwdi_api_url", &settings.cscs_dwdi_api_url)?)
            .map_err(|e| format!("backend_settings.cscs_dwdi_api_url: {e}"))?;
        let client_id = required("cscs_dwdi_client_id", &settings.cscs_dwdi_client_id)?;
        let client_secret = Secret::new(required("cscs_dwdi_client_secret", &settings.cscs_dwdi_client_secret)?);
        let token_url = parse_http_url(&required("cscs_dwdi_oidc_token_url", &settings.cscs_dwdi_oidc_token_url)?)
            .map_err(|e| format!("backend_settings.cscs_dwdi_oidc_token_url: {e}"))?;
        let scope =
            text("cscs_dwdi_oidc_scope", &settings.cscs_dwdi_oidc_scope)?.unwrap_or_else(|| "openid".to_owned());
        let client_auth = client_auth(
            text("cscs_dwdi_oidc_auth_method", &settings.cscs_dwdi_oidc_auth_method)?.as_deref(),
            "backend_settings.cscs_dwdi_oidc_auth_method",
        )?;
        let oidc = OidcClient { token_url, client_id, client_secret, scope, client_auth };
        Ok(UpstreamAccess { urls: vec![api_url], auth: UpstreamAuth::Oidc(oidc), proxy, ca_bundle })
    }

    /// `backend_settings` without the host-only keys, as JSON for the component.
    pub fn component_settings_json(&self) -> String {
        let mut visible: BTreeMap<&String, serde_json::Value> = self
            .backend_settings
            .iter()
            .filter(|(key, _)| {
                let key = key.as_str();
                !DWDI_OIDC_KEYS.contains(&key) && !HOST_NETWORK_SETTINGS.contains(&key) && !looks_secret(key)
            })
            .map(|(key, value)| (key, value.clone()))
            .collect();
        // Of `upstream` the component sees where it may go, never how the host gets in.
        if let Some(upstream) = visible.get_mut(&"upstream".to_owned())
            && let Some(map) = upstream.as_object_mut()
        {
            map.retain(|key, _| key == "urls");
        }
        serde_json::to_string(&visible).unwrap_or_else(|_| "{}".to_owned())
    }
}

/// Keys a site may add that are secret by their name.
fn looks_secret(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    ["secret", "password", "token"].iter().any(|word| key.contains(word))
}

fn parse_http_url(text: &str) -> std::result::Result<url::Url, String> {
    let url = url::Url::parse(text).map_err(|e| format!("{text:?} is not a URL: {e}"))?;
    match url.scheme() {
        "http" | "https" if url.host_str().is_some() => Ok(url),
        "http" | "https" => Err(format!("{text:?} has no host")),
        other => Err(format!("{text:?}: scheme {other:?} is not http or https")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
offerings:
  - name: compute
    backend_type: cscs-dwdi-compute
    backend_settings:
      cscs_dwdi_api_url: "https://api.example/api/v1"
      cscs_dwdi_client_id: id
      cscs_dwdi_client_secret: s3cret
      cscs_dwdi_oidc_token_url: "https://auth.example/token"
      socks_proxy: "socks5://localhost:12345"
      storage_tenant: cscs
    backend_components:
      nodeHours: {measured_unit: node-hours, unit_factor: 1, accounting_type: usage, label: Node Hours}
"#;

    /// The error text of a config that must not load.
    fn error_of(text: &str) -> String {
        match AgentConfig::parse(text) {
            Ok(_) => panic!("the config loaded:\n{text}"),
            Err(error) => format!("{error:#}"),
        }
    }

    #[test]
    fn defaults_and_host_only_keys() -> Result<()> {
        let config = AgentConfig::parse(MINIMAL)?;
        assert_eq!(config.reporting_periods, 2);
        let offering = &config.offerings[0];
        assert!(offering.verify_ssl);
        let access = offering.upstream_access().map_err(anyhow::Error::msg)?;
        let oidc = access.oidc().context("the cscs_dwdi_* keys are an OIDC client")?;
        assert_eq!(oidc.scope, "openid");
        assert_eq!(oidc.client_auth, ClientAuth::Form);
        assert_eq!(access.proxy.map(|p| p.to_string()).as_deref(), Some("socks5://localhost:12345"));
        let json = offering.component_settings_json();
        assert!(json.contains("cscs_dwdi_api_url"));
        assert!(json.contains("storage_tenant"));
        assert!(!json.contains("s3cret"), "{json}");
        assert!(!json.contains("socks5"), "{json}");
        assert!(!json.contains("cscs_dwdi_client_id"), "{json}");
        Ok(())
    }

    #[test]
    fn missing_secret_names_offering_and_key() {
        let text = MINIMAL.replace("      cscs_dwdi_client_secret: s3cret\n", "");
        let err = error_of(&text);
        assert_eq!(err, "offerings[0].backend_settings.cscs_dwdi_client_secret: missing");
    }

    #[test]
    fn wrong_types_are_located() {
        let text = MINIMAL.replace("unit_factor: 1,", "unit_factor: lots,");
        let err = error_of(&text);
        assert!(err.contains("offerings[0].backend_components.nodeHours.unit_factor"), "{err}");
    }

    #[test]
    fn component_options_keep_their_order_and_dwdi_metric_is_one() -> Result<()> {
        let text = MINIMAL.replace(
            "label: Node Hours}",
            "label: Node Hours, dwdi_metric: nodeHours, options: {field: hours, scale: \"2\"}}",
        );
        let config = AgentConfig::parse(&text)?;
        let options: Vec<_> = config.offerings[0].backend_components["nodeHours"].options().collect();
        assert_eq!(options, [("dwdi_metric", "nodeHours"), ("field", "hours"), ("scale", "2")]);
        let twice = MINIMAL.replace("label: Node Hours}", "dwdi_metric: a, options: {dwdi_metric: b}}");
        assert_eq!(
            error_of(&twice),
            "offerings[0].backend_components.nodeHours: dwdi_metric is set twice, as a key and in options; keep one"
        );
        let not_text = MINIMAL.replace("label: Node Hours}", "options: {field: [a, b]}}");
        assert!(
            error_of(&not_text).contains("offerings[0].backend_components.nodeHours.options.field"),
            "{}",
            error_of(&not_text)
        );
        Ok(())
    }

    #[test]
    fn waldur_login_is_the_token_else_a_complete_oidc_client() -> Result<()> {
        let with = |lines: &str| MINIMAL.replace("    backend_type:", &format!("{lines}    backend_type:"));
        let oidc = "    oidc_token_url: \"https://sso.example.org/token\"\n    oidc_client_id: agent\n    oidc_client_secret: 0idc-s3cret\n";
        // A token wins, OIDC keys or not (as in waldur-site-agent).
        let config = AgentConfig::parse(&with(&format!("    waldur_api_token: t0ken\n{oidc}")))?;
        let login = config.offerings[0].waldur_login().map_err(anyhow::Error::msg)?;
        assert!(matches!(&login, WaldurLogin::Token(t) if t.expose() == "t0ken"), "{login:?}");
        // A blank token (or none) and the three keys: OIDC, the secret in the form, no scope.
        for token in ["    waldur_api_token: \"\"\n", "    waldur_api_token: \"  \"\n", ""] {
            let config = AgentConfig::parse(&with(&format!("{token}{oidc}")))?;
            let WaldurLogin::Oidc(client) = config.offerings[0].waldur_login().map_err(anyhow::Error::msg)? else {
                panic!("not OIDC: {token:?}")
            };
            assert_eq!(
                (client.token_url.as_str(), client.client_id.as_str(), client.scope.as_str(), client.client_auth),
                ("https://sso.example.org/token", "agent", "", ClientAuth::Form)
            );
            assert!(!format!("{config:?} {client:?}").contains("0idc-s3cret"));
            assert_eq!(WaldurLogin::Oidc(client).shown(), "OIDC client agent at https://sso.example.org/token");
        }
        // No login at all: refused only where Waldur is written to.
        let config = AgentConfig::parse(MINIMAL)?;
        let missing = config.offerings[0].waldur_login().err().unwrap_or_default();
        assert!(missing.starts_with("waldur_api_token: missing (or log into Waldur by OIDC"), "{missing}");
        // A blank token without a complete OIDC client is refused at load, naming what is missing.
        let err = error_of(&with("    waldur_api_token: \"\"\n"));
        assert!(err.starts_with("offerings[0].waldur_api_token: blank (or log into Waldur by OIDC"), "{err}");
        let err = error_of(&with("    waldur_api_token: \"\"\n    oidc_client_id: agent\n"));
        assert!(
            err.starts_with("offerings[0].oidc_token_url, oidc_client_secret: missing; without waldur_api_token"),
            "{err}"
        );
        let err = error_of(&with(&oidc.replace("https://sso.example.org/token", "sso.example.org")));
        assert!(err.starts_with("offerings[0].oidc_token_url: \"sso.example.org\" is not a URL"), "{err}");
        Ok(())
    }

    #[test]
    fn global_proxy_is_parsed_and_blank_is_direct() -> Result<()> {
        for blank in ["", "global_proxy: \"\"\n", "global_proxy: ~\n"] {
            assert_eq!(AgentConfig::parse(&format!("{blank}{MINIMAL}"))?.global_proxy()?, None, "{blank:?}");
        }
        let config = AgentConfig::parse(&format!("global_proxy: \"http://u:pw@proxy.example:3128\"\n{MINIMAL}"))?;
        let proxy = config.global_proxy()?.context("a proxy")?;
        assert_eq!(
            (proxy.kind, proxy.to_string()),
            (crate::egress::connect::ProxyKind::Http, "http://proxy.example:3128".to_owned())
        );
        for (url, want) in [("https://proxy.example:3128", "unsupported proxy scheme"), ("socks5://", "no host")] {
            let err = error_of(&format!("global_proxy: {url:?}\n{MINIMAL}"));
            assert!(err.starts_with("global_proxy: ") && err.contains(want), "{url}: {err}");
        }
        Ok(())
    }

    #[test]
    fn bad_timezone_and_scheme() {
        let text = format!("timezone: Mars/Olympus\n{MINIMAL}");
        let err = error_of(&text);
        assert!(err.starts_with("timezone: unknown time zone \"Mars/Olympus\""), "{err}");
        let text = MINIMAL.replace("https://api.example/api/v1", "ftp://api.example");
        let err = error_of(&text);
        assert!(err.contains("offerings[0].backend_settings.cscs_dwdi_api_url"), "{err}");
    }

    #[test]
    fn plugin_pins_are_checked_and_normalised() -> Result<()> {
        let digest = "AB".repeat(32);
        let text = format!("plugins:\n  cscs-dwdi-compute:\n    sha256: {digest}\n{MINIMAL}");
        let config = AgentConfig::parse(&text)?;
        assert_eq!(config.pinned_sha256("cscs-dwdi-compute"), Some("ab".repeat(32)));
        assert_eq!(config.pinned_sha256("cscs-dwdi-storage"), None);
        let text = format!("plugins:\n  cscs-dwdi-compute:\n    sha256: abc\n{MINIMAL}");
        let err = AgentConfig::parse(&text).err().map(|e| format!("{e:#}")).unwrap_or_default();
        assert!(err.starts_with("plugins.cscs-dwdi-compute.sha256: \"abc\" is not a sha256 digest"), "{err}");
        let text = format!("plugins:\n  cscs-dwdi-compute:\n    sha265: {digest}\n{MINIMAL}");
        let err = AgentConfig::parse(&text).err().map(|e| format!("{e:#}")).unwrap_or_default();
        assert!(err.contains("unknown field `sha265`"), "{err}");
        Ok(())
    }

    #[test]
    fn bad_proxy_and_limits_fail_at_start_up_naming_the_key() {
        for (proxy, expected) in [
            ("ftp://p:1", "unsupported proxy scheme \"ftp\""),
            ("socks5://", "no host"),
            ("localhost:1080", "unsupported proxy scheme"),
            ("socks5://u:pw@host:99999", "not a proxy URL"),
        ] {
            let text = MINIMAL.replace("socks5://localhost:12345", proxy);
            let err = error_of(&text);
            assert!(err.starts_with("offerings[0].backend_settings.socks_proxy: "), "{proxy}: {err}");
            assert!(err.contains(expected), "{proxy}: {err}");
            assert!(!err.contains("pw"), "{proxy}: the password leaked: {err}");
        }
        let text = MINIMAL.replace("storage_tenant: cscs", "connect_timeout_seconds: -1");
        let err = error_of(&text);
        assert!(err.starts_with("offerings[0].backend_settings.connect_timeout_seconds: "), "{err}");
    }

    #[test]
    fn proxy_password_is_hidden_in_debug() -> Result<()> {
        let config = AgentConfig::parse(&MINIMAL.replace("socks5://localhost", "socks5://alice:pw0rd@localhost"))?;
        let access = config.offerings[0].upstream_access().map_err(anyhow::Error::msg)?;
        let shown = format!("{config:?} {access:?}");
        assert!(!shown.contains("pw0rd"), "{shown}");
        Ok(())
    }

    #[test]
    fn component_limits_default_and_validate() -> Result<()> {
        let config = AgentConfig::parse(MINIMAL)?;
        assert_eq!(config.component_limits, ComponentLimits::default());
        let text = format!("component_limits:\n  memory_mib: 64\n  call_timeout_seconds: 2.5\n{MINIMAL}");
        let limits = AgentConfig::parse(&text)?.component_limits;
        assert_eq!(limits.memory_bytes(), 64 << 20);
        assert_eq!(limits.call_timeout(), Duration::from_millis(2500));
        assert_eq!(limits.max_result_bytes, ComponentLimits::default().max_result_bytes);
        let cases = [
            ("memory_mib: 0", "component_limits.memory_mib: must be an integer from 1 to 4096"),
            ("memory_mib: 5000", "component_limits.memory_mib: must be an integer from 1 to 4096"),
            ("call_timeout_seconds: 0", "component_limits.call_timeout_seconds: must be"),
            ("max_result_bytes: 10", "component_limits.max_result_bytes: must be at least 1024"),
            ("instances: 0", "component_limits.instances: must be at least 1"),
            ("memory_mb: 64", "unknown field `memory_mb`"),
            ("memory_mib: lots", "component_limits.memory_mib"),
        ];
        for (line, want) in cases {
            let text = format!("component_limits:\n  {line}\n{MINIMAL}");
            let err = error_of(&text);
            assert!(err.contains(want), "{line}: {err}");
        }
        let text = format!("waldur_timeout_seconds: -1\n{MINIMAL}");
        let err = error_of(&text);
        assert!(err.starts_with("waldur_timeout_seconds: must be"), "{err}");
        Ok(())
    }

    #[test]
    fn plugin_file_bounds_validate() -> Result<()> {
        let text = format!("plugins_max_file_mib: 8\nplugins_compile_timeout_seconds: 0.5\n{MINIMAL}");
        let config = AgentConfig::parse(&text)?;
        assert_eq!((config.plugins_max_file_mib, config.plugins_compile_timeout_seconds), (Some(8), Some(0.5)));
        for (line, want) in [
            ("plugins_max_file_mib: 0", "plugins_max_file_mib: must be an integer from 1 to 4096"),
            ("plugins_max_file_mib: 5000", "plugins_max_file_mib: must be an integer from 1 to 4096"),
            ("plugins_compile_timeout_seconds: 0", "plugins_compile_timeout_seconds: must be a number of seconds"),
            ("plugins_compile_timeout_seconds: 7200", "plugins_compile_timeout_seconds: must be a number of seconds"),
        ] {
            let err = error_of(&format!("{line}\n{MINIMAL}"));
            assert!(err.starts_with(want), "{line}: {err}");
        }
        Ok(())
    }

    #[test]
    fn yaml_1_1_booleans_and_nulls_read_as_pyyaml_and_pydantic_read_them() -> Result<()> {
        let spellings = [
            (["yes", "Yes", "YES", "on", "On", "ON", "y", "True", "TRUE"], true),
            (["no", "No", "NO", "off", "Off", "OFF", "n", "False", "FALSE"], false),
        ];
        for (written, read) in spellings.iter().flat_map(|(words, read)| words.iter().map(move |w| (w, *read))) {
            let text = MINIMAL.replace("    backend_type:", &format!("    verify_ssl: {written}\n    backend_type:"));
            assert_eq!(AgentConfig::parse(&text)?.offerings[0].verify_ssl, read, "verify_ssl: {written}");
        }
        for null in ["~", "null", "Null", "NULL", ""] {
            let text = format!("timezone: {null}\nlog_level: {null}\n{MINIMAL}")
                .replace("    backend_type:", &format!("    waldur_api_token: {null}\n    backend_type:"))
                .replace("      storage_tenant: cscs", &format!("      cscs_dwdi_oidc_scope: {null}"));
            let config = AgentConfig::parse(&text)?;
            assert_eq!((config.timezone, config.log_level), (None, None), "{null:?}");
            assert_eq!(config.offerings[0].waldur_api_token, None, "{null:?}");
            let access = config.offerings[0].upstream_access().map_err(anyhow::Error::msg)?;
            let scope = access.oidc().map(|oidc| oidc.scope.as_str());
            assert_eq!(scope, Some("openid"), "a null scope is the default: {null:?}");
        }
        Ok(())
    }

    #[test]
    fn yaml_errors_name_the_key_path_and_the_line() {
        let text = MINIMAL.replace("    backend_type:", "    verify_ssl: maybe\n    backend_type:");
        assert_eq!(error_of(&text), "offerings[0].verify_ssl: invalid boolean at line 4, column 17");
        let text = MINIMAL.replace("unit_factor: 1,", "unit_factor: lots,");
        assert_eq!(
            error_of(&text),
            "offerings[0].backend_components.nodeHours.unit_factor: invalid floating point at line 13, column 59"
        );
        assert_eq!(error_of("offerings: [\n"), "unclosed bracket '[' at line 1, column 12");
    }

    #[test]
    fn a_repeated_key_keeps_its_last_value_as_in_pyyaml() -> Result<()> {
        let text = format!("reporting_periods: 3\nreporting_periods: 1\n{MINIMAL}");
        assert_eq!(AgentConfig::parse(&text)?.reporting_periods, 1);
        Ok(())
    }

    #[test]
    fn secret_is_hidden_in_debug() -> Result<()> {
        let config = AgentConfig::parse(MINIMAL)?;
        let debug = format!("{config:?}");
        assert!(!debug.contains("s3cret"));
        let access = config.offerings[0].upstream_access().map_err(anyhow::Error::msg)?;
        assert!(!format!("{access:?}").contains("s3cret"));
        Ok(())
    }

    /// `MINIMAL` with its `cscs_dwdi_*` access replaced by `upstream` (10-space indent).
    fn with_upstream(upstream: &str) -> String {
        let mut kept: Vec<&str> = Vec::new();
        for line in MINIMAL.lines() {
            let oidc_keys = ["cscs_dwdi_client_id", "cscs_dwdi_client_secret", "cscs_dwdi_oidc_token_url"];
            if !oidc_keys.iter().any(|key| line.trim_start().starts_with(key)) {
                kept.push(line);
            }
        }
        kept.join("\n")
            .replace("    backend_settings:\n", &format!("    backend_settings:\n      upstream:\n{upstream}"))
    }

    #[test]
    fn an_upstream_says_where_a_component_may_go_and_how_the_host_authenticates() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let key_file = dir.path().join("meter.key");
        std::fs::write(&key_file, "k3y-from-file\n")?;
        let text = with_upstream(&format!(
            "        urls: [\"https://meter.example.org/api/v2\", \"http://10.0.0.5:8080/meter\"]\n        auth: {{type: header, name: X-Api-Key, value_file: {:?}}}\n",
            key_file.display()
        ));
        let config = AgentConfig::parse(&text)?;
        let access = config.offerings[0].upstream_access().map_err(anyhow::Error::msg)?;
        let urls: Vec<&str> = access.urls.iter().map(url::Url::as_str).collect();
        assert_eq!(urls, ["https://meter.example.org/api/v2", "http://10.0.0.5:8080/meter"]);
        let UpstreamAuth::Static { header, value } = &access.auth else { panic!("{:?}", access.auth) };
        assert_eq!((header.as_str(), value.expose()), ("x-api-key", "k3y-from-file"));
        // The proxy still comes from socks_proxy; the key is never shown.
        assert!(access.proxy.is_some());
        assert!(!format!("{access:?} {config:?}").contains("k3y"));
        // The component sees the URLs, not the auth.
        let json = config.offerings[0].component_settings_json();
        assert!(json.contains("\"upstream\":{\"urls\":[\"https://meter.example.org/api/v2\""), "{json}");
        assert!(!json.contains("auth") && !json.contains("meter.key"), "{json}");

        // A bearer from the environment (any variable this process has: the tests may
        // not set one), and none at all.
        let (name, token) = std::env::vars()
            .find(|(name, value)| {
                name.bytes().all(|b| b.is_ascii_uppercase() || b == b'_')
                    && !value.trim().is_empty()
                    && value.bytes().all(|b| b.is_ascii_graphic())
            })
            .context("no environment variable to read")?;
        let text = with_upstream(&format!(
            "        urls: [\"https://meter.example.org\"]\n        auth: {{type: bearer, value_env: {name}}}\n"
        ));
        let access = AgentConfig::parse(&text)?.offerings[0].upstream_access().map_err(anyhow::Error::msg)?;
        let UpstreamAuth::Static { header, value } = &access.auth else { panic!("{:?}", access.auth) };
        assert_eq!((header.as_str(), value.expose()), ("authorization", format!("Bearer {token}").as_str()));
        let text = with_upstream("        urls: [\"https://meter.example.org\"]\n        auth: {type: none}\n");
        let access = AgentConfig::parse(&text)?.offerings[0].upstream_access().map_err(anyhow::Error::msg)?;
        assert!(matches!(access.auth, UpstreamAuth::None));
        // An OIDC client of its own, in the same words as the DWDI keys.
        let text = with_upstream(
            "        urls: [\"https://meter.example.org\"]\n        auth: {type: oidc, token_url: \"https://sso.example.org/token\", client_id: meter, client_secret: m3ter, auth_method: client_secret_basic}\n",
        );
        let config = AgentConfig::parse(&text)?;
        let access = config.offerings[0].upstream_access().map_err(anyhow::Error::msg)?;
        let oidc = access.oidc().context("an OIDC upstream")?;
        assert_eq!(
            (oidc.token_url.as_str(), oidc.client_id.as_str(), oidc.scope.as_str(), oidc.client_auth),
            ("https://sso.example.org/token", "meter", "openid", ClientAuth::Basic)
        );
        assert!(!format!("{access:?} {config:?}").contains("m3ter"));
        assert!(!config.offerings[0].component_settings_json().contains("m3ter"));
        Ok(())
    }

    #[test]
    fn a_bad_upstream_is_refused_naming_the_key() {
        let cases = [
            ("        urls: []\n        auth: {type: none}\n", "backend_settings.upstream.urls: the list is empty"),
            (
                "        urls: [\"ftp://x\"]\n        auth: {type: none}\n",
                "backend_settings.upstream.urls[0]: \"ftp://x\": scheme \"ftp\" is not http or https",
            ),
            ("        urls: [\"https://x\"]\n", "backend_settings.upstream: missing field `auth`"),
            (
                "        urls: [\"https://x\"]\n        auth: {type: bearer}\n",
                "backend_settings.upstream.auth: set value_file or value_env",
            ),
            (
                "        urls: [\"https://x\"]\n        auth: {type: bearer, value_file: /nonexistent/key}\n",
                "backend_settings.upstream.auth.value_file: cannot read /nonexistent/key",
            ),
            (
                "        urls: [\"https://x\"]\n        auth: {type: header, name: accept, value_env: HOME}\n",
                "backend_settings.upstream.auth.name: accept is a header the component or the host sets",
            ),
            (
                "        urls: [\"https://x\"]\n        auth: {type: magic}\n",
                "backend_settings.upstream: unknown variant `magic`",
            ),
        ];
        for (upstream, want) in cases {
            let err = error_of(&with_upstream(upstream));
            assert!(err.starts_with(&format!("offerings[0].{want}")), "{err}");
        }
        // The DWDI spelling of an OIDC client beside an upstream is ambiguous.
        let text = with_upstream("        urls: [\"https://x\"]\n        auth: {type: none}\n")
            .replace("    backend_settings:\n", "    backend_settings:\n      cscs_dwdi_client_id: abc\n");
        let err = error_of(&text);
        assert!(
            err.starts_with("offerings[0].backend_settings.cscs_dwdi_client_id: set the OIDC client in upstream.auth"),
            "{err}"
        );
    }

    /// `MINIMAL` with the Waldur keys of a report.
    fn with_waldur(token: &str, uuid: &str) -> String {
        MINIMAL.replace(
            "    backend_type:",
            &format!(
                "    waldur_api_url: \"https://waldur.example/api/\"\n    waldur_api_token: {token}\n    waldur_offering_uuid: {uuid:?}\n    backend_type:"
            ),
        )
    }

    #[test]
    fn unit_factors_that_would_write_a_wrong_number_are_refused() -> Result<()> {
        for key in ["unit_factor", "unit_factor_reporting"] {
            for (value, shown) in [("0", "0"), ("-1", "-1"), (".nan", "NaN"), (".inf", "inf"), ("-.inf", "-inf")] {
                let text = MINIMAL.replace("unit_factor: 1,", &format!("unit_factor: 1, {key}: {value},"));
                let text = if key == "unit_factor" {
                    MINIMAL.replace("unit_factor: 1,", &format!("unit_factor: {value},"))
                } else {
                    text
                };
                assert_eq!(
                    error_of(&text),
                    format!("offerings[0].backend_components.nodeHours.{key}: must be a number above 0, not {shown}"),
                    "{key}: {value}"
                );
            }
        }
        let text = MINIMAL.replace("unit_factor: 1,", "unit_factor: 0.000000001, unit_factor_reporting: 2.5,");
        let factors = &AgentConfig::parse(&text)?.offerings[0].backend_components["nodeHours"];
        assert_eq!((factors.unit_factor, factors.unit_factor_reporting), (0.000000001, Some(2.5)));
        Ok(())
    }

    #[test]
    fn reporting_periods_are_one_to_twelve_as_in_the_python_agent() -> Result<()> {
        for periods in [1, 12] {
            assert_eq!(
                AgentConfig::parse(&format!("reporting_periods: {periods}\n{MINIMAL}"))?.reporting_periods,
                periods
            );
        }
        for periods in ["0", "13", "1000"] {
            let err = error_of(&format!("reporting_periods: {periods}\n{MINIMAL}"));
            assert_eq!(
                err,
                format!(
                    "reporting_periods: must be an integer from 1 to 12 (months reported each cycle, the current one included), not {periods}"
                )
            );
        }
        assert!(error_of(&format!("reporting_periods: -1\n{MINIMAL}")).starts_with("reporting_periods: "));
        Ok(())
    }

    #[test]
    fn an_offering_uuid_must_be_one() -> Result<()> {
        for uuid in ["d629d5e45567425da9cdbdc1af67b32c", "D629D5E4-5567-425D-A9CD-BDC1AF67B32C"] {
            AgentConfig::parse(&with_waldur("t0ken", uuid))?;
        }
        for uuid in [
            "compute",
            "d629d5e45567425da9cdbdc1af67b32",
            "d629d5e4-5567425da9cdbdc1af67b32c",
            "g629d5e45567425da9cdbdc1af67b32c",
            "",
        ] {
            let err = error_of(&with_waldur("t0ken", uuid));
            assert_eq!(
                err,
                format!(
                    "offerings[0].waldur_offering_uuid: {uuid:?} is not a UUID (32 hexadecimal digits, with or without dashes); copy it from the offering's page in Waldur"
                )
            );
        }
        Ok(())
    }

    #[test]
    fn a_blank_waldur_token_is_refused_without_an_oidc_login() -> Result<()> {
        for token in ["\"\"", "\"  \"", "''"] {
            assert_eq!(
                error_of(&with_waldur(token, "d629d5e45567425da9cdbdc1af67b32c")),
                "offerings[0].waldur_api_token: blank (or log into Waldur by OIDC: oidc_token_url, oidc_client_id and oidc_client_secret)",
                "{token}"
            );
        }
        // Absent is another matter: the commands that write say it is missing.
        AgentConfig::parse(MINIMAL)?;
        Ok(())
    }

    #[test]
    fn an_offering_given_twice_is_refused() -> Result<()> {
        let offering = |name: &str, url: &str, uuid: &str| {
            MINIMAL.replace("offerings:\n", "").replace("name: compute", &format!("name: {name}")).replace(
                "    backend_type:",
                &format!("    waldur_api_url: {url:?}\n    waldur_api_token: t\n    waldur_offering_uuid: {uuid:?}\n    backend_type:"),
            )
        };
        let uuid = "d629d5e45567425da9cdbdc1af67b32c";
        let dashed = "d629d5e4-5567-425d-a9cd-bdc1af67b32c";
        let other = "8a3b2c1d0e9f48a7b6c5d4e3f2a1b0c9";
        let url = "https://waldur.example/api/";
        let twice = format!("offerings:\n{}{}", offering("a", url, uuid), offering("a", url, other));
        assert_eq!(
            error_of(&twice),
            "offerings[1].name: \"a\" is also the name of offerings[0]; give each offering once, under its own name"
        );
        let twice =
            format!("offerings:\n{}{}", offering("a", url, uuid), offering("b", "https://waldur.example/api", dashed));
        assert_eq!(
            error_of(&twice),
            "offerings[1].waldur_offering_uuid: the same offering as offerings[0] (same UUID on the same Waldur); give each offering once"
        );
        // The same UUID on another Waldur is another offering.
        let two =
            format!("offerings:\n{}{}", offering("a", url, uuid), offering("b", "https://staging.example/api/", uuid));
        assert_eq!(AgentConfig::parse(&two)?.offerings.len(), 2);
        Ok(())
    }

    #[test]
    fn log_level_must_be_a_level() -> Result<()> {
        for level in ["DEBUG", "info", "Warning", "ERROR", "CRITICAL", "warn", "trace"] {
            AgentConfig::parse(&format!("log_level: {level}\n{MINIMAL}"))?;
        }
        assert_eq!(
            error_of(&format!("log_level: VERBOSE\n{MINIMAL}")),
            "log_level: \"VERBOSE\" is not a level; use DEBUG, INFO, WARNING, ERROR or CRITICAL"
        );
        Ok(())
    }

    #[test]
    fn waldur_concurrency_has_the_range_of_the_flag() -> Result<()> {
        AgentConfig::parse(&format!("waldur_max_concurrency: {MAX_CONCURRENCY}\n{MINIMAL}"))?;
        for n in ["0", "1025"] {
            assert_eq!(
                error_of(&format!("waldur_max_concurrency: {n}\n{MINIMAL}")),
                "waldur_max_concurrency: must be an integer from 1 to 1024"
            );
        }
        Ok(())
    }

    #[test]
    fn paths_read_at_start_up_must_be_absolute() {
        let text = MINIMAL.replace("storage_tenant: cscs", "ca_bundle: certs/site.pem");
        assert_eq!(
            error_of(&text),
            "offerings[0].backend_settings.ca_bundle: \"certs/site.pem\" is a relative path; write it in full (the agent may start in any folder)"
        );
        let err = error_of(&with_upstream(
            "        urls: [\"https://x\"]\n        auth: {type: bearer, value_file: keys/meter.key}\n",
        ));
        assert_eq!(
            err,
            "offerings[0].backend_settings.upstream.auth.value_file: \"keys/meter.key\" is a relative path; write it in full (the agent may start in any folder)"
        );
    }

    #[test]
    fn the_config_file_is_a_regular_file_of_bounded_size() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let error = |path: &Path| AgentConfig::load(path).err().map(|e| format!("{e:#}")).unwrap_or_default();
        // A device that never ends, and one that blocks: refused without reading.
        assert_eq!(
            error(Path::new("/dev/zero")),
            "cannot read config file /dev/zero: not a regular file (it is a character device)"
        );
        let fifo = dir.path().join("config.fifo");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status()?;
        assert!(made.success());
        assert_eq!(
            error(&fifo),
            format!("cannot read config file {}: not a regular file (it is a FIFO)", fifo.display())
        );
        assert_eq!(
            error(dir.path()),
            format!("cannot read config file {}: not a regular file (it is a folder)", dir.path().display())
        );
        let large = dir.path().join("large.yaml");
        let mut text = MINIMAL.to_owned();
        text.push_str(&format!("# {}\n", "x".repeat(MAX_FILE_BYTES as usize)));
        std::fs::write(&large, text)?;
        assert_eq!(
            error(&large),
            format!("cannot read config file {}: larger than 4096 KiB; is it the right file?", large.display())
        );
        // A link to a regular file is read.
        let real = dir.path().join("real.yaml");
        std::fs::write(&real, MINIMAL)?;
        let link = dir.path().join("link.yaml");
        std::os::unix::fs::symlink(&real, &link)?;
        assert_eq!(AgentConfig::load(&link)?.offerings.len(), 1);
        Ok(())
    }

    #[test]
    fn unknown_keys_at_any_level_are_warnings_with_the_nearest_key() -> Result<()> {
        let text = format!("reporting_period: 1\nsentry_dsn: x\n{MINIMAL}")
            .replace("    backend_type:", "    waldur_offering_uid: x\n    backend_type:")
            .replace("unit_factor: 1,", "unit_factr: 1,")
            .replace("storage_tenant: cscs", "socks_proxi: \"socks5://x:1\"\n      cscs_dwdi_clustre: alps");
        let config = AgentConfig::parse(&text)?;
        assert_eq!(
            config.warnings,
            [
                "sentry_dsn: waldur-site-agent sends its errors to this Sentry; not done here: errors are log lines (--log-format json for a collector) and usage_agent_* metrics (metrics_listen); ignored",
                "reporting_period: not a key this agent reads; ignored; did you mean reporting_periods?",
                "offerings[0].waldur_offering_uid: not a key this agent reads; ignored; did you mean waldur_offering_uuid?",
                "offerings[0].backend_components.nodeHours.unit_factr: not a key this agent reads; ignored; did you mean unit_factor?",
                "offerings[0].backend_settings.cscs_dwdi_clustre: not a setting of the host or of the DWDI backends; ignored; did you mean cscs_dwdi_cluster?",
                "offerings[0].backend_settings.socks_proxi: not a setting of the host or of the DWDI backends; ignored; did you mean socks_proxy?",
            ]
        );
        // Still read: the misspelt factor is the default.
        assert_eq!(config.offerings[0].backend_components["nodeHours"].unit_factor, 1.0);
        assert!(AgentConfig::parse(MINIMAL)?.warnings.is_empty());
        Ok(())
    }

    #[test]
    fn a_site_backend_s_own_settings_are_not_warned_about_unless_they_look_like_the_host_s() -> Result<()> {
        let text = with_upstream("        urls: [\"https://meter.example.org\"]\n        auth: {type: none}\n")
            .replace("cscs-dwdi-compute", "my-site-usage")
            .replace("storage_tenant: cscs", "my_site_instance: prod\n      socks_proxi: x");
        let config = AgentConfig::parse(&text)?;
        assert_eq!(
            config.warnings,
            [
                "offerings[0].backend_settings.socks_proxi: not a setting of the host; did you mean socks_proxy? (ignored unless my-site-usage reads it)"
            ]
        );
        Ok(())
    }

    #[test]
    fn a_repeated_key_is_a_warning_naming_both_lines() -> Result<()> {
        let text = format!("reporting_periods: 3\nreporting_periods: 1\n{MINIMAL}");
        let config = AgentConfig::parse(&text)?;
        assert_eq!(
            config.warnings,
            [
                "reporting_periods: given twice, at lines 1 and 2; the one at line 2 is used (as the Python agent reads it), remove the other"
            ]
        );
        Ok(())
    }

    #[test]
    fn a_pin_for_a_backend_type_nobody_uses_is_a_warning() -> Result<()> {
        let digest = "ab".repeat(32);
        let text = format!("plugins:\n  cscs-dwdi-compte:\n    sha256: {digest}\n{MINIMAL}");
        let warnings = AgentConfig::parse(&text)?.warnings;
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].starts_with("plugins.cscs-dwdi-compte: no offering uses this backend type and none is built in, so the pin guards nothing"),
            "{warnings:?}"
        );
        Ok(())
    }
}
