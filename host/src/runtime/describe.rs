//! The rules a component's `describe()` must keep before it may serve.
//!
//! What a component says about itself ends up in log lines, in `usage-agent plugins`,
//! in every cycle's summary and in the labels of `usage_agent_component_info`. A
//! component is untrusted code, so its description is refused — never cleaned up and
//! used — when it is too large, when its name, version or a backend type is long or
//! holds a control or invisible character (a newline in a name forges log lines), when
//! its version is not semver, or when it lists an operation twice. These checks are
//! pure functions of the description: the runtime applies [`check_description`] to
//! every component it loads, the plugins folder adds [`check_backend_types`], which
//! needs to know the file's backend type.

use std::collections::HashSet;

use super::limits::ResultSize as _;
use super::output::needs_escape;
use super::wit;

/// Longest name, version or backend type, in characters.
pub(crate) const MAX_FIELD_CHARS: usize = 64;
/// Most backend types one component may list.
pub(crate) const MAX_BACKEND_TYPES: usize = 16;
/// Largest description, measured as the call's result size: a real one is about 100
/// bytes; a 4 MiB version or 100,000 operations is refused before anything else.
pub(crate) const MAX_DESCRIPTION_BYTES: usize = 4096;
/// Characters of a refused value quoted in the error.
const SHOWN_CHARS: usize = 40;

/// A rule of `describe()` that a component broke.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DescriptionError {
    #[error("describe() returned {bytes} bytes, at most {MAX_DESCRIPTION_BYTES}")]
    TooLarge { bytes: usize },
    #[error("its {field} is empty")]
    Empty { field: &'static str },
    #[error("its {field} {shown} is {chars} characters long, at most {MAX_FIELD_CHARS}")]
    TooLong { field: &'static str, shown: String, chars: usize },
    #[error("its {field} {shown} holds a control or invisible character")]
    NotPrintable { field: &'static str, shown: String },
    #[error("its version {shown} is not a semantic version (MAJOR.MINOR.PATCH[-PRE][+BUILD]): {reason}")]
    NotSemver { shown: String, reason: String },
    #[error("it lists {count} backend types, at most {MAX_BACKEND_TYPES}")]
    TooManyBackendTypes { count: usize },
    #[error("it lists backend type {shown} twice")]
    RepeatedBackendType { shown: String },
    #[error("it lists operation {operation} twice")]
    RepeatedOperation { operation: &'static str },
    #[error("it lists backend type {shown}, which is neither its file's ({file}) nor one this host knows ({known})")]
    UnknownBackendType { shown: String, file: String, known: String },
}

impl DescriptionError {
    /// The rule broken, as a fixed word (for tests and messages that branch on it).
    pub fn rule(&self) -> &'static str {
        match self {
            DescriptionError::TooLarge { .. } => "size",
            DescriptionError::Empty { .. } => "empty",
            DescriptionError::TooLong { .. } => "length",
            DescriptionError::NotPrintable { .. } => "printable",
            DescriptionError::NotSemver { .. } => "semver",
            DescriptionError::TooManyBackendTypes { .. } => "backend-type-count",
            DescriptionError::RepeatedBackendType { .. } => "repeated-backend-type",
            DescriptionError::RepeatedOperation { .. } => "repeated-operation",
            DescriptionError::UnknownBackendType { .. } => "unknown-backend-type",
        }
    }
}

/// A refused value as an error quotes it: escaped, and cut to [`SHOWN_CHARS`].
fn shown(text: &str) -> String {
    let cut: String = text.chars().take(SHOWN_CHARS).collect();
    let more = text.len() - cut.len();
    let escaped = super::output::escape_controls(&cut);
    if more > 0 { format!("\"{escaped}…\" ({more} more bytes)") } else { format!("\"{escaped}\"") }
}

/// A name, version or backend type: not empty, short, printable.
fn check_field(field: &'static str, value: &str) -> Result<(), DescriptionError> {
    if value.trim().is_empty() {
        return Err(DescriptionError::Empty { field });
    }
    let chars = value.chars().count();
    if chars > MAX_FIELD_CHARS {
        return Err(DescriptionError::TooLong { field, shown: shown(value), chars });
    }
    if value.chars().any(needs_escape) {
        return Err(DescriptionError::NotPrintable { field, shown: shown(value) });
    }
    Ok(())
}

fn operation_name(operation: wit::Operation) -> &'static str {
    match operation {
        wit::Operation::Ping => "ping",
        wit::Operation::UsageReport => "usage-report",
        wit::Operation::DailyReport => "daily-report",
        wit::Operation::Manage => "manage",
    }
}

/// The rules every description keeps, wherever the component comes from. The size is
/// checked first, so a huge description costs one sum, not a scan of every part.
pub fn check_description(info: &wit::BackendInfo) -> Result<(), DescriptionError> {
    let bytes = info.result_size();
    if bytes > MAX_DESCRIPTION_BYTES {
        return Err(DescriptionError::TooLarge { bytes });
    }
    check_field("name", &info.name)?;
    check_field("version", &info.version)?;
    // The upstream's name is put into error lines; empty means "the upstream".
    if !info.upstream.is_empty() {
        check_field("upstream", &info.upstream)?;
    }
    semver::Version::parse(&info.version)
        .map_err(|e| DescriptionError::NotSemver { shown: shown(&info.version), reason: e.to_string() })?;
    if info.backend_types.len() > MAX_BACKEND_TYPES {
        return Err(DescriptionError::TooManyBackendTypes { count: info.backend_types.len() });
    }
    let mut types = HashSet::new();
    for backend_type in &info.backend_types {
        check_field("backend type", backend_type)?;
        if !types.insert(backend_type.as_str()) {
            return Err(DescriptionError::RepeatedBackendType { shown: shown(backend_type) });
        }
    }
    // Refused rather than deduplicated: a component that lists an operation twice was
    // not built from this contract with care, and the list is shown as it is.
    let mut operations = HashSet::new();
    for operation in &info.operations {
        if !operations.insert(operation_name(*operation)) {
            return Err(DescriptionError::RepeatedOperation { operation: operation_name(*operation) });
        }
    }
    Ok(())
}

/// Every backend type a file's component lists is the file's own or one the host knows
/// (built in, or used by an offering of the config): a component cannot fill listings
/// with types nobody configured.
pub fn check_backend_types(info: &wit::BackendInfo, file_type: &str, known: &[&str]) -> Result<(), DescriptionError> {
    for backend_type in &info.backend_types {
        if backend_type != file_type && !known.contains(&backend_type.as_str()) {
            return Err(DescriptionError::UnknownBackendType {
                shown: shown(backend_type),
                file: file_type.to_owned(),
                known: known.join(", "),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(name: &str, version: &str, types: &[&str], operations: &[wit::Operation]) -> wit::BackendInfo {
        wit::BackendInfo {
            name: name.to_owned(),
            version: version.to_owned(),
            backend_types: types.iter().map(|t| (*t).to_owned()).collect(),
            operations: operations.to_vec(),
            upstream: String::new(),
        }
    }

    fn rule(info: &wit::BackendInfo) -> Option<&'static str> {
        check_description(info).err().map(|e| e.rule())
    }

    #[test]
    fn a_real_description_passes() {
        let ops = [wit::Operation::Ping, wit::Operation::UsageReport, wit::Operation::DailyReport];
        assert_eq!(check_description(&info("cscs-dwdi-compute", "0.1.0", &["cscs-dwdi-compute"], &ops)), Ok(()));
        assert_eq!(check_description(&info("probe", "9.9.9-refuser+build.5", &["a", "b"], &[])), Ok(()));
        assert_eq!(check_description(&info("Grüße 名前", "1.0.0", &[], &[])), Ok(()));
    }

    #[test]
    fn size_comes_first() {
        let huge = format!("1.0.0-{}", "x".repeat(4 << 20));
        let error = check_description(&info("probe", &huge, &["probe"], &[])).err();
        assert!(matches!(error, Some(DescriptionError::TooLarge { bytes }) if bytes > 4 << 20), "{error:?}");
        let many = vec![wit::Operation::UsageReport; 100_000];
        assert_eq!(rule(&info("probe", "1.0.0", &["probe"], &many)), Some("size"));
    }

    #[test]
    fn names_versions_and_types_are_short_and_printable() {
        assert_eq!(rule(&info("", "1.0.0", &[], &[])), Some("empty"));
        assert_eq!(rule(&info(" ", "1.0.0", &[], &[])), Some("empty"));
        assert_eq!(rule(&info(&"n".repeat(65), "1.0.0", &[], &[])), Some("length"));
        assert_eq!(check_description(&info(&"é".repeat(64), "1.0.0", &[], &[])), Ok(()), "characters, not bytes");
        assert_eq!(rule(&info("probe\n2026-01-01 ERROR forged", "1.0.0", &[], &[])), Some("printable"));
        assert_eq!(rule(&info("probe\u{1b}[2J", "1.0.0", &[], &[])), Some("printable"));
        assert_eq!(rule(&info("probe\u{202e}", "1.0.0", &[], &[])), Some("printable"));
        assert_eq!(rule(&info("probe", "1.0.0\r", &[], &[])), Some("printable"));
        assert_eq!(rule(&info("probe", "1.0.0", &["ok", "bad\ttype"], &[])), None, "a tab is harmless");
        assert_eq!(rule(&info("probe", "1.0.0", &["ok", "bad\u{0}type"], &[])), Some("printable"));
        let mut named = info("probe", "1.0.0", &[], &[]);
        named.upstream = "DWDI".into();
        assert_eq!(check_description(&named), Ok(()));
        named.upstream = "DWDI\n2026-01-01 ERROR forged".into();
        assert_eq!(rule(&named), Some("printable"));
        named.upstream = "U".repeat(65);
        assert_eq!(rule(&named), Some("length"));
        let shown = check_description(&info("probe\n\u{1b}x", "1.0.0", &[], &[])).err().map(|e| e.to_string());
        assert_eq!(shown.as_deref(), Some("its name \"probe\\n\\u{1b}x\" holds a control or invisible character"));
    }

    #[test]
    fn the_version_is_semver() {
        for bad in ["latest", "1.0", "v1.0.0", "1.0.0.0", "01.0.0"] {
            assert_eq!(rule(&info("probe", bad, &[], &[])), Some("semver"), "{bad}");
        }
        let error = check_description(&info("probe", "latest", &[], &[])).err().map(|e| e.to_string());
        assert!(error.is_some_and(|e| e.starts_with("its version \"latest\" is not a semantic version")));
    }

    #[test]
    fn repeated_types_and_operations_are_refused() {
        let twice = [wit::Operation::UsageReport, wit::Operation::Ping, wit::Operation::UsageReport];
        let error = check_description(&info("probe", "1.0.0", &["probe"], &twice)).err();
        assert_eq!(error, Some(DescriptionError::RepeatedOperation { operation: "usage-report" }));
        assert_eq!(rule(&info("probe", "1.0.0", &["probe", "probe"], &[])), Some("repeated-backend-type"));
        let types: Vec<String> = (0..17).map(|i| format!("t{i}")).collect();
        let types: Vec<&str> = types.iter().map(String::as_str).collect();
        assert_eq!(rule(&info("probe", "1.0.0", &types, &[])), Some("backend-type-count"));
    }

    #[test]
    fn other_backend_types_must_be_known() {
        let known = ["cscs-dwdi-compute", "cscs-dwdi-storage"];
        let both = info("x", "1.0.0", &["site-a", "cscs-dwdi-storage"], &[]);
        assert_eq!(check_backend_types(&both, "site-a", &known), Ok(()));
        let stranger = info("x", "1.0.0", &["site-a", "rm -rf"], &[]);
        let error = check_backend_types(&stranger, "site-a", &known).err().map(|e| e.to_string());
        assert_eq!(
            error.as_deref(),
            Some(
                "it lists backend type \"rm -rf\", which is neither its file's (site-a) nor one this host knows (cscs-dwdi-compute, cscs-dwdi-storage)"
            )
        );
    }
}
