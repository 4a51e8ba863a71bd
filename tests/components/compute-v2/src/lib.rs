//! `compute-v2`: the real `cscs-dwdi-compute` backend (dwdi-core) behind the binding
//! layer it had under `waldur:usage@2.0.0`, built from the frozen copy of that contract
//! in `wit/frozen/2.0.0`. It is what a site that upgraded the host but not its
//! components still runs: the tests prove it keeps serving beside 3.x components and
//! that a plugins folder swaps between the two in both directions.
//!
//! Only what 2.0.0 spells differently is here; the conversions and calls the versions
//! share are `guest/component_convert.rs`.

#[cfg(target_arch = "wasm32")]
#[allow(unsafe_code)] // Only wit-bindgen's generated ABI glue.
mod component {
    wit_bindgen::generate!({ path: "../../../wit/frozen/2.0.0", world: "backend" });

    use exports::waldur::usage::usage_backend as wit;

    const BACKEND: dwdi_core::Backend = dwdi_core::Backend::Compute;

    include!("../../../../guest/component_convert.rs");

    struct Component;

    impl wit::Guest for Component {
        fn describe() -> wit::BackendInfo {
            wit::BackendInfo {
                name: BACKEND.name().to_owned(),
                version: "0.1.0-wit2".to_owned(),
                backend_types: vec![BACKEND.name().to_owned()],
                operations: BACKEND.operations().iter().map(|&op| operation_to(op)).collect(),
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
            usage_report_with(&config_from(config), &resources_from(resources), period).map_err(error_to)
        }

        fn daily_report(
            config: wit::Config,
            resources: Vec<wit::WaldurResource>,
            first: wit::Date,
            last: wit::Date,
        ) -> Result<wit::Report, wit::BackendError> {
            daily_report_with(&config_from(config), &resources_from(resources), first, last).map_err(error_to)
        }

        // 2.0.0 made every backend export `manage`; a reporting one refuses it.
        fn manage(_config: wit::Config, request: wit::ManagementRequest) -> Result<(), wit::BackendError> {
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
        let component = |c: wit::Component| dwdi_core::Component {
            name: c.name,
            measured_unit: c.measured_unit,
            unit_factor: c.unit_factor,
            reporting_factor: c.reporting_factor,
            accounting_type: c.accounting_type,
            label: c.label,
            options: c.dwdi_metric.map(|m| (dwdi_core::DWDI_METRIC.to_owned(), m)).into_iter().collect(),
        };
        dwdi_core::Config {
            settings_json: config.settings_json,
            components: config.components.into_iter().map(component).collect(),
        }
    }

    // 2.0.0's host sends the cluster already lower-cased.
    fn resources_from(resources: Vec<wit::WaldurResource>) -> Vec<dwdi_core::Resource> {
        resources.into_iter().map(|r| dwdi_core::Resource { backend_id: r.backend_id, cluster: r.cluster }).collect()
    }

    // 2.0.0 has no invalid-request: what 3.0.0 calls so was an invalid config then.
    fn error_to(error: dwdi_core::BackendError) -> wit::BackendError {
        use dwdi_core::BackendError as E;
        match error {
            E::InvalidConfig(m) | E::InvalidRequest(m) => wit::BackendError::InvalidConfig(m),
            E::Unauthorized(m) => wit::BackendError::Unauthorized(m),
            E::UpstreamStatus { endpoint, status, message } => {
                wit::BackendError::UpstreamStatus(wit::UpstreamStatus { endpoint, status, message })
            }
            E::BadResponse(m) => wit::BackendError::BadResponse(m),
            E::Transport(m) => wit::BackendError::Transport(m),
            E::Unsupported(m) => wit::BackendError::Unsupported(m),
        }
    }
}
