//! The per-call limits of a component: memory, tables, instances, time and result size.
//!
//! A component is untrusted code; one that loops, grows without bound or returns a
//! mountain of data must cost the host one failed call, never the process. Memory and
//! tables are checked by wasmtime through [`CallGuard`] (a `ResourceLimiter`) as they
//! grow; time by the engine's epoch (guest code) and a timeout around the whole call
//! (host calls included); the result size once the result is lifted. Whichever limit
//! breaks is recorded so the error names it, with the value and the setting.

use std::fmt;
use std::time::{Duration, Instant};

use crate::config::ComponentLimits;
use crate::runtime::wit;

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
            Limit::Tables | Limit::Memories => None,
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
            table_elements: Budget::default(),
            broken: None,
        }
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
        if let Err(total) = self.memory.grow(current, desired, max) {
            let detail = format!("linear memory would grow to {}, limit {}", size(total as u64), size(max as u64));
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
    }
}

impl ResultSize for wit::BackendError {
    fn result_size(&self) -> usize {
        match self {
            wit::BackendError::InvalidConfig(m)
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
