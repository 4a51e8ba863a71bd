//! The nested `wasm32-wasip2` build that both build scripts run: `host/build.rs` for the
//! built-in components, `tests/e2e/build.rs` for the test components. Each includes this
//! file with `#[path]` (build scripts cannot share a library crate of the workspace).

use std::path::{Path, PathBuf};
use std::process::Command;

/// The target the components are built for.
const TARGET: &str = "wasm32-wasip2";

/// Makes sure the toolchain this build runs on has the `wasm32-wasip2` standard library,
/// adding it with `rustup` when it is missing: rustup does not install a
/// `rust-toolchain.toml` target by itself when `RUSTUP_AUTO_INSTALL=0`, and the nested
/// build would otherwise fail with `can't find crate for core`. Both build scripts may
/// get here at once in one `cargo` run, so the check and the install happen under a
/// file lock in `lock_dir`.
fn ensure_target(lock_dir: &Path) {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let sysroot = sysroot(&rustc);
    let installed = || sysroot.join("lib/rustlib").join(TARGET).is_dir();
    if installed() {
        return;
    }
    std::fs::create_dir_all(lock_dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", lock_dir.display()));
    let lock_path = lock_dir.join(format!(".{TARGET}-install.lock"));
    let lock = std::fs::File::create(&lock_path)
        .and_then(|file| file.lock().map(|()| file))
        .unwrap_or_else(|e| panic!("cannot lock {}: {e}", lock_path.display()));
    if installed() {
        return; // the other build script added it while this one waited
    }
    // Inside a build run through rustup's proxies RUSTUP_TOOLCHAIN names the toolchain
    // this build uses (rust-toolchain.toml's, or a `+toolchain` override).
    let toolchain = std::env::var("RUSTUP_TOOLCHAIN").ok();
    let mut rustup = Command::new("rustup");
    rustup.args(["target", "add", TARGET]);
    if let Some(toolchain) = &toolchain {
        rustup.args(["--toolchain", toolchain]);
    }
    let shown = format!(
        "rustup target add {TARGET}{}",
        toolchain.as_ref().map(|t| format!(" --toolchain {t}")).unwrap_or_default()
    );
    println!("cargo:warning=the {TARGET} target is missing from {}; adding it with `{shown}`", sysroot.display());
    match rustup.status() {
        Ok(status) if status.success() => {}
        Ok(status) => panic!("`{shown}` failed ({status}); run it by hand, then build again"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "the {TARGET} target is not installed in {} and rustup is not there to add it: install \
             rustup (https://rustup.rs; it then installs the toolchain of rust-toolchain.toml with \
             this target), or add the {TARGET} standard library to this toolchain; \
             USAGE_AGENT_SKIP_GUEST_BUILD=1 builds a host without built-in components instead",
            sysroot.display()
        ),
        Err(e) => panic!("cannot run `{shown}`: {e}"),
    }
    assert!(
        installed(),
        "`{shown}` succeeded, but {} still has no {TARGET} standard library: this build's rustc ({}) \
         is not the toolchain rustup added it to; add the target to that toolchain",
        sysroot.display(),
        Path::new(&rustc).display()
    );
    drop(lock);
}

/// `rustc --print sysroot`.
fn sysroot(rustc: &std::ffi::OsStr) -> PathBuf {
    let output = Command::new(rustc)
        .args(["--print", "sysroot"])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {} --print sysroot: {e}", Path::new(rustc).display()));
    assert!(output.status.success(), "{} --print sysroot failed", Path::new(rustc).display());
    PathBuf::from(String::from_utf8_lossy(&output.stdout).trim())
}

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
/// `root`, into `target_dir` (a [`nested_target_dir`]), once the target is installed.
pub(crate) fn cargo_build(root: &Path, target_dir: &Path, packages: &[&str]) -> Command {
    // The outer target directory: shared by every build script of this cargo run.
    ensure_target(target_dir.parent().unwrap_or(target_dir));
    let mut command = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    command.current_dir(root).args(["build", "--release", "--target", TARGET, "--target-dir"]).arg(target_dir);
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
    target_dir.join(TARGET).join("release").join(format!("{}.wasm", package.replace('-', "_")))
}
