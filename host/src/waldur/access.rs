//! How the agent reaches and logs into an offering's Waldur: its API URL, the login
//! (`waldur_api_token`, or an OIDC client when that is blank), `global_proxy` and TLS.
//!
//! Nothing here is a second implementation of what the egress has: connections go
//! through the egress's [`Connector`] (so `global_proxy` takes every proxy kind
//! `socks_proxy` takes), and an OIDC token comes from the egress's [`TokenSource`],
//! fetched through the same proxy, cached and refreshed as an upstream's is.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow};
use http::HeaderValue;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use super::WaldurClient;
use crate::config::{AgentConfig, Secret, WaldurLogin};
use crate::egress::HttpClient;
use crate::egress::connect::{Connector, Proxy, ProxyKind};
use crate::egress::oidc::{AfterUnauthorized, TokenError, TokenFor, TokenSource};

/// Each step of a connection (TCP, proxy handshake, TLS) may take this long.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How the requests of one Waldur client are authenticated and proxied.
pub(super) struct Access {
    login: Login,
    /// `Proxy-Authorization` for plain-http requests through an HTTP proxy.
    proxy_authorization: Option<Secret>,
    /// Plain-http requests go to an HTTP proxy in absolute form.
    via_http_proxy: bool,
}

enum Login {
    Token(Secret),
    Oidc(Arc<TokenSource>),
}

/// The `Authorization` of one request, and the bearer token in it (to report a 401).
pub(super) struct Credential {
    pub(super) value: HeaderValue,
    bearer: Option<Secret>,
}

impl Access {
    /// The access of a client whose connections `connector` opens and `client` pools;
    /// an OIDC token exchange may take `timeout`.
    pub(super) fn new(login: &WaldurLogin, connector: &Connector, client: &HttpClient, timeout: Duration) -> Self {
        let proxy_authorization = connector.http_proxy_authorization().map(Secret::new);
        let via_http_proxy = connector.proxy().is_some_and(|p| p.kind == ProxyKind::Http);
        let login = match login {
            WaldurLogin::Token(token) => Login::Token(token.clone()),
            WaldurLogin::Oidc(oidc) => Login::Oidc(TokenSource::new(
                TokenFor::Waldur,
                oidc,
                client.clone(),
                proxy_authorization.clone(),
                via_http_proxy,
                timeout,
            )),
        };
        Self { login, proxy_authorization, via_http_proxy }
    }

    /// The `Authorization` header for the next request: the static token, or a valid
    /// OIDC token (from the cache, or fetched now).
    pub(super) async fn credential(&self) -> Result<Credential, TokenError> {
        let (text, bearer) = match &self.login {
            Login::Token(token) => (format!("Token {}", token.expose()), None),
            Login::Oidc(tokens) => {
                let token = tokens.bearer().await?;
                (format!("Bearer {}", token.expose()), Some(token))
            }
        };
        Ok(Credential { value: crate::egress::sensitive(&text), bearer })
    }

    /// Waldur answered 401 to `credential`: true when the request is worth sending again
    /// with a fresh OIDC token (the refresh rate limit of [`TokenSource`] applies). A
    /// static token is never retried.
    pub(super) async fn retry_after_unauthorized(&self, credential: &Credential) -> bool {
        match (&self.login, &credential.bearer) {
            (Login::Oidc(tokens), Some(token)) => tokens.after_unauthorized(token).await == AfterUnauthorized::Retry,
            _ => false,
        }
    }

    /// Headers of a plain-http request through an HTTP proxy (credentials, and
    /// `Connection: close`), as the egress sends them.
    pub(super) fn plain_proxy_headers(&self, request: http::request::Builder) -> http::request::Builder {
        crate::egress::plain_proxy_headers(request, self.proxy_authorization.as_ref(), self.via_http_proxy)
    }

    /// OIDC tokens fetched and handed out, when the login is OIDC.
    pub(super) fn token_counts(&self) -> Option<(u64, u64)> {
        match &self.login {
            Login::Oidc(tokens) => Some(tokens.counts()),
            Login::Token(_) => None,
        }
    }
}

impl WaldurClient {
    /// The client of offering `index` of `config`: its `waldur_api_url` and login (or
    /// `token`, the `--user-token` of a back-fill, instead), through `global_proxy`,
    /// with `waldur_timeout_seconds`. Errors name the key.
    pub fn for_offering(config: &AgentConfig, index: usize, token: Option<Secret>) -> Result<Self> {
        let offering =
            config.offerings.get(index).ok_or_else(|| anyhow!("offerings[{index}]: no such offering in the config"))?;
        let at = |message: String| anyhow!("offerings[{index}].{message}");
        let url = offering
            .waldur_api_url
            .as_deref()
            .ok_or_else(|| at("waldur_api_url: missing (needed to write usage into Waldur)".to_owned()))?;
        let login = match token {
            Some(token) => WaldurLogin::Token(token),
            None => offering.waldur_login().map_err(at)?,
        };
        let proxy = config.global_proxy()?;
        Self::connect(url, &login, offering.verify_ssl, proxy, config.waldur_timeout())
            .map_err(|e| at(format!("waldur_api_url: {e:#}")))
    }

    /// A client for `api_url` (ending in `/api/`) that logs in with `login`, through
    /// `proxy` when given, verifying TLS unless told not to; one request may take
    /// `timeout`.
    pub fn connect(
        api_url: &str,
        login: &WaldurLogin,
        verify_ssl: bool,
        proxy: Option<Proxy>,
        timeout: Duration,
    ) -> Result<Self> {
        let mut base = url::Url::parse(api_url).with_context(|| format!("{api_url:?} is not a URL"))?;
        if !base.path().ends_with('/') {
            base.set_path(&format!("{}/", base.path()));
        }
        let tls = if verify_ssl { crate::egress::connect::tls_config(None)? } else { super::insecure_tls() };
        let connector = Connector::new(proxy, tls, CONNECT_TIMEOUT);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(64)
            .build(connector.clone());
        let access = Arc::new(Access::new(login, &connector, &client, timeout));
        Ok(Self {
            base,
            access,
            login_shown: login.shown().into(),
            connector,
            client,
            timeout,
            max_retries: 3,
            stats: Arc::default(),
        })
    }

    /// How this client logs in, for one line.
    pub fn login_shown(&self) -> &str {
        &self.login_shown
    }

    /// The proxy its connections go through, if any.
    pub fn proxy(&self) -> Option<&Proxy> {
        self.connector.proxy()
    }

    /// OIDC tokens fetched and handed out, when the client logs in by OIDC.
    pub fn token_counts(&self) -> Option<(u64, u64)> {
        self.access.token_counts()
    }
}
