//! A simulator of the slice of the Waldur marketplace REST API that the usage agent uses.
//!
//! # Why it exists
//!
//! The agent's job ends in Waldur, and no Waldur can run on a test machine. End-to-end
//! tests, the benchmark and `usage-agent demo` therefore talk to this in-process HTTP
//! server instead. It is only useful if it is *strict*: it follows SPEC §5 and the public
//! `waldur-api-client` / Waldur source, and refuses what real Waldur refuses, with the
//! same status codes and DRF-shaped bodies, so a client that passes here does not meet its
//! first surprise in production. In particular:
//!
//! - every request needs `Authorization: Token <token>` of a known token (401 otherwise,
//!   with DRF's messages), or, where the test set OIDC login up
//!   ([`WaldurSim::accept_oidc`]), `Authorization: Bearer <JWT>` of an active token;
//! - paths need their trailing slash; unknown paths are 404, wrong methods 405;
//! - listings paginate like Waldur's `LinkHeaderPagination`: a bare JSON list,
//!   `Link: <…>; rel="first|prev|next|last"` with absolute URLs, `X-Result-Count`, a
//!   clamped `page_size`, and `404 {"detail":"Invalid page."}` past the end;
//! - filters validate their values (`Enter a valid UUID.`, unknown `state` choices) and
//!   unknown query keys are ignored — including misspelt filters, exactly as django-filter
//!   does, so a wrong filter name shows up as too many results, not as an error;
//! - amounts are DRF `DecimalField(max_digits=20, decimal_places=2)`: `"1.234"` and even
//!   `"1.230"` are refused; values are stored and rendered as `"12.30"`;
//! - `set_usage` refuses unknown or non-usage components, resources not in `OK`,
//!   `Updating` or `Terminating` (an `Erred` resource is listed but cannot take usage),
//!   future months, and past months for non-staff callers (with Waldur's own
//!   "…when backfilling past billing periods." message);
//! - writes answer `201` with an empty body, as Waldur does.
//!
//! # Waldur 7
//!
//! [`WaldurOptions::version`] picks the release modelled. The default,
//! [`WaldurVersion::V8`], is everything above. [`WaldurVersion::V7`] behaves as Waldur
//! MasterMind 7.0.7 (measured on a real server, checked against its source), so the
//! agent can be tested against an older Waldur in seconds; only these differ:
//!
//! - usage writes take no `date`: the key is ignored like any unknown key (a malformed
//!   one is no error), every write is filed under the current billing period and there
//!   is no back-filling, so no "backfilling" refusal either;
//! - there is no bulk `set_user_usages` endpoint; the singular `set_user_usage` writes
//!   under the component usage named in its path, and when the username already has a
//!   row there it updates only `usage`, never the `user` link;
//! - a path no route matches answers Django's own HTML "Not Found" page
//!   (`text/html`), not DRF's JSON — the bulk endpoint included; `{"detail":"Not
//!   found."}` still answers an unknown object on a known route;
//! - resources have no `offering_backend_id`, offering users no `state` (and the
//!   `state=` filter of their listing is ignored, not validated);
//! - `GET /api/users/me/` omits `is_staff`, `is_active` and `is_support` for non-staff
//!   callers (Waldur 7's `UserSerializer` deletes them).
//!
//! It also has to stay cheap at the benchmark's scale (tens of thousands of usages, a
//! thousand listing pages), or the benchmark measures the simulator: records are indexed
//! for writes and kept in listing order for reads (see `index.rs`).
//!
//! Field names are Waldur's, not convenient ones: a component usage carries its amount in
//! `usage` (the request item field is `amount`), a per-user usage points at its component
//! usage through the `component_usage` URL, and the per-user listing's period filter is
//! `component_usage__billing_period` (double underscore). UUIDs are rendered as 32 hex
//! digits without dashes and accepted in any form Django accepts.
//!
//! # What it deliberately does not do
//!
//! - No permission model beyond `is_staff`: any known token may write any resource.
//! - No plan periods, prices, invoices, limits or `recurring`/`missing_usage_policy`
//!   semantics; `plan_period` in a body never matches anything.
//! - No form or multipart bodies (415); JSON only.
//! - No ordering (`o=`) or free-text filters beyond the few the agent uses.
//! - Time is a fixed UTC offset, not a zone database; "today" can be pinned with
//!   [`WaldurSim::set_today`]. The future check is per month, not per instant.
//! - Nothing persists; state lives in memory for the life of the [`WaldurSim`].
//!
//! # Use
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use waldur_sim::{WaldurOptions, WaldurSim, uuid_from};
//!
//! let sim = WaldurSim::start(WaldurOptions::default()).await?;
//! sim.add_token("secret", "agent", false);
//! let offering = uuid_from("compute offering");
//! sim.add_offering(&offering, "Alps compute", &["node_hours"]);
//! sim.add_resource(&offering, &uuid_from("project 1"), "account1", "Alps", "OK");
//! sim.set_today(2024, 3, 15);
//! // point the agent at sim.url() ("http://127.0.0.1:PORT/api/") with token "secret"
//! assert_eq!(sim.requests().set_usage, 0);
//! # Ok(()) }
//! ```

mod api;
mod decimal;
mod index;
mod pagination;
mod state;
mod time;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use anyhow::Context as _;
use http::StatusCode;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use state::{OfferingComponent, RequestCounts, StoredUsage, StoredUserUsage};

use crate::decimal::parse_amount;
use crate::state::{
    Account, OFFERING_USER_STATES, Offering, OfferingUser, RESOURCE_STATES, Rejection, Resource, State, fnv1a,
    normalize_uuid, uuid_from_bits,
};
use crate::time::{Date, Timestamp};

/// How to run the simulator.
#[derive(Clone, Debug)]
pub struct WaldurOptions {
    /// Added to every request before it is handled (the benchmark uses 5 ms).
    pub latency: Duration,
    /// Largest `page_size` honoured; larger requests are clamped. The default is the
    /// real server's (`max_page_size = 300` in MasterMind 7.0.7); SPEC §5 says 100, so
    /// tests also run with 100 to show a client follows a lower cap.
    pub max_page_size: usize,
    /// The server's time zone as minutes east of UTC (Waldur's `TIME_ZONE`). Billing
    /// periods are months in this zone and dates without an offset are read in it.
    pub utc_offset_minutes: i32,
    /// Where to listen; the default is `127.0.0.1:0`, a free port.
    pub bind: SocketAddr,
    /// Send `X-Result-Count` with every page, as Waldur does. Off, a client can only
    /// follow the `Link: rel="next"` chain (what a proxy that strips the header leaves).
    pub result_count: bool,
    /// The Waldur release to behave as; [`WaldurVersion::V8`] unless set.
    pub version: WaldurVersion,
}

impl Default for WaldurOptions {
    fn default() -> Self {
        WaldurOptions {
            latency: Duration::ZERO,
            max_page_size: 300,
            utc_offset_minutes: 0,
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            result_count: true,
            version: WaldurVersion::V8,
        }
    }
}

/// The Waldur MasterMind release the simulator behaves as (see the crate docs, "Waldur 7",
/// for every difference).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum WaldurVersion {
    /// Waldur 8.x, the default: dated usage writes with back-filling, the bulk
    /// `set_user_usages`, `offering_backend_id`, offering user states.
    #[default]
    V8,
    /// Waldur MasterMind 7.0.7: no `date` on usage writes (always the current billing
    /// period), no bulk `set_user_usages`, HTML 404 pages for unknown paths, none of the
    /// newer fields.
    V7,
}

/// What differs between the versions, asked where the behaviour branches, so each
/// difference is decided in one place.
impl WaldurVersion {
    /// Usage writes read a `date` (and so back-fill and refuse future months).
    pub(crate) fn dated_usage(self) -> bool {
        self == WaldurVersion::V8
    }

    /// `POST /api/marketplace-component-usages/{uuid}/set_user_usages/` exists.
    pub(crate) fn bulk_user_usages(self) -> bool {
        self == WaldurVersion::V8
    }

    /// Rewriting an existing per-user usage replaces its `user` link when one is sent.
    pub(crate) fn relinks_user_usage(self) -> bool {
        self == WaldurVersion::V8
    }

    /// Resources show `offering_backend_id`.
    pub(crate) fn resource_offering_backend_id(self) -> bool {
        self == WaldurVersion::V8
    }

    /// Offering users have a `state`, shown and filtered on.
    pub(crate) fn offering_user_state(self) -> bool {
        self == WaldurVersion::V8
    }

    /// `GET /api/users/me/` shows `is_staff`, `is_active` and `is_support` to everyone,
    /// not only to staff.
    pub(crate) fn staff_fields_for_all(self) -> bool {
        self == WaldurVersion::V8
    }

    /// A path no route matches answers DRF-style JSON, not Django's HTML page.
    pub(crate) fn json_not_found(self) -> bool {
        self == WaldurVersion::V8
    }
}

/// State and settings shared by the handlers.
pub(crate) struct Shared {
    state: Mutex<State>,
    options: WaldurOptions,
    /// The server's time zone, minutes east of UTC: [`WaldurOptions::utc_offset_minutes`]
    /// until [`WaldurSim::set_utc_offset_minutes`] changes it.
    utc_offset_minutes: std::sync::atomic::AtomicI32,
    /// `http://ip:port`, used for hyperlinks when a request has no `Host`.
    origin: String,
}

impl Shared {
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn offset_secs(&self) -> i64 {
        i64::from(self.utc_offset_minutes.load(std::sync::atomic::Ordering::SeqCst)) * 60
    }
}

/// A running simulated Waldur. Dropping it stops the server.
///
/// The setup methods (`add_*`, `seed_*`) panic on inconsistent input — an unknown
/// offering, a malformed UUID, a state Waldur does not have — because that is a bug in
/// the test, not a condition to handle.
pub struct WaldurSim {
    shared: Arc<Shared>,
    addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl WaldurSim {
    /// Binds `options.bind` and serves in the background on the current Tokio runtime.
    pub async fn start(options: WaldurOptions) -> anyhow::Result<WaldurSim> {
        let listener = tokio::net::TcpListener::bind(options.bind)
            .await
            .with_context(|| format!("binding the Waldur simulator to {}", options.bind))?;
        let addr = listener.local_addr().context("reading the Waldur simulator's address")?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            utc_offset_minutes: std::sync::atomic::AtomicI32::new(options.utc_offset_minutes),
            options,
            origin: format!("http://{addr}"),
        });
        let app = axum::Router::new().fallback(api::handle).with_state(Arc::clone(&shared));
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = rx.await;
                })
                .await;
            if let Err(e) = served {
                tracing::warn!(target: "waldur_sim", "Waldur simulator stopped: {e}");
            }
        });
        Ok(WaldurSim { shared, addr, shutdown: Some(tx), task: Some(task) })
    }

    /// The API root with its trailing slash, `http://127.0.0.1:PORT/api/`: the value for
    /// an offering's `waldur_api_url`.
    pub fn url(&self) -> String {
        format!("{}/api/", self.shared.origin)
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The Waldur release it behaves as ([`WaldurOptions::version`]).
    pub fn version(&self) -> WaldurVersion {
        self.shared.options.version
    }

    /// Stops accepting connections and waits for the server task to end.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    /// Accepts `token` for a user named `username`; `is_staff` is what
    /// `GET /api/users/me/` reports (Waldur 7 omits the key for non-staff) and what allows
    /// back-filling past months (Waldur 8).
    pub fn add_token(&self, token: &str, username: &str, is_staff: bool) {
        let uuid = uuid_from(&format!("user {username}"));
        self.shared.lock().tokens.insert(token.to_owned(), Account { uuid, username: username.to_owned(), is_staff });
    }

    /// Accepts `Authorization: Bearer <JWT>` as a Waldur with OIDC login configured does
    /// (MasterMind's `OIDCAuthentication`, which 7.0.7 lacks): the token's claims are
    /// read without checking the signature (401 "Invalid JWT token." when they cannot
    /// be, "Token has expired." past `exp`), then `introspect` — the provider's token
    /// introspection — says which username an active token stands for (401 "Token is
    /// inactive or invalid." otherwise). That user is the one [`WaldurSim::add_token`]
    /// named, or else a new user who is not staff. Without this call a bearer token is
    /// not looked at ("Authentication credentials were not provided.", as in 7.0.7).
    pub fn accept_oidc(&self, introspect: impl Fn(&str) -> Option<String> + Send + Sync + 'static) {
        self.shared.lock().introspect = Some(Arc::new(introspect));
    }

    /// Adds an offering whose components are usage-billed, named after their types.
    pub fn add_offering(&self, uuid: &str, name: &str, component_types: &[&str]) {
        let uuid = checked_uuid("add_offering", uuid);
        let mut state = self.shared.lock();
        assert!(state.offering(&uuid).is_none(), "add_offering: offering {uuid} already exists");
        state.add_offering(Offering {
            uuid,
            name: name.to_owned(),
            components: component_types.iter().map(|t| OfferingComponent::usage(t)).collect(),
        });
    }

    /// Adds (or replaces, by type) one component of an offering, for other billing types,
    /// names or units.
    pub fn add_offering_component(&self, offering_uuid: &str, component: OfferingComponent) {
        let uuid = checked_uuid("add_offering_component", offering_uuid);
        let mut state = self.shared.lock();
        let offering =
            state.offering_mut(&uuid).unwrap_or_else(|| panic!("add_offering_component: unknown offering {uuid}"));
        offering.components.retain(|c| c.component_type != component.component_type);
        offering.components.push(component);
    }

    /// Adds a resource of an offering. Its name is its `backend_id`; `offering_backend_id`
    /// is the cluster (any case; Waldur 7 does not show it); `state` is one of Waldur's
    /// (`OK`, `Erred`, `Creating`, `Updating`, `Terminating`, `Terminated`).
    pub fn add_resource(
        &self,
        offering_uuid: &str,
        uuid: &str,
        backend_id: &str,
        offering_backend_id: &str,
        state: &str,
    ) {
        let offering_uuid = checked_uuid("add_resource", offering_uuid);
        let uuid = checked_uuid("add_resource", uuid);
        assert!(RESOURCE_STATES.contains(&state), "add_resource: Waldur has no resource state {state:?}");
        let mut guard = self.shared.lock();
        assert!(guard.offering(&offering_uuid).is_some(), "add_resource: unknown offering {offering_uuid}");
        assert!(guard.resource(&uuid).is_none(), "add_resource: resource {uuid} already exists");
        guard.add_resource(Resource {
            uuid,
            name: backend_id.to_owned(),
            backend_id: backend_id.to_owned(),
            offering_uuid,
            offering_backend_id: offering_backend_id.to_owned(),
            state: state.to_owned(),
        });
    }

    /// Changes a resource's state.
    pub fn set_resource_state(&self, uuid: &str, state: &str) {
        let uuid = checked_uuid("set_resource_state", uuid);
        assert!(RESOURCE_STATES.contains(&state), "set_resource_state: Waldur has no resource state {state:?}");
        let mut guard = self.shared.lock();
        let resource =
            guard.resource_mut(&uuid).unwrap_or_else(|| panic!("set_resource_state: unknown resource {uuid}"));
        resource.state = state.to_owned();
    }

    /// Adds an offering user in state `OK` and returns its URL, the value
    /// `set_user_usage(s)` accepts as `user`.
    pub fn add_offering_user(&self, offering_uuid: &str, username: &str) -> String {
        self.add_offering_user_in_state(offering_uuid, username, "OK")
    }

    /// Adds an offering user in a given state (`Requested`, `Creating`, `OK`, ...) and
    /// returns its URL. Waldur 7 has no offering user states: there the state is kept but
    /// neither shown nor filtered on.
    pub fn add_offering_user_in_state(&self, offering_uuid: &str, username: &str, state: &str) -> String {
        let offering_uuid = checked_uuid("add_offering_user", offering_uuid);
        assert!(
            OFFERING_USER_STATES.contains(&state),
            "add_offering_user: Waldur has no offering user state {state:?}"
        );
        let mut guard = self.shared.lock();
        assert!(guard.offering(&offering_uuid).is_some(), "add_offering_user: unknown offering {offering_uuid}");
        let uuid = guard.new_uuid();
        guard.add_offering_user(OfferingUser {
            uuid: uuid.clone(),
            username: username.to_owned(),
            offering_uuid,
            state: state.to_owned(),
        });
        format!("{}/api/marketplace-offering-users/{uuid}/", self.shared.origin)
    }

    /// Pins the simulator's local date; the current billing period follows it.
    pub fn set_today(&self, year: i32, month: u32, day: u32) {
        let date =
            Date::new(year, month, day).unwrap_or_else(|| panic!("set_today: {year}-{month}-{day} is not a date"));
        self.shared.lock().today = Some(date);
    }

    /// Moves the server to another time zone (an operator changing `TIME_ZONE` and
    /// restarting Waldur): from now on, billing periods and dates are read there.
    pub fn set_utc_offset_minutes(&self, minutes: i32) {
        self.shared.utc_offset_minutes.store(minutes, std::sync::atomic::Ordering::SeqCst);
    }

    /// Deletes every component usage and per-user usage, of every offering (what a staff
    /// user removing them in Django's admin leaves); requests are not counted.
    pub fn delete_usages(&self) {
        self.shared.lock().delete_usages();
    }

    /// Follows the wall clock again (the default).
    pub fn use_wall_clock(&self) {
        self.shared.lock().today = None;
    }

    /// The current billing period, `YYYY-MM-01`.
    pub fn current_billing_period(&self) -> String {
        let offset = self.shared.offset_secs();
        self.shared.lock().current_period(offset).to_string()
    }

    /// Stores a component usage directly, as if written earlier (no request is counted),
    /// and returns its UUID. `amount` is validated like the API validates it;
    /// `billing_period` is any date in the month.
    pub fn seed_usage(&self, resource_uuid: &str, component_type: &str, amount: &str, billing_period: &str) -> String {
        let resource_uuid = checked_uuid("seed_usage", resource_uuid);
        let cents = parse_amount(&serde_json::Value::String(amount.to_owned()), false)
            .unwrap_or_else(|e| panic!("seed_usage: amount {amount:?}: {e}"));
        let period = Date::parse(billing_period)
            .unwrap_or_else(|| panic!("seed_usage: {billing_period:?} is not a date"))
            .month_start();
        let offset = self.shared.offset_secs();
        let mut state = self.shared.lock();
        let offering_uuid = state
            .resource(&resource_uuid)
            .unwrap_or_else(|| panic!("seed_usage: unknown resource {resource_uuid}"))
            .offering_uuid
            .clone();
        let date = Timestamp::from_local(period, 0, offset);
        let now = state.now(offset);
        let row = state.upsert_usage(&resource_uuid, &offering_uuid, component_type, period, cents, date, "", now);
        state.usages()[row].uuid.clone()
    }

    /// Stores a per-user usage directly under a component usage (no request is counted).
    pub fn seed_user_usage(&self, component_usage_uuid: &str, username: &str, usage: &str) {
        let parent = checked_uuid("seed_user_usage", component_usage_uuid);
        let cents = parse_amount(&serde_json::Value::String(usage.to_owned()), false)
            .unwrap_or_else(|e| panic!("seed_user_usage: usage {usage:?}: {e}"));
        let offset = self.shared.offset_secs();
        let mut state = self.shared.lock();
        let row =
            state.usage_row(&parent).unwrap_or_else(|| panic!("seed_user_usage: unknown component usage {parent}"));
        let now = state.now(offset);
        state.upsert_user_usage(row, username, cents, None, now);
    }

    /// Every stored component usage, in creation order.
    pub fn usages(&self) -> Vec<StoredUsage> {
        let offset = self.shared.offset_secs();
        let state = self.shared.lock();
        state.usages().iter().map(|u| state.stored_usage(u, offset)).collect()
    }

    /// Every stored per-user usage, in creation order.
    pub fn user_usages(&self) -> Vec<StoredUserUsage> {
        let state = self.shared.lock();
        state.user_usages().iter().map(|u| state.stored_user_usage(u, &self.shared.origin)).collect()
    }

    /// Request counters since start or the last [`WaldurSim::reset_counters`].
    pub fn requests(&self) -> RequestCounts {
        self.shared.lock().counters.clone()
    }

    /// Zeroes the request counters (stored data is kept).
    pub fn reset_counters(&self) {
        self.shared.lock().counters = RequestCounts::default();
    }

    /// Makes every write touching the resource (`set_usage` for it, `set_user_usage(s)` on
    /// one of its component usages) answer `status` with the JSON `body`, and store nothing.
    pub fn reject_resource(&self, uuid: &str, status: u16, body: serde_json::Value) {
        let uuid = checked_uuid("reject_resource", uuid);
        let status =
            StatusCode::from_u16(status).unwrap_or_else(|_| panic!("reject_resource: {status} is not an HTTP status"));
        self.shared.lock().rejections.insert(uuid, Rejection { status, body });
    }

    /// Makes the next `n` requests, of any kind, answer `status` with
    /// `{"detail":"Simulated failure."}` before authentication or any other check.
    pub fn fail_next(&self, n: u32, status: u16) {
        let status =
            StatusCode::from_u16(status).unwrap_or_else(|_| panic!("fail_next: {status} is not an HTTP status"));
        self.shared.lock().fail_next = (n > 0).then_some((n, status));
    }

    /// Makes the next `n` requests of one route answer `status` with
    /// `{"detail":"Simulated failure."}` before anything else; the route is written as
    /// [`RequestCounts::route`] counts it, e.g.
    /// `"POST /api/marketplace-component-usages/set_usage/"`.
    pub fn fail_route(&self, route: &str, n: u32, status: u16) {
        let status =
            StatusCode::from_u16(status).unwrap_or_else(|_| panic!("fail_route: {status} is not an HTTP status"));
        let mut state = self.shared.lock();
        if n == 0 {
            state.route_failures.remove(route);
        } else {
            state.route_failures.insert(route.to_owned(), (n, status));
        }
    }

    /// Removes every [`WaldurSim::reject_resource`] and pending [`WaldurSim::fail_next`]
    /// and [`WaldurSim::fail_route`].
    pub fn clear_faults(&self) {
        let mut state = self.shared.lock();
        state.rejections.clear();
        state.fail_next = None;
        state.route_failures.clear();
    }
}

impl Drop for WaldurSim {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

impl std::fmt::Debug for WaldurSim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WaldurSim").field("url", &self.url()).finish_non_exhaustive()
    }
}

/// A stable Waldur-style UUID (32 hex digits) derived from a readable name, so tests can
/// write `uuid_from("project 1")` instead of inventing hex.
pub fn uuid_from(name: &str) -> String {
    uuid_from_bits(fnv1a(name.as_bytes(), 0xcbf2_9ce4_8422_2325), fnv1a(name.as_bytes(), 0x6c62_272e_07bb_0142))
}

/// The normalised form of a UUID given to a setup method, or a panic naming the method.
fn checked_uuid(method: &str, uuid: &str) -> String {
    normalize_uuid(uuid).unwrap_or_else(|| {
        panic!("{method}: {uuid:?} is not a UUID; Waldur identifies objects by UUID (try waldur_sim::uuid_from)")
    })
}
