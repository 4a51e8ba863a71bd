//! Builds the test components in `tests/components/` for `wasm32-wasip2` and names
//! each built file in a constant of `e2e::components`, so a test component without a
//! build is a compile error rather than a skipped test.

use std::env;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::Command;

/// Crates under tests/components: (package name, constant name).
const COMPONENTS: &[(&str, &str)] = &[
    ("probe-component", "PROBE"),
    ("wit-next-component", "WIT_NEXT"),
    ("setup-refuser-component", "SETUP_REFUSER"),
];

/// The version the second build of the compute component describes itself with.
const COMPUTE_NEXT_VERSION: &str = "0.2.0-next";

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let root = manifest_dir.join("../..");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    // Its own target dir: the outer cargo holds the lock on the usual one.
    let target_dir = out_dir
        .ancestors()
        .find(|d| d.file_name().is_some_and(|n| n == "build"))
        .and_then(|b| b.parent())
        .and_then(|p| p.parent())
        .map(|t| t.join("test-components"))
        .unwrap_or_else(|| root.join("target/test-components"));
    println!("cargo:rerun-if-changed={}", root.join("tests/components").display());
    println!("cargo:rerun-if-changed={}", root.join("wit").display());
    println!("cargo:rerun-if-changed={}", root.join("guest").display());

    let mut command = Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    command
        .current_dir(&root)
        .args(["build", "--release", "--target", "wasm32-wasip2", "--target-dir"])
        .arg(&target_dir);
    for (package, _) in COMPONENTS {
        command.args(["-p", package]);
    }
    clean_env(&mut command);
    let status = command.status().expect("cannot run cargo to build the test components");
    assert!(status.success(), "building tests/components for wasm32-wasip2 failed");

    // A second build of the real compute component that describes itself with another
    // version: what a site drops into the plugins folder to upgrade. Its own target dir
    // keeps the host's built-in build untouched.
    let next_dir = target_dir.with_file_name("test-components-next");
    let mut command = Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    command
        .current_dir(&root)
        .args(["build", "--release", "--target", "wasm32-wasip2", "-p", "cscs-dwdi-compute", "--target-dir"])
        .arg(&next_dir);
    clean_env(&mut command);
    command.env("USAGE_BACKEND_VERSION", COMPUTE_NEXT_VERSION);
    let status = command.status().expect("cannot run cargo to build the next compute component");
    assert!(status.success(), "building guest/cscs-dwdi-compute with USAGE_BACKEND_VERSION failed");
    let compute_next = next_dir.join("wasm32-wasip2/release/cscs_dwdi_compute.wasm");
    assert!(compute_next.exists(), "{} missing after the build", compute_next.display());

    let mut generated = String::new();
    for (package, constant) in COMPONENTS {
        let file = target_dir.join("wasm32-wasip2/release").join(format!("{}.wasm", package.replace('-', "_")));
        assert!(file.exists(), "{} missing after the build", file.display());
        writeln!(generated, "/// The built `{package}` component.\npub const {constant}: &str = {:?};", file.display().to_string())
            .expect("writing to a String cannot fail");
    }
    writeln!(
        generated,
        "/// `cscs-dwdi-compute` built from `guest/` with version {COMPUTE_NEXT_VERSION:?}.\npub const COMPUTE_NEXT: &str = {:?};\n/// The version [`COMPUTE_NEXT`] describes itself with.\npub const COMPUTE_NEXT_VERSION: &str = {COMPUTE_NEXT_VERSION:?};",
        compute_next.display().to_string()
    )
    .expect("writing to a String cannot fail");
    std::fs::write(out_dir.join("components.rs"), generated).expect("cannot write components.rs");
}

/// Flags meant for the host build (coverage, wrappers, targets) would break the wasm build.
fn clean_env(command: &mut Command) {
    for var in [
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTC_WRAPPER",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "USAGE_BACKEND_VERSION",
    ] {
        command.env_remove(var);
    }
}
