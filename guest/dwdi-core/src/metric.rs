//! Which DWDI field each configured component reads, and with which factor.
//!
//! A component that maps to no field, or to a field its backend does not serve, is a
//! configuration error found at setup — a wrong name must never turn into a silent
//! zero on an invoice (SPEC §6).

use crate::model::{BackendError, Component, Operation, invalid};

/// The one component option the DWDI backends know: the DWDI field a component reads,
/// when its name does not say.
pub const DWDI_METRIC: &str = "dwdi_metric";

/// The backends this crate implements; each is its own component.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Backend {
    /// `cscs-dwdi-compute`: node, CPU and GPU hours per account and user.
    Compute,
    /// `cscs-dwdi-storage`: bytes and inodes per path, no per-user usage.
    Storage,
    /// `cscs-dwdi-inference`: LLM inference cost per resource, per month only, no
    /// per-user usage.
    Inference,
}

impl Backend {
    /// The component name, which is also the `backend_type` it serves.
    pub const fn name(self) -> &'static str {
        match self {
            Backend::Compute => "cscs-dwdi-compute",
            Backend::Storage => "cscs-dwdi-storage",
            Backend::Inference => "cscs-dwdi-inference",
        }
    }

    /// The system it reads, as the host names it in messages.
    pub const fn upstream(self) -> &'static str {
        "DWDI"
    }

    /// The operations this backend implements: what its component's `describe` lists.
    /// `manage` is never among them; every backend here only reads.
    pub const fn operations(self) -> &'static [Operation] {
        match self {
            Backend::Compute | Backend::Storage => &[Operation::Ping, Operation::UsageReport, Operation::DailyReport],
            // DWDI has inference costs per month only: there is nothing to sum per day.
            Backend::Inference => &[Operation::Ping, Operation::UsageReport],
        }
    }

    /// The metrics this backend can report, in the order used in messages.
    pub const fn metrics(self) -> &'static [Metric] {
        match self {
            Backend::Compute => &[Metric::NodeHours, Metric::CpuHours, Metric::GpuHours],
            Backend::Storage => &[Metric::SpaceUsed, Metric::InodesUsed],
            Backend::Inference => &[Metric::TokenCost],
        }
    }

    /// "nodeHours, cpuHours, gpuHours": the accepted `dwdi_metric` values, for messages.
    fn metric_list(self) -> String {
        let names: Vec<&str> = self.metrics().iter().map(|m| m.name()).collect();
        names.join(", ")
    }
}

/// A DWDI usage figure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Metric {
    NodeHours,
    CpuHours,
    GpuHours,
    /// Bytes stored.
    SpaceUsed,
    /// Files stored.
    InodesUsed,
    /// LLM inference cost of a resource (DWDI `totalCost`).
    TokenCost,
}

impl Metric {
    /// Every metric, in `index` order.
    pub const ALL: [Metric; 6] = [
        Metric::NodeHours,
        Metric::CpuHours,
        Metric::GpuHours,
        Metric::SpaceUsed,
        Metric::InodesUsed,
        Metric::TokenCost,
    ];

    /// The `dwdi_metric` spelling.
    pub const fn name(self) -> &'static str {
        match self {
            Metric::NodeHours => "nodeHours",
            Metric::CpuHours => "cpuHours",
            Metric::GpuHours => "gpuHours",
            Metric::SpaceUsed => "spaceUsed",
            Metric::InodesUsed => "inodesUsed",
            Metric::TokenCost => "totalCost",
        }
    }

    /// Parses an explicit `dwdi_metric` (exact spelling).
    pub fn from_name(name: &str) -> Option<Metric> {
        Metric::ALL.into_iter().find(|m| m.name() == name)
    }

    /// Derives the metric from a component name, case-insensitively, in the order of
    /// SPEC §6 (node, cpu, gpu, inode, space/storage: `gpu_node_hours` is node hours)
    /// with one exception: `inode` is tested before `node`. Every name containing
    /// "inode" contains "node", so the literal order would make the seed's
    /// `storage_inodes` node hours and reject the seed's own storage example.
    /// `token_cost` is matched whole, like `storage`: it is the one name the upstream
    /// inference plugin serves, and "cost" alone says nothing about what is counted.
    pub fn from_component_name(name: &str) -> Option<Metric> {
        let name = name.to_ascii_lowercase();
        if name == "token_cost" {
            Some(Metric::TokenCost)
        } else if name.contains("inode") {
            Some(Metric::InodesUsed)
        } else if name.contains("node") {
            Some(Metric::NodeHours)
        } else if name.contains("cpu") {
            Some(Metric::CpuHours)
        } else if name.contains("gpu") {
            Some(Metric::GpuHours)
        } else if name.contains("space") || name == "storage" {
            Some(Metric::SpaceUsed)
        } else {
            None
        }
    }

    /// Position in per-metric arrays.
    pub(crate) const fn index(self) -> usize {
        match self {
            Metric::NodeHours => 0,
            Metric::CpuHours => 1,
            Metric::GpuHours => 2,
            Metric::SpaceUsed => 3,
            Metric::InodesUsed => 4,
            Metric::TokenCost => 5,
        }
    }

    /// The field of an account (compute), path (storage) or resource (inference) row.
    pub(crate) const fn total_field(self) -> &'static str {
        match self {
            Metric::NodeHours => "totalNodeHours",
            Metric::CpuHours => "totalCpuHours",
            Metric::GpuHours => "totalGpuHours",
            Metric::SpaceUsed => "spaceUsed",
            Metric::InodesUsed => "inodesUsed",
            Metric::TokenCost => "totalCost",
        }
    }

    /// The field of a user row; storage and inference have no per-user usage.
    pub(crate) const fn user_field(self) -> Option<&'static str> {
        match self {
            Metric::NodeHours => Some("nodeHours"),
            Metric::CpuHours => Some("cpuHours"),
            Metric::GpuHours => Some("gpuHours"),
            Metric::SpaceUsed | Metric::InodesUsed | Metric::TokenCost => None,
        }
    }

    /// The largest value believed to be real. Anything above is a unit or encoding
    /// mistake upstream, and billing it would be worse than failing. Bytes get more
    /// room than counts: a large project can hold petabytes (1e15 bytes).
    pub(crate) const fn plausible_max(self) -> f64 {
        match self {
            Metric::SpaceUsed => 1e18,
            _ => 1e15,
        }
    }
}

/// A configured component with its metric and factor resolved.
#[derive(Clone, Debug, PartialEq)]
pub struct MappedComponent {
    /// The component name, as configured.
    pub name: String,
    pub metric: Metric,
    /// `reporting_factor` if set, else `unit_factor`: reported = DWDI value × factor.
    pub factor: f64,
}

/// Resolves every component of an offering for `backend`, in config order.
pub fn map_components(backend: Backend, components: &[Component]) -> Result<Vec<MappedComponent>, BackendError> {
    if components.is_empty() {
        return Err(invalid(format!(
            "backend_components: empty; {} needs at least one component ({})",
            backend.name(),
            backend.metric_list()
        )));
    }
    let mut mapped: Vec<MappedComponent> = Vec::with_capacity(components.len());
    for component in components {
        let name = &component.name;
        if mapped.iter().any(|m| &m.name == name) {
            return Err(invalid(format!("backend_components.{name}: listed twice")));
        }
        // An option nobody reads is a typo or a config meant for another backend.
        if let Some((key, _)) = component.options.iter().find(|(key, _)| key != DWDI_METRIC) {
            return Err(invalid(format!(
                "backend_components.{name}: unknown option \"{key}\"; {} knows only {DWDI_METRIC}",
                backend.name()
            )));
        }
        let metric = match component_metric(backend, component) {
            Ok(metric) => metric,
            // A limit or prepaid component the backend cannot measure (a storage quota on
            // a compute offering) is the site's business, not a usage to report: left
            // out. A usage component, or one given a `dwdi_metric`, must map.
            Err(_) if component.accounting_type != "usage" && component.option(DWDI_METRIC).is_none() => continue,
            Err(error) => return Err(error),
        };
        let (factor, key) = match component.reporting_factor {
            Some(f) => (f, "unit_factor_reporting"),
            None => (component.unit_factor, "unit_factor"),
        };
        // A negative factor would report negative usage; NaN would poison every sum.
        if !factor.is_finite() || factor < 0.0 {
            return Err(invalid(format!(
                "backend_components.{name}.{key}: must be a finite number >= 0, found {factor}"
            )));
        }
        mapped.push(MappedComponent { name: name.clone(), metric, factor });
    }
    if mapped.is_empty() {
        return Err(invalid(format!(
            "backend_components: {} measures none of them ({}); a component that is not `usage` is left out when it maps to nothing",
            backend.name(),
            backend.metric_list()
        )));
    }
    Ok(mapped)
}

fn component_metric(backend: Backend, component: &Component) -> Result<Metric, BackendError> {
    let name = &component.name;
    let served = |metric: Metric| backend.metrics().contains(&metric);
    if let Some(explicit) = component.option(DWDI_METRIC) {
        let Some(metric) = Metric::from_name(explicit) else {
            return Err(invalid(format!(
                "backend_components.{name}.dwdi_metric: unknown metric \"{explicit}\"; \
                 use one of {}",
                backend.metric_list()
            )));
        };
        if !served(metric) {
            return Err(invalid(format!(
                "backend_components.{name}.dwdi_metric: {explicit} is not served by {}; \
                 use one of {}",
                backend.name(),
                backend.metric_list()
            )));
        }
        return Ok(metric);
    }
    match Metric::from_component_name(name) {
        Some(metric) if served(metric) => Ok(metric),
        Some(metric) => Err(invalid(format!(
            "backend_components.{name}: the name maps to the DWDI metric {}, which {} does \
             not serve; set dwdi_metric to one of {}",
            metric.name(),
            backend.name(),
            backend.metric_list()
        ))),
        None => Err(invalid(format!(
            "backend_components.{name}: no DWDI metric matches this name; set dwdi_metric to \
             one of {}",
            backend.metric_list()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(backend: Backend, components: &[Component]) -> String {
        match map_components(backend, components) {
            Err(BackendError::InvalidConfig(m)) => m,
            other => panic!("expected InvalidConfig, got {other:?}"),
        }
    }

    #[test]
    fn components_that_are_not_usage_and_map_to_nothing_are_left_out() {
        let mut quota = Component::named("storage", 1.0);
        quota.accounting_type = "limit".to_owned();
        let node = Component::named("nodeHours", 1.0);
        let mapped = map_components(Backend::Compute, &[node.clone(), quota.clone()]).expect("maps");
        assert_eq!(mapped.iter().map(|m| m.name.as_str()).collect::<Vec<_>>(), ["nodeHours"]);
        // Alone it leaves nothing to report: an error, as an empty list is.
        assert!(err(Backend::Compute, std::slice::from_ref(&quota)).contains("measures none of them"));
        // A usage component of the same name, or an explicit metric, still must map.
        let usage = Component::named("storage", 1.0);
        assert!(err(Backend::Compute, &[node.clone(), usage]).contains("does not serve"));
        quota.set_option(DWDI_METRIC, "spaceUsed");
        assert!(err(Backend::Compute, &[node, quota]).contains("not served"));
    }

    #[test]
    fn derivation_table() {
        let cases = [
            ("nodeHours", Some(Metric::NodeHours)),
            ("NODE_HOURS", Some(Metric::NodeHours)),
            ("node", Some(Metric::NodeHours)),
            ("cpuHours", Some(Metric::CpuHours)),
            ("CPU", Some(Metric::CpuHours)),
            ("gpuHours", Some(Metric::GpuHours)),
            ("Gpu-hours", Some(Metric::GpuHours)),
            // The order of the checks decides mixed names.
            ("gpu_node_hours", Some(Metric::NodeHours)),
            ("cpu_gpu", Some(Metric::CpuHours)),
            ("inode_cpu", Some(Metric::InodesUsed)),
            ("storage_inodes", Some(Metric::InodesUsed)),
            ("INODES", Some(Metric::InodesUsed)),
            ("storage_space", Some(Metric::SpaceUsed)),
            ("SpaceGB", Some(Metric::SpaceUsed)),
            ("storage", Some(Metric::SpaceUsed)),
            ("Storage", Some(Metric::SpaceUsed)),
            ("storage_gb", None),
            ("token_cost", Some(Metric::TokenCost)),
            ("Token_Cost", Some(Metric::TokenCost)),
            ("TOKEN_COST", Some(Metric::TokenCost)),
            // Matched whole: near misses say nothing certain about what they count.
            ("token_costs", None),
            ("tokencost", None),
            ("cost", None),
            ("totalCost", None),
            ("gpu_token_cost", Some(Metric::GpuHours)),
            ("hours", None),
            ("", None),
        ];
        for (name, want) in cases {
            assert_eq!(Metric::from_component_name(name), want, "{name}");
        }
    }

    #[test]
    fn explicit_names_round_trip() {
        for metric in Metric::ALL {
            assert_eq!(Metric::from_name(metric.name()), Some(metric));
            assert_eq!(Metric::ALL[metric.index()], metric);
        }
        assert_eq!(Metric::from_name("NodeHours"), None);
    }

    #[test]
    fn seed_components_map() {
        let compute = [Component::named("nodeHours", 1.0), Component::named("cpuHours", 1.0)];
        let mapped = map_components(Backend::Compute, &compute).expect("compute maps");
        assert_eq!(mapped[0].metric, Metric::NodeHours);
        assert_eq!(mapped[1].metric, Metric::CpuHours);
        let storage = [Component::named("storage_space", 0.000000001), Component::named("storage_inodes", 1.0)];
        let mapped = map_components(Backend::Storage, &storage).expect("storage maps");
        assert_eq!(mapped[0].metric, Metric::SpaceUsed);
        assert_eq!(mapped[0].factor, 1e-9);
        assert_eq!(mapped[1].metric, Metric::InodesUsed);
    }

    #[test]
    fn inference_serves_token_cost_only() {
        for name in ["token_cost", "Token_Cost"] {
            let mut c = Component::named(name, 0.5);
            c.reporting_factor = Some(2.0);
            let mapped = map_components(Backend::Inference, &[c]).expect("maps");
            assert_eq!(
                mapped,
                [MappedComponent { name: name.to_owned(), metric: Metric::TokenCost, factor: 2.0 }],
                "the configured spelling is what gets reported"
            );
        }
        let mut explicit = Component::named("llm_spend", 1.0);
        explicit.set_option(DWDI_METRIC, "totalCost");
        assert_eq!(map_components(Backend::Inference, &[explicit]).expect("maps")[0].metric, Metric::TokenCost);

        let m = err(Backend::Inference, &[Component::named("cost", 1.0)]);
        assert_eq!(m, "backend_components.cost: no DWDI metric matches this name; set dwdi_metric to one of totalCost");
        let m = err(Backend::Inference, &[Component::named("nodeHours", 1.0)]);
        assert!(m.starts_with("backend_components.nodeHours: the name maps to the DWDI metric nodeHours"), "{m}");
        let mut c = Component::named("token_cost", 1.0);
        c.set_option(DWDI_METRIC, "spaceUsed");
        let m = err(Backend::Inference, &[c]);
        assert!(m.starts_with("backend_components.token_cost.dwdi_metric: spaceUsed is not served"), "{m}");
        // The other backends refuse it in turn.
        let m = err(Backend::Compute, &[Component::named("token_cost", 1.0)]);
        assert!(m.contains("totalCost, which cscs-dwdi-compute does not serve"), "{m}");
        let mut c = Component::named("nodeHours", 1.0);
        c.set_option(DWDI_METRIC, "totalCost");
        assert!(err(Backend::Storage, &[c]).contains("totalCost is not served by cscs-dwdi-storage"));

        // A limit the backend cannot measure is left out, as for the others.
        let mut quota = Component::named("token_quota", 1.0);
        quota.accounting_type = "limit".to_owned();
        let mapped = map_components(Backend::Inference, &[quota.clone(), Component::named("token_cost", 1.0)]);
        assert_eq!(mapped.expect("maps").len(), 1);
        assert!(err(Backend::Inference, &[quota]).contains("measures none of them (totalCost)"));
    }

    #[test]
    fn operations_are_per_backend() {
        use crate::model::Operation as Op;
        assert_eq!(Backend::Compute.operations(), [Op::Ping, Op::UsageReport, Op::DailyReport]);
        assert_eq!(Backend::Storage.operations(), [Op::Ping, Op::UsageReport, Op::DailyReport]);
        assert_eq!(Backend::Inference.operations(), [Op::Ping, Op::UsageReport]);
        assert_eq!(Backend::Inference.name(), "cscs-dwdi-inference");
        assert_eq!(Op::DailyReport.name(), "daily-report");
    }

    #[test]
    fn explicit_metric_wins_over_name() {
        let mut c = Component::named("billing_units", 2.0);
        c.set_option(DWDI_METRIC, "gpuHours");
        let mapped = map_components(Backend::Compute, &[c]).expect("maps");
        assert_eq!(mapped[0].metric, Metric::GpuHours);
    }

    #[test]
    fn reporting_factor_wins_over_unit_factor() {
        let mut c = Component::named("nodeHours", 2.0);
        c.reporting_factor = Some(0.5);
        let mapped = map_components(Backend::Compute, &[c]).expect("maps");
        assert_eq!(mapped[0].factor, 0.5);
    }

    #[test]
    fn unmapped_name_is_named() {
        let m = err(Backend::Compute, &[Component::named("foo", 1.0)]);
        assert_eq!(
            m,
            "backend_components.foo: no DWDI metric matches this name; set dwdi_metric to one \
             of nodeHours, cpuHours, gpuHours"
        );
        let m = err(Backend::Storage, &[Component::named("foo", 1.0)]);
        assert!(m.ends_with("one of spaceUsed, inodesUsed"), "{m}");
    }

    #[test]
    fn metric_of_the_other_backend_is_refused() {
        let m = err(Backend::Compute, &[Component::named("storage_space", 1.0)]);
        assert!(m.starts_with("backend_components.storage_space: "), "{m}");
        assert!(m.contains("spaceUsed"), "{m}");
        let m = err(Backend::Storage, &[Component::named("nodeHours", 1.0)]);
        assert!(m.starts_with("backend_components.nodeHours: "), "{m}");
        let mut c = Component::named("x", 1.0);
        c.set_option(DWDI_METRIC, "inodesUsed");
        let m = err(Backend::Compute, &[c]);
        assert!(m.starts_with("backend_components.x.dwdi_metric: inodesUsed is not served"), "{m}");
    }

    #[test]
    fn unknown_explicit_metric_is_named() {
        let mut c = Component::named("nodeHours", 1.0);
        c.set_option(DWDI_METRIC, "wallHours");
        let m = err(Backend::Compute, &[c]);
        assert!(m.starts_with("backend_components.nodeHours.dwdi_metric: unknown metric"), "{m}");
    }

    #[test]
    fn unknown_options_are_refused_by_name() {
        let mut c = Component::named("nodeHours", 1.0);
        c.set_option("metric", "nodeHours");
        let m = err(Backend::Compute, &[c]);
        assert_eq!(
            m,
            "backend_components.nodeHours: unknown option \"metric\"; cscs-dwdi-compute knows only dwdi_metric"
        );
        // Not even a limit component may carry one: it would be ignored silently.
        let mut quota = Component::named("quota", 1.0);
        quota.accounting_type = "limit".into();
        quota.set_option("path", "/x");
        let m = err(Backend::Storage, &[Component::named("storage_space", 1.0), quota]);
        assert!(m.starts_with("backend_components.quota: unknown option \"path\""), "{m}");
    }

    #[test]
    fn bad_factors_are_named() {
        for f in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, -1.0] {
            let m = err(Backend::Compute, &[Component::named("nodeHours", f)]);
            assert!(m.starts_with("backend_components.nodeHours.unit_factor: "), "{m}");
        }
        let mut c = Component::named("nodeHours", 1.0);
        c.reporting_factor = Some(f64::NAN);
        let m = err(Backend::Compute, &[c]);
        assert!(m.starts_with("backend_components.nodeHours.unit_factor_reporting: "), "{m}");
    }

    #[test]
    fn empty_and_duplicate_components_are_refused() {
        assert!(err(Backend::Compute, &[]).starts_with("backend_components: empty"));
        let c = Component::named("nodeHours", 1.0);
        let m = err(Backend::Compute, &[c.clone(), c]);
        assert_eq!(m, "backend_components.nodeHours: listed twice");
    }
}
