//! The versions of `waldur:usage` this host serves, and which one a component was
//! built against.
//!
//! A component names its contract in the name of its export
//! (`waldur:usage/reporting@3.1.0`). Each major version the host implements has a
//! binding of its own ([`super::v2`] for 2.x); a component of a major the host does not
//! implement is refused before any of its code runs.

use wasmtime::Engine;
use wasmtime::component::Component;

/// The WIT package this host implements.
pub const WIT_PACKAGE: &str = "waldur:usage";

/// A major version of the contract, with the binding the host calls it through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Contract {
    /// `waldur:usage@2.0.0`: one `usage-backend` interface, management included.
    V2,
    /// `waldur:usage@3.x`: `reporting`, with `management` apart; from 3.1.0,
    /// `usage-traits`.
    V3,
}

impl Contract {
    /// Every contract served, newest first.
    pub const ALL: [Contract; 2] = [Contract::V3, Contract::V2];
    /// The contract of the built-in components and of `wit/usage-backend.wit`.
    pub const CURRENT: Contract = Contract::V3;

    /// The exact version the host's binding was generated from.
    pub const fn version(self) -> &'static str {
        match self {
            Contract::V2 => "2.0.0",
            Contract::V3 => "3.1.0",
        }
    }

    /// The interface a component of this contract exports.
    pub const fn export(self) -> &'static str {
        match self {
            Contract::V2 => "usage-backend",
            Contract::V3 => "reporting",
        }
    }

    fn major(self) -> &'static str {
        major(self.version())
    }

    /// "2.x and 3.x", for messages.
    pub fn served() -> String {
        let majors: Vec<String> = Contract::ALL.iter().rev().map(|c| format!("{}.x", c.major())).collect();
        majors.join(" and ")
    }
}

/// Why a component's exports name no contract this host serves.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExportError {
    #[error(
        "does not export a {WIT_PACKAGE} backend interface ({}) (it exports: {exports})",
        Contract::ALL.map(|c| format!("{WIT_PACKAGE}/{}@{}", c.export(), c.version())).join(" or ")
    )]
    Missing { exports: String },
    #[error(
        "built against {WIT_PACKAGE}@{found}, but this host serves {WIT_PACKAGE} {served} (it implements {WIT_PACKAGE}@{current})",
        served = Contract::served(),
        current = Contract::CURRENT.version()
    )]
    UnknownMajor { found: String },
}

/// The major version of a semver string.
fn major(version: &str) -> &str {
    version.split('.').next().unwrap_or(version)
}

/// The contract `component` was built against, and the exact version it names.
pub fn contract_of(engine: &Engine, component: &Component) -> Result<(Contract, String), ExportError> {
    let ty = component.component_type();
    let names: Vec<&str> = ty.exports(engine).map(|(name, _)| name).collect();
    let package = format!("{WIT_PACKAGE}/");
    let ours: Vec<(&str, &str)> =
        names.iter().filter_map(|name| name.strip_prefix(&package)).filter_map(|rest| rest.split_once('@')).collect();
    for (interface, version) in &ours {
        let served = Contract::ALL.into_iter().find(|c| c.major() == major(version) && c.export() == *interface);
        if let Some(contract) = served {
            return Ok((contract, (*version).to_owned()));
        }
    }
    // An interface of ours in a major we do not serve: say which version it was.
    if let Some((_, version)) = ours.iter().find(|(_, v)| Contract::ALL.iter().all(|c| c.major() != major(v))) {
        return Err(ExportError::UnknownMajor { found: (*version).to_owned() });
    }
    let exports = if names.is_empty() { "nothing".to_owned() } else { names.join(", ") };
    Err(ExportError::Missing { exports })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_served_versions_read_well() {
        assert_eq!(Contract::served(), "2.x and 3.x");
        let refusal = ExportError::UnknownMajor { found: "4.0.0".into() }.to_string();
        assert_eq!(
            refusal,
            "built against waldur:usage@4.0.0, but this host serves waldur:usage 2.x and 3.x (it implements waldur:usage@3.1.0)"
        );
        let missing = ExportError::Missing { exports: "nothing".into() }.to_string();
        assert_eq!(
            missing,
            "does not export a waldur:usage backend interface (waldur:usage/reporting@3.1.0 or waldur:usage/usage-backend@2.0.0) (it exports: nothing)"
        );
    }
}
