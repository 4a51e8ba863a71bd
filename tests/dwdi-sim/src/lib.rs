//! A simulator of the CSCS DWDI accounting API and of the OIDC token endpoint in front of
//! it, for the end-to-end tests and for `usage-agent demo`.
//!
//! # Why it exists
//!
//! The DWDI API is not public and cannot run here, yet the real host and the real
//! WebAssembly components must be tested against something that behaves like it. This
//! crate follows the API facts of the project spec (§4) — for inference costs, those the
//! upstream Python plugin (`cscs-dwdi` 1.0.7) relies on — and is deliberately strict, so
//! a client that passes against it does what the real service needs:
//!
//! - **Tokens**: `POST` to [`DwdiSim::token_url`] with a form body
//!   (`grant_type=client_credentials`, `client_id`, `client_secret`, optional `scope`) or
//!   with HTTP Basic client authentication. Tokens are JWTs in shape, as Keycloak's are
//!   (a header, claims with `exp` and the client's service-account username, and a
//!   signature nobody checks: a client must treat them as opaque, while Waldur's OIDC
//!   login reads the claims before it introspects the token), expire after
//!   [`DwdiOptions::token_lifetime`], and can all be expired at once
//!   ([`DwdiSim::expire_all_tokens`]) to test refresh mid-run.
//!   [`SimState::introspect`] answers what the token endpoint's introspection would, so
//!   the Waldur simulator can stand for a Waldur that logs agents in by OIDC.
//! - **API**: every call needs `Authorization: Bearer <valid token>` (401 otherwise), only
//!   `GET` is allowed (405), unknown paths are 404, request targets longer than
//!   [`DwdiOptions::max_uri_len`] are 414.
//! - **Lists are repeated keys**: `account=A&account=B`, `resource_uuid=R1&resource_uuid=R2`.
//!   A value with a comma is one literal name: the simulator never splits on commas, so
//!   a client joining names with commas gets nothing back for them.
//! - **The client must sum**: a compute answer has one entry per (account, cluster) and,
//!   within it, one user row per (user, day), so a user repeats; totals are the plain sums
//!   of the rows, nothing is rounded.
//! - **Storage** answers the latest snapshot of each path within the month
//!   (`/storage/usage-month?exact-month=…`) or the snapshot of the day
//!   (`/storage/usage-day?exact-date=…`).
//! - **Inference** answers one row per requested resource that has a cost in the months
//!   `from`..=`to` (`YYYY-MM`), its `totalCost` the sum of those months; a resource
//!   without one has no row. Rows are keyed by the id sent, as Waldur's resource UUIDs
//!   are. Data is per (resource, month): [`DwdiData::add_inference_cost`].
//! - Parameters are validated: missing, malformed, repeated single-valued or empty
//!   parameters and `from` after `to` are 400 with a `{"detail": …}` naming the parameter.
//! - The clients' reachability check, as the upstream Python client sends it —
//!   `/compute/usage-day?from=D&to=D` without accounts, `/storage/usage-day?exact-date=D`
//!   or `/inference/resource/cost?exact-date=D` alone — answers 200 (with no rows: it
//!   names no account, path or resource) when authorised and 401 when not; without its
//!   parameters it is 400 like any other request. Inference's `exact-date` mixes with
//!   no other parameter (400 naming the others).
//!
//! Endpoints (below [`DwdiSim::api_url`], which already ends in `/api/v1`). Clients
//! append each path to `cscs_dwdi_api_url` as it is, so configure it as `api_url()`:
//! the inference cost is then served at `…/api/v1/inference/resource/cost`, beside the
//! compute and storage paths.
//!
//! | path | parameters |
//! |---|---|
//! | `/compute/usage-month/account` | `from`, `to` (`YYYY-MM`), `account`+, `cluster`* |
//! | `/compute/usage-day/account` | `from`, `to` (`YYYY-MM-DD`), `account`+, `cluster`* |
//! | `/compute/usage-day` | `from`, `to` (`YYYY-MM-DD`), `account`*, `cluster`* |
//! | `/storage/usage-month` | `exact-month` (`YYYY-MM`), `filesystem`, `data_type`, `paths`+, `tenant`? |
//! | `/storage/usage-day` | `exact-date` (`YYYY-MM-DD`), `filesystem`, `data_type`, `paths`+, `tenant`?; or `exact-date` alone |
//! | `/inference/resource/cost` | `from`, `to` (`YYYY-MM`), `resource_uuid`+; or `exact-date` (`YYYY-MM-DD`) alone |
//!
//! Tests observe and steer it through [`Stats`] (token and API counts, rejections, peer
//! addresses, connections open at once, recent request targets), fault injection ([`DwdiSim::fail_next`],
//! [`DwdiSim::respond_next`], [`DwdiSim::fail_next_token`]), a latency
//! ([`DwdiOptions::latency`]) and data replacement ([`DwdiSim::set_data`]).
//!
//! # What it deliberately does not do
//!
//! - It is not a copy of the real service: answers carry only the fields the spec names
//!   (`account`, `cluster`, `totalNodeHours`, `totalCpuHours`, `totalGpuHours`, `users`;
//!   `path`, `filesystem`, `dataType`, `spaceUsed`, `inodesUsed`; `waldurResourceUuid`,
//!   `totalCost`). The order of entries is deterministic (by account, cluster, day, user;
//!   by requested resource) but clients must not rely on it.
//! - It is stricter than the real service in one respect: unknown query parameters are
//!   400, because a misspelt optional filter (`clusters=`) would otherwise be silently
//!   ignored and return unfiltered data.
//! - No proxy and no HTTP/2 of its own: proxies are real programs started by the tests.
//!   [`DwdiSim::start_tls`] serves the same API over TLS with a certificate the test
//!   makes; [`DwdiSim::router`] lets a test serve the state any other way.
//! - No JWTs, refresh tokens, other grant types, token introspection or rate limiting;
//!   no pagination (the real API has none in the reference client either).
//! - It does not check what a token is allowed to see: any valid token reads all data.
//! - `DwdiData` builders panic on malformed dates and months: they are test fixtures,
//!   not input.
//!
//! # Example
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use dwdi_sim::{DwdiData, DwdiOptions, DwdiSim};
//! let sim = DwdiSim::start(DwdiData::generated(10, 5, &[(2024, 1)]), DwdiOptions::default()).await?;
//! println!("api {} token {}", sim.api_url(), sim.token_url());
//! // … run the client with client id/secret from DwdiOptions::default() …
//! assert!(sim.stats().tokens_issued <= 1);
//! sim.shutdown().await;
//! # Ok(()) }
//! ```

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

mod accept;
mod b64;
mod data;
mod server;
mod tls;

pub use data::{
    ComputeUsage, DwdiData, GENERATED_CLUSTERS, GENERATED_DATA_TYPE, GENERATED_FILESYSTEM, GENERATED_TENANT,
    generated_inference_resource,
};
pub use server::{API_PREFIX, DwdiOptions, RECENT_CAPACITY, RequestRecord, SimState, Stats, TOKEN_PATH};

/// How long [`DwdiSim::shutdown`] waits for open connections before dropping them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// A running simulator on a local port. Dropping it stops the server (abruptly);
/// [`DwdiSim::shutdown`] stops it gracefully.
#[derive(Debug)]
pub struct DwdiSim {
    state: SimState,
    addr: SocketAddr,
    tls: bool,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl DwdiSim {
    /// Serves `data` on `127.0.0.1` at a free port.
    pub async fn start(data: DwdiData, options: DwdiOptions) -> anyhow::Result<DwdiSim> {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), data, options).await
    }

    /// Serves `data` on `addr` (port 0: any free port).
    pub async fn start_on(addr: SocketAddr, data: DwdiData, options: DwdiOptions) -> anyhow::Result<DwdiSim> {
        let listener =
            TcpListener::bind(addr).await.map_err(|e| anyhow::anyhow!("dwdi-sim: cannot listen on {addr}: {e}"))?;
        let addr = listener.local_addr()?;
        let state = SimState::new(data, options);
        let service = Self::router(state.clone()).into_make_service_with_connect_info::<accept::Peer>();
        let listener = accept::CountingListener { inner: listener, state: state.clone() };
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let server = axum::serve(listener, service).with_graceful_shutdown(async {
                let _ = stopped.await;
            });
            if let Err(error) = server.await {
                tracing::error!(%error, "dwdi-sim server failed");
            }
        });
        Ok(DwdiSim { state, addr, tls: false, stop: Some(stop), task: Some(task) })
    }

    /// Serves `data` over TLS on `127.0.0.1` at a free port, with the PEM certificate
    /// chain `cert_pem` and its PEM private key `key_pem`. [`DwdiSim::api_url`] and
    /// [`DwdiSim::token_url`] then start with `https://`; peers are recorded.
    pub async fn start_tls(
        data: DwdiData,
        options: DwdiOptions,
        cert_pem: &str,
        key_pem: &str,
    ) -> anyhow::Result<DwdiSim> {
        let acceptor = tls::acceptor(cert_pem, key_pem)?;
        let addr = SocketAddr::from(([127, 0, 0, 1], 0));
        let listener =
            TcpListener::bind(addr).await.map_err(|e| anyhow::anyhow!("dwdi-sim: cannot listen on {addr}: {e}"))?;
        let addr = listener.local_addr()?;
        let state = SimState::new(data, options);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(tls::serve(listener, acceptor, state.clone(), Self::router(state.clone()), stopped));
        Ok(DwdiSim { state, addr, tls: true, stop: Some(stop), task: Some(task) })
    }

    /// The router serving `state`, to serve it yourself (for example over TLS). Peers are
    /// recorded only if the service inserts `axum::extract::ConnectInfo<SocketAddr>` (use
    /// `into_make_service_with_connect_info::<SocketAddr>()`).
    pub fn router(state: SimState) -> Router {
        server::router(state)
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT/api/v1` (`https://` when serving TLS): the
    /// `cscs_dwdi_api_url` to configure.
    pub fn api_url(&self) -> String {
        format!("{}://{}{API_PREFIX}", self.scheme(), self.addr)
    }

    /// `http` or `https`.
    pub fn scheme(&self) -> &'static str {
        if self.tls { "https" } else { "http" }
    }

    /// `http://127.0.0.1:PORT/realms/test/protocol/openid-connect/token`: the
    /// `cscs_dwdi_oidc_token_url` to configure.
    pub fn token_url(&self) -> String {
        format!("{}://{}{TOKEN_PATH}", self.scheme(), self.addr)
    }

    /// The shared state (also usable after handing a clone to another server).
    pub fn state(&self) -> &SimState {
        &self.state
    }

    /// A snapshot of the counters. See [`Stats`].
    pub fn stats(&self) -> Stats {
        self.state.stats()
    }

    /// Zeroes the counters.
    pub fn reset_stats(&self) {
        self.state.reset_stats();
    }

    /// Makes every token issued so far invalid now.
    pub fn expire_all_tokens(&self) {
        self.state.expire_all_tokens();
    }

    /// The next `n` API requests answer `status` (`{"detail":"injected failure"}`).
    ///
    /// # Panics
    /// If `status` is not a valid HTTP status code.
    pub fn fail_next(&self, n: usize, status: u16) {
        self.state.fail_next(n, status);
    }

    /// The next `n` API requests answer `status` with exactly `body` of `content_type`.
    ///
    /// # Panics
    /// If `status` is not a valid HTTP status code.
    pub fn respond_next(&self, n: usize, status: u16, content_type: &'static str, body: &str) {
        self.state.respond_next(n, status, content_type, body);
    }

    /// The next `n` token requests answer `status` with an OIDC error.
    ///
    /// # Panics
    /// If `status` is not a valid HTTP status code.
    pub fn fail_next_token(&self, n: usize, status: u16) {
        self.state.fail_next_token(n, status);
    }

    /// The next `n` token requests answer `status` with exactly `body` of `content_type`
    /// (a token endpoint that answers HTML, or JSON without `access_token`).
    ///
    /// # Panics
    /// If `status` is not a valid HTTP status code.
    pub fn respond_next_token(&self, n: usize, status: u16, content_type: &'static str, body: &str) {
        self.state.respond_next_token(n, status, content_type, body);
    }

    /// Replaces the data served.
    pub fn set_data(&self, data: DwdiData) {
        self.state.set_data(data);
    }

    /// Changes the latency slept before every answer.
    pub fn set_latency(&self, latency: Duration) {
        self.state.set_latency(latency);
    }

    /// Stops accepting connections, lets requests in flight finish (at most 5 s), and
    /// releases the port.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(mut task) = self.task.take()
            && tokio::time::timeout(SHUTDOWN_GRACE, &mut task).await.is_err()
        {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for DwdiSim {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}
