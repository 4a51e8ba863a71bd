//! The Debian package and the container image that `packaging/` makes, checked on this
//! machine. CI has no time for the release build (wasmtime in release, about 30
//! minutes), so these package the binary this test build made, with the same scripts
//! `packaging/release` runs. The ignored test takes the release command's own folder
//! (`USAGE_AGENT_RELEASE_DIR`) and also runs the image under podman.
//!
//! Installing a package changes the machine: the test needs root (or `sudo -n`), refuses
//! to run where usage-agent is installed already, and checks that the purge leaves every
//! place the package touches as it found it.

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use serde_json::Value;

const VERSION: &str = env!("CARGO_PKG_VERSION");
const BINARY: &str = "/usr/bin/usage-agent";
const CONFIG: &str = "/etc/usage-agent/config.yaml";
const CACHE: &str = "/var/cache/usage-agent";
const UNITS: [&str; 2] = ["usage-agent-report.service", "usage-agent-historical@.service"];
/// The image's user.
const IMAGE_UID: &str = "65532";
/// One package installed at a time.
static DPKG: Mutex<()> = Mutex::new(());

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Runs `program args`, with `sudo -n` in front when `root` and we are not root.
fn command(root: bool, program: &str, args: &[&str]) -> Command {
    let is_root = Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0\n"));
    let mut command = if root && !is_root {
        let mut sudo = Command::new("sudo");
        sudo.args(["-n", program]);
        sudo
    } else {
        Command::new(program)
    };
    command.args(args);
    command
}

/// Runs it to its end; a non-zero exit is an error quoting its output.
fn run(root: bool, program: &str, args: &[&str]) -> Result<String> {
    let output = command(root, program, args).output().with_context(|| format!("cannot run {program}"))?;
    ensure!(output.status.success(), "{program} {args:?}: {}", shown(&output));
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn shown(output: &Output) -> String {
    format!(
        "{}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// `binary` without its debug information, in `dir`: what a package should carry, and a
/// debug build's binary is mostly debug information (about 500 MB here).
fn stripped(binary: &Path, dir: &Path) -> Result<PathBuf> {
    let copy = dir.join("usage-agent");
    run(false, "strip", &["--strip-debug", "-o", &copy.to_string_lossy(), &binary.to_string_lossy()])?;
    Ok(copy)
}

/// The package built by `packaging/deb/build` around `binary`, uncompressed (seconds, not
/// a minute of xz).
fn build_package(binary: &Path, out: &Path) -> Result<PathBuf> {
    let script = repo().join("packaging/deb/build");
    let output = Command::new(&script)
        .args([binary, out])
        .env("DEB_COMPRESSION", "none")
        .output()
        .context("cannot run packaging/deb/build")?;
    ensure!(output.status.success(), "packaging/deb/build: {}", shown(&output));
    Ok(PathBuf::from(String::from_utf8(output.stdout)?.trim()))
}

/// The image archive built by `packaging/image/build` around `binary`.
fn build_image(binary: &Path, out: &Path) -> Result<PathBuf> {
    let script = repo().join("packaging/image/build");
    let output = Command::new(&script).args([binary, out]).output().context("cannot run packaging/image/build")?;
    ensure!(output.status.success(), "packaging/image/build: {}", shown(&output));
    Ok(PathBuf::from(String::from_utf8(output.stdout)?.trim()))
}

/// Everything of the package's places as it is now: each path's tree (type, mode,
/// owner, size), the user and group, the statoverride, dpkg's record, the links of
/// deb-systemd-helper and `systemctl enable`.
fn machine_state() -> Result<BTreeMap<String, String>> {
    let mut state = BTreeMap::new();
    let mut places = vec![
        BINARY.to_owned(),
        "/etc/usage-agent".to_owned(),
        "/var/lib/usage-agent".to_owned(),
        CACHE.to_owned(),
        "/run/usage-agent".to_owned(),
        "/usr/share/doc/usage-agent".to_owned(),
        "/var/lib/systemd/deb-systemd-helper-enabled/usage-agent-report.service.dsh-also".to_owned(),
        "/var/lib/systemd/deb-systemd-helper-enabled/multi-user.target.wants/usage-agent-report.service".to_owned(),
        "/etc/systemd/system/multi-user.target.wants/usage-agent-report.service".to_owned(),
    ];
    places.extend(UNITS.iter().map(|unit| format!("/lib/systemd/system/{unit}")));
    for place in places {
        // The real-Waldur harness keeps its cache in the same folder (its own business).
        let tree = command(
            true,
            "find",
            &[&place, "-path", &format!("{CACHE}/real-waldur"), "-prune", "-o", "-printf", "%p %y %m %u:%g %s\n"],
        )
        .output()?;
        state.insert(place, String::from_utf8_lossy(&tree.stdout).into_owned());
    }
    for (key, args) in [
        ("user", &["getent", "passwd", "usage-agent"][..]),
        ("group", &["getent", "group", "usage-agent"]),
        ("dpkg", &["dpkg-query", "-W", "-f", "${Status}", "usage-agent"]),
    ] {
        let output = Command::new(args[0]).args(&args[1..]).output()?;
        let mut value = String::from_utf8_lossy(&output.stdout).into_owned();
        // dpkg keeps a purged package's name as "not-installed" until it forgets it.
        if value.ends_with("not-installed") {
            value.clear();
        }
        state.insert(key.to_owned(), value);
    }
    let overrides = run(true, "dpkg-statoverride", &["--list"])?;
    state.insert("statoverride".to_owned(), overrides.lines().filter(|l| l.contains("usage-agent")).collect());
    Ok(state)
}

/// A command of the installed binary, as the service's user (`setpriv`, as the unit's
/// `User=` does), with `env` only.
fn as_service(args: &[&str], env: &[(&str, &str)]) -> Result<Output> {
    let mut full = vec!["--reuid=usage-agent", "--regid=usage-agent", "--init-groups", "env", "-i"];
    let assignments: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    full.extend(assignments.iter().map(String::as_str));
    full.push(BINARY);
    full.extend(args);
    Ok(command(true, "setpriv", &full).output()?)
}

/// Installs `deb`, checks what it installed and runs it, removes and purges it, and
/// checks the machine is as before.
fn install_run_purge(deb: &Path) -> Result<()> {
    let _one = DPKG.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    run(true, "true", &[])
        .context("installing a package needs root: run the tests as root or with passwordless sudo")?;
    let before = machine_state()?;
    ensure!(
        !before["dpkg"].contains("installed"),
        "usage-agent is installed on this machine ({}); this test installs and purges its own: remove it first",
        before["dpkg"]
    );
    let installed = command(true, "dpkg", &["-i", &deb.to_string_lossy()]).output()?;
    let checked = installed_package_works()
        .context("the installed package")
        .and_then(|()| an_upgrade_keeps_the_edited_config(deb).context("an upgrade"));
    // Purged whatever happened, so a failure leaves no package behind.
    let removed = run(true, "dpkg", &["--remove", "usage-agent"]);
    let binary_gone = !Path::new(BINARY).exists();
    let config_kept = command(true, "test", &["-f", CONFIG]).status().is_ok_and(|s| s.success());
    let purged = run(true, "dpkg", &["--purge", "usage-agent"]);
    ensure!(installed.status.success(), "dpkg -i: {}", shown(&installed));
    checked?;
    removed?;
    ensure!(binary_gone && config_kept, "remove: the binary gone ({binary_gone}), the config kept ({config_kept})");
    purged?;

    let after = machine_state()?;
    for (place, was) in &before {
        assert_eq!(&after[place], was, "{place} after the purge differs from before the install");
    }
    Ok(())
}

fn installed_package_works() -> Result<()> {
    // The binary on PATH names itself and what is built into it.
    let version = run(false, BINARY, &["--version"])?;
    ensure!(version.starts_with(&format!("usage-agent {VERSION}\n")), "{version}");
    ensure!(version.contains("\n  cscs-dwdi-compute ") && version.contains("\nwasmtime "), "{version}");

    // The config: a conffile, 0640 root:usage-agent; the service's user reads it, and
    // check-config (the unit's ExecStartPre) accepts it as shipped.
    let conffiles = run(false, "dpkg-query", &["-W", "-f", "${Conffiles}", "usage-agent"])?;
    ensure!(conffiles.contains(CONFIG), "not a conffile: {conffiles}");
    let config_stat = run(true, "stat", &["-c", "%a %U:%G", CONFIG])?;
    assert_eq!(config_stat.trim(), "640 root:usage-agent");
    let user = run(false, "getent", &["passwd", "usage-agent"])?;
    let fields: Vec<&str> = user.trim().split(':').collect();
    let uid: u32 = fields.get(2).context("no uid")?.parse()?;
    ensure!(uid < 1000 && fields.get(6) == Some(&"/usr/sbin/nologin"), "not a system user: {user}");
    let plugins_stat = run(true, "stat", &["-c", "%U", "/var/lib/usage-agent/plugins"])?;
    assert_eq!(plugins_stat.trim(), "usage-agent");
    let checked = as_service(&["check-config", "-c", CONFIG], &[("CACHE_DIRECTORY", CACHE)])?;
    ensure!(checked.status.success(), "check-config as usage-agent: {}", shown(&checked));

    // postinst compiled the built-in components into the service's cache: its first
    // start loads them.
    let plugins = as_service(&["plugins"], &[("CACHE_DIRECTORY", CACHE)])?;
    ensure!(plugins.status.success(), "plugins: {}", shown(&plugins));
    let listing = String::from_utf8_lossy(&plugins.stdout);
    let loaded: Vec<&str> = listing.lines().filter(|l| l.trim_start().starts_with("loaded:")).collect();
    ensure!(loaded.len() == 3 && loaded.iter().all(|l| l.contains("from the cache")), "{listing}");
    // So do the commands an operator runs with the config (its plugins_cache_dir).
    let listing = run(true, BINARY, &["plugins", "-c", CONFIG])?;
    let loaded: Vec<&str> = listing.lines().filter(|l| l.trim_start().starts_with("loaded:")).collect();
    ensure!(loaded.len() == 1 && loaded[0].contains("from the cache"), "{listing}");

    // The units, at the package's paths, hardened, and clean for systemd-analyze.
    for unit in UNITS {
        let path = format!("/lib/systemd/system/{unit}");
        let text = std::fs::read_to_string(&path)?;
        for directive in [
            "User=usage-agent",
            "ProtectSystem=strict",
            "NoNewPrivileges=yes",
            "StateDirectory=usage-agent",
            "CacheDirectory=usage-agent",
            "CapabilityBoundingSet=\n",
        ] {
            ensure!(text.contains(directive), "{unit} lacks {directive:?}");
        }
        ensure!(
            text.contains("ExecStart=/usr/bin/usage-agent") || text.contains("exec /usr/bin/usage-agent"),
            "{unit}"
        );
        ensure!(
            text.contains(CONFIG) && !text.contains("/usr/local") && !text.contains("/etc/waldur"),
            "{unit}:\n{text}"
        );
        let verify = Command::new("systemd-analyze").args(["verify", &path]).output()?;
        let stderr = String::from_utf8_lossy(&verify.stderr);
        ensure!(verify.status.success() && stderr.trim().is_empty(), "systemd-analyze verify {unit}: {stderr}");
    }

    // The simulators of `demo --serve`, then check-config and one report cycle against
    // the config it wrote, all from the installed binary.
    let dir = tempfile::tempdir()?;
    let demo_config = dir.path().join("demo.yaml");
    let config_arg = demo_config.to_string_lossy().into_owned();
    let mut serve = Command::new(BINARY)
        .args(["demo", "--serve", &config_arg])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let result = against_demo(&mut serve, &config_arg);
    let _ = Command::new("kill").args(["-INT", &serve.id().to_string()]).status();
    wait_for(&mut serve, Duration::from_secs(30))?;
    result?;

    // And the whole demo.
    let demo = run(false, BINARY, &["demo"])?;
    ensure!(demo.contains("Cycle 2:") && demo.contains("12 written"), "{demo}");
    Ok(())
}

/// The package installed again over itself (an upgrade for dpkg, postinst included)
/// keeps an edited config, its mode and its group.
fn an_upgrade_keeps_the_edited_config(deb: &Path) -> Result<()> {
    let edit = "# edited by the site\n";
    let original = run(true, "cat", &[CONFIG])?;
    let mut tee = command(true, "tee", &["-a", CONFIG]).stdin(Stdio::piped()).stdout(Stdio::null()).spawn()?;
    std::io::Write::write_all(tee.stdin.as_mut().context("no stdin")?, edit.as_bytes())?;
    drop(tee.stdin.take());
    ensure!(tee.wait()?.success(), "cannot edit {CONFIG}");
    let upgraded = command(true, "dpkg", &["-i", &deb.to_string_lossy()]).output()?;
    ensure!(upgraded.status.success(), "dpkg -i over the installed package: {}", shown(&upgraded));
    assert_eq!(run(true, "cat", &[CONFIG])?, format!("{original}{edit}"));
    assert_eq!(run(true, "stat", &["-c", "%a %U:%G", CONFIG])?.trim(), "640 root:usage-agent");
    Ok(())
}

fn against_demo(serve: &mut Child, config: &str) -> Result<()> {
    let stdout = serve.stdout.take().context("no stdout")?;
    let ready =
        BufReader::new(stdout).lines().map_while(Result::ok).any(|line| line.contains("Ctrl-C stops the simulators"));
    ensure!(ready, "demo --serve ended before it was ready");
    let checked = run(false, BINARY, &["check-config", "-c", config])?;
    ensure!(checked.contains("valid"), "{checked}");
    let cycle = run(false, BINARY, &["report", "--once", "-c", config])?;
    ensure!(cycle.contains(" 0 failed"), "{cycle}");
    Ok(())
}

fn wait_for(child: &mut Child, limit: Duration) -> Result<()> {
    let deadline = Instant::now() + limit;
    while child.try_wait()?.is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!("still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// The entries of a tar archive: path → "mode uid/gid size" (as `tar -tv` prints them).
fn tar_listing(archive: &Path) -> Result<BTreeMap<String, String>> {
    let listing = run(false, "tar", &["-tv", "--numeric-owner", "-f", &archive.to_string_lossy()])?;
    listing
        .lines()
        .map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            ensure!(fields.len() == 6, "unexpected tar line: {line}");
            Ok((fields[5].trim_end_matches('/').to_owned(), format!("{} {} {}", fields[0], fields[1], fields[2])))
        })
        .collect()
}

fn sha256_of(path: &Path) -> Result<String> {
    let sum = run(false, "sha256sum", &[&path.to_string_lossy()])?;
    Ok(sum.split_whitespace().next().unwrap_or_default().to_owned())
}

/// Unpacks the docker-archive `archive` and checks its config and its one layer: the
/// static binary `binary`, Debian's CA certificates, the example config, the agent's
/// folders and nothing else; non-root, the health check, the volumes.
fn check_image_layout(archive: &Path, binary: &Path) -> Result<()> {
    let dir = tempfile::tempdir()?;
    run(false, "tar", &["-xf", &archive.to_string_lossy(), "-C", &dir.path().to_string_lossy()])?;
    let manifest: Value = serde_json::from_slice(&std::fs::read(dir.path().join("manifest.json"))?)?;
    let entry = &manifest[0];
    assert_eq!(entry["RepoTags"][0], format!("docker.io/library/usage-agent:{VERSION}"));
    let image: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join(entry["Config"].as_str().context("no config")?))?)?;
    let config = &image["config"];
    assert_eq!(config["User"], format!("{IMAGE_UID}:{IMAGE_UID}"));
    assert_eq!(config["Entrypoint"], serde_json::json!(["/usr/bin/usage-agent"]));
    assert_eq!(config["Cmd"], serde_json::json!(["--log-format", "json", "report", "-c", CONFIG]));
    assert_eq!(
        config["Healthcheck"]["Test"],
        serde_json::json!(["CMD", "/usr/bin/usage-agent", "healthz", "--liveness-only", "-c", CONFIG])
    );
    let volumes: Vec<&str> = config["Volumes"].as_object().context("no volumes")?.keys().map(String::as_str).collect();
    assert_eq!(volumes, ["/etc/usage-agent", "/var/lib/usage-agent/plugins"]);
    assert_eq!(config["Env"], serde_json::json!([format!("CACHE_DIRECTORY={CACHE}")]));
    assert_eq!(config["StopSignal"], "SIGTERM");

    let layers = entry["Layers"].as_array().context("no layers")?;
    assert_eq!(layers.len(), 1, "from scratch: one layer, no base image");
    let layer = dir.path().join(layers[0].as_str().context("layer")?);
    let mut files = tar_listing(&layer)?;
    // The compiled cache, as the image was built: one entry per built-in component.
    let cached: Vec<String> = files.keys().filter(|path| path.starts_with("var/cache/usage-agent/")).cloned().collect();
    assert_eq!(cached.len(), 3, "{cached:?}");
    for path in &cached {
        assert!(path.ends_with(".cwasm"), "{path}");
        assert_eq!(files.remove(path).as_deref().map(|s| &s[..22]), Some("-rw-r--r-- 65532/65532"), "{path}");
    }
    let agent = format!("{IMAGE_UID}/{IMAGE_UID}");
    let binary_size = std::fs::metadata(binary)?.len();
    let certificates = std::fs::metadata("/etc/ssl/certs/ca-certificates.crt")?.len();
    let config_size = std::fs::metadata(repo().join("examples/packaged-config.yaml"))?.len();
    let expected: BTreeMap<String, String> = [
        ("etc", "drwxr-xr-x 0/0 0".to_owned()),
        ("etc/group", "-rw-r--r-- 0/0 31".to_owned()),
        ("etc/passwd", "-rw-r--r-- 0/0 109".to_owned()),
        ("etc/ssl", "drwxr-xr-x 0/0 0".to_owned()),
        ("etc/ssl/certs", "drwxr-xr-x 0/0 0".to_owned()),
        ("etc/ssl/certs/ca-certificates.crt", format!("-rw-r--r-- 0/0 {certificates}")),
        ("etc/usage-agent", "drwxr-xr-x 0/0 0".to_owned()),
        ("etc/usage-agent/config.yaml", format!("-rw-r----- 0/{IMAGE_UID} {config_size}")),
        ("run", "drwxr-xr-x 0/0 0".to_owned()),
        ("run/usage-agent", format!("drwxr-xr-x {agent} 0")),
        ("tmp", "drwxrwxrwt 0/0 0".to_owned()),
        ("usr", "drwxr-xr-x 0/0 0".to_owned()),
        ("usr/bin", "drwxr-xr-x 0/0 0".to_owned()),
        ("usr/bin/usage-agent", format!("-rwxr-xr-x 0/0 {binary_size}")),
        ("var", "drwxr-xr-x 0/0 0".to_owned()),
        ("var/cache", "drwxr-xr-x 0/0 0".to_owned()),
        ("var/cache/usage-agent", format!("drwxr-xr-x {agent} 0")),
        ("var/lib", "drwxr-xr-x 0/0 0".to_owned()),
        ("var/lib/usage-agent", format!("drwxr-xr-x {agent} 0")),
        ("var/lib/usage-agent/plugins", format!("drwxr-xr-x {agent} 0")),
    ]
    .into_iter()
    .map(|(path, entry)| (path.to_owned(), entry))
    .collect();
    assert_eq!(files, expected);

    // The files are the ones they claim to be.
    let root = dir.path().join("root");
    std::fs::create_dir(&root)?;
    let wanted =
        ["usr/bin/usage-agent", "etc/ssl/certs/ca-certificates.crt", "etc/usage-agent/config.yaml", "etc/passwd"];
    let mut args = vec!["-xf".to_owned(), layer.to_string_lossy().into_owned(), "--no-same-owner".to_owned()];
    args.extend(["-C".to_owned(), root.to_string_lossy().into_owned()]);
    args.extend(wanted.iter().map(|w| (*w).to_owned()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run(false, "tar", &args)?;
    assert_eq!(sha256_of(&root.join("usr/bin/usage-agent"))?, sha256_of(binary)?);
    assert_eq!(
        std::fs::read(root.join("etc/ssl/certs/ca-certificates.crt"))?,
        std::fs::read("/etc/ssl/certs/ca-certificates.crt")?
    );
    assert_eq!(
        std::fs::read(root.join("etc/usage-agent/config.yaml"))?,
        std::fs::read(repo().join("examples/packaged-config.yaml"))?
    );
    let passwd = std::fs::read_to_string(root.join("etc/passwd"))?;
    assert!(passwd.contains(&format!("\nusage-agent:x:{IMAGE_UID}:{IMAGE_UID}:")), "{passwd}");
    Ok(())
}

#[test]
fn the_package_installs_runs_and_purges_without_a_trace() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let binary = stripped(Path::new(env!("CARGO_BIN_EXE_usage-agent")), dir.path())?;
    let deb = build_package(&binary, dir.path())?;
    assert_eq!(deb.file_name().and_then(|n| n.to_str()), Some(&*format!("usage-agent_{VERSION}_amd64.deb")));
    install_run_purge(&deb)
}

#[test]
fn the_image_is_from_scratch_non_root_with_a_health_check() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let binary = stripped(Path::new(env!("CARGO_BIN_EXE_usage-agent")), dir.path())?;
    let archive = build_image(&binary, dir.path())?;
    check_image_layout(&archive, &binary)
}

/// podman with a storage of its own under `dir` (nothing lands in the machine's image
/// store), running containers with runc and explicit limits: crun refuses this
/// machine's hybrid cgroup hierarchy, and its sandbox lacks CAP_SYS_RESOURCE, so
/// podman's default limits (nofile 1048576, nproc unlimited) cannot be set.
fn podman(dir: &Path, args: &[&str]) -> Command {
    let mut command = Command::new("podman");
    command.arg("--root").arg(dir.join("storage")).arg("--runroot").arg(dir.join("run"));
    command.args(["--storage-driver", "vfs"]).args(args);
    command
}

fn podman_run(dir: &Path, args: &[&str]) -> Result<String> {
    let output = podman(dir, args).output().context("cannot run podman (Debian packages podman and runc)")?;
    ensure!(output.status.success(), "podman {args:?}: {}", shown(&output));
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Loads the image and runs it: `--version`, the demo, `check-config` of its own config,
/// then the report loop (the default command) until its health check passes, and a stop.
fn run_image(archive: &Path) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let image = format!("usage-agent:{VERSION}");
    podman_run(dir.path(), &["load", "-q", "-i", &archive.to_string_lossy()])?;
    let limits = ["--runtime", "runc", "--ulimit", "nofile=4096:4096", "--ulimit", "nproc=4096:4096"];
    let run = |args: &[&str]| {
        let mut full = vec!["run", "--rm", "--network", "none"];
        full.extend(limits);
        full.push(&image);
        full.extend(args);
        podman_run(dir.path(), &full)
    };
    let version = run(&["--version"])?;
    ensure!(version.starts_with(&format!("usage-agent {VERSION}\n")), "{version}");
    let demo = run(&["demo"])?;
    ensure!(demo.contains("Cycle 2:") && demo.contains("12 written"), "{demo}");
    let checked = run(&["check-config", "-c", CONFIG])?;
    ensure!(checked.contains("valid"), "{checked}");
    // The cache the image was built with serves a host of the same CPU as this one.
    let plugins = run(&["plugins"])?;
    let loaded: Vec<&str> = plugins.lines().filter(|l| l.trim_start().starts_with("loaded:")).collect();
    ensure!(
        loaded.len() == 3 && loaded.iter().all(|l| l.contains("from the cache")),
        "the image's compiled cache was not used (run this on the machine that built it):\n{plugins}"
    );

    // The default command, detached: its cycles fail (no network), its heartbeat beats.
    let mut detached = vec!["run", "-d", "--name", "usage-agent-test", "--network", "none"];
    detached.extend(limits);
    detached.push(&image);
    podman_run(dir.path(), &detached)?;
    let result = (|| -> Result<()> {
        let user = podman_run(dir.path(), &["top", "usage-agent-test", "huser", "user"])?;
        ensure!(!user.contains("root") && user.contains("65532"), "{user}");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let health = podman(dir.path(), &["healthcheck", "run", "usage-agent-test"]).output()?;
            if health.status.success() {
                break;
            }
            ensure!(Instant::now() < deadline, "the health check never passed: {}", shown(&health));
            std::thread::sleep(Duration::from_millis(500));
        }
        // SIGTERM (the image's stop signal): the loop ends cleanly.
        podman_run(dir.path(), &["stop", "-t", "60", "usage-agent-test"])?;
        let code = podman_run(dir.path(), &["inspect", "-f", "{{.State.ExitCode}}", "usage-agent-test"])?;
        assert_eq!(code.trim(), "0");
        Ok(())
    })();
    let logs = podman(dir.path(), &["logs", "usage-agent-test"]).output();
    let _ = podman(dir.path(), &["rm", "-f", "usage-agent-test"]).output();
    let _ = podman(dir.path(), &["rmi", "-a", "-f"]).output();
    result.with_context(|| logs.map(|l| shown(&l)).unwrap_or_default())
}

/// The release command's own folder: the digests hold, the binary is static and names
/// itself, the package installs, runs and purges, the image is laid out as built and runs.
#[test]
#[ignore = "needs the release command's folder: USAGE_AGENT_RELEASE_DIR=DIR cargo test -p usage-agent --test package -- --ignored"]
fn the_release_artifacts_check_install_and_run() -> Result<()> {
    let dir = PathBuf::from(
        std::env::var_os("USAGE_AGENT_RELEASE_DIR")
            .context("set USAGE_AGENT_RELEASE_DIR to the folder packaging/release printed")?,
    );
    let name = format!("usage-agent-{VERSION}-x86_64-unknown-linux-musl");
    for sums in [format!("{name}.sha256"), "SHA256SUMS".to_owned()] {
        let output = Command::new("sha256sum").args(["-c", &sums]).current_dir(&dir).output()?;
        ensure!(output.status.success(), "sha256sum -c {sums}: {}", shown(&output));
    }
    let binary = dir.join(&name);
    let headers = run(false, "readelf", &["-lW", &binary.to_string_lossy()])?;
    ensure!(!headers.contains("program interpreter"), "not static:\n{headers}");
    let version = run(false, &binary.to_string_lossy(), &["--version"])?;
    ensure!(version.starts_with(&format!("usage-agent {VERSION}\n")), "{version}");

    install_run_purge(&dir.join(format!("usage-agent_{VERSION}_amd64.deb")))?;
    let image = dir.join(format!("usage-agent-{VERSION}-image.tar"));
    check_image_layout(&image, &binary)?;
    run_image(&image)
}
