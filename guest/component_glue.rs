// The binding layer shared by every component, `include!`d by each crate's lib.rs
// after it defines `BACKEND: dwdi_core::Backend`. It only converts between the WIT
// types generated here and dwdi-core's plain types and calls dwdi-core: all
// decisions live in dwdi-core, where they are unit-tested natively.
//
// Included rather than a library because `wit_bindgen::generate!` must run in the
// crate that exports the world, and the crates would otherwise each hold the same
// conversions. The components are reporting backends: world `backend` of
// `waldur:usage@3.1.0`, no management export.

wit_bindgen::generate!({ path: "../../wit", world: "backend" });

use exports::waldur::usage::reporting as wit;

include!("component_convert.rs");

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
            upstream: BACKEND.upstream().to_owned(),
        }
    }

    fn setup(config: wit::Config) -> Result<(), wit::BackendError> {
        setup_with(&config_from(config)).map_err(error_to)
    }

    fn ping(config: wit::Config, today: wit::Date) -> Result<(), wit::BackendError> {
        ping_with(&config_from(config), today).map_err(error_to)
    }

    fn usage_report(
        config: wit::Config,
        resources: Vec<wit::WaldurResource>,
        period: wit::BillingPeriod,
    ) -> Result<wit::Report, wit::BackendError> {
        usage_report_with(&config_from(config), &resources_from(resources), period)
            .map_err(error_to)
    }

    fn daily_report(
        config: wit::Config,
        resources: Vec<wit::WaldurResource>,
        first: wit::Date,
        last: wit::Date,
    ) -> Result<wit::Report, wit::BackendError> {
        daily_report_with(&config_from(config), &resources_from(resources), first, last)
            .map_err(error_to)
    }
}

// Every DWDI value may go down within a month: DWDI corrects its records, and storage
// is a snapshot (the Python plugin declares `supports_decreasing_usage` for all three).
impl exports::waldur::usage::usage_traits::Guest for Component {
    fn usage_may_decrease() -> bool {
        true
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
                options: c.options.into_iter().map(|o| (o.key, o.value)).collect(),
            })
            .collect(),
    }
}

fn resources_from(resources: Vec<wit::WaldurResource>) -> Vec<dwdi_core::Resource> {
    resources
        .into_iter()
        .map(|r| dwdi_core::Resource::from_waldur(r.backend_id, r.offering_backend_id))
        .collect()
}

fn error_to(error: dwdi_core::BackendError) -> wit::BackendError {
    use dwdi_core::BackendError as E;
    match error {
        E::InvalidConfig(m) => wit::BackendError::InvalidConfig(m),
        E::InvalidRequest(m) => wit::BackendError::InvalidRequest(m),
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
