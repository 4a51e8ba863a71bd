//! OIDC client-credentials tokens, for an upstream API and for Waldur alike.
//!
//! The host, never a component, holds the client secret and the token. One token is
//! cached per offering and use and refreshed shortly before it expires; callers that
//! arrive while a refresh is under way wait for that one refresh instead of starting
//! their own.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use tokio::sync::Mutex;

use super::HttpClient;
use crate::config::{ClientAuth, OidcClient, Secret};

/// How long before expiry a token is refreshed.
const REFRESH_MARGIN: Duration = Duration::from_secs(30);
/// `expires_in` when the token endpoint does not say.
const DEFAULT_LIFETIME: Duration = Duration::from_secs(300);
/// After a 401 has forced a refresh, the next forced refresh waits this long: a token
/// the API refuses again is not refetched for every request.
pub const UNAUTHORIZED_REFRESH_INTERVAL: Duration = Duration::from_secs(10);
/// Token answers are small; anything larger is not a token endpoint.
const MAX_TOKEN_ANSWER: usize = 64 * 1024;

/// Why no token could be had. Messages name the endpoint and never the secret.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("token endpoint {url} rejected the client credentials ({error}{description})")]
    InvalidClient { url: String, error: String, description: String },
    #[error("token endpoint {url} is unreachable: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("token endpoint {url} answered HTTP {status}: {body}")]
    Status { url: String, status: u16, body: String },
    #[error("token endpoint {url} answered without an access_token")]
    MissingAccessToken { url: String },
    #[error("token endpoint {url} answered an access_token with characters no HTTP header may carry")]
    UnusableAccessToken { url: String },
    #[error("token endpoint {url} did not answer JSON: {reason}")]
    NotJson { url: String, reason: String },
    #[error("token endpoint {url} did not answer within {timeout:?}")]
    Timeout { url: String, timeout: Duration },
}

struct Cached {
    token: Secret,
    refresh_at: Instant,
    /// The API answered 401 to it: the next [`TokenSource::bearer`] fetches a new one.
    rejected: bool,
}

/// What a request that got a 401 does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterUnauthorized {
    /// Ask again with the token [`TokenSource::bearer`] gives now (a new one).
    Retry,
    /// The 401 stands: a refresh after a 401 happened less than
    /// [`UNAUTHORIZED_REFRESH_INTERVAL`] ago.
    Final,
}

/// `url` as it may be shown in messages and metric labels: without a user, password
/// or query, which may hold credentials.
fn shown(url: &url::Url) -> String {
    format!("{}{}", url.origin().ascii_serialization(), url.path())
}

/// What a token is for: its metric says so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenFor {
    /// An offering's upstream (`upstream.auth`, the `cscs_dwdi_*` keys).
    Upstream,
    /// An offering's Waldur (`oidc_token_url`, when `waldur_api_token` is blank).
    Waldur,
}

impl TokenFor {
    fn fetches_metric(self) -> (&'static str, &'static str) {
        match self {
            TokenFor::Upstream => {
                ("usage_agent_upstream_token_fetches_total", "Upstream OIDC tokens fetched (first and refreshes).")
            }
            TokenFor::Waldur => {
                ("usage_agent_waldur_token_fetches_total", "Waldur OIDC tokens fetched (first and refreshes).")
            }
        }
    }
}

/// Fetches and caches bearer tokens for one offering.
pub struct TokenSource {
    purpose: TokenFor,
    url: url::Url,
    client_id: String,
    client_secret: Secret,
    scope: String,
    auth: ClientAuth,
    client: HttpClient,
    /// `Proxy-Authorization` for a plain-http token URL through an HTTP proxy.
    proxy_authorization: Option<Secret>,
    /// True when plain-http requests go to an HTTP proxy in absolute form.
    via_http_proxy: bool,
    timeout: Duration,
    cached: Mutex<Option<Cached>>,
    /// When a 401 last forced a refresh (the rate limit of such refreshes).
    forced_at: std::sync::Mutex<Option<Instant>>,
    fetched: AtomicU64,
    served: AtomicU64,
}

impl TokenSource {
    pub fn new(
        purpose: TokenFor,
        access: &OidcClient,
        client: HttpClient,
        proxy_authorization: Option<Secret>,
        via_http_proxy: bool,
        timeout: Duration,
    ) -> Arc<Self> {
        Arc::new(Self {
            purpose,
            url: access.token_url.clone(),
            client_id: access.client_id.clone(),
            client_secret: access.client_secret.clone(),
            scope: access.scope.clone(),
            auth: access.client_auth,
            client,
            proxy_authorization,
            via_http_proxy,
            timeout,
            cached: Mutex::new(None),
            forced_at: std::sync::Mutex::new(None),
            fetched: AtomicU64::new(0),
            served: AtomicU64::new(0),
        })
    }

    /// A valid token, from the cache when it has one.
    pub async fn bearer(&self) -> Result<Secret, TokenError> {
        // Holding the lock across the fetch is the point: concurrent callers share it.
        let mut cached = self.cached.lock().await;
        self.served.fetch_add(1, Ordering::Relaxed);
        if let Some(entry) = cached.as_ref()
            && !entry.rejected
            && Instant::now() < entry.refresh_at
        {
            return Ok(entry.token.clone());
        }
        let (token, lifetime) = self.fetch().await?;
        self.fetched.fetch_add(1, Ordering::Relaxed);
        let (metric, help) = self.purpose.fetches_metric();
        crate::metrics::global().inc(metric, help, &[("token_url", &shown(&self.url))]);
        // A lifetime shorter than twice the margin would never be reused; halve it instead.
        let margin = REFRESH_MARGIN.min(lifetime / 2);
        *cached =
            Some(Cached { token: token.clone(), refresh_at: Instant::now() + lifetime - margin, rejected: false });
        Ok(token)
    }

    /// The API answered 401 to `token`. When another token has replaced it, or a refresh
    /// for it is already due, the request retries with the current one; otherwise the
    /// token is marked for refresh, at most once per [`UNAUTHORIZED_REFRESH_INTERVAL`]
    /// per offering, and when that interval has not passed the 401 is final.
    pub async fn after_unauthorized(&self, token: &Secret) -> AfterUnauthorized {
        let mut cached = self.cached.lock().await;
        let Some(entry) = cached.as_mut() else { return AfterUnauthorized::Retry };
        if &entry.token != token || entry.rejected {
            return AfterUnauthorized::Retry;
        }
        let now = Instant::now();
        let mut forced_at = match self.forced_at.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        if forced_at.is_some_and(|at| now.duration_since(at) < UNAUTHORIZED_REFRESH_INTERVAL) {
            return AfterUnauthorized::Final;
        }
        *forced_at = Some(now);
        entry.rejected = true;
        AfterUnauthorized::Retry
    }

    /// Tokens fetched from the endpoint and tokens handed out, for metrics.
    pub fn counts(&self) -> (u64, u64) {
        (self.fetched.load(Ordering::Relaxed), self.served.load(Ordering::Relaxed))
    }

    async fn fetch(&self) -> Result<(Secret, Duration), TokenError> {
        let url = shown(&self.url);
        // The serializer is not `Send`: build the form in a block that ends before any await.
        let form = {
            let mut form = form_urlencoded::Serializer::new(String::new());
            form.append_pair("grant_type", "client_credentials");
            if !self.scope.is_empty() {
                form.append_pair("scope", &self.scope);
            }
            if self.auth == ClientAuth::Form {
                form.append_pair("client_id", &self.client_id);
                form.append_pair("client_secret", self.client_secret.expose());
            }
            form.finish()
        };
        let unreachable = |reason: String| TokenError::Unreachable { url: url.clone(), reason };
        let build = || {
            let mut request = http::Request::post(url.as_str())
                .header(http::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .header(http::header::ACCEPT, "application/json");
            if self.auth == ClientAuth::Basic {
                // RFC 6749 §2.3.1: both parts are form-encoded before Basic encoding.
                let enc = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
                let value = super::connect::basic_auth(&enc(&self.client_id), &enc(self.client_secret.expose()));
                request = request.header(http::header::AUTHORIZATION, super::sensitive(&value));
            }
            if self.url.scheme() == "http" {
                request = super::plain_proxy_headers(request, self.proxy_authorization.as_ref(), self.via_http_proxy);
            }
            request.body(super::full_body(Bytes::from(form.clone()))).map_err(|e| unreachable(e.to_string()))
        };
        let exchange = async {
            // A pooled connection the far end has just closed fails the request without
            // an answer; asking for a token has no side effect, so one more try is safe.
            let response = match self.client.request(build()?).await {
                Err(error) if super::is_stale_connection(&error) => self.client.request(build()?).await,
                other => other,
            }
            .map_err(|e| unreachable(super::error_chain(&e)))?;
            let status = response.status();
            let body = http_body_util::Limited::new(response.into_body(), MAX_TOKEN_ANSWER)
                .collect()
                .await
                .map_err(|e| unreachable(format!("reading the answer failed: {e}")))?
                .to_bytes();
            Ok::<_, TokenError>((status, body))
        };
        let (status, body) = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| TokenError::Timeout { url: url.clone(), timeout: self.timeout })??;
        let json: Result<serde_json::Value, _> = serde_json::from_slice(&body);
        if !status.is_success() {
            if let Ok(json) = &json {
                let error = json.get("error").and_then(|v| v.as_str()).unwrap_or("");
                if error == "invalid_client" || error == "unauthorized_client" || status == 401 {
                    let description = json
                        .get("error_description")
                        .and_then(|v| v.as_str())
                        .map(|d| format!(": {d}"))
                        .unwrap_or_default();
                    let error = if error.is_empty() { format!("HTTP {}", status.as_u16()) } else { error.to_owned() };
                    return Err(TokenError::InvalidClient { url, error, description });
                }
            }
            return Err(TokenError::Status { url, status: status.as_u16(), body: snippet(&body) });
        }
        let json = json.map_err(|e| TokenError::NotJson { url: url.clone(), reason: e.to_string() })?;
        let token = match json.get("access_token").and_then(|v| v.as_str()) {
            // It goes into a header: a value no header can carry is no usable token.
            Some(token) if !token.is_empty() && http::HeaderValue::from_str(token).is_ok() => Secret::new(token),
            Some(token) if !token.is_empty() => return Err(TokenError::UnusableAccessToken { url }),
            _ => return Err(TokenError::MissingAccessToken { url }),
        };
        let lifetime = json
            .get("expires_in")
            .and_then(|v| v.as_f64().or_else(|| v.as_str().and_then(|s| s.parse().ok())))
            .filter(|secs| secs.is_finite() && *secs > 0.0)
            .map(|secs| Duration::from_secs_f64(secs.min(86_400.0)))
            .unwrap_or(DEFAULT_LIFETIME);
        Ok((token, lifetime))
    }
}

/// The start of a body, printable, for error messages.
pub fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    match text.char_indices().nth(200) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn shown_urls_hold_no_credentials() -> Result<(), url::ParseError> {
        let url = url::Url::parse("https://user:pa55@auth.example:8443/realms/x/token?client_secret=s3cret")?;
        assert_eq!(super::shown(&url), "https://auth.example:8443/realms/x/token");
        Ok(())
    }
}
