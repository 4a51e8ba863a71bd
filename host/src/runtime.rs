//! Running usage-backend components in wasmtime.
//!
//! A component is compiled once and instantiated afresh for every call, in a store of
//! its own: no state survives between calls, so a call that traps or misbehaves
//! leaves nothing behind. The WASI context is empty (no directories, environment,
//! arguments, sockets or stdin, and a wall clock stopped at the epoch); the only way
//! out is `wasi:http`, which goes through [`crate::egress`].

use std::sync::{Arc, Mutex};

use anyhow::{Context as _, Result, anyhow};
use sha2::{Digest as _, Sha256};
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Config, Engine, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use crate::egress::{ComponentHooks, Egress};

mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "backend",
        exports: { default: async },
    });
}

pub use bindings::exports::waldur::usage::usage_backend as wit;
use bindings::Backend as BackendBindings;

/// The WIT package this host implements; components must share its major version.
pub const WIT_PACKAGE: &str = "waldur:usage";
/// The WIT version the host was built against.
pub const WIT_VERSION: &str = "1.0.0";

/// What one call's store holds.
struct CallState {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    hooks: ComponentHooks,
}

impl WasiView for CallState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl WasiHttpView for CallState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView { ctx: &mut self.http, table: &mut self.table, hooks: &mut self.hooks }
    }
}

/// A wall clock stopped at the Unix epoch: components get the period from the host
/// and have no business reading the time.
struct StoppedClock;

impl wasmtime_wasi::HostWallClock for StoppedClock {
    fn resolution(&self) -> std::time::Duration {
        std::time::Duration::from_secs(1)
    }
    fn now(&self) -> std::time::Duration {
        std::time::Duration::ZERO
    }
}

/// The engine and linker shared by every component.
#[derive(Clone)]
pub struct Runtime {
    engine: Engine,
    linker: Arc<Linker<CallState>>,
}

/// Where a component came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// Built with the host from `guest/`.
    Builtin,
    /// Loaded from a file.
    File(std::path::PathBuf),
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Builtin => f.write_str("built-in"),
            Source::File(path) => write!(f, "{}", path.display()),
        }
    }
}

/// A compiled component and what it says about itself.
pub struct LoadedBackend {
    pub component: Component,
    pub info: wit::BackendInfo,
    pub source: Source,
    pub sha256: String,
    pub size: usize,
    pub loaded_at: std::time::SystemTime,
}

impl std::fmt::Debug for LoadedBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedBackend")
            .field("name", &self.info.name)
            .field("version", &self.info.version)
            .field("source", &self.source)
            .field("sha256", &self.sha256)
            .finish()
    }
}

/// A failed component call.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The component answered with an error of the contract.
    #[error("{}", describe_backend_error(.0))]
    Backend(wit::BackendError),
    /// The component could not run or broke the sandbox's rules (trap, limit, link).
    #[error("{0:#}")]
    Sandbox(anyhow::Error),
}

impl CallError {
    /// True when the upstream API (not the component) failed.
    pub fn is_upstream(&self) -> bool {
        matches!(
            self,
            CallError::Backend(
                wit::BackendError::Unauthorized(_)
                    | wit::BackendError::UpstreamStatus(_)
                    | wit::BackendError::BadResponse(_)
                    | wit::BackendError::Transport(_)
            )
        )
    }
}

fn describe_backend_error(error: &wit::BackendError) -> String {
    match error {
        wit::BackendError::InvalidConfig(m) => format!("invalid configuration: {m}"),
        wit::BackendError::Unauthorized(m) => format!("DWDI refused the credentials: {m}"),
        wit::BackendError::UpstreamStatus(s) => {
            format!("DWDI answered HTTP {} at {}: {}", s.status, s.endpoint, s.message)
        }
        wit::BackendError::BadResponse(m) => format!("DWDI sent an answer the backend cannot use: {m}"),
        wit::BackendError::Transport(m) => format!("DWDI could not be reached: {m}"),
        wit::BackendError::Unsupported(m) => format!("unsupported: {m}"),
    }
}

/// A digest as lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

impl Runtime {
    pub fn new() -> Result<Self> {
        let mut config = Config::new();
        config.wasm_component_model(true);
        let engine = Engine::new(&config).map_err(anyhow::Error::from).context("cannot start wasmtime")?;
        let mut linker = Linker::<CallState>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(anyhow::Error::from).context("linking WASI")?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)
            .map_err(anyhow::Error::from)
            .context("linking wasi:http")?;
        Ok(Self { engine, linker: Arc::new(linker) })
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Compiles `bytes` and asks the component to describe itself.
    pub async fn load(&self, bytes: &[u8], source: Source) -> Result<LoadedBackend> {
        let engine = self.engine.clone();
        let owned = bytes.to_vec();
        // Compiling is CPU-bound and can take a while; keep it off the async workers.
        let component = tokio::task::spawn_blocking(move || Component::new(&engine, &owned))
            .await
            .context("compile task failed")?
            .map_err(|e| anyhow!("{source}: not a usable WebAssembly component: {e:#}"))?;
        let info = self
            .instantiate(&component, ComponentHooks::new("(describe)", None))
            .await
            .with_context(|| format!("{source}: cannot instantiate"))?
            .describe()
            .await
            .map_err(|e| anyhow!("{source}: describe failed: {e}"))?;
        Ok(LoadedBackend {
            component,
            info,
            source,
            sha256: sha256_hex(bytes),
            size: bytes.len(),
            loaded_at: std::time::SystemTime::now(),
        })
    }

    async fn instantiate(&self, component: &Component, hooks: ComponentHooks) -> Result<Instance> {
        let wasi = WasiCtx::builder()
            .wall_clock(StoppedClock)
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        let state = CallState { wasi, http: WasiHttpCtx::new(), table: ResourceTable::new(), hooks };
        let mut store = Store::new(&self.engine, state);
        let bindings = BackendBindings::instantiate_async(&mut store, component, &self.linker)
            .await
            .map_err(|e| anyhow!("{e:#}"))?;
        Ok(Instance { store, bindings })
    }
}

/// One live instance, used for exactly one call.
struct Instance {
    store: Store<CallState>,
    bindings: BackendBindings,
}

impl Instance {
    async fn describe(mut self) -> Result<wit::BackendInfo> {
        self.bindings.waldur_usage_usage_backend().call_describe(&mut self.store).await.map_err(anyhow::Error::from)
    }
}

/// A backend bound to one offering: its component, config and egress.
#[derive(Clone)]
pub struct OfferingBackend {
    runtime: Runtime,
    backend: Arc<LoadedBackend>,
    egress: Arc<Egress>,
    config: wit::Config,
}

impl OfferingBackend {
    pub fn new(runtime: Runtime, backend: Arc<LoadedBackend>, egress: Arc<Egress>, config: wit::Config) -> Self {
        Self { runtime, backend, egress, config }
    }

    pub fn backend(&self) -> &LoadedBackend {
        &self.backend
    }

    pub fn egress(&self) -> &Arc<Egress> {
        &self.egress
    }

    /// Runs one export on a fresh instance, adding the host's view of any failed request
    /// to a transport error so the operator sees the real cause.
    async fn call<T, F>(&self, call: F) -> Result<T, CallError>
    where
        F: for<'a> FnOnce(&'a wit::Guest, &'a mut Store<CallState>) -> std::pin::Pin<Box<dyn Future<Output = wasmtime::Result<Result<T, wit::BackendError>>> + Send + 'a>>,
    {
        let hooks = ComponentHooks::new(&self.backend.info.name, Some(self.egress.clone()));
        let failures = hooks.failures();
        let mut instance = self
            .runtime
            .instantiate(&self.backend.component, hooks)
            .await
            .map_err(CallError::Sandbox)?;
        let guest = instance.bindings.waldur_usage_usage_backend();
        let outcome = call(guest, &mut instance.store)
            .await
            .map_err(|e| CallError::Sandbox(anyhow!("component {} trapped: {e:#}", self.backend.info.name)))?;
        outcome.map_err(|error| CallError::Backend(enrich(error, &failures)))
    }

    /// Validates the offering's config with the component; makes no request.
    pub async fn setup(&self) -> Result<(), CallError> {
        let config = self.config.clone();
        self.call(move |guest, store| Box::pin(async move { guest.call_setup(store, &config).await })).await
    }

    /// Checks that DWDI answers.
    pub async fn ping(&self) -> Result<(), CallError> {
        let config = self.config.clone();
        self.call(move |guest, store| Box::pin(async move { guest.call_ping(store, &config).await })).await
    }

    /// Usage of `resources` in a billing month.
    pub async fn usage_report(&self, resources: Vec<wit::WaldurResource>, period: wit::BillingPeriod) -> Result<wit::Report, CallError> {
        let config = self.config.clone();
        self.call(move |guest, store| {
            Box::pin(async move { guest.call_usage_report(store, &config, &resources, period).await })
        })
        .await
    }

    /// Usage of `resources` over a range of days.
    pub async fn daily_report(&self, resources: Vec<wit::WaldurResource>, first: wit::Date, last: wit::Date) -> Result<wit::Report, CallError> {
        let config = self.config.clone();
        self.call(move |guest, store| {
            Box::pin(async move { guest.call_daily_report(store, &config, &resources, first, last).await })
        })
        .await
    }
}

use std::future::Future;

fn enrich(error: wit::BackendError, failures: &Mutex<Vec<String>>) -> wit::BackendError {
    let seen = failures.lock().map(|list| list.clone()).unwrap_or_default();
    match error {
        wit::BackendError::Transport(message) if !seen.is_empty() => {
            wit::BackendError::Transport(format!("{message} (host: {})", seen.join("; ")))
        }
        other => other,
    }
}

/// The WIT config of an offering, from the agent config.
pub fn wit_config(offering: &crate::config::OfferingConfig) -> wit::Config {
    wit::Config {
        settings_json: offering.component_settings_json(),
        components: offering
            .backend_components
            .iter()
            .map(|(name, c)| wit::Component {
                name: name.clone(),
                measured_unit: c.measured_unit.clone(),
                unit_factor: c.unit_factor,
                reporting_factor: c.unit_factor_reporting,
                accounting_type: c.accounting_type.clone(),
                label: c.label.clone(),
                dwdi_metric: c.dwdi_metric.clone(),
            })
            .collect(),
    }
}

// What the plugins folder needs to validate a component before it may serve
// (see `crate::plugins`): each step on a component that is compiled but not in service.
impl Runtime {
    /// Fails, naming the import, when `component` imports anything the sandbox does
    /// not provide (or provides with another type).
    pub fn check_imports(&self, component: &Component) -> Result<()> {
        self.linker.instantiate_pre(component).map(drop).map_err(|e| anyhow!("{e:#}"))
    }

    /// Asks a compiled component to describe itself, on a fresh instance with no egress.
    pub async fn describe_component(&self, component: &Component) -> Result<wit::BackendInfo> {
        self.instantiate(component, ComponentHooks::new("(describe)", None)).await?.describe().await
    }

    /// Calls `setup` with `config` on a fresh instance with no egress: setup makes no
    /// request, so any attempt is refused.
    pub async fn check_setup(&self, backend: &LoadedBackend, config: &wit::Config) -> Result<(), CallError> {
        let mut instance = self
            .instantiate(&backend.component, ComponentHooks::new(&backend.info.name, None))
            .await
            .map_err(CallError::Sandbox)?;
        let guest = instance.bindings.waldur_usage_usage_backend();
        guest
            .call_setup(&mut instance.store, config)
            .await
            .map_err(|e| CallError::Sandbox(anyhow!("component {} trapped: {e:#}", backend.info.name)))?
            .map_err(CallError::Backend)
    }
}

impl OfferingBackend {
    /// The same offering served by `backend` from now on. The egress (and with it the
    /// token cache and counters) is shared with `self`.
    pub fn with_backend(&self, backend: Arc<LoadedBackend>) -> Self {
        Self { backend, ..self.clone() }
    }

    /// The component this binding calls.
    pub fn loaded(&self) -> &Arc<LoadedBackend> {
        &self.backend
    }
}
