//! Plain Rust mirrors of the records of `wit/usage-backend.wit`.
//!
//! The components convert the generated WIT types to and from these one field at a
//! time, so that everything else in this crate is ordinary Rust that builds and is
//! tested natively. Field docs are in the WIT file; only what differs is noted here.

use std::fmt;

/// An operation a backend may implement (WIT `operation`); what `describe` lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Operation {
    Ping,
    UsageReport,
    DailyReport,
    Manage,
}

impl Operation {
    /// The WIT spelling, for messages.
    pub const fn name(self) -> &'static str {
        match self {
            Operation::Ping => "ping",
            Operation::UsageReport => "usage-report",
            Operation::DailyReport => "daily-report",
            Operation::Manage => "manage",
        }
    }
}

/// One entry of an offering's `backend_components` map (WIT `component`).
#[derive(Clone, Debug, PartialEq)]
pub struct Component {
    pub name: String,
    pub measured_unit: String,
    pub unit_factor: f64,
    pub reporting_factor: Option<f64>,
    pub accounting_type: String,
    pub label: String,
    /// The component's options (WIT `component-option`), in config order.
    pub options: Vec<(String, String)>,
}

impl Component {
    /// A component with only a name and a unit factor; the other fields do not
    /// influence a report. Handy for tests, benches and examples.
    pub fn named(name: &str, unit_factor: f64) -> Self {
        Component {
            name: name.to_owned(),
            measured_unit: String::new(),
            unit_factor,
            reporting_factor: None,
            accounting_type: "usage".to_owned(),
            label: name.to_owned(),
            options: Vec::new(),
        }
    }

    /// The value of option `key`, if set.
    pub fn option(&self, key: &str) -> Option<&str> {
        self.options.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

#[cfg(test)]
impl Component {
    /// Sets option `key` to `value`, replacing an earlier value.
    pub(crate) fn set_option(&mut self, key: &str, value: &str) {
        self.options.retain(|(k, _)| k != key);
        self.options.push((key.to_owned(), value.to_owned()));
    }
}

/// Everything a backend is configured with, for one offering (WIT `config`).
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// The offering's `backend_settings` as a JSON object, secrets removed.
    pub settings_json: String,
    /// The offering's `backend_components`, in config order.
    pub components: Vec<Component>,
}

/// A Waldur resource whose usage is asked for (WIT `resource`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resource {
    pub backend_id: String,
    pub cluster: Option<String>,
}

impl Resource {
    /// A resource without a cluster.
    pub fn new(backend_id: &str) -> Self {
        Resource { backend_id: backend_id.to_owned(), cluster: None }
    }

    /// A resource as Waldur has it: its `offering_backend_id`, when given, is the
    /// cluster, which DWDI knows in lower case.
    pub fn from_waldur(backend_id: String, offering_backend_id: Option<String>) -> Self {
        Resource { backend_id, cluster: offering_backend_id.map(|id| id.to_ascii_lowercase()) }
    }
}

/// A billing month (WIT `billing-period`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BillingPeriod {
    pub year: u16,
    /// 1–12.
    pub month: u8,
}

/// A calendar day (WIT `date`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Date {
    pub year: u16,
    /// 1–12.
    pub month: u8,
    /// 1–31.
    pub day: u8,
}

/// An amount of one component in Waldur's units, factor applied, not rounded.
#[derive(Clone, Debug, PartialEq)]
pub struct Amount {
    pub component: String,
    pub value: f64,
}

/// Usage of one user of a resource, summed over every upstream row of that user.
#[derive(Clone, Debug, PartialEq)]
pub struct UserUsage {
    pub username: String,
    pub amounts: Vec<Amount>,
}

/// Usage of one requested resource (WIT `resource-usage`).
#[derive(Clone, Debug, PartialEq)]
pub struct ResourceUsage {
    /// The `backend_id` exactly as requested.
    pub backend_id: String,
    /// False when a successful answer had no row for this resource.
    pub found: bool,
    /// One amount per configured component, in config order.
    pub totals: Vec<Amount>,
    /// Sorted by username.
    pub users: Vec<UserUsage>,
}

/// The answer to a usage request (WIT `usage-report`).
#[derive(Clone, Debug, PartialEq)]
pub struct UsageReport {
    /// One entry per requested resource, in request order.
    pub resources: Vec<ResourceUsage>,
    /// How many upstream HTTP requests were made.
    pub upstream_requests: u32,
}

/// Why a call failed (WIT `backend-error`). Every message is meant for an operator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BackendError {
    /// A setting or component is missing or wrong; the message names the key.
    InvalidConfig(String),
    /// The call's own arguments cannot be served (a day that is not a date, a range
    /// that ends before it begins, a resource id too long to ask about).
    InvalidRequest(String),
    /// Upstream answered 401 or 403.
    Unauthorized(String),
    /// Upstream answered with another non-success status.
    UpstreamStatus {
        /// The request URL without its query string.
        endpoint: String,
        status: u16,
        /// The start of the answer body.
        message: String,
    },
    /// Upstream answered 2xx with a body that cannot be understood; names the JSON path.
    BadResponse(String),
    /// The request never got an answer.
    Transport(String),
    /// The backend does not implement this operation.
    Unsupported(String),
}

impl fmt::Display for BackendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BackendError::InvalidConfig(m) => write!(f, "invalid config: {m}"),
            BackendError::InvalidRequest(m) => write!(f, "invalid request: {m}"),
            BackendError::Unauthorized(m) => write!(f, "unauthorized: {m}"),
            BackendError::UpstreamStatus { endpoint, status, message } => {
                write!(f, "{endpoint} answered HTTP {status}: {message}")
            }
            BackendError::BadResponse(m) => write!(f, "bad response: {m}"),
            BackendError::Transport(m) => write!(f, "transport: {m}"),
            BackendError::Unsupported(m) => write!(f, "unsupported: {m}"),
        }
    }
}

impl std::error::Error for BackendError {}

/// What came back for one planned request: the status and the (possibly cut) body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpAnswer {
    pub status: u16,
    pub body: Vec<u8>,
}

/// Shorthand used all over the crate for configuration errors.
pub(crate) fn invalid(message: impl Into<String>) -> BackendError {
    BackendError::InvalidConfig(message.into())
}

/// Shorthand for errors in a call's own arguments.
pub(crate) fn invalid_request(message: impl Into<String>) -> BackendError {
    BackendError::InvalidRequest(message.into())
}

/// Shorthand for answer-format errors.
pub(crate) fn bad(message: impl Into<String>) -> BackendError {
    BackendError::BadResponse(message.into())
}
