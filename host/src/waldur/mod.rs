//! A client for the few Waldur marketplace endpoints the agent needs.
//!
//! Listings ask for the largest page Waldur allows and follow `Link: rel="next"`;
//! they filter by offering and billing period, so one paginated listing replaces one
//! request per resource. Idempotent requests are retried on connection errors and
//! 502/503/504. Every error names the method, endpoint, status and Waldur's message. A
//! Waldur that stops answering is noticed once per URL ([`circuit`]).

mod access;
mod circuit;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use anyhow::Result;
use bytes::Bytes;
use futures::StreamExt as _;
use http::{Method, StatusCode};
use http_body_util::BodyExt;
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::amount::Cents;
use crate::config::{Secret, WaldurLogin};
use crate::egress::connect::Connector;
use crate::egress::oidc::snippet;
use crate::egress::{HttpClient, error_chain, full_body};
use crate::runtime::one_line;

/// The largest page Waldur serves (`max_page_size` of its `LinkHeaderPagination`, 300 in
/// 7.0.7); a server that clamps lower is followed at its own page size.
const PAGE_SIZE: u32 = 300;
/// Pages of one listing fetched at the same time.
const LISTING_CONCURRENCY: usize = 8;
/// Waldur answers are JSON lists of at most a page; a larger answer is an error.
const MAX_ANSWER: usize = 64 * 1024 * 1024;

/// A failed Waldur request.
#[derive(Debug, thiserror::Error)]
pub enum WaldurError {
    #[error("Waldur {method} {endpoint} answered HTTP {status}: {message}")]
    Status { method: Method, endpoint: String, status: u16, message: String },
    #[error("Waldur {method} {endpoint} failed: {reason}")]
    Transport { method: Method, endpoint: String, reason: String },
    #[error("Waldur {method} {endpoint} sent an answer that cannot be read: {reason}")]
    Decode { method: Method, endpoint: String, reason: String },
    /// No OIDC token for Waldur: the request was not sent.
    #[error("Waldur {method} {endpoint}: cannot log in: {reason}")]
    Login { method: Method, endpoint: String, reason: String },
    /// No answer: a timeout or a connection that could not be made (retries included).
    #[error("Waldur {method} {endpoint} failed: {reason}")]
    NoAnswer { method: Method, endpoint: String, reason: String },
    /// Not sent: requests to this Waldur got no answer several times in a row.
    #[error("Waldur {url} is not answering ({reason}); it is asked again at the next cycle")]
    NotAnswering { url: String, reason: String },
}

impl WaldurError {
    /// Waldur refused a back-fill into a past billing period (a staff token can).
    pub fn is_backfill_refusal(&self) -> bool {
        matches!(self, WaldurError::Status { status: 400..=403, message, .. } if message.to_ascii_lowercase().contains("backfill"))
    }

    /// Waldur did not answer, or was not asked because it had stopped answering.
    pub fn is_unanswered(&self) -> bool {
        matches!(self, WaldurError::NoAnswer { .. } | WaldurError::NotAnswering { .. })
    }

    /// The HTTP status, if Waldur answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            WaldurError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// An offering as the provider sees it.
#[derive(Debug, Clone, Deserialize)]
pub struct Offering {
    pub uuid: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub components: Vec<OfferingComponent>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct OfferingComponent {
    #[serde(rename = "type")]
    pub component_type: String,
    #[serde(default)]
    pub billing_type: Option<String>,
}

/// A marketplace resource.
#[derive(Debug, Clone, Deserialize)]
pub struct Resource {
    pub uuid: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub backend_id: Option<String>,
    #[serde(default)]
    pub offering_backend_id: Option<String>,
    #[serde(default)]
    pub state: String,
}

/// A stored component usage (one resource, type and billing period).
#[derive(Debug, Clone, Deserialize)]
pub struct ComponentUsage {
    pub uuid: String,
    pub resource_uuid: String,
    #[serde(rename = "type")]
    pub component_type: String,
    /// Stored as `usage` in listings (`amount` is only the name in `set_usage`).
    #[serde(rename = "usage", deserialize_with = "de_cents")]
    pub amount: Cents,
    pub billing_period: String,
    /// The `date` of the last write (Waldur 8: the one it was sent with; Waldur 7: when
    /// it was made).
    #[serde(default)]
    pub date: Option<String>,
}

/// A stored per-user usage of a component usage.
#[derive(Debug, Clone, Deserialize)]
pub struct ComponentUserUsage {
    #[serde(default)]
    pub uuid: String,
    /// The URL of the component usage it belongs to.
    pub component_usage: String,
    pub username: String,
    #[serde(deserialize_with = "de_cents")]
    pub usage: Cents,
    #[serde(default)]
    pub user: Option<String>,
}

impl ComponentUserUsage {
    /// The UUID of the component usage: the last segment of its URL.
    pub fn component_usage_uuid(&self) -> &str {
        self.component_usage.trim_end_matches('/').rsplit('/').next().unwrap_or_default()
    }
}

/// An offering user (username → URL to link per-user usage to).
#[derive(Debug, Clone, Deserialize)]
pub struct OfferingUser {
    pub username: Option<String>,
    pub url: String,
}

/// The owner of a token.
#[derive(Debug, Clone, Deserialize)]
pub struct Me {
    #[serde(default)]
    pub username: String,
    #[serde(default)]
    pub is_staff: bool,
}

fn de_cents<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Cents, D::Error> {
    let value = serde_json::Value::deserialize(deserializer)?;
    let parsed = match &value {
        serde_json::Value::String(s) => Cents::parse(s),
        serde_json::Value::Number(n) => n.as_f64().and_then(Cents::round),
        _ => None,
    };
    parsed.ok_or_else(|| serde::de::Error::custom(format!("{value} is not an amount")))
}

/// What one Waldur server can do, learnt once per API URL for the life of the process
/// (every offering on that URL shares it).
#[derive(Debug, Default)]
pub struct Capabilities {
    /// Whether `set_usage` files a write under the month of its `date` (Waldur 8) or
    /// ignores `date` and files everything under its current month (Waldur 7).
    dated_writes: tokio::sync::OnceCell<bool>,
    /// Whether the bulk `set_user_usages` exists: known from its first answer (a 404
    /// or 405 says no: Waldur 7 has only the singular `set_user_usage`).
    pub bulk_user_usages: tokio::sync::OnceCell<bool>,
    /// The page size this Waldur serves for [`PAGE_SIZE`] (0 until a listing of more
    /// than one page has shown it), so a read-back can ask for all its pages at once.
    page_size: AtomicUsize,
}

/// The capabilities of every Waldur API URL this process has talked to.
static CAPABILITIES: LazyLock<Mutex<HashMap<String, Arc<Capabilities>>>> = LazyLock::new(Mutex::default);

/// Counts of requests made, for summaries and benchmarks.
#[derive(Debug, Default)]
pub struct WaldurStats {
    pub requests: AtomicU64,
    pub writes: AtomicU64,
}

/// One Waldur API, one login ([`access`]: token or OIDC, proxy, TLS).
#[derive(Clone)]
pub struct WaldurClient {
    base: url::Url,
    access: Arc<access::Access>,
    /// How it logs in, for messages.
    login_shown: Arc<str>,
    connector: Connector,
    client: HttpClient,
    timeout: Duration,
    max_retries: u32,
    stats: Arc<WaldurStats>,
}

impl WaldurClient {
    /// A client for `api_url` (ending in `/api/`) with a static token, connecting
    /// directly, verifying TLS unless told not to. [`WaldurClient::for_offering`] builds
    /// one from the config.
    pub fn new(api_url: &str, token: Secret, verify_ssl: bool) -> Result<Self> {
        Self::connect(api_url, &WaldurLogin::Token(token), verify_ssl, None, Duration::from_secs(60))
    }

    /// Sets how long one request may take, answer included (default 60 s).
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    pub fn stats(&self) -> &WaldurStats {
        &self.stats
    }

    /// Requests made so far.
    pub fn request_count(&self) -> u64 {
        self.stats.requests.load(Ordering::Relaxed)
    }

    /// The API URL, for messages.
    pub fn api_url(&self) -> &str {
        self.base.as_str()
    }

    /// What this Waldur can do, shared by every client of the same API URL.
    pub fn capabilities(&self) -> Arc<Capabilities> {
        let mut known = CAPABILITIES.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        Arc::clone(known.entry(self.base.as_str().to_owned()).or_default())
    }

    /// Whether `set_usage` honours `date`, asked once per API URL. The question is a
    /// `set_usage` that no Waldur can accept (no resource) with a `date` no Waldur can
    /// read: a Waldur whose `set_usage` has a `date` field refuses that field by name,
    /// one without it ignores it and refuses only the missing resource. Nothing can
    /// be written either way.
    pub async fn honours_date(&self) -> Result<bool, WaldurError> {
        let capabilities = self.capabilities();
        capabilities.dated_writes.get_or_try_init(|| self.probe_dated_writes()).await.copied()
    }

    async fn probe_dated_writes(&self) -> Result<bool, WaldurError> {
        let path = "marketplace-component-usages/set_usage/";
        let body = serde_json::json!({"usages": [], "date": "not-a-date"});
        match self.post(path, &body).await {
            // Refused by name: the field exists. Refused only for the missing resource
            // (Waldur 7: "Either plan_period or resource should be provided."): it does
            // not. Any other answer proves neither.
            Err(WaldurError::Status { status: 400, message, .. })
                if message.contains("\"date\"") || message.contains("resource") =>
            {
                let honoured = message.contains("\"date\"");
                tracing::debug!(waldur = %self.base, honoured, answer = %message, "asked whether set_usage honours date");
                Ok(honoured)
            }
            Err(error) => Err(error),
            Ok(()) => Err(WaldurError::Decode {
                method: Method::POST,
                endpoint: format!("/{path}"),
                reason: "accepted a usage without a resource; cannot tell whether it honours `date`".to_owned(),
            }),
        }
    }

    pub async fn offering(&self, uuid: &str) -> Result<Offering, WaldurError> {
        self.get_json(&format!("marketplace-provider-offerings/{uuid}/"), &[]).await
    }

    /// Resources of an offering in states OK and Erred.
    pub async fn resources(&self, offering_uuid: &str) -> Result<Vec<Resource>, WaldurError> {
        self.list(
            "marketplace-provider-resources/",
            &[("offering_uuid", offering_uuid), ("state", "OK"), ("state", "Erred")],
        )
        .await
    }

    /// Component usages of an offering in one billing period (`YYYY-MM-01`).
    pub async fn component_usages(
        &self,
        offering_uuid: &str,
        billing_period: &str,
    ) -> Result<Vec<ComponentUsage>, WaldurError> {
        self.component_usages_expecting(offering_uuid, billing_period, 0).await
    }

    /// [`Self::component_usages`] when at least `expected` rows are known to be there
    /// (a read-back of what was just written): their pages are asked for at once.
    pub async fn component_usages_expecting(
        &self,
        offering_uuid: &str,
        billing_period: &str,
        expected: usize,
    ) -> Result<Vec<ComponentUsage>, WaldurError> {
        self.list_expecting(
            "marketplace-component-usages/",
            &[("offering_uuid", offering_uuid), ("billing_period", billing_period)],
            expected,
        )
        .await
    }

    /// Component usages of one resource in one billing period.
    pub async fn resource_component_usages(
        &self,
        resource_uuid: &str,
        billing_period: &str,
    ) -> Result<Vec<ComponentUsage>, WaldurError> {
        self.list(
            "marketplace-component-usages/",
            &[("resource_uuid", resource_uuid), ("billing_period", billing_period)],
        )
        .await
    }

    /// Every component usage of one resource, of all billing periods: what a read-back
    /// asks when a value is not where it was written, to find it under another month.
    /// One page for years of a resource's usage.
    pub async fn resource_usages(&self, resource_uuid: &str) -> Result<Vec<ComponentUsage>, WaldurError> {
        self.list("marketplace-component-usages/", &[("resource_uuid", resource_uuid)]).await
    }

    /// Per-user usages of an offering in one billing period.
    pub async fn component_user_usages(
        &self,
        offering_uuid: &str,
        billing_period: &str,
    ) -> Result<Vec<ComponentUserUsage>, WaldurError> {
        self.offering_user_usages(offering_uuid, billing_period, None, 0).await
    }

    /// Per-user usages of an offering in one billing period, of one component type (the
    /// type of their component usage) or of all; `expected` as in
    /// [`Self::component_usages_expecting`].
    pub async fn offering_user_usages(
        &self,
        offering_uuid: &str,
        billing_period: &str,
        component_type: Option<&str>,
        expected: usize,
    ) -> Result<Vec<ComponentUserUsage>, WaldurError> {
        let mut query = vec![("offering_uuid", offering_uuid), ("component_usage__billing_period", billing_period)];
        query.extend(component_type.map(|t| ("type", t)));
        self.list_expecting("marketplace-component-user-usages/", &query, expected).await
    }

    /// Per-user usages of one resource in one billing period.
    pub async fn resource_user_usages(
        &self,
        resource_uuid: &str,
        billing_period: &str,
    ) -> Result<Vec<ComponentUserUsage>, WaldurError> {
        self.list(
            "marketplace-component-user-usages/",
            &[("resource_uuid", resource_uuid), ("component_usage__billing_period", billing_period)],
        )
        .await
    }

    /// Offering users in state OK.
    pub async fn offering_users(&self, offering_uuid: &str) -> Result<Vec<OfferingUser>, WaldurError> {
        self.list("marketplace-offering-users/", &[("offering_uuid", offering_uuid), ("state", "OK")]).await
    }

    pub async fn me(&self) -> Result<Me, WaldurError> {
        self.get_json("users/me/", &[]).await
    }

    /// Creates or updates the usages of `resource_uuid` for the month of `date`.
    pub async fn set_usage(
        &self,
        resource_uuid: &str,
        usages: &[(String, Cents)],
        date: &str,
    ) -> Result<(), WaldurError> {
        let body = serde_json::json!({
            "resource": resource_uuid,
            "date": date,
            "usages": usages.iter().map(|(t, amount)| serde_json::json!({"type": t, "amount": amount.to_string()})).collect::<Vec<_>>(),
        });
        self.post("marketplace-component-usages/set_usage/", &body).await
    }

    /// Creates or updates per-user usages of one component usage, in one request.
    pub async fn set_user_usages(
        &self,
        component_usage_uuid: &str,
        usages: &[UserUsageInput],
        date: &str,
    ) -> Result<(), WaldurError> {
        let body = serde_json::json!({
            "usages": usages.iter().map(|u| {
                let mut entry = serde_json::json!({"username": u.username, "usage": u.usage.to_string(), "date": date});
                if let Some(url) = &u.user {
                    entry["user"] = serde_json::Value::String(url.clone());
                }
                entry
            }).collect::<Vec<_>>(),
        });
        self.post(&format!("marketplace-component-usages/{component_usage_uuid}/set_user_usages/"), &body).await
    }

    /// Creates or updates one per-user usage: the one-request-per-user form, kept for
    /// the historical loader's one-by-one baseline.
    pub async fn set_user_usage(
        &self,
        component_usage_uuid: &str,
        usage: &UserUsageInput,
        date: &str,
    ) -> Result<(), WaldurError> {
        let mut body = serde_json::json!({"username": usage.username, "usage": usage.usage.to_string(), "date": date});
        if let Some(url) = &usage.user {
            body["user"] = serde_json::Value::String(url.clone());
        }
        self.post(&format!("marketplace-component-usages/{component_usage_uuid}/set_user_usage/"), &body).await
    }

    async fn get_json<T: DeserializeOwned>(&self, path: &str, query: &[(&str, &str)]) -> Result<T, WaldurError> {
        let url = self.url(path, query);
        let (_, body) = self.send(Method::GET, url.as_str(), None).await?;
        decode(&Method::GET, path, &body)
    }

    /// All pages of a listing.
    async fn list<T: DeserializeOwned>(&self, path: &str, query: &[(&str, &str)]) -> Result<Vec<T>, WaldurError> {
        self.list_expecting(path, query, 0).await
    }

    /// All pages of a listing known to hold at least `expected` rows (0: unknown). The
    /// pages those rows fill (at the page size this Waldur served before) are asked for
    /// together with the first; a page past the end, which Waldur answers 404, is
    /// dropped. When Waldur says how many items there are (`X-Result-Count`) the pages
    /// still missing are fetched concurrently; otherwise the `Link: rel="next"` chain is
    /// followed one page at a time.
    async fn list_expecting<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, &str)],
        expected: usize,
    ) -> Result<Vec<T>, WaldurError> {
        let page_size = PAGE_SIZE.to_string();
        let mut with_page: Vec<(&str, &str)> = query.to_vec();
        with_page.push(("page_size", &page_size));
        let first_url = self.url(path, &with_page);
        let fetch = |page: usize| {
            let mut url = first_url.clone();
            url.query_pairs_mut().append_pair("page", &page.to_string());
            async move {
                let (_, body) = self.send(Method::GET, url.as_str(), None).await?;
                decode::<Vec<T>>(&Method::GET, path, &body)
            }
        };
        let capabilities = self.capabilities();
        let known_size = match capabilities.page_size.load(Ordering::Relaxed) {
            0 => PAGE_SIZE as usize,
            size => size,
        };
        let guessed = expected.div_ceil(known_size).max(1);
        let early =
            futures::stream::iter((2..=guessed).map(fetch)).buffered(LISTING_CONCURRENCY - 1).collect::<Vec<_>>();
        let (first, early) = tokio::join!(self.send(Method::GET, first_url.as_str(), None), early);
        let (headers, body) = first?;
        let mut items: Vec<T> = decode(&Method::GET, path, &body)?;
        let Some(next) = next_link(&headers) else {
            return Ok(items);
        };
        let total =
            headers.get("x-result-count").and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse::<usize>().ok());
        // The page size Waldur actually used (it may clamp ours): the first page is full.
        let served = items.len();
        if let Some(total) = total
            && served > 0
        {
            capabilities.page_size.store(served, Ordering::Relaxed);
            let pages = total.div_ceil(served);
            for page in early.into_iter().take(pages.saturating_sub(1)) {
                items.extend(page?);
            }
            let mut rest = futures::stream::iter((guessed + 1..=pages).map(fetch)).buffered(LISTING_CONCURRENCY);
            while let Some(page) = rest.next().await {
                items.extend(page?);
            }
            return Ok(items);
        }
        let mut next = Some(next);
        while let Some(url) = next.take() {
            if !self.same_origin(&url) {
                // Never send the token anywhere but the configured API.
                return Err(WaldurError::Decode {
                    method: Method::GET,
                    endpoint: path.to_owned(),
                    reason: format!("pagination points outside the API: {url}"),
                });
            }
            let (headers, body) = self.send(Method::GET, &url, None).await?;
            let page: Vec<T> = decode(&Method::GET, path, &body)?;
            items.extend(page);
            next = next_link(&headers);
        }
        Ok(items)
    }

    async fn post(&self, path: &str, body: &serde_json::Value) -> Result<(), WaldurError> {
        let url = self.url(path, &[]);
        self.stats.writes.fetch_add(1, Ordering::Relaxed);
        self.send(Method::POST, url.as_str(), Some(Bytes::from(body.to_string()))).await.map(|_| ())
    }

    fn url(&self, path: &str, query: &[(&str, &str)]) -> url::Url {
        let mut url = self.base.join(path).unwrap_or_else(|_| self.base.clone());
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        url
    }

    fn same_origin(&self, link: &str) -> bool {
        url::Url::parse(link).is_ok_and(|u| u.origin() == self.base.origin())
    }

    /// Why requests to this Waldur are not sent now (it stopped answering), if they are
    /// not.
    pub fn not_answering(&self) -> Option<String> {
        circuit::Circuit::of(self.base.as_str()).open()
    }

    /// Whether this Waldur answers, asked once with a cheap request when its circuit is
    /// open (requests got no answer several times in a row); at once otherwise. Every
    /// run asks this first, so a Waldur that stopped answering costs a run one timeout.
    pub async fn check_answering(&self) -> Result<(), WaldurError> {
        let circuit = circuit::Circuit::of(self.base.as_str());
        let Some(reason) = circuit.open() else { return Ok(()) };
        tracing::info!(waldur = %self.base, "Waldur did not answer before ({reason}); asking once whether it does now");
        let url = self.url("users/me/", &[]);
        match self.send_with(Method::GET, url.as_str(), None, true).await {
            Err(error) if error.is_unanswered() => {
                Err(WaldurError::NotAnswering { url: self.base.to_string(), reason: error.to_string() })
            }
            // Any answer, even a refusal, says it is there.
            _ => Ok(()),
        }
    }

    async fn send(
        &self,
        method: Method,
        url: &str,
        body: Option<Bytes>,
    ) -> Result<(http::HeaderMap, Bytes), WaldurError> {
        self.send_with(method, url, body, false).await
    }

    /// Sends a request, retried as the module says. A `trial` goes out even while the
    /// circuit is open, and only once.
    async fn send_with(
        &self,
        method: Method,
        url: &str,
        body: Option<Bytes>,
        trial: bool,
    ) -> Result<(http::HeaderMap, Bytes), WaldurError> {
        let endpoint = endpoint_of(url);
        let idempotent = method == Method::GET;
        let max_retries = if trial { 0 } else { self.max_retries };
        let circuit = circuit::Circuit::of(self.base.as_str());
        let mut attempt = 0;
        let mut refreshed = false;
        loop {
            if !trial && let Some(reason) = circuit.open() {
                return Err(WaldurError::NotAnswering { url: self.base.to_string(), reason });
            }
            let credential = self.access.credential().await.map_err(|error| WaldurError::Login {
                method: method.clone(),
                endpoint: endpoint.clone(),
                reason: error.to_string(),
            })?;
            let mut request = http::Request::builder()
                .method(method.clone())
                .uri(url)
                .header(http::header::AUTHORIZATION, credential.value.clone())
                .header(http::header::ACCEPT, "application/json");
            if body.is_some() {
                request = request.header(http::header::CONTENT_TYPE, "application/json");
            }
            if url.starts_with("http:") {
                request = self.access.plain_proxy_headers(request);
            }
            let request = request.body(full_body(body.clone().unwrap_or_default())).map_err(|e| {
                WaldurError::Transport { method: method.clone(), endpoint: endpoint.clone(), reason: e.to_string() }
            })?;
            self.stats.requests.fetch_add(1, Ordering::Relaxed);
            let exchange = async {
                let response = self.client.request(request).await.map_err(|e| (error_chain(&e), e.is_connect()))?;
                let (parts, body) = response.into_parts();
                let bytes = http_body_util::Limited::new(body, MAX_ANSWER)
                    .collect()
                    .await
                    .map_err(|e| (format!("reading the answer: {e}"), false))?
                    .to_bytes();
                Ok::<_, (String, bool)>((parts.status, parts.headers, bytes))
            };
            let started = std::time::Instant::now();
            let outcome = tokio::time::timeout(self.timeout, exchange).await;
            let status = match &outcome {
                Ok(Ok((status, _, _))) => status.as_str().to_owned(),
                Ok(Err(_)) => "error".to_owned(),
                Err(_) => "timeout".to_owned(),
            };
            let metrics = crate::metrics::global();
            let labels =
                [("method", method.as_str()), ("endpoint", metric_endpoint(&endpoint)), ("status", status.as_str())];
            metrics.inc("usage_agent_waldur_requests_total", "Waldur API requests, by endpoint and status.", &labels);
            metrics.observe(
                "usage_agent_waldur_request_duration_seconds",
                "Waldur API request latency.",
                &labels[..2],
                started.elapsed(),
            );
            match &outcome {
                Ok(Ok(_)) => circuit.answered(),
                Ok(Err((reason, true))) => self.missed(&circuit, reason),
                Err(_) => self.missed(&circuit, &format!("no answer within {:?}", self.timeout)),
                Ok(Err((_, false))) => {}
            }
            let retry = match outcome {
                Ok(Ok((status, headers, bytes))) if status.is_success() => return Ok((headers, bytes)),
                // An OIDC token Waldur no longer takes (revoked, or expired early): once
                // more with a fresh one. Waldur did nothing with the request, so a write
                // is safe to repeat.
                Ok(Ok((StatusCode::UNAUTHORIZED, _, _)))
                    if !refreshed && self.access.retry_after_unauthorized(&credential).await =>
                {
                    refreshed = true;
                    tracing::info!(%endpoint, "Waldur refused the OIDC token; asking again with a fresh one");
                    continue;
                }
                Ok(Ok((status, _, bytes))) => {
                    if idempotent && is_transient(status) && attempt < max_retries {
                        format!("HTTP {status}")
                    } else {
                        return Err(WaldurError::Status {
                            method,
                            endpoint,
                            status: status.as_u16(),
                            message: waldur_message(&bytes),
                        });
                    }
                }
                Ok(Err((reason, connect))) => {
                    // A write that may have reached Waldur is not repeated blindly.
                    if (idempotent || connect) && attempt < max_retries {
                        reason
                    } else if connect {
                        return Err(WaldurError::NoAnswer { method, endpoint, reason });
                    } else {
                        return Err(WaldurError::Transport { method, endpoint, reason });
                    }
                }
                Err(_) => {
                    let reason = format!("no answer within {:?}", self.timeout);
                    if idempotent && attempt < max_retries {
                        reason
                    } else {
                        return Err(WaldurError::NoAnswer { method, endpoint, reason });
                    }
                }
            };
            attempt += 1;
            let pause = Duration::from_millis(200 * (1 << attempt.min(6)));
            tracing::info!(%endpoint, attempt, reason = %retry, "retrying Waldur request");
            tokio::time::sleep(pause).await;
        }
    }
}

impl WaldurClient {
    /// Counts a request without an answer; says so once when that stops the requests.
    fn missed(&self, circuit: &circuit::Circuit, reason: &str) {
        if circuit.missed(reason) {
            tracing::warn!(
                waldur = %self.base,
                "Waldur is not answering ({} requests in a row got none; the last: {reason}): no more requests to it until one gets an answer; every run asks it once first",
                circuit::MISSES_TO_OPEN
            );
        }
    }
}

/// One per-user usage to submit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserUsageInput {
    pub username: String,
    pub usage: Cents,
    pub user: Option<String>,
}

fn is_transient(status: StatusCode) -> bool {
    matches!(status.as_u16(), 502..=504)
}

fn decode<T: DeserializeOwned>(method: &Method, path: &str, body: &[u8]) -> Result<T, WaldurError> {
    serde_json::from_slice(body).map_err(|e| WaldurError::Decode {
        method: method.clone(),
        endpoint: path.to_owned(),
        reason: format!("{e} (answer starts with {:?})", snippet(body)),
    })
}

/// The endpoint as a metric label: UUIDs in the path become `{uuid}` so labels stay few.
fn metric_endpoint(path: &str) -> &'static str {
    const KNOWN: &[&str] = &[
        "set_user_usages/",
        "set_user_usage/",
        "set_usage/",
        "marketplace-component-user-usages/",
        "marketplace-component-usages/",
        "marketplace-provider-resources/",
        "marketplace-provider-offerings/",
        "marketplace-offering-users/",
        "users/me/",
    ];
    KNOWN.iter().find(|k| path.ends_with(*k)).copied().unwrap_or_else(|| {
        if path.contains("marketplace-provider-offerings/") {
            "marketplace-provider-offerings/{uuid}/"
        } else {
            "other"
        }
    })
}

/// The path of a URL, without host and query, for messages.
fn endpoint_of(url: &str) -> String {
    url::Url::parse(url).map(|u| u.path().to_owned()).unwrap_or_else(|_| url.to_owned())
}

/// Waldur's error bodies are DRF JSON (`{"detail": …}` or field lists); show them flat.
fn waldur_message(body: &[u8]) -> String {
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(serde_json::Value::Object(map)) if map.len() == 1 && map.contains_key("detail") => {
            map["detail"].as_str().map(str::to_owned).unwrap_or_else(|| map["detail"].to_string())
        }
        Ok(value) => {
            let text = value.to_string();
            snippet(text.as_bytes())
        }
        Err(_) => snippet(plain_text(&String::from_utf8_lossy(body)).as_bytes()),
    }
}

/// A non-JSON error body on one line: an HTML page (Django's 404) by its title or, when
/// it has none, its text without tags; anything else as it is.
fn plain_text(text: &str) -> String {
    let lower = text.to_ascii_lowercase();
    if !(lower.trim_start().starts_with('<') && lower.contains("<html")) {
        return one_line(text);
    }
    // ASCII lower-casing keeps byte offsets, so positions in `lower` index `text`.
    let title = lower.find("<title>").zip(lower.find("</title>")).filter(|(open, close)| open + 7 <= *close);
    let shown = match title {
        Some((open, close)) => one_line(&text[open + 7..close]),
        None => {
            let mut in_tag = false;
            let untagged: String = text
                .chars()
                .map(|c| match c {
                    '<' => {
                        in_tag = true;
                        ' '
                    }
                    '>' => {
                        in_tag = false;
                        ' '
                    }
                    _ if in_tag => ' ',
                    c => c,
                })
                .collect();
            one_line(&untagged)
        }
    };
    format!("{shown} (an HTML page)")
}

/// The `rel="next"` target of a `Link` header.
fn next_link(headers: &http::HeaderMap) -> Option<String> {
    headers.get_all(http::header::LINK).iter().filter_map(|v| v.to_str().ok()).find_map(|value| {
        value.split(',').find_map(|part| {
            let (target, params) = part.split_once(';')?;
            let is_next = params.split(';').any(|p| {
                let p = p.trim();
                p == "rel=\"next\"" || p == "rel=next"
            });
            let target = target.trim().strip_prefix('<')?.strip_suffix('>')?;
            is_next.then(|| target.to_owned())
        })
    })
}

/// `verify_ssl: false`: a verifier that accepts any certificate, as the site asked.
fn insecure_tls() -> Arc<rustls::ClientConfig> {
    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use rustls::{DigitallySignedStruct, SignatureScheme};

    #[derive(Debug)]
    struct AcceptAnything(Vec<SignatureScheme>);

    impl ServerCertVerifier for AcceptAnything {
        fn verify_server_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            _: &[u8],
            _: &CertificateDer<'_>,
            _: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            Ok(HandshakeSignatureValid::assertion())
        }
        fn verify_tls13_signature(
            &self,
            _: &[u8],
            _: &CertificateDer<'_>,
            _: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            Ok(HandshakeSignatureValid::assertion())
        }
        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.0.clone()
        }
    }

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let schemes = provider.signature_verification_algorithms.supported_schemes();
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map(|b| {
            b.dangerous().with_custom_certificate_verifier(Arc::new(AcceptAnything(schemes))).with_no_client_auth()
        })
        .unwrap_or_else(|_| {
            rustls::ClientConfig::builder()
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAnything(Vec::new())))
                .with_no_client_auth()
        });
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_next_link() {
        let mut headers = http::HeaderMap::new();
        headers.insert(
            http::header::LINK,
            http::HeaderValue::from_static(
                "<http://w/api/x/?page=1>; rel=\"first\", <http://w/api/x/?page=3>; rel=\"next\", <http://w/api/x/?page=9>; rel=\"last\"",
            ),
        );
        assert_eq!(next_link(&headers).as_deref(), Some("http://w/api/x/?page=3"));
        headers.clear();
        assert_eq!(next_link(&headers), None);
    }

    #[test]
    fn flattens_drf_errors() {
        assert_eq!(waldur_message(br#"{"detail":"Invalid token."}"#), "Invalid token.");
        assert!(waldur_message(br#"{"usages":[{"amount":["too many"]}]}"#).contains("too many"));
        assert_eq!(waldur_message(b"<html>oops</html>"), "oops (an HTML page)");
        let django_404 = b"<!doctype html>\n<html lang=\"en\">\n<head>\n  <title>Not Found</title>\n</head>\n<body>\n  <h1>Not Found</h1><p>The requested resource was not found on this server.</p>\n</body>\n</html>\n";
        assert_eq!(waldur_message(django_404), "Not Found (an HTML page)");
        assert_eq!(waldur_message(b"line one\r\nline two"), "line one line two");
    }

    #[test]
    fn backfill_refusal_is_recognised() {
        let error = WaldurError::Status {
            method: Method::POST,
            endpoint: "/api/marketplace-component-usages/set_usage/".into(),
            status: 400,
            message: "Backfilling usage for past billing periods is allowed only for staff users.".into(),
        };
        assert!(error.is_backfill_refusal());
    }
}
