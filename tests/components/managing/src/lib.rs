//! `managing`: a component of the world `managing-backend`, which exports `management`
//! beside `reporting`, so a test can prove that the host serves such a component through
//! its reporting interface (this host calls no management function yet). It is built
//! against the frozen `waldur:usage@3.0.0`, so it also proves that the host serves a
//! component of an earlier minor, and treats one that cannot say its usage may decrease
//! as one whose usage may not. It makes no request: every resource is found with 0.5 of
//! each configured component.

#[cfg(target_arch = "wasm32")]
#[allow(unsafe_code)] // Only wit-bindgen's generated ABI glue.
mod component {
    wit_bindgen::generate!({ path: "../../../wit/frozen/3.0.0", world: "managing-backend" });

    use exports::waldur::usage::management;
    use exports::waldur::usage::reporting as wit;

    struct Managing;

    fn report(config: &wit::Config, resources: Vec<wit::WaldurResource>) -> wit::Report {
        let amounts = || {
            config.components.iter().map(|c| wit::Amount { component: c.name.clone(), value: 0.5 }).collect::<Vec<_>>()
        };
        let resources = resources
            .into_iter()
            .map(|r| wit::ResourceUsage { backend_id: r.backend_id, found: true, totals: amounts(), users: Vec::new() })
            .collect();
        wit::Report { resources, upstream_requests: 0 }
    }

    impl wit::Guest for Managing {
        fn describe() -> wit::BackendInfo {
            wit::BackendInfo {
                name: "managing".to_owned(),
                version: "1.0.0".to_owned(),
                backend_types: vec!["managing".to_owned()],
                operations: vec![wit::Operation::UsageReport, wit::Operation::Manage],
                upstream: "Site Manager".to_owned(),
            }
        }

        fn setup(_: wit::Config) -> Result<(), wit::BackendError> {
            Ok(())
        }

        fn ping(_: wit::Config, _: wit::Date) -> Result<(), wit::BackendError> {
            Ok(())
        }

        fn usage_report(
            config: wit::Config,
            resources: Vec<wit::WaldurResource>,
            _: wit::BillingPeriod,
        ) -> Result<wit::Report, wit::BackendError> {
            Ok(report(&config, resources))
        }

        fn daily_report(
            _: wit::Config,
            _: Vec<wit::WaldurResource>,
            first: wit::Date,
            last: wit::Date,
        ) -> Result<wit::Report, wit::BackendError> {
            Err(wit::BackendError::InvalidRequest(format!(
                "managing reports whole months only, not {}-{:02}-{:02} to {}-{:02}-{:02}",
                first.year, first.month, first.day, last.year, last.month, last.day
            )))
        }
    }

    impl management::Guest for Managing {
        fn manage(_: wit::Config, _: management::ManagementRequest) -> Result<(), wit::BackendError> {
            Ok(())
        }
    }

    export!(Managing);
}
