//! Builds the usage-backend components in `guest/` for `wasm32-wasip2` and embeds
//! them in the host as its built-in defaults, so a fresh clone runs with `cargo run`.
//!
//! The nested cargo uses a target directory of its own: the outer cargo holds the
//! lock on the usual one for as long as this script runs.

use std::env;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

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
    let wasmtime = locked_version(&root.join("Cargo.lock"), "wasmtime");
    let wasmtime_line = format!(
        "/// The wasmtime this host runs components in (Cargo.lock).\npub const WASMTIME_VERSION: &str = {wasmtime:?};\n"
    );
    if env::var_os("USAGE_AGENT_SKIP_GUEST_BUILD").is_some() {
        let empty = format!(
            "/// No components: built with USAGE_AGENT_SKIP_GUEST_BUILD.\npub const BUILTIN: &[(&str, &[u8])] = &[];\n\
             pub const VERSIONS: &[(&str, &str)] = &[];\n{wasmtime_line}"
        );
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
    generated.push_str("/// The crate version each built-in component was built as: (backend type, version).\n");
    generated.push_str("pub const VERSIONS: &[(&str, &str)] = &[\n");
    for name in COMPONENTS {
        writeln!(generated, "    ({name:?}, {:?}),", package_version(&root, name))
            .expect("writing to a String cannot fail");
    }
    generated.push_str("];\n");
    generated.push_str(&wasmtime_line);
    std::fs::write(out_dir.join("builtin_components.rs"), generated).expect("cannot write builtin_components.rs");
}

/// The version of workspace package `name`, as cargo resolves it (`cargo pkgid`:
/// `path+file:///…/name#1.2.3`, or `…#name@1.2.3` when the folder is named otherwise).
fn package_version(root: &Path, name: &str) -> String {
    let output = Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .current_dir(root)
        .args(["pkgid", "--offline", "-p", name])
        .output()
        .unwrap_or_else(|e| panic!("cannot run cargo pkgid -p {name}: {e}"));
    let id = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "cargo pkgid -p {name} failed: {}", String::from_utf8_lossy(&output.stderr));
    let fragment = id.trim().rsplit('#').next().unwrap_or_default();
    fragment.rsplit('@').next().unwrap_or_default().to_owned()
}

/// The version of registry package `name` in `lock` (Cargo.lock), "unknown" if absent.
fn locked_version(lock: &Path, name: &str) -> String {
    let text = std::fs::read_to_string(lock).unwrap_or_default();
    let wanted = format!("name = \"{name}\"");
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        if line == wanted
            && let Some(version) = lines.next().and_then(|l| l.strip_prefix("version = \""))
        {
            return version.trim_end_matches('"').to_owned();
        }
    }
    "unknown".to_owned()
}
