//! What the simulated Waldur knows, and the records tests inspect.
//!
//! Everything lives behind one mutex in [`crate::Shared`]; a request handler takes it once,
//! validates and writes under it, and never awaits while holding it, so every write is
//! atomic the way a Django transaction would make it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use http::StatusCode;
use serde_json::Value;

use crate::decimal::format_cents;
use crate::index::{OrderKey, Ordered};
use crate::time::{Date, Timestamp};

/// Resource states as Waldur's API spells them (`Resource.States` representations).
pub(crate) const RESOURCE_STATES: &[&str] = &["Creating", "OK", "Erred", "Updating", "Terminating", "Terminated"];

/// Offering user states as Waldur's API spells them.
pub(crate) const OFFERING_USER_STATES: &[&str] = &[
    "Requested",
    "Creating",
    "Pending account linking",
    "Pending additional validation",
    "OK",
    "Requested deletion",
    "Deleting",
    "Deleted",
    "Error creating",
    "Error deleting",
];

/// Resource states in which Waldur accepts `set_usage` (its serializer allows exactly
/// these; `Erred` and `Creating` are refused with "Resource is not in valid state.").
pub(crate) const USAGE_WRITABLE_STATES: &[&str] = &["OK", "Updating", "Terminating"];

/// One component of an offering, as `GET /api/marketplace-provider-offerings/{uuid}/`
/// shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OfferingComponent {
    /// The component type, the key usages are reported under (`node_hours`).
    pub component_type: String,
    /// Display name.
    pub name: String,
    /// Display unit (`Hours`, `GB`).
    pub measured_unit: String,
    /// `usage`, `limit`, `fixed`, `one` or `few`. Waldur accepts reported usage only for
    /// `usage` and `limit` components.
    pub billing_type: String,
}

impl OfferingComponent {
    /// A usage-billed component whose name is its type and whose unit is empty.
    pub fn usage(component_type: &str) -> OfferingComponent {
        OfferingComponent {
            component_type: component_type.to_owned(),
            name: component_type.to_owned(),
            measured_unit: String::new(),
            billing_type: "usage".to_owned(),
        }
    }
}

/// A component usage as stored: one per (resource, component type, billing period).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredUsage {
    /// 32 lower-case hex digits, as Waldur renders UUIDs.
    pub uuid: String,
    /// The resource it belongs to.
    pub resource_uuid: String,
    /// The resource's offering.
    pub offering_uuid: String,
    /// The component type.
    pub component_type: String,
    /// The amount with exactly two decimals, as Waldur renders it (`"12.30"`).
    pub amount: String,
    /// First day of the month, `YYYY-MM-01`.
    pub billing_period: String,
    /// The `date` of the last write, rendered like the API does.
    pub date: String,
    /// The description of the last write (empty when none was sent).
    pub description: String,
    /// Position of the write that created it in the simulator's sequence of writes.
    pub created_seq: u64,
    /// Position of the last write that touched it.
    pub modified_seq: u64,
    /// How many writes touched it, creation included.
    pub writes: u32,
}

/// A per-user component usage as stored: one per (component usage, username).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredUserUsage {
    /// 32 lower-case hex digits.
    pub uuid: String,
    /// The component usage it belongs to.
    pub component_usage_uuid: String,
    /// That component usage's resource.
    pub resource_uuid: String,
    /// That component usage's type.
    pub component_type: String,
    /// The username as reported.
    pub username: String,
    /// The usage with exactly two decimals.
    pub usage: String,
    /// The offering user URL sent with it, if any.
    pub user: Option<String>,
    /// That component usage's billing period, `YYYY-MM-01`.
    pub billing_period: String,
    /// Position of the creating write in the simulator's sequence of writes.
    pub created_seq: u64,
    /// Position of the last write that touched it.
    pub modified_seq: u64,
    /// How many writes touched it, creation included.
    pub writes: u32,
}

/// Request counters since start or the last [`crate::WaldurSim::reset_counters`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RequestCounts {
    /// Every request that reached the simulator, whatever its outcome.
    pub total: u64,
    /// `GET` requests.
    pub reads: u64,
    /// Calls of the three usage-writing endpoints, accepted or not (Waldur 7's 404s for the
    /// bulk endpoint it lacks included).
    pub writes: u64,
    /// Calls of `POST /api/marketplace-component-usages/set_usage/`.
    pub set_usage: u64,
    /// Calls of `POST /api/marketplace-component-usages/{uuid}/set_user_usages/` (in
    /// Waldur 7, which lacks it, each answered 404).
    pub set_user_usages: u64,
    /// Calls of `POST /api/marketplace-component-usages/{uuid}/set_user_usage/`.
    pub set_user_usage: u64,
    /// Counts per `"METHOD /api/route/template/"`, for example
    /// `"GET /api/marketplace-provider-resources/"` or
    /// `"POST /api/marketplace-component-usages/{uuid}/set_user_usages/"`. A path the
    /// simulator does not serve is counted under its literal path, except an endpoint the
    /// simulated version lacks (Waldur 7's `set_user_usages`), counted under its template.
    pub by_route: BTreeMap<String, u64>,
    /// Time spent serving the usage writes that were handled (added latency included):
    /// what "the time Waldur takes" for a write is, for the benchmarks' floor.
    pub write_time: std::time::Duration,
    /// How many writes `write_time` covers.
    pub timed_writes: u64,
}

impl RequestCounts {
    /// The count for one `"METHOD /api/route/"` key, zero when absent.
    pub fn route(&self, key: &str) -> u64 {
        self.by_route.get(key).copied().unwrap_or(0)
    }

    pub(crate) fn record(&mut self, method: &http::Method, key: String) {
        self.total += 1;
        if method == http::Method::GET {
            self.reads += 1;
        }
        if key.ends_with("/set_usage/") && method == http::Method::POST {
            self.set_usage += 1;
            self.writes += 1;
        } else if key.ends_with("/set_user_usages/") && method == http::Method::POST {
            self.set_user_usages += 1;
            self.writes += 1;
        } else if key.ends_with("/set_user_usage/") && method == http::Method::POST {
            self.set_user_usage += 1;
            self.writes += 1;
        }
        *self.by_route.entry(key).or_insert(0) += 1;
    }
}

/// The token introspection of an OIDC provider: the username an active token stands
/// for, `None` for an inactive or unknown one.
pub(crate) type Introspect = std::sync::Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

pub(crate) struct Account {
    pub(crate) uuid: String,
    pub(crate) username: String,
    pub(crate) is_staff: bool,
}

pub(crate) struct Offering {
    pub(crate) uuid: String,
    pub(crate) name: String,
    pub(crate) components: Vec<OfferingComponent>,
}

pub(crate) struct Resource {
    pub(crate) uuid: String,
    pub(crate) name: String,
    pub(crate) backend_id: String,
    pub(crate) offering_uuid: String,
    pub(crate) offering_backend_id: String,
    pub(crate) state: String,
}

pub(crate) struct OfferingUser {
    pub(crate) uuid: String,
    pub(crate) username: String,
    pub(crate) offering_uuid: String,
    pub(crate) state: String,
}

pub(crate) struct UsageRecord {
    pub(crate) uuid: String,
    pub(crate) resource_uuid: String,
    pub(crate) offering_uuid: String,
    /// Shared with the record's order keys.
    pub(crate) component_type: Arc<str>,
    pub(crate) cents: i128,
    pub(crate) billing_period: Date,
    pub(crate) date: Timestamp,
    pub(crate) description: String,
    pub(crate) created: Timestamp,
    pub(crate) created_seq: u64,
    pub(crate) modified_seq: u64,
    pub(crate) writes: u32,
    /// Rows of its per-user usages, in creation order.
    pub(crate) user_usages: Vec<usize>,
}

impl UsageRecord {
    /// Its place in the listing order; `row` is its own row, or that of a per-user usage
    /// under it, which lists by its parent's date and type.
    pub(crate) fn order_key(&self, row: usize) -> OrderKey {
        OrderKey::new(self.date, &self.component_type, row)
    }
}

pub(crate) struct UserUsageRecord {
    pub(crate) uuid: String,
    /// The row of its component usage.
    pub(crate) parent: usize,
    pub(crate) username: String,
    pub(crate) cents: i128,
    /// The linked offering user's UUID.
    pub(crate) user: Option<String>,
    pub(crate) created: Timestamp,
    pub(crate) modified: Timestamp,
    pub(crate) created_seq: u64,
    pub(crate) modified_seq: u64,
    pub(crate) writes: u32,
}

/// A configured write failure for one resource.
pub(crate) struct Rejection {
    pub(crate) status: StatusCode,
    pub(crate) body: Value,
}

/// The tables, in creation order (what [`crate::WaldurSim::usages`] and friends show and
/// what ties in listings fall back to), with the indexes that keep writes and listings
/// from scanning them. Rows are never removed, so a row number stays valid; the tables
/// are private so that every insert goes through the methods that index it.
#[derive(Default)]
pub(crate) struct State {
    pub(crate) tokens: HashMap<String, Account>,
    /// Set when the simulated Waldur logs agents in by OIDC ([`crate::WaldurSim::accept_oidc`]).
    pub(crate) introspect: Option<Introspect>,
    offerings: Vec<Offering>,
    offering_rows: HashMap<String, usize>,
    resources: Vec<Resource>,
    resource_rows: HashMap<String, usize>,
    resources_by_offering: HashMap<String, Vec<usize>>,
    offering_users: Vec<OfferingUser>,
    offering_user_rows: HashMap<String, usize>,
    offering_users_by_offering: HashMap<String, Vec<usize>>,
    usages: Vec<UsageRecord>,
    usage_rows: HashMap<String, usize>,
    /// The unique key of a component usage: (resource, component type, billing period).
    usage_keys: HashMap<(String, String, Date), usize>,
    usages_by_resource: HashMap<String, Vec<usize>>,
    usage_order: Ordered,
    user_usages: Vec<UserUsageRecord>,
    /// The unique key of a per-user usage: (component usage row, username).
    user_usage_keys: HashMap<(usize, String), usize>,
    user_usage_order: Ordered,
    /// The simulated local date; `None` follows the wall clock.
    pub(crate) today: Option<Date>,
    /// Source of generated UUIDs.
    pub(crate) uuid_counter: u64,
    /// Sequence number of the last write.
    pub(crate) write_seq: u64,
    pub(crate) counters: RequestCounts,
    pub(crate) rejections: HashMap<String, Rejection>,
    /// Requests still to fail, and with which status.
    pub(crate) fail_next: Option<(u32, StatusCode)>,
    /// Per route (`"POST /api/…/set_usage/"`): requests still to fail, and with which status.
    pub(crate) route_failures: HashMap<String, (u32, StatusCode)>,
}

impl State {
    /// "Now" in the simulation: noon local time of the set date, or the wall clock.
    pub(crate) fn now(&self, offset_secs: i64) -> Timestamp {
        match self.today {
            Some(date) => Timestamp::from_local(date, 12 * 3600, offset_secs),
            None => Timestamp::now(),
        }
    }

    /// The current billing period (first day of the current local month).
    pub(crate) fn current_period(&self, offset_secs: i64) -> Date {
        self.now(offset_secs).local_date(offset_secs).month_start()
    }

    pub(crate) fn new_uuid(&mut self) -> String {
        self.uuid_counter += 1;
        let n = self.uuid_counter;
        uuid_from_bits(splitmix64(n), splitmix64(n ^ 0x5741_4c44_5552_5349))
    }

    pub(crate) fn next_write_seq(&mut self) -> u64 {
        self.write_seq += 1;
        self.write_seq
    }

    /// Consumes one simulated failure, if any are pending.
    pub(crate) fn take_failure(&mut self) -> Option<StatusCode> {
        let (left, status) = self.fail_next?;
        self.fail_next = (left > 1).then(|| (left - 1, status));
        Some(status)
    }

    /// Consumes one simulated failure of `route`, if any are pending.
    pub(crate) fn take_route_failure(&mut self, route: &str) -> Option<StatusCode> {
        let (left, status) = self.route_failures.get(route).copied()?;
        if left > 1 {
            self.route_failures.insert(route.to_owned(), (left - 1, status));
        } else {
            self.route_failures.remove(route);
        }
        Some(status)
    }

    // -----------------------------------------------------------------------------------
    // Offerings, resources, offering users

    /// Adds an offering; the caller has checked that its UUID is new.
    pub(crate) fn add_offering(&mut self, offering: Offering) {
        self.offering_rows.insert(offering.uuid.clone(), self.offerings.len());
        self.offerings.push(offering);
    }

    pub(crate) fn offering(&self, uuid: &str) -> Option<&Offering> {
        self.offering_rows.get(uuid).map(|&row| &self.offerings[row])
    }

    pub(crate) fn offering_mut(&mut self, uuid: &str) -> Option<&mut Offering> {
        let row = *self.offering_rows.get(uuid)?;
        self.offerings.get_mut(row)
    }

    /// Adds a resource; the caller has checked that its UUID is new.
    pub(crate) fn add_resource(&mut self, resource: Resource) {
        let row = self.resources.len();
        self.resource_rows.insert(resource.uuid.clone(), row);
        self.resources_by_offering.entry(resource.offering_uuid.clone()).or_default().push(row);
        self.resources.push(resource);
    }

    pub(crate) fn resource(&self, uuid: &str) -> Option<&Resource> {
        self.resource_rows.get(uuid).map(|&row| &self.resources[row])
    }

    /// For changes of fields no index covers (its state).
    pub(crate) fn resource_mut(&mut self, uuid: &str) -> Option<&mut Resource> {
        let row = *self.resource_rows.get(uuid)?;
        self.resources.get_mut(row)
    }

    /// Resources in creation order, of any of `offerings` when given.
    pub(crate) fn resources_of(&self, offerings: Option<&[String]>) -> Vec<&Resource> {
        match offerings {
            None => self.resources.iter().collect(),
            Some(list) => {
                rows_of(&self.resources_by_offering, list).into_iter().map(|row| &self.resources[row]).collect()
            }
        }
    }

    pub(crate) fn add_offering_user(&mut self, user: OfferingUser) {
        let row = self.offering_users.len();
        self.offering_user_rows.insert(user.uuid.clone(), row);
        self.offering_users_by_offering.entry(user.offering_uuid.clone()).or_default().push(row);
        self.offering_users.push(user);
    }

    pub(crate) fn offering_user(&self, uuid: &str) -> Option<&OfferingUser> {
        self.offering_user_rows.get(uuid).map(|&row| &self.offering_users[row])
    }

    /// Offering users in creation order, of any of `offerings` when given.
    pub(crate) fn offering_users_of(&self, offerings: Option<&[String]>) -> Vec<&OfferingUser> {
        match offerings {
            None => self.offering_users.iter().collect(),
            Some(list) => rows_of(&self.offering_users_by_offering, list)
                .into_iter()
                .map(|row| &self.offering_users[row])
                .collect(),
        }
    }

    // -----------------------------------------------------------------------------------
    // Usages

    /// Deletes every component usage and per-user usage (what a staff user removing
    /// them through Django's admin leaves).
    pub(crate) fn delete_usages(&mut self) {
        self.usages.clear();
        self.usage_rows.clear();
        self.usage_keys.clear();
        self.usages_by_resource.clear();
        self.usage_order = Ordered::default();
        self.user_usages.clear();
        self.user_usage_keys.clear();
        self.user_usage_order = Ordered::default();
    }

    /// Every component usage, in creation order (row order).
    pub(crate) fn usages(&self) -> &[UsageRecord] {
        &self.usages
    }

    /// Every per-user usage, in creation order (row order).
    pub(crate) fn user_usages(&self) -> &[UserUsageRecord] {
        &self.user_usages
    }

    pub(crate) fn usage_row(&self, uuid: &str) -> Option<usize> {
        self.usage_rows.get(uuid).copied()
    }

    pub(crate) fn usage(&self, uuid: &str) -> Option<&UsageRecord> {
        self.usage_row(uuid).map(|row| &self.usages[row])
    }

    /// The rows of a resource's component usages, in creation order.
    pub(crate) fn usage_rows_of_resource(&self, resource_uuid: &str) -> &[usize] {
        self.usages_by_resource.get(resource_uuid).map_or(&[], Vec::as_slice)
    }

    /// Rows of component usages in listing order, of an offering and/or billing period.
    pub(crate) fn usages_in_order(
        &mut self,
        offering: Option<&str>,
        period: Option<Date>,
        component_type: Option<&str>,
    ) -> Arc<[usize]> {
        self.usage_order.snapshot(offering, period, component_type)
    }

    /// Rows of per-user usages in listing order, of an offering, billing period and/or
    /// (their component usage's) component type.
    pub(crate) fn user_usages_in_order(
        &mut self,
        offering: Option<&str>,
        period: Option<Date>,
        component_type: Option<&str>,
    ) -> Arc<[usize]> {
        self.user_usage_order.snapshot(offering, period, component_type)
    }

    /// Creates or updates the usage of (resource, type, period); returns its row.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn upsert_usage(
        &mut self,
        resource_uuid: &str,
        offering_uuid: &str,
        component_type: &str,
        billing_period: Date,
        cents: i128,
        date: Timestamp,
        description: &str,
        now: Timestamp,
    ) -> usize {
        let seq = self.next_write_seq();
        let key = (resource_uuid.to_owned(), component_type.to_owned(), billing_period);
        if let Some(&row) = self.usage_keys.get(&key) {
            self.move_usage(row, date);
            let existing = &mut self.usages[row];
            existing.cents = cents;
            existing.description = description.to_owned();
            existing.modified_seq = seq;
            existing.writes += 1;
            return row;
        }
        let row = self.usages.len();
        let uuid = self.new_uuid();
        let record = UsageRecord {
            uuid: uuid.clone(),
            resource_uuid: resource_uuid.to_owned(),
            offering_uuid: offering_uuid.to_owned(),
            component_type: Arc::from(component_type),
            cents,
            billing_period,
            date,
            description: description.to_owned(),
            created: now,
            created_seq: seq,
            modified_seq: seq,
            writes: 1,
            user_usages: Vec::new(),
        };
        self.usage_order.insert(offering_uuid, billing_period, record.order_key(row));
        self.usage_rows.insert(uuid, row);
        self.usage_keys.insert(key, row);
        self.usages_by_resource.entry(resource_uuid.to_owned()).or_default().push(row);
        self.usages.push(record);
        row
    }

    /// Sets a component usage's `date`, moving it and its per-user usages in the order.
    fn move_usage(&mut self, row: usize, date: Timestamp) {
        let usage = &self.usages[row];
        if usage.date == date {
            return;
        }
        let (offering, period) = (usage.offering_uuid.clone(), usage.billing_period);
        self.usage_order.remove(&offering, period, &usage.order_key(row));
        for &child in &usage.user_usages {
            self.user_usage_order.remove(&offering, period, &usage.order_key(child));
        }
        let usage = &mut self.usages[row];
        usage.date = date;
        self.usage_order.insert(&offering, period, usage.order_key(row));
        for &child in &usage.user_usages {
            self.user_usage_order.insert(&offering, period, usage.order_key(child));
        }
    }

    /// The row of the usage of the template's (resource, type) in `billing_period`,
    /// created with amount zero if missing, as Waldur does when a per-user usage is dated
    /// into another billing period.
    pub(crate) fn usage_for_period(
        &mut self,
        template: usize,
        billing_period: Date,
        date: Timestamp,
        now: Timestamp,
    ) -> usize {
        let template_usage = &self.usages[template];
        if template_usage.billing_period == billing_period {
            return template;
        }
        let (resource, offering, ctype) = (
            template_usage.resource_uuid.clone(),
            template_usage.offering_uuid.clone(),
            template_usage.component_type.to_string(),
        );
        if let Some(&row) = self.usage_keys.get(&(resource.clone(), ctype.clone(), billing_period)) {
            return row;
        }
        self.upsert_usage(&resource, &offering, &ctype, billing_period, 0, date, "", now)
    }

    /// The row of the per-user usage of (component usage row, username), if any.
    pub(crate) fn user_usage_row(&self, parent: usize, username: &str) -> Option<usize> {
        self.user_usage_keys.get(&(parent, username.to_owned())).copied()
    }

    /// Creates or updates the per-user usage of (component usage row, username). The
    /// offering user link is replaced only when one is sent.
    pub(crate) fn upsert_user_usage(
        &mut self,
        parent: usize,
        username: &str,
        cents: i128,
        user: Option<String>,
        now: Timestamp,
    ) {
        let seq = self.next_write_seq();
        let key = (parent, username.to_owned());
        if let Some(&row) = self.user_usage_keys.get(&key) {
            let existing = &mut self.user_usages[row];
            existing.cents = cents;
            if user.is_some() {
                existing.user = user;
            }
            existing.modified = now;
            existing.modified_seq = seq;
            existing.writes += 1;
            return;
        }
        let row = self.user_usages.len();
        let uuid = self.new_uuid();
        let usage = &mut self.usages[parent];
        usage.user_usages.push(row);
        self.user_usage_order.insert(&usage.offering_uuid, usage.billing_period, usage.order_key(row));
        self.user_usage_keys.insert(key, row);
        self.user_usages.push(UserUsageRecord {
            uuid,
            parent,
            username: username.to_owned(),
            cents,
            user,
            created: now,
            modified: now,
            created_seq: seq,
            modified_seq: seq,
            writes: 1,
        });
    }

    pub(crate) fn stored_usage(&self, rec: &UsageRecord, offset_secs: i64) -> StoredUsage {
        StoredUsage {
            uuid: rec.uuid.clone(),
            resource_uuid: rec.resource_uuid.clone(),
            offering_uuid: rec.offering_uuid.clone(),
            component_type: rec.component_type.to_string(),
            amount: format_cents(rec.cents),
            billing_period: rec.billing_period.to_string(),
            date: rec.date.format(offset_secs),
            description: rec.description.clone(),
            created_seq: rec.created_seq,
            modified_seq: rec.modified_seq,
            writes: rec.writes,
        }
    }

    /// `origin` is `http://host:port`, for the offering user URL.
    pub(crate) fn stored_user_usage(&self, rec: &UserUsageRecord, origin: &str) -> StoredUserUsage {
        let parent = &self.usages[rec.parent];
        StoredUserUsage {
            uuid: rec.uuid.clone(),
            component_usage_uuid: parent.uuid.clone(),
            resource_uuid: parent.resource_uuid.clone(),
            component_type: parent.component_type.to_string(),
            username: rec.username.clone(),
            usage: format_cents(rec.cents),
            user: rec.user.as_ref().map(|u| format!("{origin}/api/marketplace-offering-users/{u}/")),
            billing_period: parent.billing_period.to_string(),
            created_seq: rec.created_seq,
            modified_seq: rec.modified_seq,
            writes: rec.writes,
        }
    }
}

/// The rows filed under any of `keys`, in row (creation) order, each once.
fn rows_of(index: &HashMap<String, Vec<usize>>, keys: &[String]) -> Vec<usize> {
    let mut rows: Vec<usize> = keys
        .iter()
        .enumerate()
        // A key given twice selects its rows once.
        .filter(|(i, k)| !keys[..*i].contains(k))
        .filter_map(|(_, k)| index.get(k))
        .flatten()
        .copied()
        .collect();
    rows.sort_unstable();
    rows
}

/// Normalises a UUID the way Django's `UUIDField` reads one (`uuid.UUID(hex=...)`): an
/// optional `urn:uuid:` prefix, braces and dashes are dropped and 32 hex digits must
/// remain. Returns the 32 lower-case hex digits Waldur renders.
pub(crate) fn normalize_uuid(text: &str) -> Option<String> {
    let hex = text.replace("urn:", "").replace("uuid:", "");
    let hex = hex.trim_matches(|c| c == '{' || c == '}').replace('-', "");
    (hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit())).then(|| hex.to_ascii_lowercase())
}

/// A version-4-shaped UUID rendered as 32 hex digits.
pub(crate) fn uuid_from_bits(high: u64, low: u64) -> String {
    let high = (high & !0xf000) | 0x4000;
    let low = (low & !(0b11 << 62)) | (0b10 << 62);
    format!("{high:016x}{low:016x}")
}

fn splitmix64(seed: u64) -> u64 {
    let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// FNV-1a over `bytes`, from `basis`.
pub(crate) fn fnv1a(bytes: &[u8], basis: u64) -> u64 {
    bytes.iter().fold(basis, |hash, &b| (hash ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_normalise_like_django() {
        let hex = "0123456789abcdef0123456789abcdef";
        assert_eq!(normalize_uuid(hex).as_deref(), Some(hex));
        assert_eq!(normalize_uuid("{01234567-89AB-CDEF-0123-456789ABCDEF}").as_deref(), Some(hex));
        assert_eq!(normalize_uuid("urn:uuid:01234567-89ab-cdef-0123-456789abcdef").as_deref(), Some(hex));
        assert!(normalize_uuid("res-1").is_none());
        assert!(normalize_uuid("0123456789abcdef0123456789abcdeg").is_none());
    }

    #[test]
    fn generated_uuids_are_distinct_and_well_formed() {
        let mut state = State::default();
        let a = state.new_uuid();
        let b = state.new_uuid();
        assert_ne!(a, b);
        assert_eq!(normalize_uuid(&a).as_deref(), Some(a.as_str()));
        assert_eq!(&a[12..13], "4");
    }

    #[test]
    fn failures_are_consumed() {
        let mut state = State { fail_next: Some((2, StatusCode::BAD_GATEWAY)), ..State::default() };
        assert_eq!(state.take_failure(), Some(StatusCode::BAD_GATEWAY));
        assert_eq!(state.take_failure(), Some(StatusCode::BAD_GATEWAY));
        assert_eq!(state.take_failure(), None);
    }
}
