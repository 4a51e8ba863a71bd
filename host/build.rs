//! Builds the usage-backend components in `guest/` for `wasm32-wasip2` and embeds
//! them in the host as its built-in defaults, so a fresh clone runs with `cargo run`.
//!
//! The nested cargo uses a target directory of its own: the outer cargo holds the
//! lock on the usual one for as long as this script runs.

use std::env;
use std::fmt::Write as _;
use std::path::PathBuf;

#[path = "wasm_build.rs"]
mod wasm_build;

/// The backend types built from `guest/`, each a crate of the same name.
const COMPONENTS: &[&str] = &["cscs-dwdi-compute", "cscs-dwdi-storage", "cscs-dwdi-inference"];

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let root = manifest_dir.parent().expect("host/ lives in the workspace root").to_path_buf();
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let target_dir = wasm_build::nested_target_dir(&root, &out_dir, "components");

    println!("cargo:rerun-if-changed={}", root.join("guest").display());
    println!("cargo:rerun-if-changed={}", root.join("wit").display());
    println!("cargo:rerun-if-changed={}", root.join("Cargo.lock").display());
    println!("cargo:rerun-if-env-changed=USAGE_AGENT_SKIP_GUEST_BUILD");

    // Builds that never run a component (the fuzz targets, built by a nightly without
    // the wasm target) skip the guest build; the host then has no built-in components.
    if env::var_os("USAGE_AGENT_SKIP_GUEST_BUILD").is_some() {
        let empty =
            "/// No components: built with USAGE_AGENT_SKIP_GUEST_BUILD.\npub const BUILTIN: &[(&str, &[u8])] = &[];\n";
        std::fs::write(out_dir.join("builtin_components.rs"), empty).expect("cannot write builtin_components.rs");
        return;
    }

    let status = wasm_build::cargo_build(&root, &target_dir, COMPONENTS)
        .status()
        .expect("cannot run cargo to build the components");
    assert!(status.success(), "building the components in guest/ for wasm32-wasip2 failed");

    let mut generated = String::from("/// The components built from `guest/`: (backend type, bytes).\n");
    generated.push_str("pub const BUILTIN: &[(&str, &[u8])] = &[\n");
    for name in COMPONENTS {
        let built = wasm_build::built_file(&target_dir, name);
        let copy = out_dir.join(format!("{name}.wasm"));
        std::fs::copy(&built, &copy)
            .unwrap_or_else(|e| panic!("component {} missing after the build: {e}", built.display()));
        writeln!(generated, "    ({name:?}, include_bytes!({:?})),", copy.display().to_string())
            .expect("writing to a String cannot fail");
    }
    generated.push_str("];\n");
    std::fs::write(out_dir.join("builtin_components.rs"), generated).expect("cannot write builtin_components.rs");
}
