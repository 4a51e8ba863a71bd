//! The components compiled from `guest/` by the build script: the defaults that
//! serve a backend type when the plugins folder has no file for it.

include!(concat!(env!("OUT_DIR"), "/builtin_components.rs"));

/// The built-in component for `backend_type`, if there is one.
pub fn component(backend_type: &str) -> Option<&'static [u8]> {
    BUILTIN.iter().find(|(name, _)| *name == backend_type).map(|(_, bytes)| *bytes)
}

/// The built-in backend types, for messages: `cscs-dwdi-compute, cscs-dwdi-storage, …`.
pub fn names() -> String {
    types().collect::<Vec<_>>().join(", ")
}

/// The built-in backend types.
pub fn types() -> impl Iterator<Item = &'static str> {
    BUILTIN.iter().map(|(name, _)| *name)
}
