// What the binding layer of every contract version the components are built against
// (today `waldur:usage` 2.0.0 and 3.1.0) has in common: the conversions whose WIT
// types are the same in both, and the calls into dwdi-core once the arguments are
// converted. `include!`d after the glue has defined `BACKEND` and brought that
// version's types in as `wit`. The glue of each version holds only what differs:
// `guest/component_glue.rs` (3.1.0) and the frozen 2.0.0 one in
// `tests/components/compute-v2`.

fn setup_with(config: &dwdi_core::Config) -> Result<(), dwdi_core::BackendError> {
    dwdi_core::setup(BACKEND, config).map(drop)
}

fn ping_with(config: &dwdi_core::Config, today: wit::Date) -> Result<(), dwdi_core::BackendError> {
    let request = dwdi_core::plan_ping(BACKEND, config, date_from(today))?;
    dwdi_core::fetch::ping(&request)
}

fn usage_report_with(
    config: &dwdi_core::Config,
    resources: &[dwdi_core::Resource],
    period: wit::BillingPeriod,
) -> Result<wit::Report, dwdi_core::BackendError> {
    let period = dwdi_core::BillingPeriod {
        year: period.year,
        month: period.month,
    };
    let plan = dwdi_core::plan_usage_report(BACKEND, config, resources, period)?;
    dwdi_core::fetch::usage_report(&plan).map(report_to)
}

fn daily_report_with(
    config: &dwdi_core::Config,
    resources: &[dwdi_core::Resource],
    first: wit::Date,
    last: wit::Date,
) -> Result<wit::Report, dwdi_core::BackendError> {
    let plan = dwdi_core::plan_daily_report(
        BACKEND,
        config,
        resources,
        date_from(first),
        date_from(last),
    )?;
    dwdi_core::fetch::usage_report(&plan).map(report_to)
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
