//! `usage-agent --version`: what an operator needs to know which code runs — the host,
//! the contracts it serves, the components built into it and the wasmtime they run in.

use std::fmt::Write as _;
use std::sync::LazyLock;

use crate::runtime::{Contract, WIT_PACKAGE};

/// The text of `--version` (`-V` prints the first line alone), composed once: clap takes
/// a `&'static str`, and its derive cannot assemble one from these constants.
pub fn long_version() -> &'static str {
    static TEXT: LazyLock<String> = LazyLock::new(compose);
    &TEXT
}

fn compose() -> String {
    let mut text = String::from(env!("CARGO_PKG_VERSION"));
    let served: Vec<String> = Contract::ALL.iter().map(|c| format!("{WIT_PACKAGE}@{}", c.version())).collect();
    // clap prints the name and a space before this text.
    let _ = write!(text, "\ncontracts served: {} (components built against {})", served.join(", "), Contract::served());
    if crate::builtin::VERSIONS.is_empty() {
        text.push_str("\nbuilt-in components: none (built with USAGE_AGENT_SKIP_GUEST_BUILD)");
    } else {
        text.push_str("\nbuilt-in components:");
        for (backend_type, version) in crate::builtin::VERSIONS {
            let _ = write!(text, "\n  {backend_type} {version} ({WIT_PACKAGE}@{})", Contract::CURRENT.version());
        }
    }
    let _ = write!(text, "\nwasmtime {}", crate::builtin::WASMTIME_VERSION);
    text
}
