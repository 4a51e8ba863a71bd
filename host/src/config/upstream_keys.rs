//! The keys of waldur-site-agent 1.0.7's config that this agent does not read, and what
//! each is for there: another of its modes, or a feature not done here. They reach the
//! config as keys no field takes ([`super::lint`]); instead of "not a key this agent
//! reads", the warning says what the key does in the Python agent and that it does
//! nothing here, one line per place and reason. (Keys this agent honours are fields of
//! the config structs, as every known key is; `docs/migration.md` lists them all.)

use super::lint::{KeyPath, Step};

/// Where a key sits in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scope {
    Top,
    Offering,
    /// An entry of an offering's `backend_components`.
    Component,
}

/// Why a key of waldur-site-agent does nothing here.
struct Unread {
    scope: Scope,
    keys: &'static [&'static str],
    why: &'static str,
}

const UNREAD: &[Unread] = &[
    Unread {
        scope: Scope::Top,
        keys: &["sentry_dsn"],
        why: "waldur-site-agent sends its errors to this Sentry; not done here: errors are log lines (--log-format json for a collector) and usage_agent_* metrics (metrics_listen)",
    },
    Unread {
        scope: Scope::Top,
        keys: &["elastic_apm_server_url"],
        why: "waldur-site-agent traces itself into this Elastic APM server; not done here (no maintained Rust agent for it): metrics_listen serves Prometheus metrics instead",
    },
    Unread {
        scope: Scope::Top,
        keys: &["log_shipping"],
        why: "waldur-site-agent ships its log lines to Waldur (marketplace-site-agent-logs, MasterMind 8.0.9 on); not done here: the logs go to stderr and journald",
    },
    Unread {
        scope: Scope::Top,
        keys: &["expose_backend_error_details"],
        why: "waldur-site-agent writes error details into Waldur when its order and membership modes mark an order or resource erred; this agent marks nothing erred",
    },
    Unread {
        scope: Scope::Offering,
        keys: &[
            "stomp_enabled",
            "stomp_membership_sync_enabled",
            "stomp_ws_host",
            "stomp_ws_port",
            "stomp_ws_path",
            "websocket_use_tls",
        ],
        why: "waldur-site-agent's event processing (STOMP over a websocket), a mode this agent does not have",
    },
    Unread {
        scope: Scope::Offering,
        keys: &["order_processing_backend", "resource_import_enabled"],
        why: "waldur-site-agent's order processing mode; this agent only reports usage",
    },
    Unread {
        scope: Scope::Offering,
        keys: &["membership_sync_backend", "username_management_backend", "username_reconciliation_enabled"],
        why: "waldur-site-agent's membership sync mode; this agent only reports usage",
    },
    Unread {
        scope: Scope::Component,
        keys: &[
            "limit",
            "description",
            "min_value",
            "max_value",
            "max_available_limit",
            "default_limit",
            "limit_period",
            "article_code",
            "is_boolean",
            "is_prepaid",
            "min_prepaid_duration",
            "max_prepaid_duration",
            "prepaid_duration_step",
            "min_renewal_duration",
            "max_renewal_duration",
            "renewal_duration_step",
        ],
        why: "waldur-site-agent's description of the offering component in Waldur (its load-components command creates it; limits are for its order modes); this agent reports usage into components Waldur already has",
    },
];

/// The place and key of `path` when it is a key of waldur-site-agent this agent does
/// not read: (the path of its parent, the entry that says why).
fn classify(path: &KeyPath) -> Option<(String, &'static Unread)> {
    let key = path.key()?;
    let scope = match path.0.as_slice() {
        [_] => Scope::Top,
        [Step::Key(list), Step::Index(_), _] if list == "offerings" => Scope::Offering,
        [Step::Key(list), Step::Index(_), Step::Key(components), Step::Key(_), _]
            if list == "offerings" && components == "backend_components" =>
        {
            Scope::Component
        }
        _ => return None,
    };
    let unread = UNREAD.iter().find(|u| u.scope == scope && u.keys.contains(&key))?;
    let parent = KeyPath(path.0[..path.0.len() - 1].to_vec()).to_string();
    Some((parent, unread))
}

/// Splits the keys no field took into warnings for waldur-site-agent's keys (one line
/// per place and reason, the keys in file order) and the keys that are unknown to both
/// agents.
pub(super) fn name_unread(ignored: &[KeyPath]) -> (Vec<String>, Vec<&KeyPath>) {
    let mut groups: Vec<(String, &'static Unread, Vec<&str>)> = Vec::new();
    let mut unknown = Vec::new();
    for path in ignored {
        match (classify(path), path.key()) {
            (Some((parent, unread)), Some(key)) => {
                match groups.iter_mut().find(|(p, u, _)| *p == parent && std::ptr::eq(*u, unread)) {
                    Some((_, _, keys)) => keys.push(key),
                    None => groups.push((parent, unread, vec![key])),
                }
            }
            _ => unknown.push(path),
        }
    }
    let warnings = groups
        .into_iter()
        .map(|(parent, unread, keys)| {
            let at = if parent.is_empty() { String::new() } else { format!("{parent}.") };
            let keys: Vec<String> = keys.iter().map(|key| format!("{at}{key}")).collect();
            format!("{}: {}; ignored", keys.join(", "), unread.why)
        })
        .collect();
    (warnings, unknown)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(steps: &[&str]) -> KeyPath {
        KeyPath(
            steps
                .iter()
                .map(|s| match s.parse::<usize>() {
                    Ok(index) => Step::Index(index),
                    Err(_) => Step::Key((*s).to_owned()),
                })
                .collect(),
        )
    }

    #[test]
    fn keys_of_other_modes_are_named_per_place_and_the_rest_stays_unknown() {
        let ignored = [
            path(&["sentry_dsn"]),
            path(&["offerings", "0", "stomp_enabled"]),
            path(&["offerings", "0", "order_processing_backend"]),
            path(&["offerings", "0", "websocket_use_tls"]),
            path(&["offerings", "1", "stomp_enabled"]),
            path(&["offerings", "0", "backend_components", "cpu", "limit"]),
            path(&["offerings", "0", "backend_components", "cpu", "article_code"]),
            path(&["offerings", "0", "limit"]),
            path(&["reporting_period"]),
        ];
        let (warnings, unknown) = name_unread(&ignored);
        assert_eq!(warnings.len(), 5, "{warnings:#?}");
        assert!(
            warnings[0].starts_with("sentry_dsn: waldur-site-agent sends its errors to this Sentry; not done here")
        );
        assert_eq!(
            warnings[1],
            "offerings[0].stomp_enabled, offerings[0].websocket_use_tls: waldur-site-agent's event processing (STOMP over a websocket), a mode this agent does not have; ignored"
        );
        assert!(
            warnings[2].starts_with("offerings[0].order_processing_backend: waldur-site-agent's order processing mode")
        );
        assert!(warnings[3].starts_with("offerings[1].stomp_enabled: "));
        assert!(warnings[4].starts_with(
            "offerings[0].backend_components.cpu.limit, offerings[0].backend_components.cpu.article_code: waldur-site-agent's description of the offering component"
        ));
        // A component key at the offering's level, and a misspelling, are unknown.
        let unknown: Vec<String> = unknown.iter().map(ToString::to_string).collect();
        assert_eq!(unknown, ["offerings[0].limit", "reporting_period"]);
    }
}
