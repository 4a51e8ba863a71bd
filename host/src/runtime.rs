//! Running usage-backend components in wasmtime.
//!
//! A component is compiled once and instantiated afresh for every call, in a store of
//! its own: no state survives between calls, so a call that traps or misbehaves
//! leaves nothing behind. The WASI context is empty (no directories, environment,
//! arguments, sockets or stdin, and a wall clock stopped at the epoch); the only way
//! out is `wasi:http`, which goes through [`crate::egress`]. What a component prints
//! goes to the host log ([`output`]); what it may use per call is bounded ([`limits`]).
//! A component of any contract version the host serves ([`contract`]) is called through
//! that version's binding; everything outside this module sees the current one.

mod contract;
mod describe;
mod limits;
mod output;
mod v2;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow};
use sha2::{Digest as _, Sha256};
use wasmtime::component::{Component, InstancePre, Linker, ResourceTable};
use wasmtime::{Config, Engine, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use crate::config::ComponentLimits;
use crate::egress::{CallTally, ComponentHooks, Egress};
pub use contract::{Contract, ExportError, WIT_PACKAGE, contract_of};
pub use describe::{DescriptionError, check_backend_types, check_description};
use limits::CallGuard;
pub(crate) use limits::size as size_text;
pub use limits::{Limit, LimitExceeded, ResultSize};
use output::{ComponentOutput, Stream};

/// How often the engine's epoch advances: guest code is interrupted at most this long
/// after its deadline, and yields to other tasks this often. Short, because a guest
/// parsing a large answer would otherwise hold an executor thread, and with it the
/// Waldur writes queued there, for a whole tick.
const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Longest error message of a component kept, and longest composed error line made of
/// one: a component must not fill the log.
const MAX_MESSAGE_BYTES: usize = 4096;
/// Longest `endpoint` of an upstream-status error kept.
const MAX_ENDPOINT_BYTES: usize = 512;
/// Longest backend id, component name or username of a report kept. Waldur's own fields
/// are far shorter (a `backend_id` has at most 255 characters), so a longer one can only
/// be refused or unmatched downstream, never a value that lands.
const MAX_IDENTIFIER_BYTES: usize = 1024;

mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "backend",
        exports: { default: async },
    });
}

/// The current contract's types, which the whole host speaks.
pub use bindings::exports::waldur::usage::reporting as wit;
use bindings::exports::waldur::usage::usage_traits;

/// A component linked to the host's imports through its contract's binding.
pub(crate) enum Linked {
    /// 3.x: `reporting`, and `usage-traits` from 3.1.0 on (a 3.0.0 component has none;
    /// the current binding serves every 3.x, the lookup of its exports being
    /// semver-compatible).
    V3 {
        pre: InstancePre<CallState>,
        reporting: wit::GuestIndices,
        traits: Option<usage_traits::GuestIndices>,
    },
    V2(v2::BackendPre<CallState>),
}

/// A live instance's exports, through its contract's binding.
enum Bindings {
    /// `usage-traits` is looked up only when asked (once, at load), not for every call.
    V3 {
        reporting: wit::Guest,
        instance: wasmtime::component::Instance,
        traits: Option<usage_traits::GuestIndices>,
    },
    V2(v2::Backend),
}

/// What a backend says about its numbers (`usage-traits`); a component of a contract
/// without that interface gets the defaults.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UsageTraits {
    /// Its values for a resource and month may go down; when false, the host refuses a
    /// value lower than Waldur holds (`sync`'s anomaly rule).
    pub usage_may_decrease: bool,
}

/// What one call's store holds.
pub(crate) struct CallState {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    hooks: ComponentHooks,
    guard: CallGuard,
    stderr: ComponentOutput,
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

/// The engine and linker shared by every component, and the limits of every call.
#[derive(Clone)]
pub struct Runtime {
    engine: Engine,
    linker: Arc<Linker<CallState>>,
    /// `None` only for benchmarks measuring what the limits cost.
    limits: Option<Arc<ComponentLimits>>,
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
    /// The component linked to the host's imports once, so each call only
    /// instantiates it.
    pub(crate) linked: Linked,
    /// The version of `waldur:usage` it was built against, from its export's name.
    pub wit_version: String,
    pub info: wit::BackendInfo,
    pub traits: UsageTraits,
    pub source: Source,
    pub sha256: String,
    pub size: usize,
    pub loaded_at: std::time::SystemTime,
}

/// What a component said about itself when it was loaded, and how to call it.
pub(crate) struct Described {
    pub(crate) linked: Linked,
    pub(crate) info: wit::BackendInfo,
    pub(crate) traits: UsageTraits,
}

impl LoadedBackend {
    /// A component loaded now from `source`, whose bytes have `sha256` and `size`.
    pub(crate) fn new(
        component: Component,
        described: Described,
        wit_version: String,
        source: Source,
        sha256: String,
        size: usize,
    ) -> Self {
        let Described { linked, info, traits } = described;
        Self {
            component,
            linked,
            wit_version,
            info,
            traits,
            source,
            sha256,
            size,
            loaded_at: std::time::SystemTime::now(),
        }
    }
}

impl std::fmt::Debug for LoadedBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedBackend")
            .field("name", &self.info.name)
            .field("version", &self.info.version)
            .field("source", &self.source)
            .field("sha256", &self.sha256)
            .field("wit_version", &self.wit_version)
            .field("traits", &self.traits)
            .finish()
    }
}

/// A failed component call.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The component answered with an error of the contract; `upstream` is what it calls
    /// the system it reads (empty: "the upstream").
    #[error("{}", describe_backend_error(upstream, error))]
    Backend { upstream: String, error: wit::BackendError },
    /// The component broke a limit of its call; it was stopped, its instance discarded.
    #[error("{0}")]
    Limit(LimitExceeded),
    /// The component could not run or broke the sandbox's rules (trap, link).
    #[error("{0:#}")]
    Sandbox(anyhow::Error),
}

/// The operator's line for a component's error, capped after it is composed (each part
/// was already escaped and capped by [`safe_error`] when it was lifted, the upstream's
/// name checked with the component's description).
fn describe_backend_error(upstream: &str, error: &wit::BackendError) -> String {
    let upstream = if upstream.is_empty() { "the upstream" } else { upstream };
    let mut composed = match error {
        wit::BackendError::InvalidConfig(m) => format!("invalid configuration: {m}"),
        wit::BackendError::InvalidRequest(m) => format!("invalid request: {m}"),
        wit::BackendError::Unauthorized(m) => format!("credentials refused: {m}"),
        wit::BackendError::UpstreamStatus(s) => {
            format!("{upstream} answered HTTP {} at {}: {}", s.status, s.endpoint, s.message)
        }
        wit::BackendError::BadResponse(m) => format!("{upstream} sent an answer the backend cannot use: {m}"),
        wit::BackendError::Transport(m) => format!("{upstream} could not be reached: {m}"),
        wit::BackendError::Unsupported(m) => format!("unsupported: {m}"),
    };
    cap(&mut composed, MAX_MESSAGE_BYTES);
    composed
}

/// A digest as lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

impl Runtime {
    /// A runtime with the default [`ComponentLimits`].
    pub fn new() -> Result<Self> {
        Self::with_limits(ComponentLimits::default())
    }

    /// A runtime whose every component call is held to `limits`.
    pub fn with_limits(limits: ComponentLimits) -> Result<Self> {
        limits.check()?;
        Self::build(Some(limits))
    }

    /// A runtime without limits: no epoch checks compiled in, no memory accounting, no
    /// timeout. Only for benchmarks that measure what the limits cost.
    pub fn without_limits() -> Result<Self> {
        Self::build(None)
    }

    fn build(limits: Option<ComponentLimits>) -> Result<Self> {
        let mut config = Config::new();
        config.wasm_component_model(true);
        // Epoch checks are compiled into loops and function entries: the only way to
        // stop guest code that never calls the host.
        config.epoch_interruption(limits.is_some());
        let engine = Engine::new(&config).map_err(anyhow::Error::from).context("cannot start wasmtime")?;
        let mut linker = Linker::<CallState>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(anyhow::Error::from).context("linking WASI")?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)
            .map_err(anyhow::Error::from)
            .context("linking wasi:http")?;
        if limits.is_some() {
            start_epoch_ticker(&engine)?;
        }
        Ok(Self { engine, linker: Arc::new(linker), limits: limits.map(Arc::new) })
    }

    /// The limits of every call, `None` for [`Runtime::without_limits`].
    pub fn limits(&self) -> Option<&ComponentLimits> {
        self.limits.as_deref()
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
        let (contract, wit_version) = contract_of(&self.engine, &component).map_err(|e| anyhow!("{source}: {e}"))?;
        let imports = self.check_imports(&component).with_context(|| format!("{source}: cannot instantiate"))?;
        let described =
            self.describe_component(imports, contract).await.map_err(|e| anyhow!("{source}: describe failed: {e}"))?;
        check_description(&described.info).map_err(|e| anyhow!("{source}: refused: {e}"))?;
        Ok(LoadedBackend::new(component, described, wit_version, source, sha256_hex(bytes), bytes.len()))
    }

    async fn instantiate(&self, linked: &Linked, hooks: ComponentHooks) -> Result<Instance> {
        let name = hooks.component().to_owned();
        let stderr = ComponentOutput::new(&name, Stream::Stderr);
        let wasi = WasiCtx::builder()
            .wall_clock(StoppedClock)
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .stdout(ComponentOutput::new(&name, Stream::Stdout))
            .stderr(stderr.clone())
            .build();
        let guard = CallGuard::new(&name, self.limits());
        let mut http = WasiHttpCtx::new();
        let mut table = ResourceTable::new();
        if let Some(limits) = self.limits() {
            // What the host holds for the component is its memory (`limits::HostHeld`):
            // each header map bounded, the table's entries too (a backstop).
            http.set_field_size_limit(limits::HEADER_MAP_BYTES);
            table.set_max_capacity(limits::table_capacity(limits));
        }
        let state = CallState { wasi, http, table, hooks, guard, stderr };
        let mut store = Store::new(&self.engine, state);
        // The state, not the guard alone: what the host holds counts too (`limits`).
        store.limiter(|state| state);
        if self.limits.is_some() {
            // Every tick: past the deadline the guest traps; before it, it yields so a
            // busy component never holds an executor thread for more than one tick.
            store.set_epoch_deadline(1);
            store.epoch_deadline_callback(|mut context| match context.data_mut().guard.check_time() {
                Ok(()) => Ok(wasmtime::UpdateDeadline::Yield(1)),
                Err(exceeded) => Err(wasmtime::Error::new(exceeded)),
            });
            // Whatever a host call left the host holding for the component is measured
            // before the guest runs on: past the memory limit, the call traps there.
            store.call_hook(|mut context, hook| match hook {
                wasmtime::CallHook::ReturningFromHost => {
                    limits::after_host_call(context.data_mut()).map_err(wasmtime::Error::new)
                }
                _ => Ok(()),
            });
        }
        let instantiated = match linked {
            Linked::V3 { pre, reporting, traits } => match pre.instantiate_async(&mut store).await {
                Ok(instance) => reporting.load(&mut store, &instance).map(|reporting| Bindings::V3 {
                    reporting,
                    instance,
                    traits: traits.clone(),
                }),
                Err(error) => Err(error),
            },
            Linked::V2(pre) => pre.instantiate_async(&mut store).await.map(Bindings::V2),
        };
        match instantiated {
            Ok(bindings) => Ok(Instance { store, bindings }),
            Err(error) => {
                let limits = self.limits().cloned().unwrap_or_default();
                let broken = store
                    .data_mut()
                    .guard
                    .broken
                    .take()
                    .or_else(|| LimitExceeded::from_wasmtime_message(&name, &format!("{error:#}"), &limits));
                match broken {
                    Some(exceeded) => Err(anyhow::Error::new(exceeded)),
                    None => Err(anyhow!("{error:#}")),
                }
            }
        }
    }
}

/// A 3.x component's exports: `reporting`, and `usage-traits` when it has that
/// interface at all (3.1.0 on); one it has in another shape is refused.
fn link_v3(pre: InstancePre<CallState>) -> wasmtime::Result<Linked> {
    let reporting = wit::GuestIndices::new(&pre)?;
    let traits_export = format!("{WIT_PACKAGE}/usage-traits@{}", Contract::V3.version());
    let traits = match pre.component().get_export_index(None, &traits_export) {
        Some(_) => Some(usage_traits::GuestIndices::new(&pre)?),
        None => None,
    };
    Ok(Linked::V3 { pre, reporting, traits })
}

/// Advances the engine's epoch every [`EPOCH_TICK`] for as long as the engine lives.
fn start_epoch_ticker(engine: &Engine) -> Result<()> {
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("wasm-epoch".to_owned())
        .spawn(move || {
            loop {
                std::thread::sleep(EPOCH_TICK);
                match weak.upgrade() {
                    Some(engine) => engine.increment_epoch(),
                    None => return,
                }
            }
        })
        .context("cannot start the epoch ticker thread")?;
    Ok(())
}

/// What a failed call of guest code was: a broken limit, or a trap described with the
/// last lines the component wrote to stderr (a Rust panic's message is among them).
fn trap_error(component: &str, store: &mut Store<CallState>, error: wasmtime::Error) -> CallError {
    if let Some(exceeded) = store.data_mut().guard.broken.take() {
        return CallError::Limit(exceeded);
    }
    if let Some(exceeded) = error.downcast_ref::<LimitExceeded>() {
        return CallError::Limit(exceeded.clone());
    }
    if let Some(exceeded) = LimitExceeded::from_http_trap(component, &error) {
        exceeded.warn();
        return CallError::Limit(exceeded);
    }
    // A host call that found the resource table full traps with wasmtime's words; every
    // entry counts toward the memory limit, so that is the limit broken.
    let state = store.data_mut();
    let capacity = state.table.max_capacity();
    let held = limits::HostHeld::measure(&mut state.table, state.hooks.in_flight_bytes());
    if state.guard.is_limited() && held.entries() >= capacity as u64 {
        return CallError::Limit(state.guard.table_full(held, capacity));
    }
    let said = store
        .data()
        .stderr
        .last_lines()
        .map(|lines| format!(" (its last words on stderr: {lines})"))
        .unwrap_or_default();
    // The wasm backtrace is for developers; the operator's line names the trap.
    tracing::debug!(component, "trap details: {error:?}");
    let cause = match error.downcast_ref::<wasmtime::Trap>() {
        Some(trap) => trap.to_string(),
        None => one_line(&format!("{error:#}")),
    };
    CallError::Sandbox(anyhow!("component {component} trapped: {cause}{said}"))
}

/// `text` on one line: a log line or refusal stays one line, whatever wasmtime or a
/// guest wrote.
pub(crate) fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// A failed instantiation: a broken limit keeps its type.
fn instantiate_error(error: anyhow::Error) -> CallError {
    match error.downcast::<LimitExceeded>() {
        Ok(exceeded) => CallError::Limit(exceeded),
        Err(other) => CallError::Sandbox(other),
    }
}

/// `text` as [`make_safe`] would show it, leaving `text` as it is.
pub(crate) fn shown_safe(text: &str, max: usize) -> String {
    let mut shown = text.to_owned();
    make_safe(&mut shown, max);
    shown
}

/// True when `text` holds no character that [`make_safe`] escapes.
pub(crate) fn is_plain(text: &str) -> bool {
    !text.chars().any(output::needs_escape)
}

/// Makes a string a component handed the host safe to log or print, in place: control
/// and invisible characters escaped (`output::escape_controls`: a `\n` or an ESC can
/// no longer forge a log line or drive a terminal), then cut to `max` bytes. Every
/// component-supplied string passes here once, where the host lifts a call's result
/// ([`Lifted`]), so nothing downstream (the sync engine, the CLI, the logs) needs to;
/// usernames alone are checked instead (`sync::answer`), since they are written to
/// Waldur. Strings that need nothing are left as they are, without a copy.
pub(crate) fn make_safe(text: &mut String, max: usize) {
    if text.chars().any(output::needs_escape) {
        *text = output::escape_controls(text);
    }
    cap(text, max);
}

/// Cuts `text` to at most `max` bytes (on a character boundary), saying how much went.
fn cap(text: &mut String, max: usize) {
    if text.len() <= max {
        return;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let more = text.len() - end;
    text.truncate(end);
    text.push_str(&format!("… ({more} more bytes)"));
}

/// A component's error with every string made safe ([`make_safe`]).
fn safe_error(error: wit::BackendError) -> wit::BackendError {
    let safe = |mut message: String, max: usize| {
        make_safe(&mut message, max);
        message
    };
    match error {
        wit::BackendError::InvalidConfig(m) => wit::BackendError::InvalidConfig(safe(m, MAX_MESSAGE_BYTES)),
        wit::BackendError::InvalidRequest(m) => wit::BackendError::InvalidRequest(safe(m, MAX_MESSAGE_BYTES)),
        wit::BackendError::Unauthorized(m) => wit::BackendError::Unauthorized(safe(m, MAX_MESSAGE_BYTES)),
        wit::BackendError::BadResponse(m) => wit::BackendError::BadResponse(safe(m, MAX_MESSAGE_BYTES)),
        wit::BackendError::Transport(m) => wit::BackendError::Transport(safe(m, MAX_MESSAGE_BYTES)),
        wit::BackendError::Unsupported(m) => wit::BackendError::Unsupported(safe(m, MAX_MESSAGE_BYTES)),
        wit::BackendError::UpstreamStatus(mut s) => {
            s.endpoint = safe(s.endpoint, MAX_ENDPOINT_BYTES);
            s.message = safe(s.message, MAX_MESSAGE_BYTES);
            wit::BackendError::UpstreamStatus(s)
        }
    }
}

/// A call's successful result, lifted from the component: its strings made safe before
/// the host uses them.
pub trait Lifted {
    fn make_safe(&mut self);
}

impl Lifted for () {
    fn make_safe(&mut self) {}
}

impl Lifted for wit::Report {
    fn make_safe(&mut self) {
        for resource in &mut self.resources {
            make_safe(&mut resource.backend_id, MAX_IDENTIFIER_BYTES);
            for amount in &mut resource.totals {
                make_safe(&mut amount.component, MAX_IDENTIFIER_BYTES);
            }
            // Usernames are checked, not changed (`sync::answer`): a changed name would
            // be written to Waldur as if the component had said it.
            for user in &mut resource.users {
                for amount in &mut user.amounts {
                    make_safe(&mut amount.component, MAX_IDENTIFIER_BYTES);
                }
            }
        }
    }
}

/// One live instance, used for exactly one call.
pub(crate) struct Instance {
    store: Store<CallState>,
    bindings: Bindings,
}

/// What a call of an export gives: a trap, or the component's answer.
type Answer<T> = wasmtime::Result<Result<T, wit::BackendError>>;

// Each export, called through the instance's binding: a 2.0.0 component gets its
// arguments converted down and its answer converted up (`v2`).
impl Instance {
    async fn call_describe(&mut self) -> wasmtime::Result<wit::BackendInfo> {
        match &self.bindings {
            Bindings::V3 { reporting: b, .. } => b.call_describe(&mut self.store).await,
            Bindings::V2(b) => b.waldur_usage_usage_backend().call_describe(&mut self.store).await.map(v2::info),
        }
    }

    pub(crate) async fn setup(&mut self, config: &wit::Config) -> Answer<()> {
        match &self.bindings {
            Bindings::V3 { reporting: b, .. } => b.call_setup(&mut self.store, config).await,
            Bindings::V2(b) => {
                let config = match v2::config(config) {
                    Ok(config) => config,
                    Err(refused) => return Ok(Err(refused)),
                };
                Ok(b.waldur_usage_usage_backend().call_setup(&mut self.store, &config).await?.map_err(v2::error))
            }
        }
    }

    pub(crate) async fn ping(&mut self, config: &wit::Config, today: wit::Date) -> Answer<()> {
        match &self.bindings {
            Bindings::V3 { reporting: b, .. } => b.call_ping(&mut self.store, config, today).await,
            Bindings::V2(b) => {
                let config = match v2::config(config) {
                    Ok(config) => config,
                    Err(refused) => return Ok(Err(refused)),
                };
                let answer =
                    b.waldur_usage_usage_backend().call_ping(&mut self.store, &config, v2::date(today)).await?;
                Ok(answer.map_err(v2::error))
            }
        }
    }

    pub(crate) async fn usage_report(
        &mut self,
        config: &wit::Config,
        resources: &[wit::WaldurResource],
        period: wit::BillingPeriod,
    ) -> Answer<wit::Report> {
        match &self.bindings {
            Bindings::V3 { reporting: b, .. } => b.call_usage_report(&mut self.store, config, resources, period).await,
            Bindings::V2(b) => {
                let config = match v2::config(config) {
                    Ok(config) => config,
                    Err(refused) => return Ok(Err(refused)),
                };
                let resources = v2::resources(resources);
                let guest = b.waldur_usage_usage_backend();
                let answer = guest.call_usage_report(&mut self.store, &config, &resources, v2::period(period)).await?;
                Ok(answer.map(v2::report).map_err(v2::error))
            }
        }
    }

    pub(crate) async fn daily_report(
        &mut self,
        config: &wit::Config,
        resources: &[wit::WaldurResource],
        first: wit::Date,
        last: wit::Date,
    ) -> Answer<wit::Report> {
        match &self.bindings {
            Bindings::V3 { reporting: b, .. } => {
                b.call_daily_report(&mut self.store, config, resources, first, last).await
            }
            Bindings::V2(b) => {
                let config = match v2::config(config) {
                    Ok(config) => config,
                    Err(refused) => return Ok(Err(refused)),
                };
                let resources = v2::resources(resources);
                let (first, last) = (v2::date(first), v2::date(last));
                let guest = b.waldur_usage_usage_backend();
                let answer = guest.call_daily_report(&mut self.store, &config, &resources, first, last).await?;
                Ok(answer.map(v2::report).map_err(v2::error))
            }
        }
    }
}

impl Instance {
    /// What the component says about its numbers; the defaults without `usage-traits`.
    async fn call_traits(&mut self) -> wasmtime::Result<UsageTraits> {
        match &self.bindings {
            Bindings::V3 { instance, traits: Some(traits), .. } => {
                let traits = traits.load(&mut self.store, instance)?;
                Ok(UsageTraits { usage_may_decrease: traits.call_usage_may_decrease(&mut self.store).await? })
            }
            _ => Ok(UsageTraits::default()),
        }
    }

    /// The component's description and traits, within the call limits like any call.
    async fn describe(mut self, limits: Option<&ComponentLimits>) -> Result<(wit::BackendInfo, UsageTraits)> {
        let name = self.store.data().hooks.component().to_owned();
        let call = async {
            let info = self.call_describe().await?;
            Ok((info, self.call_traits().await?))
        };
        let outcome = match limits {
            Some(limits) => tokio::time::timeout(limits.call_timeout(), call)
                .await
                .map_err(|_| anyhow::Error::new(LimitExceeded::time(&name, limits.call_timeout())))?,
            None => call.await,
        };
        let (info, traits) = match outcome {
            Ok(described) => described,
            Err(error) => return Err(anyhow!("{}", trap_error(&name, &mut self.store, error))),
        };
        limits::check_result_size(&name, limits, &info)?;
        Ok((info, traits))
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

    /// The component this binding calls.
    pub fn backend(&self) -> &Arc<LoadedBackend> {
        &self.backend
    }

    pub fn egress(&self) -> &Arc<Egress> {
        &self.egress
    }

    /// Runs one export on a fresh instance within the call limits (see
    /// [`Runtime::call_export`]), with the offering's egress, on a task of its own: guest
    /// code holds a thread for up to an epoch tick at a time, and the caller's task (a
    /// sync run with its Waldur writes) goes on meanwhile on another. Dropping the
    /// returned future stops the call, as before.
    async fn call<T, F>(&self, call: F) -> Result<T, CallError>
    where
        T: ResultSize + Lifted + Send + 'static,
        F: for<'a> FnOnce(&'a mut Instance) -> std::pin::Pin<Box<dyn Future<Output = Answer<T>> + Send + 'a>>
            + Send
            + 'static,
    {
        let this = self.clone();
        let run = async move { this.runtime.call_export(&this.backend, Some(this.egress.clone()), call).await };
        let task = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(tracing::Instrument::instrument(
            run,
            tracing::Span::current(),
        )));
        match task.await {
            Ok(result) => result,
            Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
            Err(error) => Err(CallError::Sandbox(anyhow::anyhow!("component call stopped: {error}"))),
        }
    }

    /// Validates the offering's config with the component; makes no request.
    pub async fn setup(&self) -> Result<(), CallError> {
        let config = self.config.clone();
        self.call(move |instance| Box::pin(async move { instance.setup(&config).await })).await
    }

    /// Whether the component measures `component` of the offering's config: its setup
    /// with that component alone. A component that is not `usage` and that the backend
    /// cannot measure is left out of reports, not refused.
    pub async fn measures(&self, component: &str) -> bool {
        let mut alone = self.clone();
        alone.config.components.retain(|c| c.name == component);
        alone.setup().await.is_ok()
    }

    /// Checks that the upstream answers its reachability request about `today` with a success.
    pub async fn ping(&self, today: wit::Date) -> Result<(), CallError> {
        let config = self.config.clone();
        self.call(move |instance| Box::pin(async move { instance.ping(&config, today).await })).await
    }

    /// Usage of `resources` in a billing month.
    pub async fn usage_report(
        &self,
        resources: Vec<wit::WaldurResource>,
        period: wit::BillingPeriod,
    ) -> Result<wit::Report, CallError> {
        let config = self.config.clone();
        self.call(move |instance| Box::pin(async move { instance.usage_report(&config, &resources, period).await }))
            .await
    }

    /// Usage of `resources` over a range of days.
    pub async fn daily_report(
        &self,
        resources: Vec<wit::WaldurResource>,
        first: wit::Date,
        last: wit::Date,
    ) -> Result<wit::Report, CallError> {
        let config = self.config.clone();
        self.call(move |instance| {
            Box::pin(async move { instance.daily_report(&config, &resources, first, last).await })
        })
        .await
    }
}

use std::future::Future;

/// A transport error with the host's view of the call's failed requests (the first few,
/// and how many more), composed before [`safe_error`] escapes and caps it.
fn enrich(error: wit::BackendError, tally: &Mutex<CallTally>) -> wit::BackendError {
    let seen = tally.lock().ok().and_then(|tally| tally.failures_text());
    match (error, seen) {
        (wit::BackendError::Transport(message), Some(seen)) => {
            wit::BackendError::Transport(format!("{message} (host: {seen})"))
        }
        (other, _) => other,
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
                options: c
                    .options()
                    .map(|(key, value)| wit::ComponentOption { key: key.to_owned(), value: value.to_owned() })
                    .collect(),
            })
            .collect(),
    }
}

// What the plugins folder needs to validate a component before it may serve
// (see `crate::plugins`): each step on a component that is compiled but not in service.
impl Runtime {
    /// Fails, naming the import, when `component` imports anything the sandbox does
    /// not provide (or provides with another type).
    pub(crate) fn check_imports(&self, component: &Component) -> Result<InstancePre<CallState>> {
        self.linker.instantiate_pre(component).map_err(|e| anyhow!("{e:#}"))
    }

    /// Asks a component whose imports are linked to describe itself (and, from 3.1.0,
    /// what its numbers may do), on a fresh instance with no egress; also returns it
    /// ready to instantiate for every later call.
    pub(crate) async fn describe_component(
        &self,
        imports: InstancePre<CallState>,
        contract: Contract,
    ) -> Result<Described> {
        let linked = match contract {
            Contract::V3 => link_v3(imports),
            Contract::V2 => v2::BackendPre::new(imports).map(Linked::V2),
        }
        .map_err(|e| anyhow!("{e:#}"))?;
        let instance = self.instantiate(&linked, ComponentHooks::new("(describe)", None)).await?;
        let (info, traits) = instance.describe(self.limits()).await?;
        Ok(Described { linked, info, traits })
    }

    /// Calls `setup` with `config` on a fresh instance with no egress, within the call
    /// limits like any call: setup makes no request, so any attempt is refused.
    pub async fn check_setup(&self, backend: &LoadedBackend, config: &wit::Config) -> Result<(), CallError> {
        let config = config.clone();
        self.call_export(backend, None, move |instance| Box::pin(async move { instance.setup(&config).await })).await
    }

    /// Runs one export of `backend` on a fresh instance within the call limits, adding
    /// the host's view of any failed request to a transport error so the operator sees
    /// the real cause. The instance is dropped when the call ends, however it ends: with
    /// it go its memory and every HTTP request it still had in flight. Without `egress`
    /// every request is refused.
    async fn call_export<T, F>(
        &self,
        backend: &LoadedBackend,
        egress: Option<Arc<Egress>>,
        call: F,
    ) -> Result<T, CallError>
    where
        T: ResultSize + Lifted,
        F: for<'a> FnOnce(&'a mut Instance) -> std::pin::Pin<Box<dyn Future<Output = Answer<T>> + Send + 'a>>,
    {
        let name = &backend.info.name;
        let hooks = ComponentHooks::new(name, egress.clone());
        let tally = hooks.tally();
        let run = async {
            let mut instance = self.instantiate(&backend.linked, hooks).await.map_err(instantiate_error)?;
            match call(&mut instance).await {
                Ok(outcome) => Ok(outcome),
                Err(error) => Err(trap_error(name, &mut instance.store, error)),
            }
        };
        let limits = self.limits();
        // The epoch stops guest code; this stops everything else, such as a component
        // waiting forever on an HTTP answer or a clock.
        let outcome = match limits {
            Some(limits) => tokio::time::timeout(limits.call_timeout(), run).await.unwrap_or_else(|_| {
                let exceeded = LimitExceeded::time(name, limits.call_timeout());
                exceeded.warn();
                Err(CallError::Limit(exceeded))
            }),
            None => run.await,
        };
        // However the call ended: what its requests ran into beyond the first few lines.
        if let (Some(egress), Ok(tally)) = (&egress, tally.lock()) {
            egress.log_call(name, &tally);
        }
        let outcome = outcome?;
        limits::check_result_size(name, limits, &outcome).map_err(CallError::Limit)?;
        // The boundary: from here on every string the component returned is safe to
        // log and print.
        match outcome {
            Ok(mut value) => {
                value.make_safe();
                Ok(value)
            }
            Err(error) => Err(CallError::Backend {
                upstream: backend.info.upstream.clone(),
                error: safe_error(enrich(error, &tally)),
            }),
        }
    }
}

impl OfferingBackend {
    /// The same offering served by `backend` from now on. The egress (and with it the
    /// token cache and counters) is shared with `self`.
    pub fn with_backend(&self, backend: Arc<LoadedBackend>) -> Self {
        Self { backend, ..self.clone() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn component_text_is_escaped_then_capped() {
        let mut clean = "plain text, grüße".to_owned();
        make_safe(&mut clean, 100);
        assert_eq!(clean, "plain text, grüße");
        let mut forged = "ok\r\n2026-01-01 ERROR forged\u{1b}[2J".to_owned();
        make_safe(&mut forged, 100);
        assert_eq!(forged, "ok\\r\\n2026-01-01 ERROR forged\\u{1b}[2J");
        // Cut after escaping, on a character boundary, saying how much went.
        let mut long = format!("{}\n", "é".repeat(10));
        make_safe(&mut long, 5);
        assert_eq!(long, "éé… (18 more bytes)");
    }

    #[test]
    fn errors_are_safe_parts_and_capped_once_composed() {
        let big = format!("a\nb{}", "x".repeat(10_000));
        let status = wit::UpstreamStatus { status: 500, endpoint: big.clone(), message: big.clone() };
        let safe = safe_error(wit::BackendError::UpstreamStatus(status));
        let wit::BackendError::UpstreamStatus(parts) = &safe else { panic!("{safe:?}") };
        assert!(parts.endpoint.starts_with("a\\nb") && parts.endpoint.len() < MAX_ENDPOINT_BYTES + 30);
        assert!(parts.message.len() < MAX_MESSAGE_BYTES + 30);
        let line = describe_backend_error("", &safe);
        assert!(line.starts_with("the upstream answered HTTP 500 at a\\nbxxx"), "{line}");
        assert!(describe_backend_error("DWDI", &safe).starts_with("DWDI answered HTTP 500 at "));
        assert!(line.len() < MAX_MESSAGE_BYTES + 30 && line.ends_with("more bytes)"), "{} bytes", line.len());
        assert!(!line.contains('\n'));
    }

    #[test]
    fn report_strings_are_made_safe() {
        let amount = |c: &str| wit::Amount { component: c.to_owned(), value: 1.0 };
        let mut report = wit::Report {
            resources: vec![wit::ResourceUsage {
                backend_id: "r\n0".to_owned(),
                found: true,
                totals: vec![amount("node\u{1b}")],
                users: vec![wit::UserUsage { username: "u\r".to_owned(), amounts: vec![amount("cpu\u{7}")] }],
            }],
            upstream_requests: 1,
        };
        report.make_safe();
        let r = &report.resources[0];
        assert_eq!((r.backend_id.as_str(), r.totals[0].component.as_str()), ("r\\n0", "node\\u{1b}"));
        // A username is left for the answer checks to refuse, not rewritten.
        assert_eq!((r.users[0].username.as_str(), r.users[0].amounts[0].component.as_str()), ("u\r", "cpu\\u{7}"));
    }
}
