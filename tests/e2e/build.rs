//! Builds the test components in `tests/components/` for `wasm32-wasip2` and names
//! each built file in a constant of `e2e::components`, so a test component without a
//! build is a compile error rather than a skipped test.

use std::env;
use std::fmt::Write as _;
use std::path::PathBuf;

#[path = "../../host/wasm_build.rs"]
mod wasm_build;

/// Crates under tests/components: (package name, constant name).
const COMPONENTS: &[(&str, &str)] =
    &[("probe-component", "PROBE"), ("wit-next-component", "WIT_NEXT"), ("setup-refuser-component", "SETUP_REFUSER")];

/// The version the second build of the compute component describes itself with.
const COMPUTE_NEXT_VERSION: &str = "0.2.0-next";

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let root = manifest_dir.join("../..");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let target_dir = wasm_build::nested_target_dir(&root, &out_dir, "test-components");
    println!("cargo:rerun-if-changed={}", root.join("tests/components").display());
    println!("cargo:rerun-if-changed={}", root.join("wit").display());
    println!("cargo:rerun-if-changed={}", root.join("guest").display());

    let packages: Vec<&str> = COMPONENTS.iter().map(|(package, _)| *package).collect();
    let status = wasm_build::cargo_build(&root, &target_dir, &packages)
        .status()
        .expect("cannot run cargo to build the test components");
    assert!(status.success(), "building tests/components for wasm32-wasip2 failed");

    // A second build of the real compute component that describes itself with another
    // version: what a site drops into the plugins folder to upgrade. Its own target dir
    // keeps the host's built-in build untouched.
    let next_dir = wasm_build::nested_target_dir(&root, &out_dir, "test-components-next");
    let status = wasm_build::cargo_build(&root, &next_dir, &["cscs-dwdi-compute"])
        .env("USAGE_BACKEND_VERSION", COMPUTE_NEXT_VERSION)
        .status()
        .expect("cannot run cargo to build the next compute component");
    assert!(status.success(), "building guest/cscs-dwdi-compute with USAGE_BACKEND_VERSION failed");
    let compute_next = wasm_build::built_file(&next_dir, "cscs-dwdi-compute");
    assert!(compute_next.exists(), "{} missing after the build", compute_next.display());

    let mut generated = String::new();
    for (package, constant) in COMPONENTS {
        let file = wasm_build::built_file(&target_dir, package);
        assert!(file.exists(), "{} missing after the build", file.display());
        writeln!(
            generated,
            "/// The built `{package}` component.\npub const {constant}: &str = {:?};",
            file.display().to_string()
        )
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
