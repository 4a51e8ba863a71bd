//! The per-call limits of a component: memory, tables, instances, time and result size.
//!
//! A component is untrusted code; one that loops, grows without bound or returns a
//! mountain of data must cost the host one failed call, never the process. Memory and
//! tables are checked by wasmtime through [`CallGuard`] (a `ResourceLimiter`) as they
//! grow; time by the engine's epoch (guest code) and a timeout around the whole call
//! (host calls included); the result size once the result is lifted. Whichever limit
//! breaks is recorded so the error names it, with the value and the setting.
//!
//! What the host holds on a component's behalf counts toward the same memory limit
//! ([`HostHeld`]): `wasi:http` header maps, requests built but not sent, body buffers,
//! every other entry of the call's resource table, and the requests in flight. It is
//! measured each time a host call returns to the guest, so the host can only ever
//! overshoot by what one host call allocated.

use std::fmt;
use std::time::{Duration, Instant};

use wasmtime::component::ResourceTable;
use wasmtime_wasi_http::FieldMap;
use wasmtime_wasi_http::p2::body::HostOutgoingBody;
use wasmtime_wasi_http::p2::types::{HostIncomingResponse, HostOutgoingRequest};

use crate::config::ComponentLimits;
use crate::egress::OUTGOING_BODY_CHUNK_BYTES;
use crate::runtime::wit;

/// The most one `wasi:http` header map (`fields`) may hold, in wasi-http's accounting
/// (names and values plus their in-memory headers), and what each counts for: 16 KiB of
/// headers, the most a request may carry (`egress::policy::MAX_HEADER_BYTES`), with
/// room for the accounting of 32 of them.
pub(crate) const HEADER_MAP_BYTES: usize = 20 * 1024;
/// What every other resource of a call counts for: its table entry, its box, and what
/// it points to (a pollable, a stream, a future's task handle).
pub(crate) const ENTRY_BYTES: usize = 1024;
/// The most one host call may add to what the host holds, besides what it copies out of
/// the component's linear memory (which bounds every string and list it is given): a
/// request in flight (its URI at most 64 KiB, its headers at most one map), a copy of
/// an upstream header map made mutable, an entry or two.
const HOST_CALL_GROWTH: u64 = 512 * 1024;

/// Tables and memories a component may define. They are fixed by its structure, not by
/// its input, so no setting: a real component has a handful.
const MAX_TABLES: usize = 64;
const MAX_MEMORIES: usize = 64;

/// Which limit a component broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    Memory,
    TableElements,
    Instances,
    Tables,
    Memories,
    Time,
    ResultSize,
    /// One `wasi:http` header map past [`HEADER_MAP_BYTES`].
    HeaderMap,
}

impl Limit {
    /// The setting that raises it, if there is one.
    pub fn setting(self) -> Option<&'static str> {
        match self {
            Limit::Memory => Some("component_limits.memory_mib"),
            Limit::TableElements => Some("component_limits.table_elements"),
            Limit::Instances => Some("component_limits.instances"),
            Limit::Time => Some("component_limits.call_timeout_seconds"),
            Limit::ResultSize => Some("component_limits.max_result_bytes"),
            Limit::Tables | Limit::Memories | Limit::HeaderMap => None,
        }
    }
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Limit::Memory => "memory",
            Limit::TableElements => "table size",
            Limit::Instances => "instance count",
            Limit::Tables => "table count",
            Limit::Memories => "memory count",
            Limit::Time => "time",
            Limit::ResultSize => "result size",
            Limit::HeaderMap => "header map size",
        })
    }
}

/// A component broke a limit: it was stopped and its instance discarded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct LimitExceeded {
    pub component: String,
    pub limit: Limit,
    /// What it did and what the limit is, e.g. `asked for 513 MiB, limit 512 MiB`.
    pub detail: String,
}

impl fmt::Display for LimitExceeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "component {} stopped: {} limit exceeded: {}", self.component, self.limit, self.detail)?;
        if let Some(setting) = self.limit.setting() {
            write!(f, " (setting {setting})")?;
        }
        Ok(())
    }
}

impl LimitExceeded {
    /// The warning every broken limit gets in the log.
    pub(crate) fn warn(&self) {
        tracing::warn!(component = %self.component, limit = %self.limit, "{self}");
    }

    pub(crate) fn new(component: &str, limit: Limit, detail: String) -> Self {
        Self { component: component.to_owned(), limit, detail }
    }

    /// The call ran past its deadline.
    pub(crate) fn time(component: &str, timeout: Duration) -> Self {
        Self::new(component, Limit::Time, format!("still running after {}", seconds(timeout)))
    }

    /// wasi-http traps when a header map would pass its size limit ([`HEADER_MAP_BYTES`]).
    pub(crate) fn from_http_trap(component: &str, error: &wasmtime::Error) -> Option<Self> {
        match error.downcast_ref::<wasmtime_wasi_http::FieldMapError>()? {
            wasmtime_wasi_http::FieldMapError::TotalSizeTooBig | wasmtime_wasi_http::FieldMapError::TooManyFields => {
                let detail = format!(
                    "a header map would hold more than {}, the most the host keeps for one (a request may carry {} of headers)",
                    size(HEADER_MAP_BYTES as u64),
                    size(crate::egress::policy::MAX_HEADER_BYTES as u64)
                );
                Some(Self::new(component, Limit::HeaderMap, detail))
            }
            _ => None,
        }
    }

    /// Reads wasmtime's own count errors ("resource limit exceeded: instance count too
    /// high at 33"), raised when instantiation needs more than the store allows.
    pub(crate) fn from_wasmtime_message(component: &str, message: &str, limits: &ComponentLimits) -> Option<Self> {
        let rest = message.split("resource limit exceeded: ").nth(1)?;
        let (what, at) = rest.split_once(" count too high at ")?;
        let needed: String = at.chars().take_while(char::is_ascii_digit).collect();
        let (limit, max) = match what {
            "instance" => (Limit::Instances, limits.instances.to_string()),
            "table" => (Limit::Tables, MAX_TABLES.to_string()),
            "memory" => (Limit::Memories, MAX_MEMORIES.to_string()),
            _ => return None,
        };
        Some(Self::new(component, limit, format!("needs at least {needed}, limit {max}")))
    }
}

/// `1.5 s`, `2 s`.
fn seconds(duration: Duration) -> String {
    let secs = duration.as_secs_f64();
    if secs.fract() == 0.0 { format!("{secs:.0} s") } else { format!("{secs:.1} s") }
}

/// `12 MiB`, `1.5 KiB`, `300 bytes`.
pub(crate) fn size(bytes: u64) -> String {
    const KIB: f64 = 1024.0;
    let b = bytes as f64;
    let (value, unit) = if b >= KIB * KIB {
        (b / (KIB * KIB), "MiB")
    } else if b >= KIB {
        (b / KIB, "KiB")
    } else {
        return format!("{bytes} bytes");
    };
    if value.fract() == 0.0 { format!("{value:.0} {unit}") } else { format!("{value:.1} {unit}") }
}

/// The per-call state of the limits, kept in the call's store.
pub(crate) struct CallGuard {
    component: String,
    limits: Option<ComponentLimits>,
    deadline: Option<Instant>,
    /// Bytes of all linear memories together.
    memory: Budget,
    /// What the host held for the component when last measured ([`HostHeld`]).
    host: HostHeld,
    /// Host calls returned since then.
    host_calls_unmeasured: u64,
    /// Elements of all tables together.
    table_elements: Budget,
    /// The limit broken, if any.
    pub(crate) broken: Option<LimitExceeded>,
}

impl CallGuard {
    /// A guard for one call of `component`; `None`: no limits (benchmarks only).
    pub(crate) fn new(component: &str, limits: Option<&ComponentLimits>) -> Self {
        Self {
            component: component.to_owned(),
            deadline: limits.map(|l| Instant::now() + l.call_timeout()),
            limits: limits.cloned(),
            memory: Budget::default(),
            host: HostHeld::default(),
            host_calls_unmeasured: 0,
            table_elements: Budget::default(),
            broken: None,
        }
    }

    /// Whether the call is held to limits (not a benchmark's unlimited runtime).
    pub(crate) fn is_limited(&self) -> bool {
        self.limits.is_some()
    }

    /// Whether what the host holds must be measured now that one more host call has
    /// returned: not while the most the calls since the last measure could have added
    /// (each at most the linear memory's size, or [`HOST_CALL_GROWTH`]) still fits the
    /// limit. So a call with room to spare is measured every few dozen host calls, one
    /// near its limit after every one, and the limit holds either way.
    fn host_may_have_passed(&mut self) -> bool {
        let Some(limits) = &self.limits else { return false };
        self.host_calls_unmeasured += 1;
        let linear = self.memory.used as u64;
        let unmeasured = self.host_calls_unmeasured.saturating_mul(linear.max(HOST_CALL_GROWTH));
        self.broken.is_some()
            || linear.saturating_add(self.host.bytes).saturating_add(unmeasured) > limits.memory_bytes()
    }

    /// Takes what the host now holds for the component into the memory budget, beside
    /// its linear memory; the host calls this every time one of its calls returns to
    /// the guest.
    pub(crate) fn check_host(&mut self, held: HostHeld) -> Result<(), LimitExceeded> {
        self.host = held;
        self.host_calls_unmeasured = 0;
        // Once stopped, the trap is on its way out through every host frame: said once.
        if let Some(broken) = &self.broken {
            return Err(broken.clone());
        }
        let Some(limits) = &self.limits else { return Ok(()) };
        let max = limits.memory_bytes();
        let linear = self.memory.used as u64;
        if linear.saturating_add(held.bytes) <= max {
            return Ok(());
        }
        let detail = format!(
            "the host would hold {} for it ({held}) beside {} of linear memory, limit {}",
            size(held.bytes),
            size(linear),
            size(max)
        );
        Err(self.record(LimitExceeded::new(&self.component, Limit::Memory, detail)))
    }

    /// The call's resource table is full: every entry counts at least [`ENTRY_BYTES`],
    /// so this is the memory limit too (a backstop: [`CallGuard::check_host`] stops a
    /// call before).
    pub(crate) fn table_full(&mut self, held: HostHeld, capacity: usize) -> LimitExceeded {
        let detail = format!("the host's table of its resources is full ({held}), at most {capacity} of them");
        self.record(LimitExceeded::new(&self.component, Limit::Memory, detail))
    }

    /// Checks the deadline: the engine calls this on every epoch tick.
    pub(crate) fn check_time(&mut self) -> Result<(), LimitExceeded> {
        match (&self.limits, self.deadline) {
            (Some(limits), Some(deadline)) if Instant::now() >= deadline => {
                Err(self.record(LimitExceeded::time(&self.component, limits.call_timeout())))
            }
            _ => Ok(()),
        }
    }

    fn record(&mut self, exceeded: LimitExceeded) -> LimitExceeded {
        exceeded.warn();
        self.broken.get_or_insert(exceeded).clone()
    }
}

/// What one kind of growth (memory bytes, table elements) has taken in a call.
#[derive(Default)]
struct Budget {
    used: usize,
    /// The last growth allowed, undone if it then fails.
    last_growth: usize,
}

impl Budget {
    /// Takes the growth of one memory or table from `current` to `desired`, or returns
    /// the total it would have reached over `max`.
    fn grow(&mut self, current: usize, desired: usize, max: usize) -> Result<(), usize> {
        let total = self.used.saturating_sub(current).saturating_add(desired);
        if total > max {
            return Err(total);
        }
        self.last_growth = desired.saturating_sub(current);
        self.used = total;
        Ok(())
    }

    fn undo_last(&mut self) {
        self.used = self.used.saturating_sub(self.last_growth);
    }
}

impl wasmtime::ResourceLimiter for CallGuard {
    fn memory_growing(&mut self, current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        let Some(limits) = &self.limits else { return Ok(true) };
        let max = usize::try_from(limits.memory_bytes()).unwrap_or(usize::MAX);
        // What the host holds for the component shares the budget.
        let host = usize::try_from(self.host.bytes).unwrap_or(usize::MAX);
        if let Err(total) = self.memory.grow(current, desired, max.saturating_sub(host)) {
            let detail = if host == 0 {
                format!("linear memory would grow to {}, limit {}", size(total as u64), size(max as u64))
            } else {
                format!(
                    "linear memory would grow to {} beside {} the host holds for it, limit {}",
                    size(total as u64),
                    size(host as u64),
                    size(max as u64)
                )
            };
            let exceeded = LimitExceeded::new(&self.component, Limit::Memory, detail);
            // An error, not `Ok(false)`: the guest would see a failed `memory.grow`
            // and abort with a vaguer message of its own.
            return Err(wasmtime::Error::new(self.record(exceeded)));
        }
        Ok(true)
    }

    fn memory_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        self.memory.undo_last();
        Ok(())
    }

    fn table_growing(&mut self, current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        let Some(limits) = &self.limits else { return Ok(true) };
        let max = usize::try_from(limits.table_elements).unwrap_or(usize::MAX);
        if let Err(total) = self.table_elements.grow(current, desired, max) {
            let detail = format!("tables would grow to {total} elements, limit {max}");
            let exceeded = LimitExceeded::new(&self.component, Limit::TableElements, detail);
            return Err(wasmtime::Error::new(self.record(exceeded)));
        }
        Ok(true)
    }

    fn table_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        self.table_elements.undo_last();
        Ok(())
    }

    fn instances(&self) -> usize {
        match &self.limits {
            Some(limits) => usize::try_from(limits.instances).unwrap_or(usize::MAX),
            None => wasmtime::DEFAULT_INSTANCE_LIMIT,
        }
    }

    fn tables(&self) -> usize {
        if self.limits.is_some() { MAX_TABLES } else { wasmtime::DEFAULT_TABLE_LIMIT }
    }

    fn memories(&self) -> usize {
        if self.limits.is_some() { MAX_MEMORIES } else { wasmtime::DEFAULT_MEMORY_LIMIT }
    }
}

/// Entries the resource table of a call may hold: as many as the memory limit pays for
/// at [`ENTRY_BYTES`] each, and one more, so that [`CallGuard::check_host`] stops a
/// call first.
pub(crate) fn table_capacity(limits: &ComponentLimits) -> usize {
    usize::try_from(limits.memory_bytes() / ENTRY_BYTES as u64).unwrap_or(usize::MAX).saturating_add(1)
}

/// What the host holds on behalf of one call, outside the component's linear memory,
/// as it counts toward `component_limits.memory_mib`. Header maps count for the most
/// they may hold ([`HEADER_MAP_BYTES`]: they can grow at any time), requests built but
/// not sent for their header map, path and authority, body buffers for their chunks,
/// every other resource for [`ENTRY_BYTES`], and requests in flight for exactly what
/// their state takes (`egress::ComponentHooks`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct HostHeld {
    pub(crate) header_maps: u64,
    pub(crate) requests: u64,
    /// Every other entry of the call's resource table.
    pub(crate) others: u64,
    /// Bytes of the requests handed to the host and not yet answered.
    pub(crate) in_flight: u64,
    /// All of it together.
    pub(crate) bytes: u64,
}

impl HostHeld {
    /// Measures the call's resource table and adds `in_flight` bytes of requests. One
    /// pass over the table, no allocation: it runs on every return from the host.
    pub(crate) fn measure(table: &mut ResourceTable, in_flight: u64) -> Self {
        const MAP: u64 = HEADER_MAP_BYTES as u64;
        const ENTRY: u64 = ENTRY_BYTES as u64;
        let mut held = HostHeld { in_flight, bytes: in_flight, ..HostHeld::default() };
        for entry in table.iter_mut() {
            let bytes = if entry.is::<FieldMap>() {
                held.header_maps += 1;
                MAP
            } else if let Some(request) = entry.downcast_ref::<HostOutgoingRequest>() {
                held.requests += 1;
                let text = |s: &Option<String>| s.as_ref().map_or(0, |s| s.len() as u64);
                ENTRY + MAP + text(&request.path_with_query) + text(&request.authority)
            } else if entry.is::<HostIncomingResponse>() {
                // Its header map came from the upstream: counted like any other.
                held.others += 1;
                ENTRY + MAP
            } else if entry.is::<HostOutgoingBody>() {
                held.others += 1;
                ENTRY + 2 * OUTGOING_BODY_CHUNK_BYTES as u64
            } else {
                held.others += 1;
                ENTRY
            };
            held.bytes = held.bytes.saturating_add(bytes);
        }
        held
    }

    /// Entries of the table measured.
    pub(crate) fn entries(&self) -> u64 {
        self.header_maps + self.requests + self.others
    }
}

impl fmt::Display for HostHeld {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} header maps, {} requests not sent, {} other resources, {} of requests in flight",
            self.header_maps,
            self.requests,
            self.others,
            size(self.in_flight)
        )
    }
}

/// Runs each time a host call returns to the guest: what the host now holds for the
/// component is measured (when it may matter) and held to the memory limit.
pub(crate) fn after_host_call(state: &mut super::CallState) -> Result<(), LimitExceeded> {
    if !state.guard.host_may_have_passed() {
        return Ok(());
    }
    let held = HostHeld::measure(&mut state.table, state.hooks.in_flight_bytes());
    state.guard.check_host(held)
}

/// The call's limiter: the guard, told what the host holds before linear memory grows,
/// since the two share one budget.
impl wasmtime::ResourceLimiter for super::CallState {
    fn memory_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        if self.guard.limits.is_some() {
            self.guard.host = HostHeld::measure(&mut self.table, self.hooks.in_flight_bytes());
            self.guard.host_calls_unmeasured = 0;
        }
        self.guard.memory_growing(current, desired, maximum)
    }

    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.guard.memory_grow_failed(error)
    }

    fn table_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        self.guard.table_growing(current, desired, maximum)
    }

    fn table_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.guard.table_grow_failed(error)
    }

    fn instances(&self) -> usize {
        self.guard.instances()
    }

    fn tables(&self) -> usize {
        self.guard.tables()
    }

    fn memories(&self) -> usize {
        self.guard.memories()
    }
}

/// Roughly how many bytes a value took in the component's memory before the host
/// copied it out (the canonical ABI: 8 bytes per string or list header, plus contents).
pub trait ResultSize {
    fn result_size(&self) -> usize;
}

impl ResultSize for () {
    fn result_size(&self) -> usize {
        0
    }
}

impl<T: ResultSize> ResultSize for Result<T, wit::BackendError> {
    fn result_size(&self) -> usize {
        match self {
            Ok(value) => value.result_size(),
            Err(error) => error.result_size(),
        }
    }
}

fn text_size(text: &str) -> usize {
    8 + text.len()
}

fn amounts_size(amounts: &[wit::Amount]) -> usize {
    8 + amounts.iter().map(|a| text_size(&a.component) + 8).sum::<usize>()
}

impl ResultSize for wit::Report {
    fn result_size(&self) -> usize {
        let resources: usize = self
            .resources
            .iter()
            .map(|r| {
                let users: usize = r.users.iter().map(|u| text_size(&u.username) + amounts_size(&u.amounts)).sum();
                text_size(&r.backend_id) + 1 + amounts_size(&r.totals) + 8 + users
            })
            .sum();
        8 + resources + 4
    }
}

impl ResultSize for wit::BackendInfo {
    fn result_size(&self) -> usize {
        text_size(&self.name)
            + text_size(&self.version)
            + 8
            + self.backend_types.iter().map(|t| text_size(t)).sum::<usize>()
            + 8
            + self.operations.len()
            + text_size(&self.upstream)
    }
}

impl ResultSize for wit::BackendError {
    fn result_size(&self) -> usize {
        match self {
            wit::BackendError::InvalidConfig(m)
            | wit::BackendError::InvalidRequest(m)
            | wit::BackendError::Unauthorized(m)
            | wit::BackendError::BadResponse(m)
            | wit::BackendError::Transport(m)
            | wit::BackendError::Unsupported(m) => text_size(m),
            wit::BackendError::UpstreamStatus(s) => text_size(&s.endpoint) + 2 + text_size(&s.message),
        }
    }
}

/// Checks a result against `max_result_bytes`.
pub(crate) fn check_result_size<T: ResultSize>(
    component: &str,
    limits: Option<&ComponentLimits>,
    result: &T,
) -> Result<(), LimitExceeded> {
    let Some(limits) = limits else { return Ok(()) };
    let bytes = result.result_size() as u64;
    if bytes > limits.max_result_bytes {
        let detail = format!("returned {}, limit {}", size(bytes), size(limits.max_result_bytes));
        let exceeded = LimitExceeded::new(component, Limit::ResultSize, detail);
        exceeded.warn();
        return Err(exceeded);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmtime::ResourceLimiter as _;

    fn limits() -> ComponentLimits {
        ComponentLimits { memory_mib: 2, table_elements: 10, ..ComponentLimits::default() }
    }

    #[test]
    fn memory_counts_all_memories_together() {
        let mut guard = CallGuard::new("probe", Some(&limits()));
        assert!(guard.memory_growing(0, 1 << 20, None).is_ok_and(|ok| ok));
        assert!(guard.memory_growing(0, 1 << 20, None).is_ok_and(|ok| ok));
        let error = guard.memory_growing(1 << 20, (1 << 20) + 65536, None).err().map(|e| e.to_string());
        assert_eq!(
            error.as_deref(),
            Some(
                "component probe stopped: memory limit exceeded: linear memory would grow to 2.1 MiB, limit 2 MiB (setting component_limits.memory_mib)"
            )
        );
        assert_eq!(guard.broken.as_ref().map(|b| b.limit), Some(Limit::Memory));
    }

    #[test]
    fn failed_growth_is_given_back() {
        let mut guard = CallGuard::new("probe", Some(&limits()));
        assert!(guard.memory_growing(0, 2 << 20, None).is_ok());
        guard.memory_grow_failed(wasmtime::Error::msg("no")).ok();
        assert!(guard.memory_growing(0, 2 << 20, None).is_ok_and(|ok| ok));
    }

    #[test]
    fn tables_and_counts() {
        let mut guard = CallGuard::new("probe", Some(&limits()));
        assert!(guard.table_growing(0, 10, None).is_ok());
        let error = guard.table_growing(10, 11, None).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(error.contains("table size limit exceeded: tables would grow to 11 elements, limit 10"), "{error}");
        assert_eq!(guard.instances(), 32);
        let unlimited = CallGuard::new("probe", None);
        assert_eq!(unlimited.instances(), wasmtime::DEFAULT_INSTANCE_LIMIT);
    }

    #[test]
    fn what_the_host_holds_is_measured_by_kind() -> Result<(), wasmtime::component::ResourceTableError> {
        use wasmtime_wasi_http::p2::bindings::http::types::Method;
        let mut table = ResourceTable::new();
        table.push(FieldMap::new_mutable(HEADER_MAP_BYTES))?;
        table.push(FieldMap::new_mutable(HEADER_MAP_BYTES))?;
        table.push(HostOutgoingRequest {
            method: Method::Get,
            scheme: None,
            authority: Some("a".repeat(100)),
            path_with_query: Some("/".repeat(1000)),
            headers: FieldMap::new_mutable(HEADER_MAP_BYTES),
            body: None,
        })?;
        table.push(String::from("anything else"))?;
        let held = HostHeld::measure(&mut table, 500);
        let (map, entry) = (HEADER_MAP_BYTES as u64, ENTRY_BYTES as u64);
        assert_eq!((held.header_maps, held.requests, held.others, held.entries()), (2, 1, 1, 4));
        assert_eq!(held.bytes, 500 + 2 * map + (entry + map + 1100) + entry);
        assert_eq!(
            held.to_string(),
            "2 header maps, 1 requests not sent, 1 other resources, 500 bytes of requests in flight"
        );
        Ok(())
    }

    #[test]
    fn host_memory_shares_the_budget_with_linear_memory() {
        let mut guard = CallGuard::new("probe", Some(&limits()));
        assert!(guard.memory_growing(0, 1 << 20, None).is_ok_and(|ok| ok));
        let held = |bytes: u64| HostHeld { header_maps: bytes / HEADER_MAP_BYTES as u64, bytes, ..HostHeld::default() };
        assert!(guard.check_host(held(512 << 10)).is_ok());
        // Linear memory may now grow by what the host leaves of the 2 MiB only.
        let error = guard.memory_growing(1 << 20, (1 << 20) + (768 << 10), None).err().map(|e| e.to_string());
        assert_eq!(
            error.as_deref(),
            Some(
                "component probe stopped: memory limit exceeded: linear memory would grow to 1.8 MiB beside 512 KiB the host holds for it, limit 2 MiB (setting component_limits.memory_mib)"
            )
        );
        let mut guard = CallGuard::new("probe", Some(&limits()));
        assert!(guard.memory_growing(0, 1 << 20, None).is_ok_and(|ok| ok));
        let error = guard.check_host(held(1100 << 10)).err().map(|e| e.to_string());
        assert_eq!(
            error.as_deref(),
            Some(
                "component probe stopped: memory limit exceeded: the host would hold 1.1 MiB for it (55 header maps, 0 requests not sent, 0 other resources, 0 bytes of requests in flight) beside 1 MiB of linear memory, limit 2 MiB (setting component_limits.memory_mib)"
            )
        );
        // Once broken, later returns from the host give the same error without a new warning.
        assert_eq!(guard.check_host(held(0)).err().map(|e| e.limit), Some(Limit::Memory));
        assert_eq!(table_capacity(&limits()), 2049);
    }

    #[test]
    fn the_host_is_measured_only_when_its_unmeasured_growth_could_pass_the_limit() {
        // 2 MiB, nothing held, no linear memory: each host call may add 512 KiB, so four
        // calls fit without a look and the fifth needs one.
        let mut guard = CallGuard::new("probe", Some(&limits()));
        assert_eq!(
            (0..5).map(|_| guard.host_may_have_passed()).collect::<Vec<_>>(),
            [false, false, false, false, true]
        );
        assert!(guard.check_host(HostHeld { bytes: 1 << 20, ..HostHeld::default() }).is_ok());
        // Half the budget held: two calls' worth of room.
        assert_eq!((0..3).map(|_| guard.host_may_have_passed()).collect::<Vec<_>>(), [false, false, true]);
        // A component with 1 MiB of linear memory can hand one call that much.
        let mut guard = CallGuard::new("probe", Some(&limits()));
        assert!(guard.memory_growing(0, 1 << 20, None).is_ok_and(|ok| ok));
        assert!(!guard.host_may_have_passed());
        assert!(guard.host_may_have_passed());
        assert!(!CallGuard::new("probe", None).host_may_have_passed(), "no limits, no measuring");
    }

    #[test]
    fn wasmtime_count_errors_are_named() {
        let parsed = LimitExceeded::from_wasmtime_message(
            "probe",
            "x: resource limit exceeded: instance count too high at 33",
            &ComponentLimits::default(),
        );
        assert_eq!(
            parsed.map(|p| p.to_string()).as_deref(),
            Some(
                "component probe stopped: instance count limit exceeded: needs at least 33, limit 32 (setting component_limits.instances)"
            )
        );
        assert_eq!(
            LimitExceeded::from_wasmtime_message("probe", "wasm trap: unreachable", &ComponentLimits::default()),
            None
        );
    }

    #[test]
    fn results_are_measured() {
        let report = wit::Report {
            resources: vec![wit::ResourceUsage {
                backend_id: "a".repeat(2000),
                found: true,
                totals: vec![wit::Amount { component: "nodeHours".into(), value: 1.0 }],
                users: Vec::new(),
            }],
            upstream_requests: 1,
        };
        let small = ComponentLimits { max_result_bytes: 1024, ..ComponentLimits::default() };
        let error = check_result_size("probe", Some(&small), &report).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(error.contains("result size limit exceeded: returned 2.0 KiB, limit 1 KiB"), "{error}");
        assert!(check_result_size("probe", None, &report).is_ok());
        assert!(check_result_size("probe", Some(&ComponentLimits::default()), &report).is_ok());
    }
}
