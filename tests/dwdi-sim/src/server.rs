//! The HTTP side: shared state, the token endpoint, the API endpoints, fault injection and
//! statistics.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::hash::{BuildHasher, Hasher};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::{Body, to_bytes};
use axum::extract::{ConnectInfo, Request, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use serde::Serialize;
use serde_json::{Value, json};

use crate::b64;
use crate::data::{ComputeEntry, Day, DwdiData, InferenceRow, StorageRow, parse_month};

/// Path prefix of the API; [`crate::DwdiSim::api_url`] ends with it.
pub const API_PREFIX: &str = "/api/v1";
/// Path of the OIDC token endpoint.
pub const TOKEN_PATH: &str = "/realms/test/protocol/openid-connect/token";
/// How many recent requests [`Stats::recent`] keeps.
pub const RECENT_CAPACITY: usize = 256;
/// Largest token request body read; larger bodies are refused.
const MAX_FORM_BODY: usize = 64 * 1024;

/// How the simulator authenticates and behaves. [`Default`] gives client id `dwdi-client`,
/// secret `dwdi-secret`, 300 s tokens, no latency, `expires_in` included, scope `openid`
/// required, request targets up to 8 KiB.
#[derive(Clone, Debug)]
pub struct DwdiOptions {
    /// The only client id the token endpoint accepts.
    pub client_id: String,
    /// Its secret.
    pub client_secret: String,
    /// How long an issued token stays valid.
    pub token_lifetime: Duration,
    /// Slept before answering every request (API and token). See also
    /// [`SimState::set_latency`].
    pub latency: Duration,
    /// Whether token answers carry `expires_in` (real OIDC servers may omit it).
    pub include_expires_in: bool,
    /// A scope a token request must include when it sends `scope` at all; empty: none.
    pub scope_required: String,
    /// Longest request target (path and query) accepted; longer ones get 414, as the
    /// reverse proxy in front of a real service does (nginx's default is 8 KiB). A client
    /// that puts hundreds of accounts in one URL must split them.
    pub max_uri_len: usize,
}

impl Default for DwdiOptions {
    fn default() -> Self {
        Self {
            client_id: "dwdi-client".to_owned(),
            client_secret: "dwdi-secret".to_owned(),
            token_lifetime: Duration::from_secs(300),
            latency: Duration::ZERO,
            include_expires_in: true,
            scope_required: "openid".to_owned(),
            max_uri_len: 8 * 1024,
        }
    }
}

/// One request as the simulator saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestRecord {
    /// HTTP method.
    pub method: String,
    /// The request target exactly as received (path and raw query).
    pub uri: String,
    /// The TCP peer, when the server was started with connect info.
    pub peer: Option<SocketAddr>,
    /// The status answered.
    pub status: u16,
    /// The `Via` header: an HTTP proxy forwarding a plain request names itself there.
    pub via: Option<String>,
}

/// Counters since start (or the last [`SimState::reset_stats`]).
#[derive(Clone, Debug, Default)]
pub struct Stats {
    /// Requests to the token endpoint, any outcome.
    pub token_requests: u64,
    /// Tokens issued (200 answers of the token endpoint).
    pub tokens_issued: u64,
    /// Token requests refused (any non-200, injected failures included).
    pub token_rejected: u64,
    /// Requests to a known API endpoint, any outcome.
    pub api_requests: u64,
    /// API answers 401 (missing, unknown or expired token).
    pub api_unauthorized: u64,
    /// API answers 400 (bad or missing query parameters).
    pub api_bad_requests: u64,
    /// API and token answers produced by [`SimState::fail_next`] and friends.
    pub injected_failures: u64,
    /// Requests per path (query excluded), every request counted, unknown paths included.
    pub requests_by_path: BTreeMap<String, u64>,
    /// Every distinct TCP peer (address and port: one per client connection).
    pub peers: BTreeSet<SocketAddr>,
    /// Client connections open when the snapshot was taken.
    pub open_connections: u64,
    /// The most client connections open at the same time (since start, or since the
    /// last reset: then counting from those still open).
    pub max_open_connections: u64,
    /// The last [`RECENT_CAPACITY`] requests, oldest first.
    pub recent: Vec<RequestRecord>,
}

impl Stats {
    /// Requests to `path` under the API prefix, e.g. `"/compute/usage-month/account"`.
    pub fn api_count(&self, path: &str) -> u64 {
        self.requests_by_path.get(&format!("{API_PREFIX}{path}")).copied().unwrap_or(0)
    }

    /// The distinct peer IP addresses.
    pub fn peer_ips(&self) -> BTreeSet<IpAddr> {
        self.peers.iter().map(SocketAddr::ip).collect()
    }

    /// The request targets of [`Stats::recent`], oldest first.
    pub fn recent_urls(&self) -> Vec<String> {
        self.recent.iter().map(|r| r.uri.clone()).collect()
    }
}

/// A queued canned answer.
#[derive(Clone, Debug)]
struct Fault {
    remaining: usize,
    status: StatusCode,
    content_type: &'static str,
    body: String,
}

#[derive(Debug, Default)]
struct Control {
    latency: Duration,
    api_faults: VecDeque<Fault>,
    token_faults: VecDeque<Fault>,
    stats: Stats,
    recent: VecDeque<RequestRecord>,
}

#[derive(Debug)]
struct Inner {
    options: DwdiOptions,
    data: RwLock<Arc<DwdiData>>,
    /// Issued token → expiry.
    tokens: Mutex<HashMap<String, Instant>>,
    control: Mutex<Control>,
    token_counter: AtomicU64,
    /// Client connections open now.
    open_connections: AtomicU64,
}

/// One open client connection, counted while it lives.
#[derive(Debug)]
pub(crate) struct ConnectionGuard {
    state: SimState,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.state.inner.open_connections.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The simulator's shared state; cheap to clone. Serve it with [`crate::DwdiSim::router`]
/// (for example over TLS) or let [`crate::DwdiSim::start`] do it. Every control method of
/// [`crate::DwdiSim`] is also here.
#[derive(Clone, Debug)]
pub struct SimState {
    inner: Arc<Inner>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl SimState {
    /// State serving `data` with `options`.
    pub fn new(data: DwdiData, options: DwdiOptions) -> Self {
        let control = Control { latency: options.latency, ..Control::default() };
        Self {
            inner: Arc::new(Inner {
                options,
                data: RwLock::new(Arc::new(data)),
                tokens: Mutex::new(HashMap::new()),
                control: Mutex::new(control),
                token_counter: AtomicU64::new(0),
                open_connections: AtomicU64::new(0),
            }),
        }
    }

    /// The options this state was made with.
    pub fn options(&self) -> &DwdiOptions {
        &self.inner.options
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> Stats {
        let control = lock(&self.inner.control);
        let mut stats = control.stats.clone();
        stats.recent = control.recent.iter().cloned().collect();
        stats.open_connections = self.inner.open_connections.load(Ordering::SeqCst);
        stats
    }

    /// Zeroes the counters and forgets recent requests and peers.
    pub fn reset_stats(&self) {
        let mut control = lock(&self.inner.control);
        control.stats = Stats::default();
        control.stats.max_open_connections = self.inner.open_connections.load(Ordering::SeqCst);
        control.recent.clear();
    }

    /// Counts a client connection just accepted, until the guard is dropped.
    pub(crate) fn connection_opened(&self) -> ConnectionGuard {
        let open = self.inner.open_connections.fetch_add(1, Ordering::SeqCst) + 1;
        let mut control = lock(&self.inner.control);
        control.stats.max_open_connections = control.stats.max_open_connections.max(open);
        ConnectionGuard { state: self.clone() }
    }

    /// Every token issued so far, so a test can check none of them leaks into logs.
    pub fn issued_tokens(&self) -> Vec<String> {
        lock(&self.inner.tokens).keys().cloned().collect()
    }

    /// Makes every token issued so far invalid now (API calls with them get 401 "Token
    /// expired"); tokens issued afterwards work.
    pub fn expire_all_tokens(&self) {
        let now = Instant::now();
        for expiry in lock(&self.inner.tokens).values_mut() {
            *expiry = (*expiry).min(now);
        }
    }

    /// The next `n` requests to known API endpoints answer `status` with
    /// `{"detail":"injected failure"}`, before any authentication. Queued after injections
    /// still pending.
    ///
    /// # Panics
    /// If `status` is not a valid HTTP status code.
    pub fn fail_next(&self, n: usize, status: u16) {
        self.respond_next(n, status, "application/json", &json!({"detail": "injected failure"}).to_string());
    }

    /// The next `n` requests to known API endpoints answer `status` with exactly `body` of
    /// `content_type` (e.g. malformed JSON to test a client's error handling).
    ///
    /// # Panics
    /// If `status` is not a valid HTTP status code.
    pub fn respond_next(&self, n: usize, status: u16, content_type: &'static str, body: &str) {
        let fault = make_fault(n, status, content_type, body);
        lock(&self.inner.control).api_faults.push_back(fault);
    }

    /// The next `n` token requests answer `status` with an OIDC error body
    /// (`{"error":"temporarily_unavailable"}`), before any validation.
    ///
    /// # Panics
    /// If `status` is not a valid HTTP status code.
    pub fn fail_next_token(&self, n: usize, status: u16) {
        let body = json!({"error": "temporarily_unavailable", "error_description": "injected failure"}).to_string();
        let fault = make_fault(n, status, "application/json", &body);
        lock(&self.inner.control).token_faults.push_back(fault);
    }

    /// The next `n` token requests answer `status` with exactly `body` of `content_type`.
    pub fn respond_next_token(&self, n: usize, status: u16, content_type: &'static str, body: &str) {
        let fault = make_fault(n, status, content_type, body);
        lock(&self.inner.control).token_faults.push_back(fault);
    }

    /// Replaces the data served; requests already being answered finish with the old data.
    pub fn set_data(&self, data: DwdiData) {
        *self.inner.data.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(data);
    }

    /// Changes the latency slept before every answer.
    pub fn set_latency(&self, latency: Duration) {
        lock(&self.inner.control).latency = latency;
    }

    fn data(&self) -> Arc<DwdiData> {
        Arc::clone(&self.inner.data.read().unwrap_or_else(PoisonError::into_inner))
    }

    fn take_fault(&self, token: bool) -> Option<Fault> {
        let mut control = lock(&self.inner.control);
        let queue = if token { &mut control.token_faults } else { &mut control.api_faults };
        let front = queue.front_mut()?;
        let fault = front.clone();
        front.remaining -= 1;
        if front.remaining == 0 {
            queue.pop_front();
        }
        control.stats.injected_failures += 1;
        Some(fault)
    }

    /// A new token: a JWT in shape (header, claims, an unchecked signature), unique.
    fn issue_token(&self) -> String {
        use base64::Engine as _;
        let encode = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        let n = self.inner.token_counter.fetch_add(1, Ordering::Relaxed);
        let random = std::collections::hash_map::RandomState::new();
        let mut h1 = random.build_hasher();
        h1.write_u64(n);
        let mut h2 = random.build_hasher();
        h2.write_u64(!n);
        let options = &self.inner.options;
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let claims = json!({
            "exp": now + options.token_lifetime.as_secs(),
            "iat": now,
            "jti": format!("sim{n}"),
            "azp": options.client_id,
            "preferred_username": self.service_account(),
        });
        let header = encode(br#"{"alg":"RS256","typ":"JWT"}"#);
        let signature = encode(&[h1.finish().to_be_bytes(), h2.finish().to_be_bytes()].concat());
        let token = format!("{header}.{}.{signature}", encode(claims.to_string().as_bytes()));
        let expiry = Instant::now() + options.token_lifetime;
        lock(&self.inner.tokens).insert(token.clone(), expiry);
        token
    }

    /// The username a token of the configured client stands for, as Keycloak names a
    /// client's service account.
    fn service_account(&self) -> String {
        format!("service-account-{}", self.inner.options.client_id)
    }

    /// What the token endpoint's introspection (RFC 7662) says of `token`: the username
    /// it stands for while it is active (issued here, not expired), `None` otherwise.
    pub fn introspect(&self, token: &str) -> Option<String> {
        let active = lock(&self.inner.tokens).get(token).is_some_and(|expiry| Instant::now() < *expiry);
        active.then(|| self.service_account())
    }

    fn record(&self, kind: Kind, path: String, record: RequestRecord) {
        let mut control = lock(&self.inner.control);
        let stats = &mut control.stats;
        let status = record.status;
        match kind {
            Kind::Token => {
                stats.token_requests += 1;
                if status == 200 {
                    stats.tokens_issued += 1;
                } else {
                    stats.token_rejected += 1;
                }
            }
            Kind::Api => {
                stats.api_requests += 1;
                match status {
                    401 => stats.api_unauthorized += 1,
                    400 => stats.api_bad_requests += 1,
                    _ => {}
                }
            }
            Kind::Other => {}
        }
        *stats.requests_by_path.entry(path).or_default() += 1;
        if let Some(peer) = record.peer {
            stats.peers.insert(peer);
        }
        if control.recent.len() == RECENT_CAPACITY {
            control.recent.pop_front();
        }
        control.recent.push_back(record);
    }
}

fn make_fault(n: usize, status: u16, content_type: &'static str, body: &str) -> Fault {
    let status =
        StatusCode::from_u16(status).unwrap_or_else(|_| panic!("dwdi-sim: {status} is not an HTTP status code"));
    Fault { remaining: n, status, content_type, body: body.to_owned() }
}

/// The router serving `state`: everything goes through one handler, so request targets
/// reach it unmodified and every request is counted. Peers are recorded when the service
/// is made with `into_make_service_with_connect_info::<SocketAddr>()` (or any server that
/// inserts `ConnectInfo<SocketAddr>` into request extensions).
pub(crate) fn router(state: SimState) -> Router {
    Router::new().fallback(handle).with_state(state)
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    Token,
    Api,
    Other,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Endpoint {
    ComputeMonth,
    ComputeDay,
    /// The bare `/compute/usage-day`: the clients' reachability check.
    ComputeDayBare,
    StorageMonth,
    StorageDay,
    /// LLM inference cost per resource over months, or the reachability check.
    InferenceCost,
}

impl Endpoint {
    fn from_path(path: &str) -> Option<Self> {
        match path.strip_prefix(API_PREFIX)? {
            "/compute/usage-month/account" => Some(Self::ComputeMonth),
            "/compute/usage-day/account" => Some(Self::ComputeDay),
            "/compute/usage-day" => Some(Self::ComputeDayBare),
            "/storage/usage-month" => Some(Self::StorageMonth),
            "/storage/usage-day" => Some(Self::StorageDay),
            "/inference/resource/cost" => Some(Self::InferenceCost),
            _ => None,
        }
    }
}

async fn handle(State(state): State<SimState>, request: Request) -> Response {
    let extensions = request.extensions();
    let peer = extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|info| info.0)
        .or_else(|| extensions.get::<ConnectInfo<crate::accept::Peer>>().map(|info| info.0.0));
    let method = request.method().clone();
    let via = request.headers().get(http::header::VIA).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let target = request.uri().to_string();
    let path = request.uri().path().to_owned();

    let latency = lock(&state.inner.control).latency;
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }

    let (kind, response) = if target.len() > state.inner.options.max_uri_len {
        let kind = if path == TOKEN_PATH {
            Kind::Token
        } else if Endpoint::from_path(&path).is_some() {
            Kind::Api
        } else {
            Kind::Other
        };
        (kind, detail(StatusCode::URI_TOO_LONG, "Request-URI Too Long"))
    } else if path == TOKEN_PATH {
        (Kind::Token, token_endpoint(&state, request).await)
    } else if let Some(endpoint) = Endpoint::from_path(&path) {
        (Kind::Api, api(&state, endpoint, &request))
    } else {
        (Kind::Other, detail(StatusCode::NOT_FOUND, "Not Found"))
    };

    let status = response.status().as_u16();
    tracing::debug!(%method, %target, status, "dwdi-sim");
    state.record(kind, path, RequestRecord { method: method.to_string(), uri: target, peer, status, via });
    response
}

/// `{"detail": message}` with `status`.
fn detail(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(json!({ "detail": message }))).into_response()
}

fn canned(fault: Fault) -> Response {
    let mut response = (fault.status, fault.body).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(fault.content_type));
    response
}

// ---------------------------------------------------------------------------------------
// OIDC token endpoint
// ---------------------------------------------------------------------------------------

/// An OIDC error answer.
fn oidc_error(status: StatusCode, error: &str, description: &str) -> Response {
    let mut response =
        (status, axum::Json(json!({ "error": error, "error_description": description }))).into_response();
    no_store(response.headers_mut());
    response
}

fn no_store(headers: &mut HeaderMap) {
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
}

async fn token_endpoint(state: &SimState, request: Request) -> Response {
    if request.method() != Method::POST {
        let mut response =
            oidc_error(StatusCode::METHOD_NOT_ALLOWED, "invalid_request", "HTTP method not allowed; use POST");
        response.headers_mut().insert(header::ALLOW, HeaderValue::from_static("POST"));
        return response;
    }
    if let Some(fault) = state.take_fault(true) {
        return canned(fault);
    }
    match issue(state, request).await {
        Ok(response) | Err(response) => response,
    }
}

/// Validates a token request the way an OIDC server does; `Err` is the refusal.
async fn issue(state: &SimState, request: Request) -> Result<Response, Response> {
    let options = &state.inner.options;
    let bad = |description: &str| oidc_error(StatusCode::BAD_REQUEST, "invalid_request", description);

    let content_type = request.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let media_type = content_type.split(';').next().unwrap_or("").trim();
    if !media_type.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
        return Err(bad("Content-Type must be application/x-www-form-urlencoded"));
    }
    let basic = match request.headers().get(header::AUTHORIZATION) {
        None => None,
        Some(value) => Some(parse_basic(value).ok_or_else(|| bad("Malformed Authorization header"))?),
    };
    let body = to_bytes(request.into_body(), MAX_FORM_BODY).await.map_err(|_| bad("Request body too large"))?;
    let mut form: BTreeMap<String, String> = BTreeMap::new();
    for (key, value) in form_urlencoded::parse(&body) {
        if form.insert(key.to_string(), value.into_owned()).is_some() {
            return Err(bad(&format!("Duplicate parameter: {key}")));
        }
    }
    let field = |name: &str| form.get(name).map(String::as_str).filter(|v| !v.is_empty());

    let Some(grant_type) = field("grant_type") else {
        return Err(bad("Missing form parameter: grant_type"));
    };
    let (client_id, client_secret) = match &basic {
        Some((id, secret)) => {
            if field("client_secret").is_some() {
                return Err(bad("Client authenticated with more than one method"));
            }
            if field("client_id").is_some_and(|form_id| form_id != id) {
                return Err(invalid_client(true));
            }
            (id.as_str(), secret.as_str())
        }
        None => {
            let Some(id) = field("client_id") else {
                return Err(bad("Missing form parameter: client_id"));
            };
            let Some(secret) = field("client_secret") else {
                return Err(bad("Missing form parameter: client_secret"));
            };
            (id, secret)
        }
    };
    if client_id != options.client_id || client_secret != options.client_secret {
        return Err(invalid_client(basic.is_some()));
    }
    if grant_type != "client_credentials" {
        let mut response =
            (StatusCode::BAD_REQUEST, axum::Json(json!({ "error": "unsupported_grant_type" }))).into_response();
        no_store(response.headers_mut());
        return Err(response);
    }
    let scope = match field("scope") {
        Some(requested) => {
            let scopes: Vec<&str> = requested.split_whitespace().collect();
            if !options.scope_required.is_empty() && !scopes.contains(&options.scope_required.as_str()) {
                return Err(oidc_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_scope",
                    &format!("Scope must include '{}'", options.scope_required),
                ));
            }
            scopes.join(" ")
        }
        None => options.scope_required.clone(),
    };

    let mut answer = json!({ "access_token": state.issue_token(), "token_type": "Bearer" });
    if options.include_expires_in {
        answer["expires_in"] = Value::from(options.token_lifetime.as_secs());
    }
    if !scope.is_empty() {
        answer["scope"] = Value::from(scope);
    }
    let mut response = (StatusCode::OK, axum::Json(answer)).into_response();
    no_store(response.headers_mut());
    Ok(response)
}

fn invalid_client(basic: bool) -> Response {
    let mut response = oidc_error(StatusCode::UNAUTHORIZED, "invalid_client", "Invalid client credentials");
    if basic {
        response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"test\""));
    }
    response
}

/// `Basic base64(urlencode(id):urlencode(secret))` (RFC 6749 §2.3.1) → (id, secret).
fn parse_basic(value: &HeaderValue) -> Option<(String, String)> {
    let value = value.to_str().ok()?;
    let (scheme, encoded) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = String::from_utf8(b64::decode(encoded.trim())?).ok()?;
    let (id, secret) = decoded.split_once(':')?;
    Some((form_decode(id), form_decode(secret)))
}

fn form_decode(text: &str) -> String {
    let wrapped = format!("x={text}");
    form_urlencoded::parse(wrapped.as_bytes()).next().map(|(_, v)| v.into_owned()).unwrap_or_default()
}

// ---------------------------------------------------------------------------------------
// API endpoints
// ---------------------------------------------------------------------------------------

fn api(state: &SimState, endpoint: Endpoint, request: &Request<Body>) -> Response {
    if request.method() != Method::GET {
        let mut response = detail(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed");
        response.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET"));
        return response;
    }
    if let Some(fault) = state.take_fault(false) {
        return canned(fault);
    }
    if let Err(message) = check_bearer(state, request.headers()) {
        let mut response = detail(StatusCode::UNAUTHORIZED, message);
        response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return response;
    }
    let query = Query::parse(request.uri().query());
    let answer = match endpoint {
        Endpoint::ComputeMonth | Endpoint::ComputeDay | Endpoint::ComputeDayBare => {
            compute(state, endpoint, &query).map(|compute| axum::Json(ComputeAnswer { compute }).into_response())
        }
        Endpoint::StorageMonth | Endpoint::StorageDay => {
            storage(state, endpoint, &query).map(|storage| axum::Json(StorageAnswer { storage }).into_response())
        }
        Endpoint::InferenceCost => {
            inference(state, &query).map(|inference| axum::Json(InferenceAnswer { inference }).into_response())
        }
    };
    answer.unwrap_or_else(|message| detail(StatusCode::BAD_REQUEST, &message))
}

fn check_bearer(state: &SimState, headers: &HeaderMap) -> Result<(), &'static str> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Err("Not authenticated");
    };
    if values.next().is_some() {
        return Err("More than one Authorization header");
    }
    let value = value.to_str().map_err(|_| "Malformed Authorization header")?;
    let (scheme, token) = value.split_once(' ').ok_or("Malformed Authorization header")?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err("Authorization scheme must be Bearer");
    }
    match lock(&state.inner.tokens).get(token) {
        None => Err("Invalid token"),
        Some(expiry) if Instant::now() >= *expiry => Err("Token expired"),
        Some(_) => Ok(()),
    }
}

/// The raw query as (key, value) pairs, repeated keys kept, nothing split on commas.
struct Query {
    pairs: Vec<(String, String)>,
}

impl Query {
    fn parse(raw: Option<&str>) -> Self {
        let pairs = form_urlencoded::parse(raw.unwrap_or("").as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        Self { pairs }
    }

    fn all<'a>(&'a self, key: &str) -> impl Iterator<Item = &'a str> + use<'a> {
        let key = key.to_owned();
        self.pairs.iter().filter(move |(k, _)| *k == key).map(|(_, v)| v.as_str())
    }

    /// Checks the parameter names: unknown ones, missing required ones, repeated single
    /// ones, and empty values are errors naming the parameter.
    fn check(
        &self,
        required_single: &[&str],
        required_list: &[&str],
        optional_single: &[&str],
        optional_list: &[&str],
    ) -> Result<(), String> {
        let known = |k: &str| {
            [required_single, required_list, optional_single, optional_list].iter().any(|set| set.contains(&k))
        };
        let unknown: BTreeSet<&str> = self.pairs.iter().map(|(k, _)| k.as_str()).filter(|k| !known(k)).collect();
        if !unknown.is_empty() {
            return Err(format!("unknown query parameter(s): {}", unknown.into_iter().collect::<Vec<_>>().join(", ")));
        }
        let missing: Vec<&str> =
            required_single.iter().chain(required_list).copied().filter(|k| self.all(k).next().is_none()).collect();
        if !missing.is_empty() {
            return Err(format!("missing required query parameter(s): {}", missing.join(", ")));
        }
        for key in required_single.iter().chain(optional_single) {
            if self.all(key).count() > 1 {
                return Err(format!("query parameter '{key}' must be given at most once"));
            }
        }
        if let Some((key, _)) = self.pairs.iter().find(|(_, v)| v.is_empty()) {
            return Err(format!("query parameter '{key}' must not be empty"));
        }
        Ok(())
    }

    fn single(&self, key: &str) -> Option<&str> {
        self.all(key).next()
    }

    fn list(&self, key: &str) -> Vec<String> {
        self.all(key).map(str::to_owned).collect()
    }
}

#[derive(Serialize)]
struct ComputeAnswer {
    compute: Vec<ComputeEntry>,
}

#[derive(Serialize)]
struct StorageAnswer {
    storage: Vec<StorageRow>,
}

#[derive(Serialize)]
struct InferenceAnswer {
    inference: Vec<InferenceRow>,
}

/// A `YYYY-MM` parameter value, or the 400 message naming the parameter.
fn month_value(key: &str, value: &str) -> Result<(i32, u32), String> {
    parse_month(value).ok_or_else(|| format!("query parameter '{key}' must be a month YYYY-MM, got '{value}'"))
}

/// A `YYYY-MM-DD` parameter value, or the 400 message naming the parameter.
fn day_value(key: &str, value: &str) -> Result<Day, String> {
    Day::parse(value).ok_or_else(|| format!("query parameter '{key}' must be a date YYYY-MM-DD, got '{value}'"))
}

fn from_after_to(from: &str, to: &str) -> String {
    format!("query parameter 'from' ({from}) is after 'to' ({to})")
}

fn compute(state: &SimState, endpoint: Endpoint, query: &Query) -> Result<Vec<ComputeEntry>, String> {
    if endpoint == Endpoint::ComputeDayBare {
        // The reachability check asks about every account.
        query.check(&["from", "to"], &[], &[], &["account", "cluster"])?;
    } else {
        query.check(&["from", "to"], &["account"], &[], &["cluster"])?;
    }
    let from = query.single("from").unwrap_or_default();
    let to = query.single("to").unwrap_or_default();
    let (first, last) = if endpoint == Endpoint::ComputeMonth {
        let (fy, fm) = month_value("from", from)?;
        let (ty, tm) = month_value("to", to)?;
        (Day::first_of(fy, fm), Day::last_of(ty, tm))
    } else {
        (day_value("from", from)?, day_value("to", to)?)
    };
    if first > last {
        return Err(from_after_to(from, to));
    }
    let data = state.data();
    Ok(data.compute_entries(&query.list("account"), &query.list("cluster"), first, last))
}

fn storage(state: &SimState, endpoint: Endpoint, query: &Query) -> Result<Vec<StorageRow>, String> {
    let period_key = if endpoint == Endpoint::StorageMonth { "exact-month" } else { "exact-date" };
    let reachability = endpoint == Endpoint::StorageDay && query.pairs.iter().all(|(key, _)| key == period_key);
    if reachability {
        // The clients' reachability check: `exact-date` alone asks about every path.
        query.check(&[period_key], &[], &[], &[])?;
    } else {
        query.check(&[period_key, "filesystem", "data_type"], &["paths"], &["tenant"], &[])?;
    }
    let period = query.single(period_key).unwrap_or_default();
    let (first, last) = if endpoint == Endpoint::StorageMonth {
        let (year, month) = month_value(period_key, period)?;
        (Day::first_of(year, month), Day::last_of(year, month))
    } else {
        let day = day_value(period_key, period)?;
        (day, day)
    };
    Ok(state.data().storage_rows(
        query.single("filesystem").unwrap_or_default(),
        query.single("data_type").unwrap_or_default(),
        query.single("tenant"),
        &query.list("paths"),
        first,
        last,
    ))
}

fn inference(state: &SimState, query: &Query) -> Result<Vec<InferenceRow>, String> {
    if query.pairs.iter().any(|(key, _)| key == "exact-date") {
        // The clients' reachability check: a day, and nothing else, names no resource.
        query.check(&["exact-date"], &[], &[], &[])?;
        day_value("exact-date", query.single("exact-date").unwrap_or_default())?;
        return Ok(Vec::new());
    }
    query.check(&["from", "to"], &["resource_uuid"], &[], &[])?;
    let from = query.single("from").unwrap_or_default();
    let to = query.single("to").unwrap_or_default();
    let (first, last) = (month_value("from", from)?, month_value("to", to)?);
    if first > last {
        return Err(from_after_to(from, to));
    }
    Ok(state.data().inference_rows(&query.list("resource_uuid"), first, last))
}
