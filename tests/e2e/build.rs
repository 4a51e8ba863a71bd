//! Builds the test components in `tests/components/` for `wasm32-wasip2` and names
//! each built file in a constant of `e2e::components`, so a test component without a
//! build is a compile error rather than a skipped test.

use std::env;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::Command;

/// Crates under tests/components: (package name, constant name).
const COMPONENTS: &[(&str, &str)] = &[("probe-component", "PROBE")];

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

    let mut command = Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    command
        .current_dir(&root)
        .args(["build", "--release", "--target", "wasm32-wasip2", "--target-dir"])
        .arg(&target_dir);
    for (package, _) in COMPONENTS {
        command.args(["-p", package]);
    }
    for var in ["CARGO_ENCODED_RUSTFLAGS", "RUSTFLAGS", "RUSTC_WORKSPACE_WRAPPER", "RUSTC_WRAPPER", "CARGO_TARGET_DIR", "CARGO_BUILD_TARGET"] {
        command.env_remove(var);
    }
    let status = command.status().expect("cannot run cargo to build the test components");
    assert!(status.success(), "building tests/components for wasm32-wasip2 failed");

    let mut generated = String::new();
    for (package, constant) in COMPONENTS {
        let file = target_dir.join("wasm32-wasip2/release").join(format!("{}.wasm", package.replace('-', "_")));
        assert!(file.exists(), "{} missing after the build", file.display());
        writeln!(generated, "/// The built `{package}` component.\npub const {constant}: &str = {:?};", file.display().to_string())
            .expect("writing to a String cannot fail");
    }
    std::fs::write(out_dir.join("components.rs"), generated).expect("cannot write components.rs");
}
