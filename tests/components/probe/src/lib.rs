//! `probe`: a usage-backend component for tests. Its `settings_json` names a behaviour
//! (`{"probe": "<behaviour>", ...}`) and the component acts it out when asked for a
//! usage report, so each test can prove what the host does about it. It is built
//! against the frozen `waldur:usage@2.0.0`, so every hostile-component test runs the
//! host's binding of the older contract too.
//!
//! Every report carries one total per resource, of the first configured component
//! (the "value" below). Behaviours:
//!
//! - `fetch`: GET `url`; the value is the status.
//! - `set-header`: GET `url` with header `header` set by the component.
//! - `request`: sends `method` (default GET) to `url` with the `headers` map and, if
//!   `body` is given, that body; the value is the status.
//! - `many-401`: GETs `url` `count` times (a path answering 401); the value counts 401s.
//! - `paths`: GETs `url/p0` … `url/p<count-1>`, each path once; the value counts answers.
//! - `setup-fails`: setup answers invalid-config.
//! - `loop`: spins forever without calling the host.
//! - `grow`: allocates 1 MiB blocks until something stops it.
//! - `huge-result`: returns about `mib` MiB of per-user usage.
//! - `panic`: panics (a trap, with the message on stderr).
//! - `read-file`: tries to read `path` and list `/` and `.`; the value counts successes.
//! - `env`: counts environment variables and arguments, and whether `HOME` is set.
//! - `socket`: opens a TCP connection to `addr` itself; the value is 1 if it got one.
//! - `hang-http`: sends `requests` GETs to `url` and waits for the first answer forever.
//! - `sleep`: waits on the monotonic clock for an hour.
//! - `print`: writes `lines` lines to stdout and stderr, one very long, one with a
//!   terminal escape; the value is 1.
//! - `bad-numbers`: one resource per misbehaviour, in request order: a good value 1.5,
//!   NaN, -5, 1e300, a component reported twice, a resource reported twice.
//! - `contract`: breaks the result contract, in request order: a good value 1.5, not
//!   found yet with usage 5 and a user, reported twice, not found with zeros (allowed);
//!   and reports `stranger`, which nobody asked for.
//! - `forged-text`: strings that would forge log lines (CR, LF, ESC), `bytes` long:
//!   with `kind: message` a bad-response error, `kind: status` an upstream-status
//!   error with such an endpoint and message, `kind: ids` a report whose user and an
//!   unrequested resource hold them.
//! - `deny-flood`: GETs `url` with `{i}` replaced by 0 … `count`-1, going on after
//!   every error; the value counts the errors, or with `fail: true` the call fails
//!   with a transport error.
//! - `flood`: sends `count` GETs of `url` at once (every request handed to the host
//!   before the first answer is awaited), then awaits them all together and drops each
//!   answer unread; the value counts the answers (any status). Says on stderr what came back
//!   (`probe: flood: 1000 answered (HTTP 200 1000), 4000 failed (HttpRequestDenied 4000)`).
//! - `retry-storm`: `flood`, against an upstream that answers 503 to everything.
//! - `headers`: builds `count` header maps, each with `values` values of `bytes` bytes
//!   (a map past the host's size limit traps), and holds them all; with
//!   `path_bytes` each map goes into a request, never sent, whose path is that long.
//!   The value counts the maps; stderr says how far it got every 500 maps.
//!
//! `describe` answers what a real component does, unless the build sets
//! `PROBE_DESCRIBE` to one of the broken descriptions of `describe_variant` (the e2e
//! build script builds one probe per variant).

#[cfg(target_arch = "wasm32")]
#[allow(unsafe_code)] // Only wit-bindgen's generated ABI glue.
mod component {
    wit_bindgen::generate!({ path: "../../../wit/frozen/2.0.0", world: "backend" });

    use exports::waldur::usage::usage_backend as wit;
    use wasi::http::outgoing_handler;
    use wasi::http::types::{Fields, Method, OutgoingBody, OutgoingRequest, Scheme};

    struct Probe;

    fn settings(config: &wit::Config) -> serde_json::Value {
        serde_json::from_str(&config.settings_json).unwrap_or(serde_json::Value::Null)
    }

    fn text<'a>(settings: &'a serde_json::Value, key: &str) -> &'a str {
        settings.get(key).and_then(|v| v.as_str()).unwrap_or("")
    }

    fn number(settings: &serde_json::Value, key: &str) -> f64 {
        settings.get(key).and_then(|v| v.as_f64()).unwrap_or(0.0)
    }

    /// Sends `count` GETs to `url` and waits for the first answer, which a stalled
    /// server never gives; the others are never looked at.
    fn hang(url: &str, count: usize) -> Result<f64, wit::BackendError> {
        let mut futures = Vec::new();
        for _ in 0..count {
            futures.push(
                outgoing_handler::handle(request(url, &[])?, None)
                    .map_err(|e| wit::BackendError::Transport(format!("{e:?}")))?,
            );
        }
        futures[0].subscribe().block();
        Ok(0.0)
    }

    /// Sends `count` GETs of `url` before awaiting any, then awaits them all at once
    /// (one poll over every request still waiting, as a concurrent client does) and
    /// drops each answer unread; the answers (any status) and, on stderr, what came back
    /// by status and error.
    fn flood(url: &str, count: usize) -> Result<f64, wit::BackendError> {
        use std::collections::BTreeMap;
        // Field order is drop order: the pollable (a child) before its future.
        struct Waiting {
            pollable: wasi::io::poll::Pollable,
            future: wasi::http::types::FutureIncomingResponse,
        }
        let mut waiting = Vec::with_capacity(count);
        let mut failed: BTreeMap<String, usize> = BTreeMap::new();
        for _ in 0..count {
            match outgoing_handler::handle(request(url, &[])?, None) {
                Ok(future) => waiting.push(Waiting { pollable: future.subscribe(), future }),
                Err(code) => *failed.entry(variant(&format!("{code:?}"))).or_default() += 1,
            }
        }
        let mut answered: BTreeMap<u16, usize> = BTreeMap::new();
        while !waiting.is_empty() {
            let mut ready: Vec<usize> = {
                let pollables: Vec<&wasi::io::poll::Pollable> = waiting.iter().map(|w| &w.pollable).collect();
                wasi::io::poll::poll(&pollables).into_iter().map(|i| i as usize).collect()
            };
            ready.sort_unstable();
            ready.dedup();
            for i in ready.into_iter().rev() {
                let done = waiting.swap_remove(i);
                match done.future.get() {
                    // The answer is dropped here, unread: the host must take its slot back.
                    Some(Ok(Ok(response))) => *answered.entry(response.status()).or_default() += 1,
                    Some(Ok(Err(code))) => *failed.entry(variant(&format!("{code:?}"))).or_default() += 1,
                    _ => *failed.entry("no response".to_owned()).or_default() += 1,
                }
            }
        }
        let total: usize = answered.values().sum();
        let statuses: Vec<String> = answered.iter().map(|(s, n)| format!("HTTP {s} {n}")).collect();
        let errors: Vec<String> = failed.iter().map(|(e, n)| format!("{e} {n}")).collect();
        eprintln!(
            "probe: flood: {total} answered ({}), {} failed ({})",
            statuses.join(", "),
            failed.values().sum::<usize>(),
            errors.join(", ")
        );
        Ok(total as f64)
    }

    /// The variant name of an error code's `Debug` text (`InternalError(Some(…))` →
    /// `InternalError`, without the type's path), so counts by kind stay few.
    fn variant(debug: &str) -> String {
        let name = debug.split(['(', ' ', '{']).next().unwrap_or(debug);
        name.rsplit("::").next().unwrap_or(name).to_owned()
    }

    /// Header maps (or unsent requests holding them) built and held, as `headers` says.
    fn held_headers(settings: &serde_json::Value) -> Result<f64, wit::BackendError> {
        let count = number(settings, "count") as usize;
        let value = vec![b'v'; number(settings, "bytes").max(1.0) as usize];
        let path_bytes = number(settings, "path_bytes") as usize;
        let values = number(settings, "values") as usize;
        let path = format!("/{}", "p".repeat(path_bytes));
        let mut maps = Vec::new();
        let mut requests = Vec::new();
        for i in 0..count {
            let fields = Fields::new();
            for v in 0..values {
                fields
                    .append(&format!("x-probe-{v}"), &value)
                    .map_err(|e| wit::BackendError::Transport(format!("header refused: {e:?}")))?;
            }
            if path_bytes > 0 {
                let request = OutgoingRequest::new(fields);
                let _ = request.set_path_with_query(Some(&path));
                requests.push(request);
            } else {
                maps.push(fields);
            }
            if i % 500 == 0 {
                eprintln!("probe: headers: {i} held");
            }
        }
        Ok((maps.len() + requests.len()) as f64)
    }

    /// About `mib` MiB of per-user usage on the first resource.
    fn huge_report(component: &str, resources: Vec<wit::WaldurResource>, mib: f64) -> wit::Report {
        let users = ((mib * 1024.0) as usize).max(1);
        let mut resources: Vec<wit::ResourceUsage> = resources
            .into_iter()
            .map(|r| wit::ResourceUsage {
                backend_id: r.backend_id,
                found: true,
                totals: Vec::new(),
                users: Vec::new(),
            })
            .collect();
        if let Some(first) = resources.first_mut() {
            first.users = (0..users)
                .map(|i| wit::UserUsage {
                    username: format!("{i:01000}"),
                    amounts: vec![wit::Amount { component: component.to_owned(), value: 1.0 }],
                })
                .collect();
        }
        wit::Report { resources, upstream_requests: 0 }
    }

    /// One misbehaviour per resource, in request order.
    fn bad_numbers(component: &str, resources: Vec<wit::WaldurResource>) -> wit::Report {
        let amount = |value: f64| wit::Amount { component: component.to_owned(), value };
        let mut out = Vec::new();
        for (i, r) in resources.into_iter().enumerate() {
            let totals = match i {
                0 => vec![amount(1.5)],
                1 => vec![amount(f64::NAN)],
                2 => vec![amount(-5.0)],
                3 => vec![amount(1e300)],
                4 => vec![amount(1.0), amount(2.0)],
                _ => vec![amount(7.0)],
            };
            let usage = wit::ResourceUsage { backend_id: r.backend_id, found: true, totals, users: Vec::new() };
            if i == 5 {
                out.push(usage.clone());
            }
            out.push(usage);
        }
        wit::Report { resources: out, upstream_requests: 0 }
    }

    /// An outgoing GET of `url` with extra headers.
    fn request(url: &str, headers: &[(&str, &str)]) -> Result<OutgoingRequest, wit::BackendError> {
        let (scheme, rest) =
            url.split_once("://").ok_or_else(|| wit::BackendError::InvalidConfig(format!("bad url {url}")))?;
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
        Ok(request)
    }

    /// GETs `url` with extra headers; the status, or the error the host gave.
    fn get(url: &str, headers: &[(&str, &str)]) -> Result<u16, wit::BackendError> {
        let future = outgoing_handler::handle(request(url, headers)?, None)
            .map_err(|e| wit::BackendError::Transport(format!("{e:?}")))?;
        future.subscribe().block();
        match future.get() {
            Some(Ok(Ok(response))) => Ok(response.status()),
            Some(Ok(Err(code))) => Err(wit::BackendError::Transport(format!("{code:?}"))),
            _ => Err(wit::BackendError::Transport("no response".to_owned())),
        }
    }

    /// Sends `method` to `url` with `headers` and an optional body; the status.
    fn send(settings: &serde_json::Value) -> Result<u16, wit::BackendError> {
        let headers: Vec<(String, String)> = settings
            .get("headers")
            .and_then(|h| h.as_object())
            .map(|h| h.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_owned())).collect())
            .unwrap_or_default();
        let pairs: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let outgoing = request(text(settings, "url"), &pairs)?;
        let method = match text(settings, "method") {
            "" | "GET" => Method::Get,
            "HEAD" => Method::Head,
            "POST" => Method::Post,
            "PUT" => Method::Put,
            "DELETE" => Method::Delete,
            "PATCH" => Method::Patch,
            other => Method::Other(other.to_owned()),
        };
        let _ = outgoing.set_method(&method);
        let body = settings.get("body").and_then(|b| b.as_str());
        let outgoing_body = match body {
            Some(_) => Some(outgoing.body().map_err(|()| wit::BackendError::Transport("no body".to_owned()))?),
            None => None,
        };
        let future =
            outgoing_handler::handle(outgoing, None).map_err(|e| wit::BackendError::Transport(format!("{e:?}")))?;
        if let (Some(bytes), Some(outgoing_body)) = (body, outgoing_body) {
            if let Ok(stream) = outgoing_body.write() {
                let _ = stream.blocking_write_and_flush(bytes.as_bytes());
            }
            let _ = OutgoingBody::finish(outgoing_body, None);
        }
        future.subscribe().block();
        match future.get() {
            Some(Ok(Ok(response))) => Ok(response.status()),
            Some(Ok(Err(code))) => Err(wit::BackendError::Transport(format!("{code:?}"))),
            _ => Err(wit::BackendError::Transport("no response".to_owned())),
        }
    }

    /// Text that would start a new, forged log line and clear the operator's screen,
    /// padded to about `bytes` bytes.
    fn forged(bytes: usize) -> String {
        let mut text = "probe\r\n2026-01-01T00:00:00Z ERROR forged: all is well\u{1b}[2J".to_owned();
        while text.len() < bytes {
            text.push('x');
        }
        text
    }

    /// `describe` as the build's `PROBE_DESCRIBE` says: each variant breaks one rule.
    pub(crate) fn describe_variant(variant: Option<&str>) -> wit::BackendInfo {
        let mut info = wit::BackendInfo {
            name: "probe".to_owned(),
            version: "0.0.1".to_owned(),
            backend_types: vec!["probe".to_owned()],
            operations: vec![wit::Operation::UsageReport],
        };
        // Every variant also claims the built-in compute type, so it can be dropped in
        // as `cscs-dwdi-compute.wasm` and only its broken rule refuses it.
        if variant.is_some() {
            info.backend_types = vec!["cscs-dwdi-compute".to_owned()];
        }
        match variant {
            Some("huge-version") => info.version = format!("1.0.0-{}", "x".repeat(4 << 20)),
            Some("many-operations") => info.operations = vec![wit::Operation::UsageReport; 100_000],
            Some("not-semver") => info.version = "latest".to_owned(),
            Some("forged-name") => info.name = "probe\n2026-01-01T00:00:00Z ERROR forged\u{1b}[2J".to_owned(),
            Some("repeated-operation") => {
                info.operations = vec![wit::Operation::UsageReport, wit::Operation::Ping, wit::Operation::UsageReport]
            }
            Some("unknown-type") => info.backend_types.push("definitely-not-configured".to_owned()),
            _ => {}
        }
        info
    }

    /// The contract broken in every way a report can break it, in request order.
    fn contract(component: &str, resources: Vec<wit::WaldurResource>) -> wit::Report {
        let amount = |value: f64| vec![wit::Amount { component: component.to_owned(), value }];
        let mut out = Vec::new();
        for (i, r) in resources.into_iter().enumerate() {
            let (found, totals, users) = match i {
                0 => (true, amount(1.5), Vec::new()),
                1 => (false, amount(5.0), vec![wit::UserUsage { username: "alice".to_owned(), amounts: amount(5.0) }]),
                3 => (false, amount(0.0), Vec::new()),
                _ => (true, amount(2.0), Vec::new()),
            };
            let usage = wit::ResourceUsage { backend_id: r.backend_id, found, totals, users };
            if i == 2 {
                out.push(usage.clone());
            }
            out.push(usage);
        }
        out.push(wit::ResourceUsage {
            backend_id: "stranger".to_owned(),
            found: true,
            totals: amount(9.0),
            users: Vec::new(),
        });
        wit::Report { resources: out, upstream_requests: 0 }
    }

    /// A report or an error whose strings would forge log lines.
    fn forged_text(
        settings: &serde_json::Value,
        component: &str,
        resources: Vec<wit::WaldurResource>,
    ) -> Result<wit::Report, wit::BackendError> {
        let evil = forged(number(settings, "bytes") as usize);
        match text(settings, "kind") {
            "status" => Err(wit::BackendError::UpstreamStatus(wit::UpstreamStatus {
                status: 500,
                endpoint: evil.clone(),
                message: evil,
            })),
            "ids" => {
                let amount = |value: f64| vec![wit::Amount { component: component.to_owned(), value }];
                let mut out: Vec<wit::ResourceUsage> = resources
                    .into_iter()
                    .map(|r| wit::ResourceUsage {
                        backend_id: r.backend_id,
                        found: true,
                        totals: amount(1.0),
                        users: vec![wit::UserUsage { username: evil.clone(), amounts: amount(1.0) }],
                    })
                    .collect();
                out.push(wit::ResourceUsage { backend_id: evil, found: true, totals: amount(1.0), users: Vec::new() });
                Ok(wit::Report { resources: out, upstream_requests: 0 })
            }
            _ => Err(wit::BackendError::BadResponse(evil)),
        }
    }

    impl wit::Guest for Probe {
        fn describe() -> wit::BackendInfo {
            describe_variant(option_env!("PROBE_DESCRIBE"))
        }

        fn setup(config: wit::Config) -> Result<(), wit::BackendError> {
            match text(&settings(&config), "probe") {
                "setup-fails" => {
                    Err(wit::BackendError::InvalidConfig("backend_settings.probe: setup refused on purpose".to_owned()))
                }
                "setup-sleeps" => {
                    wasi::clocks::monotonic_clock::subscribe_duration(3_600_000_000_000).block();
                    Ok(())
                }
                _ => Ok(()),
            }
        }

        fn ping(_: wit::Config, _: wit::Date) -> Result<(), wit::BackendError> {
            Ok(())
        }

        fn usage_report(
            config: wit::Config,
            resources: Vec<wit::WaldurResource>,
            _: wit::BillingPeriod,
        ) -> Result<wit::Report, wit::BackendError> {
            let settings = settings(&config);
            let component = config.components.first().map(|c| c.name.clone()).unwrap_or_else(|| "status".to_owned());
            let value: f64 = match text(&settings, "probe") {
                "fetch" => f64::from(get(text(&settings, "url"), &[])?),
                "set-header" => {
                    let header = text(&settings, "header");
                    f64::from(get(text(&settings, "url"), &[(header, "Bearer forged")])?)
                }
                "request" => f64::from(send(&settings)?),
                "many-401" => {
                    let mut refused = 0;
                    for _ in 0..number(&settings, "count") as usize {
                        if get(text(&settings, "url"), &[])? == 401 {
                            refused += 1;
                        }
                    }
                    f64::from(refused)
                }
                "paths" => {
                    let mut answered = 0;
                    for i in 0..number(&settings, "count") as usize {
                        get(&format!("{}/p{i}", text(&settings, "url")), &[])?;
                        answered += 1;
                    }
                    f64::from(answered)
                }
                "loop" => {
                    let mut n = 0u64;
                    loop {
                        n = std::hint::black_box(n.wrapping_add(1));
                    }
                }
                "grow" => {
                    let mut blocks: Vec<Vec<u8>> = Vec::new();
                    loop {
                        blocks.push(vec![1u8; 1 << 20]);
                        std::hint::black_box(&blocks);
                    }
                }
                "huge-result" => return Ok(huge_report(&component, resources, number(&settings, "mib"))),
                "panic" => panic!("probe: panicking on purpose"),
                "read-file" => {
                    let mut got = 0;
                    match std::fs::read(text(&settings, "path")) {
                        Ok(_) => got += 1,
                        Err(e) => eprintln!("probe: cannot read {}: {e}", text(&settings, "path")),
                    }
                    for dir in ["/", "."] {
                        match std::fs::read_dir(dir) {
                            Ok(_) => got += 1,
                            Err(e) => eprintln!("probe: cannot list {dir}: {e}"),
                        }
                    }
                    f64::from(got)
                }
                "env" => {
                    let vars = std::env::vars().count();
                    let args = std::env::args().count();
                    let home = usize::from(std::env::var("HOME").is_ok());
                    // wasi-libc emulates a current directory ("/") without any preopen
                    // behind it: shown, not counted.
                    let cwd = std::env::current_dir().map(|d| d.display().to_string()).unwrap_or_default();
                    eprintln!("probe: {vars} variables, {args} arguments, HOME {home}, cwd {cwd:?}");
                    (vars + args + home) as f64
                }
                "socket" => match std::net::TcpStream::connect(text(&settings, "addr")) {
                    Ok(_) => 1.0,
                    Err(e) => {
                        eprintln!("probe: cannot connect: {e}");
                        0.0
                    }
                },
                "hang-http" => hang(text(&settings, "url"), number(&settings, "requests").max(1.0) as usize)?,
                "sleep" => {
                    wasi::clocks::monotonic_clock::subscribe_duration(3_600_000_000_000).block();
                    0.0
                }
                "print" => {
                    let lines = number(&settings, "lines") as usize;
                    println!("probe says hello on stdout");
                    eprintln!("probe says \x1b[31mred\x1b[0m on stderr");
                    println!("{}", "long".repeat(1000));
                    for i in 0..lines {
                        println!("probe line {i}");
                        eprintln!("probe error line {i}");
                    }
                    1.0
                }
                "bad-numbers" => return Ok(bad_numbers(&component, resources)),
                "contract" => return Ok(contract(&component, resources)),
                "forged-text" => return forged_text(&settings, &component, resources),
                "headers" => held_headers(&settings)?,
                "flood" | "retry-storm" => flood(text(&settings, "url"), number(&settings, "count") as usize)?,
                "deny-flood" => {
                    let mut failed = 0;
                    for i in 0..number(&settings, "count") as usize {
                        if get(&text(&settings, "url").replace("{i}", &i.to_string()), &[]).is_err() {
                            failed += 1;
                        }
                    }
                    if settings.get("fail").and_then(|f| f.as_bool()) == Some(true) {
                        return Err(wit::BackendError::Transport(format!("probe: {failed} requests failed")));
                    }
                    f64::from(failed)
                }
                other => return Err(wit::BackendError::Unsupported(format!("probe {other:?}"))),
            };
            Ok(wit::Report {
                resources: resources
                    .into_iter()
                    .map(|r| wit::ResourceUsage {
                        backend_id: r.backend_id,
                        found: true,
                        totals: vec![wit::Amount { component: component.clone(), value }],
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
