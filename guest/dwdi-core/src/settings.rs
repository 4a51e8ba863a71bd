//! The offering's `backend_settings`, parsed and checked once.
//!
//! The host hands them over as a JSON object with secrets and host-only keys (OIDC,
//! proxy) already removed. Keys this backend does not know are ignored, so one
//! settings block can serve a combined compute, storage and inference configuration.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::metric::Backend;
use crate::model::{BackendError, invalid};
use crate::url::strip_scheme;

/// The `backend_settings` keys the DWDI backends read, compute, storage and inference
/// together (one settings block may serve all three). The host names any other key of
/// a DWDI offering's settings that it does not read itself in a warning.
pub const SETTING_KEYS: &[&str] =
    &[API_URL, CLUSTER, STORAGE_FILESYSTEM, STORAGE_DATA_TYPE, STORAGE_TENANT, STORAGE_PATH_MAPPING];

const API_URL: &str = "cscs_dwdi_api_url";
const CLUSTER: &str = "cscs_dwdi_cluster";
const STORAGE_FILESYSTEM: &str = "storage_filesystem";
const STORAGE_DATA_TYPE: &str = "storage_data_type";
const STORAGE_TENANT: &str = "storage_tenant";
const STORAGE_PATH_MAPPING: &str = "storage_path_mapping";

/// Settings every backend needs, plus its own.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    /// `cscs_dwdi_api_url` without trailing slashes; includes any `/api/v1` prefix.
    pub api_url: String,
    pub backend: BackendSettings,
}

/// The backend-specific part of [`Settings`].
#[derive(Clone, Debug, PartialEq)]
pub enum BackendSettings {
    Compute {
        /// `cscs_dwdi_cluster`, lower-cased: the cluster filter when a resource has none.
        cluster: Option<String>,
    },
    Storage(StorageSettings),
    /// Inference needs nothing beyond the API URL: it asks by resource id alone.
    Inference,
}

/// Settings of the storage backend.
#[derive(Clone, Debug, PartialEq)]
pub struct StorageSettings {
    /// `storage_filesystem`.
    pub filesystem: String,
    /// `storage_data_type`.
    pub data_type: String,
    /// `storage_tenant`.
    pub tenant: Option<String>,
    /// `storage_path_mapping`: resource `backend_id` → path.
    pub path_mapping: BTreeMap<String, String>,
}

impl StorageSettings {
    /// The DWDI path a resource is reported under.
    pub fn path_of<'a>(&'a self, backend_id: &'a str) -> &'a str {
        self.path_mapping.get(backend_id).map_or(backend_id, String::as_str)
    }
}

impl Settings {
    /// Parses `settings_json` for `backend`; every error names the offending key.
    pub fn parse(backend: Backend, settings_json: &str) -> Result<Settings, BackendError> {
        let value: Value = serde_json::from_str(settings_json)
            .map_err(|e| invalid(format!("backend_settings: not valid JSON: {e}")))?;
        let Value::Object(map) = value else {
            return Err(invalid(format!("backend_settings: expected an object, found {}", kind(&value))));
        };
        let api_url = api_url(required_string(&map, API_URL)?)?;
        let backend = match backend {
            Backend::Compute => BackendSettings::Compute {
                cluster: optional_string(&map, CLUSTER)?.filter(|c| !c.is_empty()).map(|c| c.to_lowercase()),
            },
            Backend::Storage => BackendSettings::Storage(StorageSettings {
                filesystem: required_string(&map, STORAGE_FILESYSTEM)?.to_owned(),
                data_type: required_string(&map, STORAGE_DATA_TYPE)?.to_owned(),
                tenant: optional_string(&map, STORAGE_TENANT)?.filter(|t| !t.is_empty()).map(str::to_owned),
                path_mapping: path_mapping(&map)?,
            }),
            Backend::Inference => BackendSettings::Inference,
        };
        Ok(Settings { api_url, backend })
    }
}

/// The JSON type name used in messages.
pub(crate) fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A present, non-null, non-empty string.
fn required_string<'a>(map: &'a Map<String, Value>, key: &str) -> Result<&'a str, BackendError> {
    match optional_string(map, key)? {
        None => Err(invalid(format!("backend_settings.{key}: missing"))),
        Some("") => Err(invalid(format!("backend_settings.{key}: empty"))),
        Some(s) => Ok(s),
    }
}

/// Absent and `null` are the same: YAML `key:` with no value reads as null.
fn optional_string<'a>(map: &'a Map<String, Value>, key: &str) -> Result<Option<&'a str>, BackendError> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(invalid(format!("backend_settings.{key}: expected a string, found {}", kind(other)))),
    }
}

fn api_url(raw: &str) -> Result<String, BackendError> {
    let key = "backend_settings.cscs_dwdi_api_url";
    let url = raw.trim_end_matches('/');
    let Some(rest) = strip_scheme(url, "https://").or_else(|| strip_scheme(url, "http://")) else {
        return Err(invalid(format!("{key}: must start with http:// or https://, found \"{raw}\"")));
    };
    // The URL is pasted verbatim into request lines, so it must already be a plain,
    // encoded URL; a query or fragment would swallow the paths appended to it.
    if let Some(c) = url.chars().find(|c| !c.is_ascii_graphic()) {
        return Err(invalid(format!("{key}: contains {c:?}; write it percent-encoded")));
    }
    if url.contains(['?', '#']) {
        return Err(invalid(format!("{key}: must not have a query or fragment, found \"{raw}\"")));
    }
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.is_empty() {
        return Err(invalid(format!("{key}: has no host, found \"{raw}\"")));
    }
    if authority.contains('@') {
        // Credentials belong to the host's OIDC settings, never in the guest.
        return Err(invalid(format!("{key}: must not contain user information")));
    }
    Ok(url.to_owned())
}

fn path_mapping(map: &Map<String, Value>) -> Result<BTreeMap<String, String>, BackendError> {
    let key = "backend_settings.storage_path_mapping";
    let entries = match map.get(STORAGE_PATH_MAPPING) {
        None | Some(Value::Null) => return Ok(BTreeMap::new()),
        Some(Value::Object(entries)) => entries,
        Some(other) => {
            return Err(invalid(format!("{key}: expected an object, found {}", kind(other))));
        }
    };
    let mut mapping = BTreeMap::new();
    for (id, path) in entries {
        match path {
            // DWDI knows storage by absolute path: a relative one matches nothing, and
            // the resource would read as absent, i.e. zero.
            Value::String(p) if p.starts_with('/') => {
                mapping.insert(id.clone(), p.clone());
            }
            Value::String(p) if p.is_empty() => return Err(invalid(format!("{key}.{id}: empty path"))),
            Value::String(p) => {
                return Err(invalid(format!(
                    "{key}.{id}: {p:?} is not an absolute path; DWDI reports storage by absolute path (/store/…)"
                )));
            }
            other => {
                return Err(invalid(format!("{key}.{id}: expected a path string, found {}", kind(other))));
            }
        }
    }
    Ok(mapping)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(backend: Backend, json: &str) -> String {
        match Settings::parse(backend, json) {
            Err(BackendError::InvalidConfig(m)) => m,
            other => panic!("expected InvalidConfig for {json}, got {other:?}"),
        }
    }

    fn ok(backend: Backend, json: &str) -> Settings {
        match Settings::parse(backend, json) {
            Ok(s) => s,
            Err(e) => panic!("{json}: {e}"),
        }
    }

    #[test]
    fn seed_compute_settings() {
        let s = ok(Backend::Compute, r#"{"cscs_dwdi_api_url":"https://dwdi.cscs.ch","cscs_dwdi_oidc_scope":"openid"}"#);
        assert_eq!(s.api_url, "https://dwdi.cscs.ch");
        assert_eq!(s.backend, BackendSettings::Compute { cluster: None });
    }

    #[test]
    fn cluster_is_lower_cased_and_empty_means_none() {
        let s = ok(Backend::Compute, r#"{"cscs_dwdi_api_url":"http://x/api/v1/","cscs_dwdi_cluster":"Alps"}"#);
        assert_eq!(s.api_url, "http://x/api/v1");
        assert_eq!(s.backend, BackendSettings::Compute { cluster: Some("alps".into()) });
        let s = ok(Backend::Compute, r#"{"cscs_dwdi_api_url":"http://x","cscs_dwdi_cluster":""}"#);
        assert_eq!(s.backend, BackendSettings::Compute { cluster: None });
    }

    #[test]
    fn seed_storage_settings() {
        let s = ok(
            Backend::Storage,
            r#"{"cscs_dwdi_api_url":"https://dwdi.cscs.ch","storage_filesystem":"lustre",
                "storage_data_type":"projects","storage_tenant":"cscs",
                "storage_path_mapping":{"project_123":"/store/projects/proj123"}}"#,
        );
        let BackendSettings::Storage(st) = s.backend else { panic!("storage settings") };
        assert_eq!(st.filesystem, "lustre");
        assert_eq!(st.data_type, "projects");
        assert_eq!(st.tenant.as_deref(), Some("cscs"));
        assert_eq!(st.path_of("project_123"), "/store/projects/proj123");
        assert_eq!(st.path_of("/store/direct"), "/store/direct");
    }

    #[test]
    fn storage_keys_are_not_needed_by_compute() {
        ok(Backend::Compute, r#"{"cscs_dwdi_api_url":"https://x","storage_tenant":5}"#);
    }

    #[test]
    fn inference_reads_only_the_api_url() {
        // Cluster and storage keys of a shared settings block are not its business, even
        // when they would be wrong for the backends that read them.
        let s = ok(
            Backend::Inference,
            r#"{"cscs_dwdi_api_url":"https://dwdi.cscs.ch/api/v1/","cscs_dwdi_cluster":["alps"],
                "cscs_dwdi_oidc_scope":"openid","storage_path_mapping":7,"something_else":null}"#,
        );
        assert_eq!(s, Settings { api_url: "https://dwdi.cscs.ch/api/v1".into(), backend: BackendSettings::Inference });
        assert_eq!(err(Backend::Inference, "{}"), "backend_settings.cscs_dwdi_api_url: missing");
        assert!(
            err(Backend::Inference, r#"{"cscs_dwdi_api_url":"ftp://x"}"#)
                .starts_with("backend_settings.cscs_dwdi_api_url: ")
        );
    }

    #[test]
    fn missing_and_wrong_settings_are_named() {
        let cases = [
            (Backend::Compute, r#"{}"#, "backend_settings.cscs_dwdi_api_url: missing"),
            (Backend::Compute, r#"{"cscs_dwdi_api_url":null}"#, "backend_settings.cscs_dwdi_api_url: missing"),
            (Backend::Compute, r#"{"cscs_dwdi_api_url":""}"#, "backend_settings.cscs_dwdi_api_url: empty"),
            (
                Backend::Compute,
                r#"{"cscs_dwdi_api_url":42}"#,
                "backend_settings.cscs_dwdi_api_url: expected a string, found a number",
            ),
            (
                Backend::Compute,
                r#"{"cscs_dwdi_api_url":"https://x","cscs_dwdi_cluster":["alps"]}"#,
                "backend_settings.cscs_dwdi_cluster: expected a string, found an array",
            ),
            (
                Backend::Storage,
                r#"{"cscs_dwdi_api_url":"https://x","storage_data_type":"p"}"#,
                "backend_settings.storage_filesystem: missing",
            ),
            (
                Backend::Storage,
                r#"{"cscs_dwdi_api_url":"https://x","storage_filesystem":"l"}"#,
                "backend_settings.storage_data_type: missing",
            ),
            (
                Backend::Storage,
                r#"{"cscs_dwdi_api_url":"https://x","storage_filesystem":"l","storage_data_type":"p",
                    "storage_path_mapping":["a"]}"#,
                "backend_settings.storage_path_mapping: expected an object, found an array",
            ),
            (
                Backend::Storage,
                r#"{"cscs_dwdi_api_url":"https://x","storage_filesystem":"l","storage_data_type":"p",
                    "storage_path_mapping":{"p1":7}}"#,
                "backend_settings.storage_path_mapping.p1: expected a path string, found a number",
            ),
            (
                Backend::Storage,
                r#"{"cscs_dwdi_api_url":"https://x","storage_filesystem":"l","storage_data_type":"p",
                    "storage_path_mapping":{"p1":""}}"#,
                "backend_settings.storage_path_mapping.p1: empty path",
            ),
            (
                Backend::Storage,
                r#"{"cscs_dwdi_api_url":"https://x","storage_filesystem":"l","storage_data_type":"p",
                    "storage_path_mapping":{"p1":"store/p1"}}"#,
                "backend_settings.storage_path_mapping.p1: \"store/p1\" is not an absolute path; DWDI reports storage by absolute path (/store/…)",
            ),
            (Backend::Compute, "[1]", "backend_settings: expected an object, found an array"),
        ];
        for (backend, json, want) in cases {
            assert_eq!(err(backend, json), want, "{json}");
        }
        assert!(err(Backend::Compute, "{").starts_with("backend_settings: not valid JSON"));
    }

    #[test]
    fn api_url_must_be_http() {
        for url in [
            "ftp://x",
            "dwdi.cscs.ch",
            "https://",
            "https:///api",
            "https://a b",
            "https://x?y=1",
            "https://u:p@x",
            "https://x/#f",
        ] {
            let json = serde_json::json!({ "cscs_dwdi_api_url": url }).to_string();
            let m = err(Backend::Compute, &json);
            assert!(m.starts_with("backend_settings.cscs_dwdi_api_url: "), "{url}: {m}");
        }
        let s = ok(Backend::Compute, r#"{"cscs_dwdi_api_url":"HTTPS://Dwdi:8443/api/v1//"}"#);
        assert_eq!(s.api_url, "HTTPS://Dwdi:8443/api/v1");
    }
}
