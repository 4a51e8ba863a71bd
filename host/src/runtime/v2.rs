//! The binding of the frozen `waldur:usage@2.0.0` contract (`wit/frozen/2.0.0`), and the
//! conversions between its types and the current contract's ([`wit`]).
//!
//! Everything above the runtime speaks the current contract. A 2.0.0 component is
//! called through this binding: the arguments are converted down on the way in, the
//! results up on the way out, so the sync engine, the CLI and the limits never know
//! which contract a component was built against. What 2.0.0 cannot carry is refused
//! here with the error the current contract has for it, never dropped.

use super::wit;
use crate::config::DWDI_METRIC_OPTION;

mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit/frozen/2.0.0",
        world: "backend",
        exports: { default: async },
    });
}

use bindings::exports::waldur::usage::usage_backend as old;
pub(super) use bindings::{Backend, BackendPre};

/// A 2.0.0 description; it names no upstream system, so the host says "the upstream".
pub(super) fn info(info: old::BackendInfo) -> wit::BackendInfo {
    wit::BackendInfo {
        name: info.name,
        version: info.version,
        backend_types: info.backend_types,
        operations: info.operations.into_iter().map(operation).collect(),
        upstream: String::new(),
    }
}

fn operation(operation: old::Operation) -> wit::Operation {
    match operation {
        old::Operation::Ping => wit::Operation::Ping,
        old::Operation::UsageReport => wit::Operation::UsageReport,
        old::Operation::DailyReport => wit::Operation::DailyReport,
        old::Operation::Manage => wit::Operation::Manage,
    }
}

/// The config as 2.0.0 has it: `dwdi_metric` is a field; any other option cannot
/// reach the component, so the call fails naming it, as setup would for an unknown key.
pub(super) fn config(config: &wit::Config) -> Result<old::Config, wit::BackendError> {
    let component = |c: &wit::Component| {
        let mut dwdi_metric = None;
        for option in &c.options {
            if option.key != DWDI_METRIC_OPTION {
                return Err(wit::BackendError::InvalidConfig(format!(
                    "backend_components.{}: option {:?} cannot be passed to a component built against waldur:usage@2.0.0, which knows only {DWDI_METRIC_OPTION}",
                    c.name, option.key
                )));
            }
            dwdi_metric = Some(option.value.clone());
        }
        Ok(old::Component {
            name: c.name.clone(),
            measured_unit: c.measured_unit.clone(),
            unit_factor: c.unit_factor,
            reporting_factor: c.reporting_factor,
            accounting_type: c.accounting_type.clone(),
            label: c.label.clone(),
            dwdi_metric,
        })
    };
    Ok(old::Config {
        settings_json: config.settings_json.clone(),
        components: config.components.iter().map(component).collect::<Result<_, _>>()?,
    })
}

/// 2.0.0's `cluster` is the `offering_backend_id`, lower-cased by the host.
pub(super) fn resources(resources: &[wit::WaldurResource]) -> Vec<old::WaldurResource> {
    resources
        .iter()
        .map(|r| old::WaldurResource {
            backend_id: r.backend_id.clone(),
            cluster: r.offering_backend_id.as_deref().map(str::to_ascii_lowercase),
        })
        .collect()
}

pub(super) fn date(d: wit::Date) -> old::Date {
    old::Date { year: d.year, month: d.month, day: d.day }
}

pub(super) fn period(p: wit::BillingPeriod) -> old::BillingPeriod {
    old::BillingPeriod { year: p.year, month: p.month }
}

fn amounts(amounts: Vec<old::Amount>) -> Vec<wit::Amount> {
    amounts.into_iter().map(|a| wit::Amount { component: a.component, value: a.value }).collect()
}

pub(super) fn report(report: old::Report) -> wit::Report {
    wit::Report {
        resources: report
            .resources
            .into_iter()
            .map(|r| wit::ResourceUsage {
                backend_id: r.backend_id,
                found: r.found,
                totals: amounts(r.totals),
                users: r
                    .users
                    .into_iter()
                    .map(|u| wit::UserUsage { username: u.username, amounts: amounts(u.amounts) })
                    .collect(),
            })
            .collect(),
        upstream_requests: report.upstream_requests,
    }
}

pub(super) fn error(error: old::BackendError) -> wit::BackendError {
    match error {
        old::BackendError::InvalidConfig(m) => wit::BackendError::InvalidConfig(m),
        old::BackendError::Unauthorized(m) => wit::BackendError::Unauthorized(m),
        old::BackendError::UpstreamStatus(s) => wit::BackendError::UpstreamStatus(wit::UpstreamStatus {
            endpoint: s.endpoint,
            status: s.status,
            message: s.message,
        }),
        old::BackendError::BadResponse(m) => wit::BackendError::BadResponse(m),
        old::BackendError::Transport(m) => wit::BackendError::Transport(m),
        old::BackendError::Unsupported(m) => wit::BackendError::Unsupported(m),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn component(options: &[(&str, &str)]) -> wit::Component {
        wit::Component {
            name: "nodeHours".into(),
            measured_unit: "node-hours".into(),
            unit_factor: 2.0,
            reporting_factor: Some(3.0),
            accounting_type: "usage".into(),
            label: "Node Hours".into(),
            options: options
                .iter()
                .map(|(k, v)| wit::ComponentOption { key: (*k).into(), value: (*v).into() })
                .collect(),
        }
    }

    #[test]
    fn dwdi_metric_is_the_one_option_that_goes_down() {
        let config =
            wit::Config { settings_json: "{}".into(), components: vec![component(&[("dwdi_metric", "gpuHours")])] };
        let down = config_or_panic(&config);
        let c = &down.components[0];
        assert_eq!(c.dwdi_metric.as_deref(), Some("gpuHours"));
        assert_eq!((c.unit_factor, c.reporting_factor, c.label.as_str()), (2.0, Some(3.0), "Node Hours"));
        let bare = wit::Config { settings_json: "{}".into(), components: vec![component(&[])] };
        assert_eq!(config_or_panic(&bare).components[0].dwdi_metric, None);
        let other = wit::Config { settings_json: "{}".into(), components: vec![component(&[("field", "x")])] };
        match super::config(&other) {
            Err(wit::BackendError::InvalidConfig(m)) => assert_eq!(
                m,
                "backend_components.nodeHours: option \"field\" cannot be passed to a component built against waldur:usage@2.0.0, which knows only dwdi_metric"
            ),
            other => panic!("{other:?}"),
        }
    }

    fn config_or_panic(config: &wit::Config) -> old::Config {
        match super::config(config) {
            Ok(down) => down,
            Err(e) => panic!("{e:?}"),
        }
    }

    #[test]
    fn the_offering_backend_id_goes_down_as_a_lower_case_cluster() {
        let up = [
            wit::WaldurResource { backend_id: "acct".into(), offering_backend_id: Some("Alps".into()) },
            wit::WaldurResource { backend_id: "b".into(), offering_backend_id: None },
        ];
        let down = resources(&up);
        assert_eq!((down[0].backend_id.as_str(), down[0].cluster.as_deref()), ("acct", Some("alps")));
        assert_eq!(down[1].cluster, None);
    }

    #[test]
    fn results_come_up_unchanged() {
        let old_report = old::Report {
            resources: vec![old::ResourceUsage {
                backend_id: "a".into(),
                found: true,
                totals: vec![old::Amount { component: "nodeHours".into(), value: 1.5 }],
                users: vec![old::UserUsage {
                    username: "u".into(),
                    amounts: vec![old::Amount { component: "nodeHours".into(), value: 0.5 }],
                }],
            }],
            upstream_requests: 3,
        };
        let up = report(old_report);
        let r = &up.resources[0];
        assert_eq!((r.backend_id.as_str(), r.found, r.totals[0].value, up.upstream_requests), ("a", true, 1.5, 3));
        assert_eq!((r.users[0].username.as_str(), r.users[0].amounts[0].value), ("u", 0.5));
        let status = old::UpstreamStatus { endpoint: "http://x/y".into(), status: 503, message: "busy".into() };
        match error(old::BackendError::UpstreamStatus(status)) {
            wit::BackendError::UpstreamStatus(s) => assert_eq!((s.status, s.endpoint.as_str()), (503, "http://x/y")),
            other => panic!("{other:?}"),
        }
        let described = info(old::BackendInfo {
            name: "probe".into(),
            version: "1.0.0".into(),
            backend_types: vec!["probe".into()],
            operations: vec![old::Operation::UsageReport, old::Operation::Manage],
        });
        assert_eq!(described.operations, [wit::Operation::UsageReport, wit::Operation::Manage]);
        assert_eq!(described.upstream, "");
    }
}
