//! What a component's request may be: the egress policy, apart from the send path.
//!
//! The allow-list is parsed once, when an offering's egress is built, from its upstream
//! base URLs (`upstream.urls`, or `cscs_dwdi_api_url` for the DWDI backends): scheme,
//! host, port and base path of each. [`Policy::check`] then decides each request a
//! component hands to `wasi:http` before anything else happens (no token, no
//! connection): it is a pure function of the request head, so the send path
//! (`super::Egress::send_for`) only has to act on its answer. A request leaves when
//!
//! - it goes to the scheme, host and port of one of the base URLs, with no userinfo;
//! - its method is GET or HEAD (the body is checked by the send path: it must be empty);
//! - its path lies under that URL's path, segment by segment, with no empty segment
//!   (`//`), no dot-segment and no percent-encoded `/`, `\`, `.` or control character:
//!   such paths are refused, never resolved, so what the upstream sees is what was checked;
//! - its headers are all on [`ALLOWED_HEADERS`], at most [`MAX_HEADERS`] of them and
//!   [`MAX_HEADER_BYTES`] together (so never `Authorization`, nor a key header the host
//!   attaches).
//!
//! What leaves is rebuilt from the allowed destination: the URI's authority (hence
//! `Host`) is the base URL's, never the component's. The policy deliberately knows
//! nothing about credentials, proxies or retries (`super`), nor the token endpoint,
//! which only the host talks to.

use http::HeaderMap;
use http::header::HeaderName;

/// Request headers a component may send: what a JSON GET needs. `accept-encoding` is
/// not among them: the host does not decode compressed answers.
pub const ALLOWED_HEADERS: &[&str] =
    &["accept", "accept-language", "user-agent", "if-none-match", "if-modified-since", "cache-control"];
/// Most headers one request may carry.
pub const MAX_HEADERS: usize = 32;
/// Most bytes of header names and values one request may carry.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;
/// The endpoint families of the built-in backends' API (DWDI), relative to the API URL's path: under that
/// path, the only `endpoint` label values of the request metrics besides `other`, so a component
/// choosing paths cannot grow the number of series.
pub const ENDPOINT_FAMILIES: &[&str] = &[
    "/compute/usage-month/account",
    "/compute/usage-day/account",
    "/compute/usage-day",
    "/storage/usage-month",
    "/storage/usage-day",
    "/inference/resource/cost",
];
/// Longest part of a component-chosen path quoted in a denial.
const SHOWN_PATH_CHARS: usize = 120;

/// The allowed destination: scheme, host and port of the API URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Destination {
    scheme: String,
    host: String,
    port: u16,
}

impl Destination {
    fn of_url(url: &url::Url) -> Option<Self> {
        Some(Self {
            scheme: url.scheme().to_owned(),
            host: url.host_str()?.trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase(),
            port: url.port_or_known_default()?,
        })
    }

    fn of_uri(uri: &http::Uri) -> Option<Self> {
        let scheme = uri.scheme_str()?.to_owned();
        let default_port = match scheme.as_str() {
            "https" => 443,
            "http" => 80,
            _ => return None,
        };
        Some(Self {
            host: uri.host()?.trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase(),
            port: uri.port_u16().unwrap_or(default_port),
            scheme,
        })
    }
}

impl std::fmt::Display for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}://{}:{}", self.scheme, self.host, self.port)
    }
}

/// Why a request may not leave. Each kind is one of a fixed set ([`Denial::kind`]), so
/// logs and metrics keyed by it stay bounded whatever a component sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denial {
    /// Another scheme, host or port (shown as the component gave it).
    Destination(String),
    /// `user[:password]@` in the authority.
    Userinfo,
    /// A method other than GET and HEAD.
    Method(String),
    /// A request body.
    Body,
    /// A path outside the API base path, or not in normal form.
    Path { path: String, why: &'static str },
    /// A header not on the allow-list.
    Header(HeaderName),
    /// More than [`MAX_HEADERS`] headers.
    HeaderCount(usize),
    /// More than [`MAX_HEADER_BYTES`] of headers.
    HeaderBytes(usize),
    /// The call had already sent this many requests, its budget
    /// (`max_requests_per_call`). Decided by the send path, not by [`Policy::check`]:
    /// the request itself may be fine.
    RequestsPerCall(u32),
}

impl Denial {
    /// The rule broken, as a fixed word (log key and metric label).
    pub fn kind(&self) -> &'static str {
        match self {
            Denial::Destination(_) => "destination",
            Denial::Userinfo => "userinfo",
            Denial::Method(_) => "method",
            Denial::Body => "body",
            Denial::Path { .. } => "path",
            Denial::Header(_) => "header",
            Denial::HeaderCount(_) => "header-count",
            Denial::HeaderBytes(_) => "header-bytes",
            Denial::RequestsPerCall(_) => "requests-per-call",
        }
    }
}

impl std::fmt::Display for Denial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Denial::Destination(shown) => write!(f, "destination {shown} is not an allowed upstream URL"),
            Denial::Userinfo => write!(f, "userinfo in the authority"),
            Denial::Method(method) => write!(f, "method {method} (only GET and HEAD)"),
            Denial::Body => write!(f, "a request body"),
            Denial::Path { path, why } => write!(f, "path {path}: {why}"),
            Denial::Header(name) => write!(f, "header {} is not allowed", cut(name.as_str())),
            Denial::HeaderCount(n) => write!(f, "{n} headers, at most {MAX_HEADERS}"),
            Denial::HeaderBytes(n) => write!(f, "{n} bytes of headers, at most {MAX_HEADER_BYTES}"),
            Denial::RequestsPerCall(n) => {
                write!(f, "the call has sent {n} requests, all it may (setting backend_settings.max_requests_per_call)")
            }
        }
    }
}

/// A request the policy lets out: the URI rebuilt on the allowed authority, and the
/// component's allowed headers.
#[derive(Debug)]
pub struct Allowed {
    pub uri: http::Uri,
    pub headers: HeaderMap,
}

/// One allowed base URL: its destination, and the path under which requests may go.
#[derive(Debug, Clone)]
struct Base {
    destination: Destination,
    /// `host[:port]` of the URL, as the rebuilt requests carry it.
    authority: http::uri::Authority,
    scheme: http::uri::Scheme,
    /// The URL's path segments, as written (percent-encoding kept).
    segments: Vec<String>,
    /// [`ENDPOINT_FAMILIES`] under the URL's path: the metric labels.
    families: Vec<String>,
}

impl Base {
    fn of_url(url: &url::Url) -> Result<Self, String> {
        let destination = Destination::of_url(url).ok_or("no host or port")?;
        let host = url.host_str().ok_or("no host")?;
        let authority = match url.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_owned(),
        };
        let authority = authority.parse().map_err(|e| format!("host {host}: {e}"))?;
        let scheme = url.scheme().parse().map_err(|e| format!("scheme: {e}"))?;
        let segments: Vec<String> = url.path().split('/').filter(|s| !s.is_empty()).map(str::to_owned).collect();
        let prefix: String = segments.iter().map(|segment| format!("/{segment}")).collect();
        let families = ENDPOINT_FAMILIES.iter().map(|family| format!("{prefix}{family}")).collect();
        Ok(Self { destination, authority, scheme, segments, families })
    }

    /// Whether `named` (a path's segments, without a trailing empty one) lies under it.
    fn holds(&self, named: &[&str]) -> bool {
        named.len() >= self.segments.len() && named.iter().zip(&self.segments).all(|(a, b)| a == b)
    }
}

/// The egress policy of one offering, parsed once from its upstream base URLs.
#[derive(Debug, Clone)]
pub struct Policy {
    bases: Vec<Base>,
}

impl Policy {
    /// The policy of `urls`, each a base a request may go under; the error names the
    /// position of the URL and says what it lacks.
    pub fn from_urls(urls: &[url::Url]) -> Result<Self, (usize, String)> {
        let bases = urls
            .iter()
            .enumerate()
            .map(|(i, url)| Base::of_url(url).map_err(|e| (i, e)))
            .collect::<Result<Vec<_>, _>>()?;
        if bases.is_empty() {
            return Err((0, "no URL".to_owned()));
        }
        Ok(Self { bases })
    }

    /// The allowed destinations, for messages: `https://a:443, http://b:8080`.
    pub(crate) fn destinations(&self) -> String {
        let mut shown: Vec<String> = Vec::new();
        for base in &self.bases {
            let destination = base.destination.to_string();
            if !shown.contains(&destination) {
                shown.push(destination);
            }
        }
        shown.join(", ")
    }

    /// Decides a request head (the body is the caller's to check: it must be empty).
    pub fn check(&self, method: &http::Method, uri: &http::Uri, headers: &HeaderMap) -> Result<Allowed, Denial> {
        let destination = Destination::of_uri(uri);
        let candidates: Vec<&Base> =
            self.bases.iter().filter(|b| destination.as_ref() == Some(&b.destination)).collect();
        if candidates.is_empty() {
            return Err(Denial::Destination(shown_destination(uri)));
        }
        if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
            return Err(Denial::Userinfo);
        }
        if method != http::Method::GET && method != http::Method::HEAD {
            return Err(Denial::Method(cut(method.as_str())));
        }
        let path = uri.path();
        let named = normal_segments(path).map_err(|why| Denial::Path { path: cut(path), why })?;
        let base = candidates
            .into_iter()
            .find(|b| b.holds(&named))
            .ok_or_else(|| Denial::Path { path: cut(path), why: "outside every allowed base path" })?;
        let allowed = check_headers(headers)?;
        let path_and_query = uri.path_and_query().map(|pq| pq.as_str()).unwrap_or("/");
        let uri = http::Uri::builder()
            .scheme(base.scheme.clone())
            .authority(base.authority.clone())
            .path_and_query(path_and_query)
            .build()
            .map_err(|_| Denial::Path { path: cut(path), why: "not a valid request target" })?;
        Ok(Allowed { uri, headers: allowed })
    }

    /// The metric label of a request path: a base URL's path followed by its family in
    /// [`ENDPOINT_FAMILIES`] (`/api/v1/compute/usage-day`), or `other`.
    pub fn endpoint_family(&self, path: &str) -> &str {
        let path = if path.len() > 1 { path.strip_suffix('/').unwrap_or(path) } else { path };
        self.bases
            .iter()
            .flat_map(|b| &b.families)
            .find(|family| family.as_str() == path)
            .map(String::as_str)
            .unwrap_or("other")
    }
}

/// The segments of an absolute path in normal form (no `//`, dot-segment or encoded
/// separator), without the empty one a trailing slash leaves.
fn normal_segments(path: &str) -> Result<Vec<&str>, &'static str> {
    let rest = path.strip_prefix('/').ok_or("not absolute")?;
    let mut segments: Vec<&str> = rest.split('/').collect();
    let last = segments.len() - 1;
    for (i, segment) in segments.iter().enumerate() {
        if segment.is_empty() {
            // One trailing slash is a path of its own; `//` anywhere is not.
            if i == last {
                continue;
            }
            return Err("empty segment (//)");
        }
        if *segment == "." || *segment == ".." {
            return Err("dot-segment");
        }
        check_segment(segment)?;
    }
    if segments[last].is_empty() {
        segments.pop();
    }
    Ok(segments)
}

/// Refuses a backslash and percent-encoded separators, dots, controls and bad escapes.
fn check_segment(segment: &str) -> Result<(), &'static str> {
    let bytes = segment.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => return Err("backslash"),
            b'%' => {
                let hex = |b: u8| (b as char).to_digit(16);
                let (Some(hi), Some(lo)) =
                    (bytes.get(i + 1).copied().and_then(hex), bytes.get(i + 2).copied().and_then(hex))
                else {
                    return Err("malformed percent-escape");
                };
                let decoded = (hi * 16 + lo) as u8;
                if matches!(decoded, b'/' | b'\\' | b'.') || decoded < 0x20 || decoded == 0x7f {
                    return Err("percent-encoded separator, dot or control character");
                }
                i += 3;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    Ok(())
}

/// The allowed headers of a request; `host` is dropped (it comes from the destination).
fn check_headers(headers: &HeaderMap) -> Result<HeaderMap, Denial> {
    if headers.len() > MAX_HEADERS {
        return Err(Denial::HeaderCount(headers.len()));
    }
    let bytes: usize = headers.iter().map(|(name, value)| name.as_str().len() + value.len()).sum();
    if bytes > MAX_HEADER_BYTES {
        return Err(Denial::HeaderBytes(bytes));
    }
    let mut allowed = HeaderMap::with_capacity(headers.len());
    for (name, value) in headers {
        if *name == http::header::HOST {
            continue;
        }
        if !ALLOWED_HEADERS.contains(&name.as_str()) {
            return Err(Denial::Header(name.clone()));
        }
        allowed.append(name.clone(), value.clone());
    }
    Ok(allowed)
}

/// Scheme, host and port of `uri` as a denial shows it (no userinfo, no path).
fn shown_destination(uri: &http::Uri) -> String {
    match Destination::of_uri(uri) {
        Some(destination) => cut(&destination.to_string()),
        None => cut(&super::shown_uri(uri)),
    }
}

/// `text` cut to [`SHOWN_PATH_CHARS`] characters (URI text is ASCII).
fn cut(text: &str) -> String {
    match text.char_indices().nth(SHOWN_PATH_CHARS) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(api: &str) -> Policy {
        Policy::from_urls(&[url::Url::parse(api).expect("a URL")]).expect("a policy")
    }

    fn get(policy: &Policy, uri: &str) -> Result<Allowed, Denial> {
        policy.check(&http::Method::GET, &uri.parse().expect("a URI"), &HeaderMap::new())
    }

    #[test]
    fn paths_under_the_base_pass_and_others_are_refused() {
        let p = policy("https://api.example:8443/api/v1");
        for ok in [
            "https://api.example:8443/api/v1",
            "https://api.example:8443/api/v1/",
            "https://API.example:8443/api/v1/compute/usage-day?from=a&account=x%2Fy",
            "https://api.example:8443/api/v1/compute/usage-month/account",
            "https://api.example:8443/api/v1/a%20b/...",
        ] {
            assert!(get(&p, ok).is_ok(), "{ok}");
        }
        for (bad, why) in [
            ("https://api.example:8443/oidc/token", "outside"),
            ("https://api.example:8443/api/v10/x", "outside"),
            ("https://api.example:8443/api", "outside"),
            ("https://api.example:8443/", "outside"),
            ("https://api.example:8443/api/v1/../../oidc", "dot-segment"),
            ("https://api.example:8443/api/v1/./x", "dot-segment"),
            ("https://api.example:8443/api/v1/%2e%2e/x", "percent"),
            ("https://api.example:8443/api/v1/%2E./x", "percent"),
            ("https://api.example:8443/api/v1/a%2fb", "percent"),
            ("https://api.example:8443/api/v1/a%5Cb", "percent"),
            ("https://api.example:8443/api/v1/a%00b", "percent"),
            ("https://api.example:8443/api/v1/a%zz", "malformed"),
            ("https://api.example:8443/api/v1//x", "empty"),
            ("https://api.example:8443//api/v1/x", "empty"),
        ] {
            match get(&p, bad) {
                Err(Denial::Path { why: reason, .. }) => assert!(reason.contains(why), "{bad}: {reason}"),
                other => panic!("{bad}: {other:?}"),
            }
        }
    }

    #[test]
    fn paths_map_to_a_fixed_set_of_endpoint_families() {
        let p = policy("https://api.example/api/v1");
        assert_eq!(p.endpoint_family("/api/v1/compute/usage-day"), "/api/v1/compute/usage-day");
        assert_eq!(p.endpoint_family("/api/v1/storage/usage-month/"), "/api/v1/storage/usage-month");
        for other in ["/api/v1/x1", "/api/v1/compute/usage-day/x", "/api/v10/compute/usage-day", "/", "/api"] {
            assert_eq!(p.endpoint_family(other), "other", "{other}");
        }
    }

    #[test]
    fn a_root_base_allows_every_normal_path() {
        let p = policy("http://127.0.0.1:9000");
        assert!(get(&p, "http://127.0.0.1:9000/").is_ok());
        assert!(get(&p, "http://127.0.0.1:9000/x/y").is_ok());
        assert!(matches!(get(&p, "http://127.0.0.1:9000//x"), Err(Denial::Path { .. })));
    }

    #[test]
    fn destination_userinfo_and_method_are_checked() {
        let p = policy("https://api.example/api/v1");
        assert!(get(&p, "https://api.example:443/api/v1/x").is_ok());
        assert!(matches!(get(&p, "https://api.example:8443/api/v1/x"), Err(Denial::Destination(_))));
        assert!(matches!(get(&p, "http://api.example/api/v1/x"), Err(Denial::Destination(_))));
        assert_eq!(get(&p, "https://user:pw@api.example/api/v1/x").err(), Some(Denial::Userinfo));
        let uri: http::Uri = "https://api.example/api/v1/x".parse().expect("a URI");
        assert!(p.check(&http::Method::HEAD, &uri, &HeaderMap::new()).is_ok());
        for method in [http::Method::POST, http::Method::PUT, http::Method::DELETE, http::Method::PATCH] {
            assert!(matches!(p.check(&method, &uri, &HeaderMap::new()), Err(Denial::Method(_))), "{method}");
        }
    }

    #[test]
    fn the_authority_comes_from_the_api_url() {
        let p = policy("https://api.example/api/v1");
        let allowed = get(&p, "https://API.EXAMPLE:443/api/v1/x?a=1").expect("allowed");
        assert_eq!(allowed.uri.to_string(), "https://api.example/api/v1/x?a=1");
    }

    #[test]
    fn headers_are_allow_listed_and_bounded() {
        let p = policy("https://api.example/api/v1");
        let uri: http::Uri = "https://api.example/api/v1/x".parse().expect("a URI");
        let mut headers = HeaderMap::new();
        headers.insert("accept", "application/json".parse().expect("a value"));
        headers.insert("host", "evil.example".parse().expect("a value"));
        let allowed = p.check(&http::Method::GET, &uri, &headers).expect("allowed");
        assert_eq!(allowed.headers.len(), 1, "host is dropped");
        for spoof in ["x-forwarded-for", "forwarded", "x-http-method-override", "content-length", "authorization"] {
            let mut headers = HeaderMap::new();
            headers.insert(HeaderName::from_static(spoof), "1".parse().expect("a value"));
            assert!(matches!(p.check(&http::Method::GET, &uri, &headers), Err(Denial::Header(_))), "{spoof}");
        }
        let mut many = HeaderMap::new();
        for _ in 0..=MAX_HEADERS {
            many.append("accept", "a".parse().expect("a value"));
        }
        assert!(matches!(p.check(&http::Method::GET, &uri, &many), Err(Denial::HeaderCount(33))));
        let mut big = HeaderMap::new();
        big.insert("user-agent", "u".repeat(MAX_HEADER_BYTES).parse().expect("a value"));
        assert!(matches!(p.check(&http::Method::GET, &uri, &big), Err(Denial::HeaderBytes(_))));
    }

    #[test]
    fn several_bases_each_allow_their_own_paths() {
        let urls = ["https://meter.example/api/v2", "http://10.0.0.5:8080/meter", "https://meter.example/status"];
        let urls: Vec<url::Url> = urls.iter().map(|u| url::Url::parse(u).expect("a URL")).collect();
        let p = Policy::from_urls(&urls).expect("a policy");
        for ok in [
            "https://meter.example/api/v2/usage?month=2024-03",
            "http://10.0.0.5:8080/meter/x",
            "https://meter.example/status",
        ] {
            assert!(get(&p, ok).is_ok(), "{ok}");
        }
        // Each path under its own base only, and no destination but theirs.
        assert!(matches!(get(&p, "https://meter.example/meter/x"), Err(Denial::Path { .. })));
        assert!(matches!(get(&p, "http://10.0.0.5:8080/api/v2/usage"), Err(Denial::Path { .. })));
        assert!(matches!(get(&p, "http://meter.example/api/v2/usage"), Err(Denial::Destination(_))));
        // The request goes to the base it matched.
        let allowed = get(&p, "http://10.0.0.5:8080/meter/x?a=1").expect("allowed");
        assert_eq!(allowed.uri.to_string(), "http://10.0.0.5:8080/meter/x?a=1");
        assert_eq!(p.destinations(), "https://meter.example:443, http://10.0.0.5:8080");
        assert_eq!(Policy::from_urls(&[]).err(), Some((0, "no URL".to_owned())));
    }
}
