//! The nested `wasm32-wasip2` build that both build scripts run: `host/build.rs` for the
//! built-in components, `tests/e2e/build.rs` for the test components. Each includes this
//! file with `#[path]` (build scripts cannot share a library crate of the workspace).

use std::path::{Path, PathBuf};
use std::process::Command;

/// `<target>/<name>`, beside the outer build's output. The nested cargo needs a target
/// directory of its own: the outer cargo holds the lock on the usual one while build
/// scripts run.
pub(crate) fn nested_target_dir(root: &Path, out_dir: &Path, name: &str) -> PathBuf {
    // OUT_DIR is <target>/<profile>/build/<pkg>-<hash>/out (or one level deeper
    // with --target); find the `build` ancestor and go two up.
    out_dir
        .ancestors()
        .find(|dir| dir.file_name().is_some_and(|n| n == "build"))
        .and_then(|build| build.parent())
        .and_then(|profile| profile.parent())
        .map(|target| target.join(name))
        .unwrap_or_else(|| root.join("target").join(name))
}

/// `cargo build --release --target wasm32-wasip2` of `packages` in the workspace at
/// `root`, into `target_dir`.
pub(crate) fn cargo_build(root: &Path, target_dir: &Path, packages: &[&str]) -> Command {
    let mut command = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    command.current_dir(root).args(["build", "--release", "--target", "wasm32-wasip2", "--target-dir"]).arg(target_dir);
    for package in packages {
        command.args(["-p", package]);
    }
    // Flags meant for the host build (coverage, sanitizers, clippy's wrapper) would
    // break or slow the wasm build.
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
    command
}

/// The file the build of `package` wrote into `target_dir`.
pub(crate) fn built_file(target_dir: &Path, package: &str) -> PathBuf {
    target_dir.join("wasm32-wasip2/release").join(format!("{}.wasm", package.replace('-', "_")))
}
