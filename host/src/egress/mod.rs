//! Outbound HTTP for components: the only door out of the sandbox.
//!
//! Every `wasi:http` request a component makes arrives at [`ComponentHooks::send_request`].
//! In order, the host: checks the request against the egress policy ([`policy`]: the
//! scheme, host, port and base path of one of the offering's upstream URLs, GET or HEAD
//! without a body, allow-listed headers), takes it out of the call's request budget,
//! waits for one of the offering's in-flight slots, attaches the offering's credentials
//! (an OIDC bearer token, a static header, or none), sends it through the proxy with TLS
//! and timeouts, retries what is safe to retry within the call's retry budget, and caps
//! the answer. The slot is held until the answer's body is read or dropped, so the
//! offering's sockets stay bounded whatever its component does.
//! The component sees none of the credentials, the proxy or the token.

pub mod connect;
pub mod oidc;
pub mod policy;

use std::collections::{BTreeMap, HashMap};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use bytes::Bytes;
use http::header::{AUTHORIZATION, COOKIE, HeaderName, PROXY_AUTHORIZATION};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use wasmtime_wasi_http::{
    DEFAULT_FORBIDDEN_HEADERS, Error as HttpError, ForbiddenHeaderFilter, WasiBody, WasiHttpHooks,
};

use crate::config::{OfferingConfig, Secret, UpstreamAccess, UpstreamAuth};
use connect::Connector;
use oidc::TokenSource;
use policy::{Denial, Policy};

/// The pooled HTTP/1.1 client every outbound request of an offering goes through.
pub type HttpClient = Client<Connector, WasiBody>;

/// A body made of one buffer.
pub fn full_body(bytes: Bytes) -> WasiBody {
    http_body_util::Full::new(bytes).map_err(|never| match never {}).boxed_unsync()
}

/// An error and its sources on one line.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// Timeouts, retries and size caps of outbound requests; each has a setting.
#[derive(Debug, Clone)]
pub struct Limits {
    /// `connect_timeout_seconds`: TCP, proxy handshake and TLS, each.
    pub connect: Duration,
    /// `first_byte_timeout_seconds`: from sending to the answer's head.
    pub first_byte: Duration,
    /// `request_timeout_seconds`: from sending to the last byte of the answer.
    pub request: Duration,
    /// `max_response_bytes`: a larger answer is cut off with an error.
    pub max_response_bytes: u64,
    /// `max_retries`: retries of a GET after a connection error or a 502/503/504.
    pub max_retries: u32,
    /// First back-off; doubles each retry, with jitter.
    pub backoff: Duration,
    /// `max_requests_in_flight`: requests of the offering in flight at once, all its
    /// calls together (from the wait for a token to the answer's last byte); also the
    /// idle connections kept per upstream host.
    pub max_in_flight: usize,
    /// `max_requests_per_call`: requests one component call may send past the policy;
    /// the rest are denied.
    pub max_requests_per_call: u32,
    /// `max_retries_per_call`: retries the host makes for one call, all its requests
    /// together; past them a request gets its last answer or error.
    pub max_retries_per_call: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(10),
            first_byte: Duration::from_secs(120),
            request: Duration::from_secs(300),
            max_response_bytes: 256 * 1024 * 1024,
            max_retries: 3,
            backoff: Duration::from_millis(200),
            // A built-in component keeps at most 8 requests in flight per call
            // (the built-ins' MAX_IN_FLIGHT), and a cycle runs two months at once.
            max_in_flight: 16,
            // A compute call for 10,000 accounts needs about 30 requests.
            max_requests_per_call: 1000,
            max_retries_per_call: 32,
        }
    }
}

/// The request-limit keys of `backend_settings`, as written; [`Limits::from_settings`]
/// checks them. (The config's unknown-key warning knows the host's keys from here.)
#[derive(Debug, Default, serde::Deserialize)]
#[serde(default)]
pub struct LimitSettings {
    connect_timeout_seconds: Option<serde_json::Value>,
    first_byte_timeout_seconds: Option<serde_json::Value>,
    request_timeout_seconds: Option<serde_json::Value>,
    max_response_bytes: Option<serde_json::Value>,
    max_retries: Option<serde_json::Value>,
    max_requests_in_flight: Option<serde_json::Value>,
    max_requests_per_call: Option<serde_json::Value>,
    max_retries_per_call: Option<serde_json::Value>,
}

impl Limits {
    /// Reads the optional limit settings of an offering; errors name the key.
    pub fn from_settings(settings: &serde_json::Map<String, serde_json::Value>) -> Result<Self, String> {
        // Every field takes any JSON value, so this cannot fail on a map.
        let given: LimitSettings = serde_json::from_value(serde_json::Value::Object(settings.clone()))
            .map_err(|e| format!("backend_settings: {e}"))?;
        let mut limits = Self::default();
        let seconds = |key: &str, value: &Option<serde_json::Value>, slot: &mut Duration| -> Result<(), String> {
            if let Some(value) = value {
                let secs = value.as_f64().filter(|s| s.is_finite() && *s > 0.0 && *s <= 86_400.0).ok_or_else(|| {
                    format!("backend_settings.{key}: must be a number of seconds above 0 and at most 86400")
                })?;
                *slot = Duration::from_secs_f64(secs);
            }
            Ok(())
        };
        seconds("connect_timeout_seconds", &given.connect_timeout_seconds, &mut limits.connect)?;
        seconds("first_byte_timeout_seconds", &given.first_byte_timeout_seconds, &mut limits.first_byte)?;
        seconds("request_timeout_seconds", &given.request_timeout_seconds, &mut limits.request)?;
        if let Some(value) = &given.max_response_bytes {
            limits.max_response_bytes = value
                .as_u64()
                .filter(|n| *n > 0)
                .ok_or_else(|| "backend_settings.max_response_bytes: must be a positive integer".to_owned())?;
        }
        if let Some(value) = &given.max_retries {
            limits.max_retries = value
                .as_u64()
                .filter(|n| *n <= 10)
                .map(|n| n as u32)
                .ok_or_else(|| "backend_settings.max_retries: must be an integer from 0 to 10".to_owned())?;
        }
        let integer =
            |key: &str, value: &Option<serde_json::Value>, min: u64, max: u64| -> Result<Option<u64>, String> {
                match value {
                    None => Ok(None),
                    Some(value) => value
                        .as_u64()
                        .filter(|n| (min..=max).contains(n))
                        .map(Some)
                        .ok_or_else(|| format!("backend_settings.{key}: must be an integer from {min} to {max}")),
                }
            };
        if let Some(n) = integer("max_requests_in_flight", &given.max_requests_in_flight, 1, 256)? {
            limits.max_in_flight = n as usize;
        }
        if let Some(n) = integer("max_requests_per_call", &given.max_requests_per_call, 1, 100_000)? {
            limits.max_requests_per_call = n as u32;
        }
        if let Some(n) = integer("max_retries_per_call", &given.max_retries_per_call, 0, 10_000)? {
            limits.max_retries_per_call = n as u32;
        }
        Ok(limits)
    }
}

/// Counters of one offering's egress, for summaries and metrics.
#[derive(Debug, Default)]
pub struct EgressStats {
    pub requests: AtomicU64,
    pub retries: AtomicU64,
    pub denied: AtomicU64,
    pub unauthorized_retries: AtomicU64,
    /// 401s not retried: the token refresh rate limit held.
    pub unauthorized_final: AtomicU64,
    /// Requests denied because their call had sent `max_requests_per_call` (also in
    /// `denied`).
    pub over_request_budget: AtomicU64,
    /// Retries not made because their call had made `max_retries_per_call`.
    pub retries_refused: AtomicU64,
}

/// Denials logged one by one per component and rule (distinct ones; the rest are counted
/// and summed up in one line per call): a component repeating or varying a denied
/// request cannot flood the log.
pub const DENIALS_LOGGED: usize = 3;
/// Failed requests of one call quoted in its transport error (the rest are counted).
const FAILURES_KEPT: usize = 3;
/// Longest failure message kept (it quotes the component's URL).
const FAILURE_BYTES: usize = 512;

/// What one component call's requests ran into, bounded whatever the component sends:
/// the first few failures in the host's words (for the call's error), and counts of
/// what is not logged request by request (for one line when the call ends,
/// [`Egress::log_call`]).
#[derive(Debug, Default)]
pub struct CallTally {
    failures: Vec<String>,
    more_failures: u64,
    /// Denials past the first few per component and rule, by rule.
    unlogged_denials: BTreeMap<&'static str, u64>,
    /// 401s handed to the component: the host had already retried with a fresh token,
    /// or the refresh rate limit held, so each was final.
    final_unauthorized: u64,
    /// Requests of this call that passed the policy and were let out (its request budget).
    sent: u32,
    /// Retries made for this call (its retry budget).
    retries: u32,
    /// Retries not made: the retry budget was spent.
    retries_refused: u64,
}

impl CallTally {
    fn fail(&mut self, mut message: String) {
        if self.failures.len() < FAILURES_KEPT {
            if message.len() > FAILURE_BYTES {
                let mut end = FAILURE_BYTES;
                while !message.is_char_boundary(end) {
                    end -= 1;
                }
                message.truncate(end);
                message.push('…');
            }
            self.failures.push(message);
        } else {
            self.more_failures += 1;
        }
    }

    /// The failures as one clause (`a; b; c; and 19997 more`), if there were any.
    pub fn failures_text(&self) -> Option<String> {
        if self.failures.is_empty() {
            return None;
        }
        let mut text = self.failures.join("; ");
        if self.more_failures > 0 {
            text.push_str(&format!("; and {} more", self.more_failures));
        }
        Some(text)
    }

    /// Denials of this call not logged one by one.
    pub fn unlogged_denials(&self) -> u64 {
        self.unlogged_denials.values().sum()
    }

    /// 401s of this call that were final.
    pub fn final_unauthorized(&self) -> u64 {
        self.final_unauthorized
    }

    /// Requests of this call let out (past the policy and within the budget).
    pub fn sent(&self) -> u32 {
        self.sent
    }

    /// Retries of this call not made because its retry budget was spent.
    pub fn retries_refused(&self) -> u64 {
        self.retries_refused
    }

    /// Takes one request out of the call's budget of `max`; false when it is spent.
    fn admit(&mut self, max: u32) -> bool {
        if self.sent >= max {
            return false;
        }
        self.sent += 1;
        true
    }

    /// Takes one retry out of the call's budget of `max`; false (and counted) when it
    /// is spent.
    fn take_retry(&mut self, max: u32) -> bool {
        if self.retries >= max {
            self.retries_refused += 1;
            return false;
        }
        self.retries += 1;
        true
    }
}

/// Outbound access of one offering: allow-list, credentials, client, limits.
pub struct Egress {
    offering: String,
    policy: Policy,
    client: HttpClient,
    connector: Connector,
    /// Where the offering's component may go and how the host authenticates there.
    access: UpstreamAccess,
    /// The token source of an OIDC upstream (`access.auth`), `None` for the others.
    tokens: Option<Arc<TokenSource>>,
    /// `Proxy-Authorization` for plain-http requests through an HTTP proxy.
    proxy_authorization: Option<crate::config::Secret>,
    /// True when plain-http requests go to an HTTP proxy in absolute form.
    via_http_proxy: bool,
    limits: Limits,
    /// One permit per request in flight ([`Limits::max_in_flight`]), held from before the
    /// token to the end of the answer's body: what bounds the offering's sockets.
    in_flight: Arc<Semaphore>,
    stats: EgressStats,
    /// Per component and rule, the distinct denials logged so far (at most
    /// [`DENIALS_LOGGED`] each): a bounded map, since rules are a fixed set and
    /// component names are validated.
    denied_logged: Mutex<HashMap<(String, &'static str), Vec<String>>>,
}

impl Egress {
    /// Builds the egress of one offering from its host-owned settings.
    pub fn new(offering_name: &str, offering: &OfferingConfig) -> Result<Arc<Self>> {
        let access = offering.upstream_access().map_err(anyhow::Error::msg)?;
        let limits = Limits::from_settings(&offering.backend_settings).map_err(anyhow::Error::msg)?;
        Self::with_access(offering_name, &access, limits)
    }

    /// Builds an egress from already-parsed settings.
    pub fn with_access(offering_name: &str, access: &UpstreamAccess, limits: Limits) -> Result<Arc<Self>> {
        let proxy = access.proxy.clone();
        let tls = connect::tls_config(access.ca_bundle.as_deref()).context("backend_settings.ca_bundle")?;
        let connector = Connector::new(proxy, tls, limits.connect);
        // Connections in use are bounded by the in-flight permits; idle ones by this.
        let client: HttpClient = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(limits.max_in_flight)
            .build(connector.clone());
        let policy = Policy::from_urls(&access.urls).map_err(|(i, e)| {
            let url = access.urls.get(i).map(url::Url::as_str).unwrap_or_default();
            anyhow::anyhow!("the upstream URL {url:?}: {e}")
        })?;
        let proxy_authorization = connector.http_proxy_authorization().map(Secret::new);
        let via_http_proxy = connector.proxy().is_some_and(|p| p.kind == connect::ProxyKind::Http);
        // A token exchange is one small request: it gets the whole-request timeout.
        let tokens = access.oidc().map(|oidc| {
            TokenSource::new(
                oidc::TokenFor::Upstream,
                oidc,
                client.clone(),
                proxy_authorization.clone(),
                via_http_proxy,
                limits.request,
            )
        });
        Ok(Arc::new(Self {
            offering: offering_name.to_owned(),
            policy,
            client,
            connector,
            access: access.clone(),
            tokens,
            proxy_authorization,
            via_http_proxy,
            in_flight: Arc::new(Semaphore::new(limits.max_in_flight)),
            limits,
            stats: EgressStats::default(),
            denied_logged: Mutex::new(HashMap::new()),
        }))
    }

    pub fn stats(&self) -> &EgressStats {
        &self.stats
    }

    /// Where the offering's component may go and how the host authenticates there, as
    /// read once when the egress was built.
    pub fn access(&self) -> &UpstreamAccess {
        &self.access
    }

    /// The OIDC token source, when the upstream authenticates with one.
    pub fn tokens(&self) -> Option<&TokenSource> {
        self.tokens.as_deref()
    }

    pub fn connector(&self) -> &Connector {
        &self.connector
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Sends a GET to `url` with the bearer token (used by `ping`, not by components).
    pub async fn get(&self, url: &str) -> Result<http::Response<WasiBody>, SendError> {
        let uri: http::Uri = url.parse().map_err(|e| SendError::Refused(format!("bad URL {url}: {e}")))?;
        let parts = RequestHead { method: http::Method::GET, uri, headers: http::HeaderMap::new() };
        let permit = self.in_flight_permit().await?;
        self.send_with_token(parts, Bytes::new(), None, permit).await
    }

    /// Waits for one of the offering's in-flight slots.
    async fn in_flight_permit(&self) -> Result<OwnedSemaphorePermit, SendError> {
        // The semaphore is never closed; the error arm is for completeness.
        self.in_flight.clone().acquire_owned().await.map_err(|_| SendError::Refused("egress closed".to_owned()))
    }

    /// Requests of the offering in flight right now (tests and benchmarks).
    pub fn requests_in_flight(&self) -> usize {
        self.limits.max_in_flight - self.in_flight.available_permits()
    }

    /// The component's request, checked, authorised and sent; what it ran into is
    /// counted in the call's `tally`.
    async fn send_for(
        &self,
        component: &str,
        request: http::Request<WasiBody>,
        tally: &Mutex<CallTally>,
    ) -> Result<http::Response<WasiBody>, SendError> {
        let (parts, body) = request.into_parts();
        let allowed = match self.policy.check(&parts.method, &parts.uri, &parts.headers) {
            Ok(allowed) => allowed,
            Err(denial) => return Err(self.deny(component, denial, tally)),
        };
        // GET and HEAD carry no body: any byte of one is refused before a connection.
        if !body.is_end_stream() {
            let empty = http_body_util::Limited::new(body, 0).collect().await.is_ok_and(|b| b.to_bytes().is_empty());
            if !empty {
                return Err(self.deny(component, Denial::Body, tally));
            }
        }
        // The call's request budget: what a component may make the upstream answer.
        let max = self.limits.max_requests_per_call;
        if !tally.lock().is_ok_and(|mut tally| tally.admit(max)) {
            self.stats.over_request_budget.fetch_add(1, Ordering::Relaxed);
            return Err(self.deny(component, Denial::RequestsPerCall(max), tally));
        }
        let head = RequestHead { method: parts.method, uri: allowed.uri, headers: allowed.headers };
        let permit = self.in_flight_permit().await?;
        let response = self.send_with_token(head, Bytes::new(), Some(tally), permit).await?;
        // A 401 that reaches the component is final: retried once with a fresh token
        // already, or within the refresh rate limit. Counted, and said once per call.
        if response.status() == http::StatusCode::UNAUTHORIZED
            && let Ok(mut tally) = tally.lock()
        {
            tally.final_unauthorized += 1;
        }
        Ok(response)
    }

    /// Counts a denied request; logs the first [`DENIALS_LOGGED`] distinct ones per
    /// component and rule, and leaves the rest to the call's summary line.
    fn deny(&self, component: &str, denial: Denial, tally: &Mutex<CallTally>) -> SendError {
        self.stats.denied.fetch_add(1, Ordering::Relaxed);
        crate::metrics::global().inc(
            "usage_agent_egress_denied_total",
            "Component requests the egress policy refused, by rule.",
            &[("offering", &self.offering), ("rule", denial.kind())],
        );
        let detail = denial.to_string();
        let log = self
            .denied_logged
            .lock()
            .map(|mut logged| {
                let seen = logged.entry((component.to_owned(), denial.kind())).or_default();
                if seen.len() < DENIALS_LOGGED && !seen.contains(&detail) {
                    seen.push(detail.clone());
                    true
                } else {
                    false
                }
            })
            .unwrap_or(false);
        if log {
            match &denial {
                Denial::Destination(shown) => tracing::warn!(
                    offering = %self.offering, component, destination = %shown, allowed = %self.policy.destinations(),
                    "egress denied: the component may reach only its upstream URLs (upstream.urls, or cscs_dwdi_api_url)"
                ),
                other => tracing::warn!(
                    offering = %self.offering, component, rule = other.kind(), allowed = %self.policy.destinations(),
                    "egress denied: {other} (the first {DENIALS_LOGGED} per component and rule are logged, the rest counted)"
                ),
            }
        } else if let Ok(mut tally) = tally.lock() {
            *tally.unlogged_denials.entry(denial.kind()).or_default() += 1;
        }
        SendError::Denied(detail)
    }

    /// Logs what a call of `component` ran into that was not logged request by
    /// request: one line for the denials beyond the first few, one for final 401s.
    pub fn log_call(&self, component: &str, tally: &CallTally) {
        let denied = tally.unlogged_denials();
        if denied > 0 {
            let by_rule: Vec<String> = tally.unlogged_denials.iter().map(|(rule, n)| format!("{rule} {n}")).collect();
            tracing::warn!(
                offering = %self.offering, component,
                "egress denied {denied} more request(s) of this call, not logged one by one (by rule: {}); usage_agent_egress_denied_total counts them all",
                by_rule.join(", ")
            );
        }
        if tally.retries_refused > 0 {
            tracing::warn!(
                offering = %self.offering, component,
                "{} retr(y/ies) of this call not made: it had made its {} (setting backend_settings.max_retries_per_call); those requests got their last answer or error",
                tally.retries_refused,
                self.limits.max_retries_per_call
            );
        }
        if tally.final_unauthorized > 0 {
            tracing::warn!(
                offering = %self.offering, component,
                "{} request(s) of this call ended in HTTP 401 from the upstream after the token refresh the host allows (one retry with a fresh token, at most one refresh per {} s per offering); check that the client may read the API",
                tally.final_unauthorized,
                oidc::UNAUTHORIZED_REFRESH_INTERVAL.as_secs()
            );
        }
    }

    /// Sends with the bearer token; a 401 gets one retry with a fresh token, and
    /// idempotent requests are retried on connection errors and 502/503/504, within the
    /// retry budget of their `call` if they belong to one. `permit` (an in-flight slot)
    /// is held through the retries and then by the answer's body.
    async fn send_with_token(
        &self,
        head: RequestHead,
        body: Bytes,
        call: Option<&Mutex<CallTally>>,
        permit: OwnedSemaphorePermit,
    ) -> Result<http::Response<WasiBody>, SendError> {
        let idempotent = matches!(head.method, http::Method::GET | http::Method::HEAD);
        let mut attempt = 0u32;
        let mut refreshed = false;
        let mut permit = Some(permit);
        // Taken last, so only a retry that would otherwise happen spends the budget.
        let budget_allows = || match call {
            None => true,
            Some(call) => {
                let allowed = call.lock().is_ok_and(|mut tally| tally.take_retry(self.limits.max_retries_per_call));
                if !allowed {
                    self.stats.retries_refused.fetch_add(1, Ordering::Relaxed);
                }
                allowed
            }
        };
        loop {
            let token = match self.tokens() {
                Some(tokens) => Some(tokens.bearer().await.map_err(SendError::Token)?),
                None => None,
            };
            let mut request = http::Request::builder().method(head.method.clone()).uri(head.uri.clone());
            for (name, value) in &head.headers {
                request = request.header(name, value);
            }
            request = match (&self.access.auth, &token) {
                (UpstreamAuth::Static { header, value }, _) => request.header(header, sensitive(value.expose())),
                (_, Some(token)) => request.header(AUTHORIZATION, sensitive(&format!("Bearer {}", token.expose()))),
                _ => request,
            };
            if head.uri.scheme_str() == Some("http") {
                request = plain_proxy_headers(request, self.proxy_authorization.as_ref(), self.via_http_proxy);
            }
            let request = request.body(full_body(body.clone())).map_err(|e| SendError::Refused(e.to_string()))?;
            self.stats.requests.fetch_add(1, Ordering::Relaxed);
            let started = Instant::now();
            let outcome = tokio::time::timeout(self.limits.first_byte, self.client.request(request)).await;
            record_upstream_request(
                &self.offering,
                self.policy.endpoint_family(head.uri.path()),
                &outcome,
                started.elapsed(),
            );
            let retry_reason = match outcome {
                Err(_) => {
                    if !idempotent || attempt >= self.limits.max_retries || !budget_allows() {
                        return Err(SendError::Timeout(format!(
                            "no answer from {} within {:?}",
                            shown_uri(&head.uri),
                            self.limits.first_byte
                        )));
                    }
                    "first-byte timeout".to_owned()
                }
                Ok(Err(error)) => {
                    let message = error_chain(&error);
                    let retryable = error.is_connect() || is_stale_connection(&error);
                    if !idempotent || attempt >= self.limits.max_retries || !retryable || !budget_allows() {
                        return Err(SendError::Connect { message, tls: message_is_tls(&error_chain(&error)) });
                    }
                    message
                }
                Ok(Ok(response)) => {
                    let status = response.status().as_u16();
                    // The token may have been revoked or expired early: one try with a
                    // fresh one. A 401 to that fresh token is final, and so is one
                    // within the refresh rate limit (`oidc::UNAUTHORIZED_REFRESH_INTERVAL`).
                    if status == 401
                        && !refreshed
                        && let (Some(tokens), Some(token)) = (self.tokens(), &token)
                    {
                        refreshed = true;
                        if tokens.after_unauthorized(token).await == oidc::AfterUnauthorized::Retry {
                            self.stats.unauthorized_retries.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                        self.stats.unauthorized_final.fetch_add(1, Ordering::Relaxed);
                    }
                    if idempotent && matches!(status, 502..=504) && attempt < self.limits.max_retries && budget_allows()
                    {
                        format!("HTTP {status}")
                    } else {
                        let deadline = started + self.limits.request;
                        let permit = permit.take();
                        return Ok(response.map(|body| {
                            GuardedBody::new(body, self.limits.max_response_bytes, deadline, permit).boxed_unsync()
                        }));
                    }
                }
            };
            attempt += 1;
            self.stats.retries.fetch_add(1, Ordering::Relaxed);
            let pause = backoff(self.limits.backoff, attempt);
            tracing::info!(offering = %self.offering, url = %shown_uri(&head.uri), attempt, reason = %retry_reason, ?pause, "retrying request");
            tokio::time::sleep(pause).await;
        }
    }
}

/// A header value that hyper and `http` keep out of `Debug` output.
pub(crate) fn sensitive(value: &str) -> http::HeaderValue {
    let mut value = http::HeaderValue::from_str(value).unwrap_or_else(|_| http::HeaderValue::from_static(""));
    value.set_sensitive(true);
    value
}

/// Headers of a plain-http request sent to an HTTP proxy in absolute form: its
/// credentials, and `Connection: close`, because such proxies (tinyproxy among them)
/// close the client connection after each answer, and a pooled connection they have
/// just closed would fail the next request.
pub(crate) fn plain_proxy_headers(
    mut request: http::request::Builder,
    authorization: Option<&crate::config::Secret>,
    via_http_proxy: bool,
) -> http::request::Builder {
    if !via_http_proxy {
        return request;
    }
    if let Some(value) = authorization {
        request = request.header(PROXY_AUTHORIZATION, sensitive(value.expose()));
    }
    request.header(http::header::CONNECTION, "close")
}

/// True when a request failed because the connection closed under it before an answer
/// came (typically a kept-alive connection the server or proxy closed just then).
pub(crate) fn is_stale_connection(error: &hyper_util::client::legacy::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(cause) = source {
        if let Some(hyper_error) = cause.downcast_ref::<hyper::Error>()
            && (hyper_error.is_incomplete_message() || hyper_error.is_canceled())
        {
            return true;
        }
        if let Some(io) = cause.downcast_ref::<std::io::Error>()
            && matches!(io.kind(), std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe)
        {
            return true;
        }
        source = cause.source();
    }
    false
}

fn message_is_tls(message: &str) -> bool {
    message.contains("TLS") || message.contains("certificate")
}

/// The parts of a request needed to send it again.
struct RequestHead {
    method: http::Method,
    uri: http::Uri,
    headers: http::HeaderMap,
}

/// Counts an upstream request in the metrics: offering, endpoint family (one of
/// [`policy::ENDPOINT_FAMILIES`] under the API path, or `other`: never the component's
/// own path) and status,
/// with the time to the answer's head. Every label comes from a bounded set.
fn record_upstream_request<B, E>(
    offering: &str,
    endpoint: &str,
    outcome: &Result<Result<http::Response<B>, E>, tokio::time::error::Elapsed>,
    elapsed: std::time::Duration,
) {
    let status = match outcome {
        Ok(Ok(response)) => response.status().as_str().to_owned(),
        Ok(Err(_)) => "error".to_owned(),
        Err(_) => "timeout".to_owned(),
    };
    let metrics = crate::metrics::global();
    let labels = [("offering", offering), ("endpoint", endpoint), ("status", status.as_str())];
    metrics.inc("usage_agent_upstream_requests_total", "Upstream API requests, by endpoint and status.", &labels);
    metrics.observe(
        "usage_agent_upstream_request_duration_seconds",
        "Upstream time to the answer's head.",
        &labels[..2],
        elapsed,
    );
}

/// `uri` as logs and errors show it: scheme, host, port and path. The query goes (it
/// holds account lists), and so does any user and password.
pub fn shown_uri(uri: &http::Uri) -> String {
    let port = uri.port().map(|port| format!(":{port}")).unwrap_or_default();
    format!("{}://{}{port}{}", uri.scheme_str().unwrap_or("http"), uri.host().unwrap_or(""), uri.path())
}

/// Exponential back-off with up to 50 % jitter.
fn backoff(base: Duration, attempt: u32) -> Duration {
    let exp = base.saturating_mul(1u32 << attempt.min(10).saturating_sub(1));
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    let jitter = exp.mul_f64(f64::from(nanos % 1000) / 2000.0);
    exp + jitter
}

/// Why a request got no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("request denied by the egress allow-list: {0}")]
    Denied(String),
    #[error("no upstream token: {0}")]
    Token(#[from] oidc::TokenError),
    #[error("{message}")]
    Connect { message: String, tls: bool },
    #[error("{0}")]
    Timeout(String),
    #[error("{0}")]
    Refused(String),
}

impl SendError {
    /// The `wasi:http` error code the component receives.
    fn to_wasi(&self) -> HttpError {
        match self {
            SendError::Denied(_) => HttpError::HttpRequestDenied,
            SendError::Token(_) => HttpError::InternalError(Some(self.to_string())),
            SendError::Connect { tls: true, message } => {
                HttpError::TlsAlertReceived { alert_id: None, alert_message: Some(message.clone()) }
            }
            SendError::Connect { message, .. } => HttpError::InternalError(Some(message.clone())),
            SendError::Timeout(_) => HttpError::HttpResponseTimeout,
            SendError::Refused(message) => HttpError::InternalError(Some(message.clone())),
        }
    }
}

/// A response body with a size cap and a deadline for the last byte. It holds the
/// request's in-flight slot until the body ends, fails or is dropped: a connection is in
/// use until then.
struct GuardedBody {
    inner: hyper::body::Incoming,
    remaining: u64,
    limit: u64,
    deadline: Pin<Box<tokio::time::Sleep>>,
    permit: Option<OwnedSemaphorePermit>,
}

impl GuardedBody {
    fn new(inner: hyper::body::Incoming, limit: u64, deadline: Instant, permit: Option<OwnedSemaphorePermit>) -> Self {
        Self { inner, remaining: limit, limit, deadline: Box::pin(tokio::time::sleep_until(deadline.into())), permit }
    }
}

impl Body for GuardedBody {
    type Data = Bytes;
    type Error = HttpError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, HttpError>>> {
        let this = &mut *self;
        let polled = match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let len = data.len() as u64;
                    if len > this.remaining {
                        this.permit = None;
                        return Poll::Ready(Some(Err(HttpError::HttpResponseBodySize(Some(this.limit)))));
                    }
                    this.remaining -= len;
                }
                return Poll::Ready(Some(Ok(frame)));
            }
            Poll::Ready(Some(Err(error))) => Poll::Ready(Some(Err(HttpError::Hyper(error)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => match this.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(HttpError::ConnectionReadTimeout))),
                Poll::Pending => return Poll::Pending,
            },
        };
        // The body is over (ended or failed): its slot goes back now, not when the
        // component gets round to dropping the response.
        this.permit = None;
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The `wasi:http` hooks of one component call: it may reach only its offering's API.
pub struct ComponentHooks {
    component: String,
    egress: Option<Arc<Egress>>,
    tally: Arc<Mutex<CallTally>>,
    /// Bytes the host holds for the call's requests in flight: counted toward the
    /// call's memory limit (`runtime::limits::HostHeld`).
    in_flight_bytes: Arc<AtomicU64>,
}

/// Largest write into an outgoing body the host accepts (`wasi:http` buffers one such
/// chunk and one more): no request may carry a body anyway, so a component cannot park
/// memory in body buffers.
pub const OUTGOING_BODY_CHUNK_BYTES: usize = 4096;

/// Bytes of one request in flight, counted in its call's total until dropped.
struct InFlightCharge {
    total: Arc<AtomicU64>,
    bytes: u64,
}

impl InFlightCharge {
    fn new(total: &Arc<AtomicU64>, bytes: u64) -> Self {
        total.fetch_add(bytes, Ordering::Relaxed);
        Self { total: total.clone(), bytes }
    }
}

impl Drop for InFlightCharge {
    fn drop(&mut self) {
        self.total.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

/// What the host holds for a request from the component until it is answered or
/// refused: its URI, its headers and the state of the send (`state` bytes).
fn request_bytes(request: &http::Request<WasiBody>, state: usize) -> u64 {
    let uri = request.uri().to_string().len();
    let headers: usize = request.headers().iter().map(|(name, value)| name.as_str().len() + value.len() + 64).sum();
    (state + uri + headers + 2 * OUTGOING_BODY_CHUNK_BYTES) as u64
}

impl ComponentHooks {
    /// Hooks for a call of `component` with the egress of an offering.
    pub fn new(component: &str, egress: Option<Arc<Egress>>) -> Self {
        Self { component: component.to_owned(), egress, tally: Arc::default(), in_flight_bytes: Arc::default() }
    }

    /// Bytes the host holds now for the call's requests in flight.
    pub fn in_flight_bytes(&self) -> u64 {
        self.in_flight_bytes.load(Ordering::Relaxed)
    }

    /// The component these hooks serve, for messages and its log lines.
    pub fn component(&self) -> &str {
        &self.component
    }

    /// What the call's requests ran into: failures in the host's words, counts.
    pub fn tally(&self) -> Arc<Mutex<CallTally>> {
        self.tally.clone()
    }
}

fn forbidden(name: &HeaderName) -> bool {
    *name == AUTHORIZATION
        || *name == PROXY_AUTHORIZATION
        || *name == COOKIE
        || DEFAULT_FORBIDDEN_HEADERS.contains(name)
}

type SendFuture = Box<
    dyn Future<
            Output = wasmtime_wasi_http::Result<(
                http::Response<WasiBody>,
                Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
            )>,
        > + Send,
>;

use std::future::Future;

impl WasiHttpHooks for ComponentHooks {
    fn is_forbidden_header(&mut self, name: &HeaderName) -> bool {
        forbidden(name)
    }

    fn forbidden_header_filter(&mut self) -> ForbiddenHeaderFilter {
        Arc::new(forbidden)
    }

    /// `Host` comes from the allowed destination (the policy rebuilds the URI), never
    /// from the authority a component wrote.
    fn set_host_header(&mut self) -> bool {
        false
    }

    /// No request may carry a body: what a component writes into one is buffered in
    /// small chunks, counted toward its memory (`runtime::limits::HostHeld`).
    fn p2_outgoing_body_chunk_size(&mut self) -> usize {
        OUTGOING_BODY_CHUNK_BYTES
    }

    fn p2_outgoing_body_buffer_chunks(&mut self) -> usize {
        1
    }

    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        _options: Option<wasmtime_wasi_http::RequestOptions>,
        _fut: Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
    ) -> SendFuture {
        let egress = self.egress.clone();
        let component = self.component.clone();
        let tally = self.tally.clone();
        let url = shown_uri(request.uri());
        let head = request_bytes(&request, 0);
        let send = async move {
            let Some(egress) = egress else {
                return Err(HttpError::HttpRequestDenied);
            };
            match egress.send_for(&component, request, &tally).await {
                Ok(response) => {
                    let done: Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send> =
                        Box::new(async { Ok(()) });
                    Ok((response, done))
                }
                Err(error) => {
                    if let Ok(mut tally) = tally.lock() {
                        tally.fail(format!("{url}: {error}"));
                    }
                    Err(error.to_wasi())
                }
            }
        };
        // Counted until the answer's head is in (the body then holds an in-flight slot,
        // bounded per offering) or the request is refused.
        let charge = InFlightCharge::new(&self.in_flight_bytes, head + std::mem::size_of_val(&send) as u64);
        Box::new(async move {
            let _charge = charge;
            send.await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::{CallTally, Limits};

    fn settings(json: serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
        json.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn budgets_have_small_defaults_and_settings_naming_their_key() {
        let defaults = Limits::from_settings(&settings(serde_json::json!({})));
        let defaults = defaults.as_ref().map(|l| (l.max_in_flight, l.max_requests_per_call, l.max_retries_per_call));
        assert_eq!(defaults, Ok((16, 1000, 32)));
        let set = Limits::from_settings(&settings(serde_json::json!({
            "max_requests_in_flight": 2, "max_requests_per_call": 5, "max_retries_per_call": 0
        })));
        let set = set.as_ref().map(|l| (l.max_in_flight, l.max_requests_per_call, l.max_retries_per_call));
        assert_eq!(set, Ok((2, 5, 0)));
        for (key, value) in [
            ("max_requests_in_flight", serde_json::json!(0)),
            ("max_requests_in_flight", serde_json::json!(257)),
            ("max_requests_per_call", serde_json::json!("many")),
            ("max_retries_per_call", serde_json::json!(-1)),
        ] {
            let error = Limits::from_settings(&settings(serde_json::json!({ key: value }))).err().unwrap_or_default();
            assert!(error.starts_with(&format!("backend_settings.{key}: must be an integer from")), "{error}");
        }
    }

    #[test]
    fn a_call_spends_its_request_and_retry_budgets_once() {
        let mut tally = CallTally::default();
        assert!((0..3).all(|_| tally.admit(3)));
        assert!(!tally.admit(3) && !tally.admit(3));
        assert_eq!(tally.sent(), 3);
        assert!(tally.take_retry(1));
        assert!(!tally.take_retry(1) && !tally.take_retry(1));
        assert_eq!(tally.retries_refused(), 2);
        let mut none = CallTally::default();
        assert!(!none.take_retry(0), "max_retries_per_call: 0 means no retries at all");
    }

    #[test]
    fn shown_uris_hold_no_credentials_and_no_query() -> Result<(), http::uri::InvalidUri> {
        let shown = |uri: &str| uri.parse().map(|uri| super::shown_uri(&uri));
        assert_eq!(
            shown("https://user:pa55@api.example:8443/api/v1/compute?accounts=a,b")?,
            "https://api.example:8443/api/v1/compute"
        );
        assert_eq!(shown("http://[::1]/api/v1")?, "http://[::1]/api/v1");
        Ok(())
    }
}
