//! What the simulated Waldur knows, and the records tests inspect.
//!
//! Everything lives behind one mutex in [`crate::Shared`]; a request handler takes it once,
//! validates and writes under it, and never awaits while holding it, so every write is
//! atomic the way a Django transaction would make it.

use std::collections::{BTreeMap, HashMap};

use http::StatusCode;
use serde_json::Value;

use crate::decimal::format_cents;
use crate::time::{Date, Timestamp};

/// Resource states as Waldur's API spells them (`Resource.States` representations).
pub(crate) const RESOURCE_STATES: &[&str] = &[
    "Creating",
    "OK",
    "Erred",
    "Updating",
    "Terminating",
    "Terminated",
];

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
    /// Calls of the three usage-writing endpoints, accepted or not.
    pub writes: u64,
    /// Calls of `POST /api/marketplace-component-usages/set_usage/`.
    pub set_usage: u64,
    /// Calls of `POST /api/marketplace-component-usages/{uuid}/set_user_usages/`.
    pub set_user_usages: u64,
    /// Calls of `POST /api/marketplace-component-usages/{uuid}/set_user_usage/`.
    pub set_user_usage: u64,
    /// Counts per `"METHOD /api/route/template/"`, for example
    /// `"GET /api/marketplace-provider-resources/"` or
    /// `"POST /api/marketplace-component-usages/{uuid}/set_user_usages/"`. A path the
    /// simulator does not serve is counted under its literal path.
    pub by_route: BTreeMap<String, u64>,
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
    pub(crate) component_type: String,
    pub(crate) cents: i128,
    pub(crate) billing_period: Date,
    pub(crate) date: Timestamp,
    pub(crate) description: String,
    pub(crate) created: Timestamp,
    pub(crate) created_seq: u64,
    pub(crate) modified_seq: u64,
    pub(crate) writes: u32,
}

pub(crate) struct UserUsageRecord {
    pub(crate) uuid: String,
    pub(crate) component_usage_uuid: String,
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

#[derive(Default)]
pub(crate) struct State {
    pub(crate) tokens: HashMap<String, Account>,
    pub(crate) offerings: Vec<Offering>,
    pub(crate) resources: Vec<Resource>,
    pub(crate) offering_users: Vec<OfferingUser>,
    pub(crate) usages: Vec<UsageRecord>,
    pub(crate) user_usages: Vec<UserUsageRecord>,
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

    pub(crate) fn offering(&self, uuid: &str) -> Option<&Offering> {
        self.offerings.iter().find(|o| o.uuid == uuid)
    }

    pub(crate) fn resource(&self, uuid: &str) -> Option<&Resource> {
        self.resources.iter().find(|r| r.uuid == uuid)
    }

    pub(crate) fn usage(&self, uuid: &str) -> Option<&UsageRecord> {
        self.usages.iter().find(|u| u.uuid == uuid)
    }

    /// Creates or updates the usage of (resource, type, period); returns its UUID.
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
    ) -> String {
        let seq = self.next_write_seq();
        if let Some(existing) = self.usages.iter_mut().find(|u| {
            u.resource_uuid == resource_uuid
                && u.component_type == component_type
                && u.billing_period == billing_period
        }) {
            existing.cents = cents;
            existing.date = date;
            existing.description = description.to_owned();
            existing.modified_seq = seq;
            existing.writes += 1;
            return existing.uuid.clone();
        }
        let uuid = self.new_uuid();
        self.usages.push(UsageRecord {
            uuid: uuid.clone(),
            resource_uuid: resource_uuid.to_owned(),
            offering_uuid: offering_uuid.to_owned(),
            component_type: component_type.to_owned(),
            cents,
            billing_period,
            date,
            description: description.to_owned(),
            created: now,
            created_seq: seq,
            modified_seq: seq,
            writes: 1,
        });
        uuid
    }

    /// The usage of (resource, type, period), created with amount zero if missing, as
    /// Waldur does when a per-user usage is dated into another billing period.
    pub(crate) fn usage_for_period(
        &mut self,
        template_uuid: &str,
        billing_period: Date,
        date: Timestamp,
        now: Timestamp,
    ) -> Option<String> {
        let template = self.usage(template_uuid)?;
        if template.billing_period == billing_period {
            return Some(template.uuid.clone());
        }
        let (resource, offering, ctype) = (
            template.resource_uuid.clone(),
            template.offering_uuid.clone(),
            template.component_type.clone(),
        );
        if let Some(found) = self.usages.iter().find(|u| {
            u.resource_uuid == resource
                && u.component_type == ctype
                && u.billing_period == billing_period
        }) {
            return Some(found.uuid.clone());
        }
        Some(self.upsert_usage(
            &resource,
            &offering,
            &ctype,
            billing_period,
            0,
            date,
            "",
            now,
        ))
    }

    /// Creates or updates the per-user usage of (component usage, username). The offering
    /// user link is replaced only when one is sent.
    pub(crate) fn upsert_user_usage(
        &mut self,
        component_usage_uuid: &str,
        username: &str,
        cents: i128,
        user: Option<String>,
        now: Timestamp,
    ) {
        let seq = self.next_write_seq();
        if let Some(existing) = self
            .user_usages
            .iter_mut()
            .find(|u| u.component_usage_uuid == component_usage_uuid && u.username == username)
        {
            existing.cents = cents;
            if user.is_some() {
                existing.user = user;
            }
            existing.modified = now;
            existing.modified_seq = seq;
            existing.writes += 1;
            return;
        }
        let uuid = self.new_uuid();
        self.user_usages.push(UserUsageRecord {
            uuid,
            component_usage_uuid: component_usage_uuid.to_owned(),
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
            component_type: rec.component_type.clone(),
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
        let parent = self.usage(&rec.component_usage_uuid);
        StoredUserUsage {
            uuid: rec.uuid.clone(),
            component_usage_uuid: rec.component_usage_uuid.clone(),
            resource_uuid: parent.map(|p| p.resource_uuid.clone()).unwrap_or_default(),
            component_type: parent.map(|p| p.component_type.clone()).unwrap_or_default(),
            username: rec.username.clone(),
            usage: format_cents(rec.cents),
            user: rec
                .user
                .as_ref()
                .map(|u| format!("{origin}/api/marketplace-offering-users/{u}/")),
            billing_period: parent
                .map(|p| p.billing_period.to_string())
                .unwrap_or_default(),
            created_seq: rec.created_seq,
            modified_seq: rec.modified_seq,
            writes: rec.writes,
        }
    }
}

/// Normalises a UUID the way Django's `UUIDField` reads one (`uuid.UUID(hex=...)`): an
/// optional `urn:uuid:` prefix, braces and dashes are dropped and 32 hex digits must
/// remain. Returns the 32 lower-case hex digits Waldur renders.
pub(crate) fn normalize_uuid(text: &str) -> Option<String> {
    let hex = text.replace("urn:", "").replace("uuid:", "");
    let hex = hex.trim_matches(|c| c == '{' || c == '}').replace('-', "");
    (hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| hex.to_ascii_lowercase())
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
    bytes.iter().fold(basis, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_normalise_like_django() {
        let hex = "0123456789abcdef0123456789abcdef";
        assert_eq!(normalize_uuid(hex).as_deref(), Some(hex));
        assert_eq!(
            normalize_uuid("{01234567-89AB-CDEF-0123-456789ABCDEF}").as_deref(),
            Some(hex)
        );
        assert_eq!(
            normalize_uuid("urn:uuid:01234567-89ab-cdef-0123-456789abcdef").as_deref(),
            Some(hex)
        );
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
        let mut state = State {
            fail_next: Some((2, StatusCode::BAD_GATEWAY)),
            ..State::default()
        };
        assert_eq!(state.take_failure(), Some(StatusCode::BAD_GATEWAY));
        assert_eq!(state.take_failure(), Some(StatusCode::BAD_GATEWAY));
        assert_eq!(state.take_failure(), None);
    }
}
