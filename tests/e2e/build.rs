//! Builds the test components in `tests/components/` for `wasm32-wasip2` and names
//! each built file in a constant of `e2e::components`, so a test component without a
//! build is a compile error rather than a skipped test.

use std::env;
use std::fmt::Write as _;
use std::path::PathBuf;

#[path = "../../host/wasm_build.rs"]
mod wasm_build;

/// Crates under tests/components: (package name, constant name).
const COMPONENTS: &[(&str, &str)] = &[
    ("probe-component", "PROBE"),
    ("wit-next-component", "WIT_NEXT"),
    ("setup-refuser-component", "SETUP_REFUSER"),
    ("my-site-usage", "MY_SITE_USAGE"),
    ("compute-v2-component", "COMPUTE_V2"),
    ("managing-component", "MANAGING"),
];

/// The version the second build of the compute component describes itself with.
const COMPUTE_NEXT_VERSION: &str = "0.2.0-next";

/// Builds of the probe whose `describe` breaks one rule each (`PROBE_DESCRIBE`, see
/// `tests/components/probe`): the variant, and the words of the host's refusal.
const PROBE_DESCRIBE: &[(&str, &str)] = &[
    ("huge-version", "describe() returned"),
    ("many-operations", "describe() returned"),
    ("not-semver", "its version \"latest\" is not a semantic version"),
    ("forged-name", "holds a control or invisible character"),
    ("repeated-operation", "it lists operation usage-report twice"),
    ("unknown-type", "it lists backend type \"definitely-not-configured\", which is neither its file's"),
];

/// A copy of the built `file` in this build's `OUT_DIR`, where the tests read it: the
/// nested target directories are shared by every build with the same target directory
/// (another checkout's or profile's build rewrites them), `OUT_DIR` is this build's own.
fn keep(file: &std::path::Path, out_dir: &std::path::Path, name: &str) -> PathBuf {
    assert!(file.exists(), "{} missing after the build", file.display());
    let kept = out_dir.join(format!("{name}.wasm"));
    std::fs::copy(file, &kept).unwrap_or_else(|e| panic!("cannot copy {} to {}: {e}", file.display(), kept.display()));
    kept
}

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let root = manifest_dir.join("../..");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let target_dir = wasm_build::nested_target_dir(&root, &out_dir, "test-components");
    println!("cargo:rerun-if-changed={}", root.join("tests/components").display());
    println!("cargo:rerun-if-changed={}", root.join("wit").display());
    println!("cargo:rerun-if-changed={}", root.join("guest").display());

    // The probe's describe variants first, each copied out of the way: the plain build
    // below then leaves the usual probe in place. Only the probe crate is rebuilt.
    let mut variants = Vec::new();
    for (variant, refusal) in PROBE_DESCRIBE {
        let status = wasm_build::cargo_build(&root, &target_dir, &["probe-component"])
            .env("PROBE_DESCRIBE", variant)
            .status()
            .expect("cannot run cargo to build a probe variant");
        assert!(status.success(), "building the probe with PROBE_DESCRIBE={variant} failed");
        let file = keep(
            &wasm_build::built_file(&target_dir, "probe-component"),
            &out_dir,
            &format!("probe-describe-{variant}"),
        );
        variants.push(format!("({variant:?}, {:?}, {refusal:?})", file.display().to_string()));
    }

    let packages: Vec<&str> = COMPONENTS.iter().map(|(package, _)| *package).collect();
    let status = wasm_build::cargo_build(&root, &target_dir, &packages)
        .env_remove("PROBE_DESCRIBE")
        .status()
        .expect("cannot run cargo to build the test components");
    assert!(status.success(), "building tests/components for wasm32-wasip2 failed");
    let kept: Vec<(&str, &str, PathBuf)> = COMPONENTS
        .iter()
        .map(|(package, constant)| {
            (*package, *constant, keep(&wasm_build::built_file(&target_dir, package), &out_dir, package))
        })
        .collect();

    // A second build of the real compute component that describes itself with another
    // version: what a site drops into the plugins folder to upgrade. Its own target dir
    // keeps the host's built-in build untouched.
    let next_dir = wasm_build::nested_target_dir(&root, &out_dir, "test-components-next");
    let status = wasm_build::cargo_build(&root, &next_dir, &["cscs-dwdi-compute"])
        .env("USAGE_BACKEND_VERSION", COMPUTE_NEXT_VERSION)
        .status()
        .expect("cannot run cargo to build the next compute component");
    assert!(status.success(), "building guest/cscs-dwdi-compute with USAGE_BACKEND_VERSION failed");
    let compute_next = keep(&wasm_build::built_file(&next_dir, "cscs-dwdi-compute"), &out_dir, "compute-next");

    let mut generated = String::new();
    for (package, constant, file) in kept {
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
    writeln!(
        generated,
        "/// Probes whose `describe` breaks one rule each: (variant, file, words of the refusal).\npub const PROBE_DESCRIBE: &[(&str, &str, &str)] = &[{}];",
        variants.join(", ")
    )
    .expect("writing to a String cannot fail");
    std::fs::write(out_dir.join("components.rs"), generated).expect("cannot write components.rs");
}
