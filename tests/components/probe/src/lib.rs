//! `probe`: a usage-backend component for tests. Its `settings_json` names a behaviour
//! (`{"probe": "<behaviour>", ...}`) and the component acts it out when asked for a
//! usage report, so each test can prove what the host does about it.
//!
//! Behaviours: `fetch` (GET `url` and report the status as the total of component
//! `status`), `set-header` (GET `url` with header `header` set by the component),
//! `setup-fails` (setup answers invalid-config). New misbehaviours go here, one arm each.

#[cfg(target_arch = "wasm32")]
#[allow(unsafe_code)] // Only wit-bindgen's generated ABI glue.
mod component {
    wit_bindgen::generate!({ path: "../../../wit", world: "backend" });

    use exports::waldur::usage::usage_backend as wit;
    use wasi::http::outgoing_handler;
    use wasi::http::types::{Fields, Method, OutgoingRequest, Scheme};

    struct Probe;

    fn settings(config: &wit::Config) -> serde_json::Value {
        serde_json::from_str(&config.settings_json).unwrap_or(serde_json::Value::Null)
    }

    fn text<'a>(settings: &'a serde_json::Value, key: &str) -> &'a str {
        settings.get(key).and_then(|v| v.as_str()).unwrap_or("")
    }

    /// GETs `url` with extra headers; the status, or the error the host gave.
    fn get(url: &str, headers: &[(&str, &str)]) -> Result<u16, wit::BackendError> {
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| wit::BackendError::InvalidConfig(format!("bad url {url}")))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let fields = Fields::new();
        for (name, value) in headers {
            fields
                .append(&(*name).to_owned(), &value.as_bytes().to_vec())
                .map_err(|e| wit::BackendError::Transport(format!("header {name} refused: {e:?}")))?;
        }
        let request = OutgoingRequest::new(fields);
        let _ = request.set_method(&Method::Get);
        let _ = request.set_scheme(Some(&if scheme == "https" { Scheme::Https } else { Scheme::Http }));
        let _ = request.set_authority(Some(authority));
        let _ = request.set_path_with_query(Some(path));
        let future = outgoing_handler::handle(request, None)
            .map_err(|e| wit::BackendError::Transport(format!("{e:?}")))?;
        future.subscribe().block();
        match future.get() {
            Some(Ok(Ok(response))) => Ok(response.status()),
            Some(Ok(Err(code))) => Err(wit::BackendError::Transport(format!("{code:?}"))),
            _ => Err(wit::BackendError::Transport("no response".to_owned())),
        }
    }

    impl wit::Guest for Probe {
        fn describe() -> wit::BackendInfo {
            wit::BackendInfo {
                name: "probe".to_owned(),
                version: "0.0.1".to_owned(),
                backend_types: vec!["probe".to_owned()],
                operations: vec![wit::Operation::UsageReport],
            }
        }

        fn setup(config: wit::Config) -> Result<(), wit::BackendError> {
            match text(&settings(&config), "probe") {
                "setup-fails" => Err(wit::BackendError::InvalidConfig("backend_settings.probe: setup refused on purpose".to_owned())),
                _ => Ok(()),
            }
        }

        fn ping(_: wit::Config) -> Result<(), wit::BackendError> {
            Ok(())
        }

        fn usage_report(
            config: wit::Config,
            resources: Vec<wit::WaldurResource>,
            _: wit::BillingPeriod,
        ) -> Result<wit::Report, wit::BackendError> {
            let settings = settings(&config);
            let status = match text(&settings, "probe") {
                "fetch" => get(text(&settings, "url"), &[])?,
                "set-header" => {
                    let header = text(&settings, "header");
                    get(text(&settings, "url"), &[(header, "Bearer forged")])?
                }
                other => return Err(wit::BackendError::Unsupported(format!("probe {other:?}"))),
            };
            Ok(wit::Report {
                resources: resources
                    .into_iter()
                    .map(|r| wit::ResourceUsage {
                        backend_id: r.backend_id,
                        found: true,
                        totals: vec![wit::Amount { component: "status".to_owned(), value: f64::from(status) }],
                        users: Vec::new(),
                    })
                    .collect(),
                upstream_requests: 1,
            })
        }

        fn daily_report(
            _: wit::Config,
            _: Vec<wit::WaldurResource>,
            _: wit::Date,
            _: wit::Date,
        ) -> Result<wit::Report, wit::BackendError> {
            Err(wit::BackendError::Unsupported("probe: daily-report".to_owned()))
        }

        fn manage(_: wit::Config, _: wit::ManagementRequest) -> Result<(), wit::BackendError> {
            Err(wit::BackendError::Unsupported("probe is read-only".to_owned()))
        }
    }

    export!(Probe);
}
