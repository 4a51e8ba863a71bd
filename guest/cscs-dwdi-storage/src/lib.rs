//! `cscs-dwdi-storage`: the DWDI storage usage backend as a `wasm32-wasip2` component
//! exporting `waldur:usage/usage-backend` (bytes and inodes per path).
//!
//! The logic is in `dwdi-core`; the WIT binding layer, shared with the other
//! components, is `guest/component_glue.rs`. A native build is an empty library, so
//! the workspace's native `cargo test` can include this crate.

#[cfg(target_arch = "wasm32")]
#[allow(unsafe_code)] // Only wit-bindgen's generated ABI glue; the code written here is safe.
mod component {
    const BACKEND: dwdi_core::Backend = dwdi_core::Backend::Storage;

    include!("../../component_glue.rs");
}
