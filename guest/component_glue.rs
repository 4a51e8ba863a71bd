// The binding layer shared by every component, `include!`d by each crate's lib.rs
// after it defines `BACKEND: dwdi_core::Backend`. It only converts between the WIT
// types generated here and dwdi-core's plain types and calls dwdi-core: all
// decisions live in dwdi-core, where they are unit-tested natively.
//
// Included rather than a library because `wit_bindgen::generate!` must run in the
// crate that exports the world, and the crates would otherwise each hold the same
// conversions.

wit_bindgen::generate!({ path: "../../wit", world: "backend" });

use exports::waldur::usage::usage_backend as wit;

struct Component;

impl wit::Guest for Component {
    fn describe() -> wit::BackendInfo {
        wit::BackendInfo {
            name: BACKEND.name().to_owned(),
            // Tests build a second version of the same component to exercise swaps.
            version: option_env!("USAGE_BACKEND_VERSION")
                .unwrap_or(env!("CARGO_PKG_VERSION"))
                .to_owned(),
            backend_types: vec![BACKEND.name().to_owned()],
            // From dwdi-core, which also refuses the calls not listed here.
            operations: BACKEND.operations().iter().map(|&op| operation_to(op)).collect(),
        }
    }

    fn setup(config: wit::Config) -> Result<(), wit::BackendError> {
        dwdi_core::setup(BACKEND, &config_from(config))
            .map(drop)
            .map_err(error_to)
    }

    fn ping(config: wit::Config, today: wit::Date) -> Result<(), wit::BackendError> {
        let request = dwdi_core::plan_ping(BACKEND, &config_from(config), date_from(today))
            .map_err(error_to)?;
        dwdi_core::fetch::ping(&request).map_err(error_to)
    }

    fn usage_report(
        config: wit::Config,
        resources: Vec<wit::WaldurResource>,
        period: wit::BillingPeriod,
    ) -> Result<wit::Report, wit::BackendError> {
        let period = dwdi_core::BillingPeriod {
            year: period.year,
            month: period.month,
        };
        let plan = dwdi_core::plan_usage_report(
            BACKEND,
            &config_from(config),
            &resources_from(resources),
            period,
        )
        .map_err(error_to)?;
        dwdi_core::fetch::usage_report(&plan)
            .map(report_to)
            .map_err(error_to)
    }

    fn daily_report(
        config: wit::Config,
        resources: Vec<wit::WaldurResource>,
        first: wit::Date,
        last: wit::Date,
    ) -> Result<wit::Report, wit::BackendError> {
        let plan = dwdi_core::plan_daily_report(
            BACKEND,
            &config_from(config),
            &resources_from(resources),
            date_from(first),
            date_from(last),
        )
        .map_err(error_to)?;
        dwdi_core::fetch::usage_report(&plan)
            .map(report_to)
            .map_err(error_to)
    }

    fn manage(
        _config: wit::Config,
        request: wit::ManagementRequest,
    ) -> Result<(), wit::BackendError> {
        let operation = match request {
            wit::ManagementRequest::CreateAccount(_) => "create-account",
            wit::ManagementRequest::DeleteAccount(_) => "delete-account",
            wit::ManagementRequest::SetLimits(_) => "set-limits",
            wit::ManagementRequest::AddUsers(_) => "add-users",
            wit::ManagementRequest::RemoveUsers(_) => "remove-users",
        };
        Err(error_to(dwdi_core::read_only(BACKEND, operation)))
    }
}

export!(Component);

fn config_from(config: wit::Config) -> dwdi_core::Config {
    dwdi_core::Config {
        settings_json: config.settings_json,
        components: config
            .components
            .into_iter()
            .map(|c| dwdi_core::Component {
                name: c.name,
                measured_unit: c.measured_unit,
                unit_factor: c.unit_factor,
                reporting_factor: c.reporting_factor,
                accounting_type: c.accounting_type,
                label: c.label,
                dwdi_metric: c.dwdi_metric,
            })
            .collect(),
    }
}

fn resources_from(resources: Vec<wit::WaldurResource>) -> Vec<dwdi_core::Resource> {
    resources
        .into_iter()
        .map(|r| dwdi_core::Resource {
            backend_id: r.backend_id,
            cluster: r.cluster,
        })
        .collect()
}

fn date_from(d: wit::Date) -> dwdi_core::Date {
    dwdi_core::Date {
        year: d.year,
        month: d.month,
        day: d.day,
    }
}

fn operation_to(operation: dwdi_core::Operation) -> wit::Operation {
    match operation {
        dwdi_core::Operation::Ping => wit::Operation::Ping,
        dwdi_core::Operation::UsageReport => wit::Operation::UsageReport,
        dwdi_core::Operation::DailyReport => wit::Operation::DailyReport,
        dwdi_core::Operation::Manage => wit::Operation::Manage,
    }
}

fn amounts_to(amounts: Vec<dwdi_core::Amount>) -> Vec<wit::Amount> {
    amounts
        .into_iter()
        .map(|a| wit::Amount {
            component: a.component,
            value: a.value,
        })
        .collect()
}

fn report_to(report: dwdi_core::UsageReport) -> wit::Report {
    wit::Report {
        resources: report
            .resources
            .into_iter()
            .map(|r| wit::ResourceUsage {
                backend_id: r.backend_id,
                found: r.found,
                totals: amounts_to(r.totals),
                users: r
                    .users
                    .into_iter()
                    .map(|u| wit::UserUsage {
                        username: u.username,
                        amounts: amounts_to(u.amounts),
                    })
                    .collect(),
            })
            .collect(),
        upstream_requests: report.upstream_requests,
    }
}

fn error_to(error: dwdi_core::BackendError) -> wit::BackendError {
    use dwdi_core::BackendError as E;
    match error {
        E::InvalidConfig(m) => wit::BackendError::InvalidConfig(m),
        E::Unauthorized(m) => wit::BackendError::Unauthorized(m),
        E::UpstreamStatus {
            endpoint,
            status,
            message,
        } => wit::BackendError::UpstreamStatus(wit::UpstreamStatus {
            endpoint,
            status,
            message,
        }),
        E::BadResponse(m) => wit::BackendError::BadResponse(m),
        E::Transport(m) => wit::BackendError::Transport(m),
        E::Unsupported(m) => wit::BackendError::Unsupported(m),
    }
}
