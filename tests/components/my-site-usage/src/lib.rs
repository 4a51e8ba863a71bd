//! The worked example of `docs/writing-a-backend.md`, built by the tests exactly as the
//! guide shows it (the guide's `src/lib.rs` is this module): a backend for an accounting
//! API that is not DWDI, with no `cscs_dwdi_*` key in its offering. A native build is
//! empty, so the workspace's `cargo test` can include the crate.

#[cfg(target_arch = "wasm32")]
#[allow(unsafe_code, unreachable_pub)] // Only wit-bindgen's generated ABI glue.
mod component {
    wit_bindgen::generate!({ path: "../../../wit", world: "backend" });

    use exports::waldur::usage::reporting::{
        Amount, BackendError, BackendInfo, BillingPeriod, Component, Config, Date, Guest, Operation, Report,
        ResourceUsage, UpstreamStatus, UserUsage, WaldurResource,
    };
    use serde_json::Value;
    use wasi::http::outgoing_handler;
    use wasi::http::types::{Fields, Method, OutgoingRequest, Scheme};
    use wasi::io::streams::StreamError;

    struct MySite;

    /// What this backend reads from the offering's `backend_settings`.
    struct Settings {
        api_url: String,
        instance: String,
    }

    /// The upstream field a component reads: its `field` option, else its name.
    fn field(component: &Component) -> Result<&str, BackendError> {
        let mut field = component.name.as_str();
        for option in &component.options {
            match option.key.as_str() {
                "field" => field = &option.value,
                other => {
                    return Err(BackendError::InvalidConfig(format!(
                        "backend_components.{}: unknown option {other:?}; my-site-usage knows only field",
                        component.name
                    )));
                }
            }
        }
        Ok(field)
    }

    fn settings(config: &Config) -> Result<Settings, BackendError> {
        let json: Value = serde_json::from_str(&config.settings_json)
            .map_err(|e| BackendError::InvalidConfig(format!("backend_settings: {e}")))?;
        let text = |key: &str| match json.get(key).and_then(Value::as_str) {
            Some(value) if !value.trim().is_empty() => Ok(value.trim().to_owned()),
            _ => Err(BackendError::InvalidConfig(format!("backend_settings.{key}: missing"))),
        };
        let instance = text("my_site_instance")?;
        if !instance.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            return Err(BackendError::InvalidConfig(format!(
                "backend_settings.my_site_instance: {instance:?} may hold only letters, digits, - and _"
            )));
        }
        // The host hands over where it lets the component go; it keeps the credentials.
        let api_url = json
            .pointer("/upstream/urls/0")
            .and_then(Value::as_str)
            .ok_or_else(|| BackendError::InvalidConfig("backend_settings.upstream.urls: missing".to_owned()))?
            .trim_end_matches('/')
            .to_owned();
        Ok(Settings { api_url, instance })
    }

    /// One GET through the host (which checks the destination and adds the credentials); the
    /// body of a 2xx answer, or the error the contract has for what went wrong.
    fn get(url: &str) -> Result<Vec<u8>, BackendError> {
        let endpoint = url.split('?').next().unwrap_or(url).to_owned();
        let (scheme, rest) = url.split_once("://").unwrap_or(("https", url));
        let (authority, path) = rest.find('/').map_or((rest, "/"), |i| rest.split_at(i));
        let request = OutgoingRequest::new(Fields::new());
        let refused = |()| BackendError::InvalidConfig(format!("cannot build a request for {endpoint}"));
        request.set_method(&Method::Get).map_err(refused)?;
        request.set_scheme(Some(if scheme == "http" { &Scheme::Http } else { &Scheme::Https })).map_err(refused)?;
        request.set_authority(Some(authority)).map_err(refused)?;
        request.set_path_with_query(Some(path)).map_err(refused)?;
        let transport = |why: String| BackendError::Transport(format!("{endpoint}: {why}"));
        let future = outgoing_handler::handle(request, None).map_err(|e| transport(format!("{e:?}")))?;
        future.subscribe().block();
        let response = match future.get() {
            Some(Ok(Ok(response))) => response,
            Some(Ok(Err(code))) => return Err(transport(format!("{code:?}"))),
            _ => return Err(transport("no answer".to_owned())),
        };
        let status = response.status();
        // Locals drop in reverse order: the stream before its body, the body before the response.
        let body = response.consume().map_err(|()| transport("no body".to_owned()))?;
        let stream = body.stream().map_err(|()| transport("no body".to_owned()))?;
        let mut bytes = Vec::new();
        loop {
            match stream.blocking_read(64 * 1024) {
                Ok(chunk) => bytes.extend_from_slice(&chunk),
                Err(StreamError::Closed) => break,
                Err(StreamError::LastOperationFailed(e)) => return Err(transport(e.to_debug_string())),
            }
        }
        let message = String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned();
        match status {
            200..=299 => Ok(bytes),
            401 | 403 => Err(BackendError::Unauthorized(format!("{endpoint}: HTTP {status}: {message}"))),
            _ => Err(BackendError::UpstreamStatus(UpstreamStatus { endpoint, status, message })),
        }
    }

    /// The amounts of the configured components read from `row`, in Waldur's units. A field
    /// the row lacks gives zero when `zeros` (totals: one amount per component), else nothing.
    fn amounts(config: &Config, row: Option<&Value>, at: &str, zeros: bool) -> Result<Vec<Amount>, BackendError> {
        let mut amounts = Vec::new();
        for component in &config.components {
            let field = field(component)?;
            let value = match row.and_then(|row| row.get(field)) {
                None if zeros => 0.0,
                None => continue,
                Some(v) => v.as_f64().filter(|n| n.is_finite() && *n >= 0.0).ok_or_else(|| {
                    BackendError::BadResponse(format!("{at}.{field}: {v} is not a non-negative number"))
                })?,
            };
            let factor = component.reporting_factor.unwrap_or(component.unit_factor);
            amounts.push(Amount { component: component.name.clone(), value: value * factor });
        }
        Ok(amounts)
    }

    impl Guest for MySite {
        fn describe() -> BackendInfo {
            BackendInfo {
                name: "my-site-usage".to_owned(),
                version: env!("CARGO_PKG_VERSION").to_owned(),
                backend_types: vec!["my-site-usage".to_owned()],
                operations: vec![Operation::Ping, Operation::UsageReport],
                upstream: "My Site API".to_owned(),
            }
        }

        fn setup(config: Config) -> Result<(), BackendError> {
            for component in &config.components {
                field(component)?;
            }
            settings(&config).map(drop)
        }

        fn ping(config: Config, _today: Date) -> Result<(), BackendError> {
            get(&format!("{}/health", settings(&config)?.api_url)).map(drop)
        }

        fn usage_report(
            config: Config,
            resources: Vec<WaldurResource>,
            period: BillingPeriod,
        ) -> Result<Report, BackendError> {
            let s = settings(&config)?;
            let month = format!("{:04}-{:02}", period.year, period.month);
            let body = get(&format!("{}/usage?instance={}&month={month}", s.api_url, s.instance))?;
            let answer: Value = serde_json::from_slice(&body)
                .map_err(|e| BackendError::BadResponse(format!("the answer is not JSON: {e}")))?;
            let accounts = answer
                .get("accounts")
                .and_then(Value::as_object)
                .ok_or_else(|| BackendError::BadResponse("the answer has no \"accounts\" object".to_owned()))?;
            let mut usages = Vec::new();
            for resource in resources {
                let row = accounts.get(&resource.backend_id);
                let at = format!("accounts.{}", resource.backend_id);
                let mut users = Vec::new();
                for (username, usage) in
                    row.and_then(|r| r.get("users")).and_then(Value::as_object).into_iter().flatten()
                {
                    let amounts = amounts(&config, Some(usage), &format!("{at}.users.{username}"), false)?;
                    users.push(UserUsage { username: username.clone(), amounts });
                }
                let totals = amounts(&config, row, &at, true)?;
                usages.push(ResourceUsage { backend_id: resource.backend_id, found: row.is_some(), totals, users });
            }
            Ok(Report { resources: usages, upstream_requests: 1 })
        }

        fn daily_report(_: Config, _: Vec<WaldurResource>, _: Date, _: Date) -> Result<Report, BackendError> {
            Err(BackendError::Unsupported("my-site-usage reports whole months only".to_owned()))
        }
    }

    /// The site's meters only count up within a month: a lower value than the one Waldur
    /// holds would be a mistake, and the host refuses it.
    impl exports::waldur::usage::usage_traits::Guest for MySite {
        fn usage_may_decrease() -> bool {
            false
        }
    }

    export!(MySite);
}
