//! `setup-refuser`: a well-formed usage backend for `cscs-dwdi-compute` whose `setup`
//! refuses every config, so a test can prove that a component failing setup never
//! replaces a working one. Everything else it answers is harmless.

#[cfg(target_arch = "wasm32")]
#[allow(unsafe_code)] // Only wit-bindgen's generated ABI glue.
mod component {
    wit_bindgen::generate!({ path: "../../../wit/frozen/2.0.0", world: "backend" });

    use exports::waldur::usage::usage_backend as wit;

    struct Refuser;

    fn refused() -> wit::BackendError {
        wit::BackendError::InvalidConfig(
            "backend_settings.refuser_key: missing (this test component refuses every config)".to_owned(),
        )
    }

    impl wit::Guest for Refuser {
        fn describe() -> wit::BackendInfo {
            wit::BackendInfo {
                name: "cscs-dwdi-compute".to_owned(),
                version: "9.9.9-refuser".to_owned(),
                backend_types: vec!["cscs-dwdi-compute".to_owned()],
                operations: vec![wit::Operation::UsageReport],
            }
        }

        fn setup(_: wit::Config) -> Result<(), wit::BackendError> {
            Err(refused())
        }

        fn ping(_: wit::Config, _: wit::Date) -> Result<(), wit::BackendError> {
            Err(refused())
        }

        fn usage_report(
            _: wit::Config,
            _: Vec<wit::WaldurResource>,
            _: wit::BillingPeriod,
        ) -> Result<wit::Report, wit::BackendError> {
            Err(refused())
        }

        fn daily_report(
            _: wit::Config,
            _: Vec<wit::WaldurResource>,
            _: wit::Date,
            _: wit::Date,
        ) -> Result<wit::Report, wit::BackendError> {
            Err(refused())
        }

        fn manage(_: wit::Config, _: wit::ManagementRequest) -> Result<(), wit::BackendError> {
            Err(refused())
        }
    }

    export!(Refuser);
}
