//! Hot swap end to end: `report` runs in a loop with a short period against the
//! simulators while the test drops files into its plugins folder, and watches what
//! the cycles print and what the agent logs. Nothing here waits on a fixed sleep: each
//! step waits (with a generous bound) for the state it expects.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use clap::Parser as _;
use dwdi_sim::{DwdiData, DwdiOptions, DwdiSim};
use e2e::{NODE_AND_CPU, components, dwdi_access};
use tokio::task::JoinHandle;
use usage_agent::cli::{Cli, Command, run_report_until};
use usage_agent::report::StopFlag;
use usage_agent::runtime::sha256_hex;
use waldur_sim::{WaldurOptions, WaldurSim, uuid_from};

const TOKEN: &str = "staff-token";
const COMPUTE: &str = "cscs-dwdi-compute";
/// The built-in components carry the workspace version.
const BUILTIN_VERSION: &str = "0.1.0";
/// Every wait is bounded by this; it is far above what any step needs.
const PATIENCE: Duration = Duration::from_secs(300);

/// A writer whose bytes the test can read while the agent writes.
#[derive(Clone, Default)]
struct SharedBuf(Arc<Mutex<Vec<u8>>>);

impl Write for SharedBuf {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().map_err(|_| std::io::Error::other("poisoned"))?.extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl SharedBuf {
    fn lines(&self) -> Vec<String> {
        let bytes = self.0.lock().map(|b| b.clone()).unwrap_or_default();
        String::from_utf8_lossy(&bytes).lines().map(str::to_owned).collect()
    }
}

/// Log lines that mention `needle` (the log is the whole test binary's: each test
/// looks only for its own folder's paths).
fn log_lines(needle: &str) -> Vec<String> {
    e2e::log::text().lines().filter(|l| l.contains(needle)).map(str::to_owned).collect()
}

/// Polls `check` until it answers, for at most [`PATIENCE`].
async fn wait_for<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> Result<T> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(value) = check() {
            return Ok(value);
        }
        if Instant::now() > deadline {
            bail!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// DWDI and Waldur simulators with a compute offering, and a folder for the agent.
struct World {
    dwdi: DwdiSim,
    options: DwdiOptions,
    waldur: WaldurSim,
    offering: String,
    dir: tempfile::TempDir,
}

impl World {
    async fn new() -> Result<Self> {
        let now = jiff::Zoned::now().with_time_zone(jiff::tz::TimeZone::UTC);
        let data = DwdiData::generated(3, 2, &[(i32::from(now.year()), now.month() as u32)]);
        let options = DwdiOptions::default();
        let dwdi = DwdiSim::start(data.clone(), options.clone()).await?;
        let waldur = WaldurSim::start(WaldurOptions::default()).await?;
        waldur.add_token(TOKEN, "admin", true);
        let offering = uuid_from("hot swap compute");
        waldur.add_offering(&offering, "compute", &["nodeHours", "cpuHours"]);
        for account in data.accounts() {
            waldur.add_resource(&offering, &uuid_from(&account), &account, "", "OK");
        }
        let dir = tempfile::tempdir()?;
        std::fs::create_dir(dir.path().join("plugins"))?;
        Ok(Self { dwdi, options, waldur, offering, dir })
    }

    fn plugins_dir(&self) -> PathBuf {
        self.dir.path().join("plugins")
    }

    fn cache_dir(&self) -> PathBuf {
        self.dir.path().join("cache")
    }

    /// `<plugins>/cscs-dwdi-compute.wasm`.
    fn compute_file(&self) -> PathBuf {
        self.plugins_dir().join(format!("{COMPUTE}.wasm"))
    }

    /// Writes the agent config (folders relative to it) and returns its path.
    fn config(&self, extra_top: &str) -> Result<PathBuf> {
        let text = format!(
            "timezone: UTC\nreporting_periods: 1\nplugins_dir: plugins\nplugins_cache_dir: cache\n{extra_top}offerings:\n  - name: compute\n    waldur_api_url: {:?}\n    waldur_api_token: {TOKEN}\n    waldur_offering_uuid: {}\n    backend_type: {COMPUTE}\n    backend_settings:\n{}    backend_components:\n{NODE_AND_CPU}",
            self.waldur.url(),
            self.offering,
            dwdi_access(&self.dwdi, &self.options)
        );
        let path = self.dir.path().join("config.yaml");
        std::fs::write(&path, text)?;
        Ok(path)
    }
}

/// `usage-agent report` running in this process, a cycle every 0.3 s.
struct Agent {
    stop: StopFlag,
    out: SharedBuf,
    task: JoinHandle<Result<()>>,
}

impl Agent {
    fn start(config: &Path) -> Result<Self> {
        e2e::log::capture();
        let config = config.to_str().context("temp path is not UTF-8")?;
        let cli = Cli::try_parse_from(["usage-agent", "report", "-c", config, "--period-minutes", "0.005"])?;
        let Command::Report(args) = cli.command else { bail!("not the report command") };
        let stop = StopFlag::default();
        let out = SharedBuf::default();
        let (mut writer, flag) = (out.clone(), stop.clone());
        let task = tokio::spawn(async move { run_report_until(args, &mut writer, flag).await });
        Ok(Self { stop, out, task })
    }

    fn summaries(&self) -> Vec<String> {
        self.out.lines()
    }

    /// Waits for a cycle served by `name version` and returns its line.
    async fn wait_for_version(&self, version: &str) -> Result<String> {
        self.wait_for_version_after(0, version).await
    }

    /// As [`Agent::wait_for_version`], among the cycle lines after the first `seen`.
    async fn wait_for_version_after(&self, seen: usize, version: &str) -> Result<String> {
        let wanted = format!("; {COMPUTE} {version}");
        wait_for(&format!("a cycle served by {version}"), || {
            self.summaries().into_iter().skip(seen).find(|l| l.ends_with(&wanted))
        })
        .await
    }

    /// The next `n` cycle lines from now.
    async fn next_cycles(&self, n: usize) -> Result<Vec<String>> {
        let start = self.summaries().len();
        wait_for(&format!("{n} more cycles"), || {
            let lines = self.summaries();
            (lines.len() >= start + n).then(|| lines[start..].to_vec())
        })
        .await
    }

    async fn stop(self) -> Result<()> {
        self.stop.stop();
        tokio::time::timeout(PATIENCE, self.task).await.context("report did not stop")???;
        Ok(())
    }
}

/// Writes `bytes` in place, as a careless copy would (the agent must wait until the
/// file holds still).
fn drop_file(path: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
}

/// Asserts that every line is a clean cycle served by `version`.
fn assert_served_by(lines: &[String], version: &str) {
    for line in lines {
        assert!(line.ends_with(&format!("; {COMPUTE} {version}")), "expected {version}: {line}");
        assert!(line.contains(" 0 failed"), "{line}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_build_serves_the_next_cycle_and_bad_files_never_replace_it() -> Result<()> {
    let world = World::new().await?;
    let agent = Agent::start(&world.config("")?)?;
    let first = agent.wait_for_version(BUILTIN_VERSION).await?;
    assert!(first.contains("3 resources × 1 months: 3 written"), "{first}");

    // A second build of the compute component, dropped into the running agent's folder.
    let next = std::fs::read(components::COMPUTE_NEXT)?;
    let builtin = usage_agent::builtin::component(COMPUTE).context("no built-in compute")?;
    let file = world.compute_file();
    drop_file(&file, &next)?;
    agent.wait_for_version(components::COMPUTE_NEXT_VERSION).await?;
    let swaps = log_lines(&format!("now served by {COMPUTE} {}", components::COMPUTE_NEXT_VERSION));
    let swap = swaps.iter().find(|l| l.contains(&file.display().to_string())).context("no swap logged")?;
    assert!(swap.contains(&sha256_hex(&next)) && swap.contains(&sha256_hex(builtin)), "{swap}");
    assert!(swap.contains(&format!("replacing {COMPUTE} {BUILTIN_VERSION}")), "{swap}");
    assert_served_by(&agent.next_cycles(2).await?, components::COMPUTE_NEXT_VERSION);

    // Each bad file is refused with one error naming the file and the reason; the
    // second build keeps serving.
    let storage = usage_agent::builtin::component("cscs-dwdi-storage").context("no built-in storage")?;
    let bad: Vec<(&str, Vec<u8>, &str)> = vec![
        ("truncated", next[..next.len() / 2].to_vec(), "not a usable WebAssembly component"),
        ("not wasm", b"#!/bin/sh\necho this is not a component\n".to_vec(), "not a usable WebAssembly component"),
        ("core module", b"\0asm\x01\0\0\0".to_vec(), "not a usable WebAssembly component"),
        ("other backend type", storage.to_vec(), "describes itself as cscs-dwdi-storage"),
        (
            "another WIT major",
            std::fs::read(components::WIT_NEXT)?,
            "built against waldur:usage@4.0.0, but this host serves waldur:usage 2.x and 3.x",
        ),
        (
            "setup fails",
            std::fs::read(components::SETUP_REFUSER)?,
            "setup of offerings[0] (compute) failed: backend_settings.refuser_key: missing",
        ),
    ];
    let refusals = || {
        log_lines(&format!("{} (sha256", file.display()))
            .into_iter()
            .filter(|l| l.contains("refused:"))
            .collect::<Vec<_>>()
    };
    for (what, bytes, reason) in &bad {
        let before = refusals().len();
        drop_file(&file, bytes)?;
        let line = wait_for(&format!("the {what} file to be refused"), || refusals().get(before).cloned()).await?;
        assert!(line.contains("ERROR"), "{what}: {line}");
        assert!(line.contains(&sha256_hex(bytes)) && line.contains(reason), "{what}: {line}");
        assert!(
            line.contains(&format!("{COMPUTE} {} (sha256 {}", components::COMPUTE_NEXT_VERSION, sha256_hex(&next))),
            "{what}: {line}"
        );
        assert_served_by(&agent.next_cycles(2).await?, components::COMPUTE_NEXT_VERSION);
        assert_eq!(refusals().len(), before + 1, "{what}: one error, not one per cycle or re-scan");
    }

    // Deleting the file brings the built-in default back.
    std::fs::remove_file(&file)?;
    let fallback = wait_for("the built-in default to serve again", || {
        agent.summaries().last().filter(|l| l.ends_with(&format!("; {COMPUTE} {BUILTIN_VERSION}"))).cloned()
    })
    .await?;
    assert!(fallback.contains(" 0 failed"), "{fallback}");
    let back = log_lines(&format!("replacing {COMPUTE} {}", components::COMPUTE_NEXT_VERSION));
    assert!(back.iter().any(|l| l.contains("built-in") && l.contains(&file.display().to_string())), "{back:?}");
    assert!(!world.waldur.usages().is_empty());
    agent.stop().await
}

/// The version `tests/components/compute-v2` describes itself with.
const COMPUTE_V2_VERSION: &str = "0.1.0-wit2";

#[tokio::test(flavor = "multi_thread")]
async fn components_of_the_older_and_the_current_contract_swap_both_ways() -> Result<()> {
    let world = World::new().await?;
    let agent = Agent::start(&world.config("")?)?;
    let first = agent.wait_for_version(BUILTIN_VERSION).await?;
    assert!(first.contains("3 written"), "{first}");
    let written = world.waldur.usages();

    // Current (built in, 3.1.0) → older (a 2.0.0 file): it serves the next cycles, and
    // finds exactly what the current one wrote, so nothing is written again.
    let file = world.compute_file();
    let old = std::fs::read(components::COMPUTE_V2)?;
    drop_file(&file, &old)?;
    agent.wait_for_version(COMPUTE_V2_VERSION).await?;
    let cycles = agent.next_cycles(2).await?;
    assert_served_by(&cycles, COMPUTE_V2_VERSION);
    for cycle in &cycles {
        assert!(cycle.contains("0 written") && cycle.contains("3 unchanged"), "{cycle}");
    }
    assert_eq!(world.waldur.usages(), written);
    let listing =
        e2e::run_cli(&["plugins", "-c", world.dir.path().join("config.yaml").to_str().unwrap_or_default()]).await?;
    assert!(listing.contains("wit:        waldur:usage@2.0.0"), "{listing}");

    // Older → current (a 3.1.0 file), and back to the older one: each serves the next cycle.
    let next = std::fs::read(components::COMPUTE_NEXT)?;
    drop_file(&file, &next)?;
    agent.wait_for_version(components::COMPUTE_NEXT_VERSION).await?;
    assert_served_by(&agent.next_cycles(2).await?, components::COMPUTE_NEXT_VERSION);
    let seen = agent.summaries().len();
    drop_file(&file, &old)?;
    agent.wait_for_version_after(seen, COMPUTE_V2_VERSION).await?;
    assert_served_by(&agent.next_cycles(2).await?, COMPUTE_V2_VERSION);
    for (from, to) in [
        (BUILTIN_VERSION, COMPUTE_V2_VERSION),
        (COMPUTE_V2_VERSION, components::COMPUTE_NEXT_VERSION),
        (components::COMPUTE_NEXT_VERSION, COMPUTE_V2_VERSION),
    ] {
        let swaps = log_lines(&format!("now served by {COMPUTE} {to}"));
        assert!(
            swaps
                .iter()
                .any(|l| l.contains(&format!("replacing {COMPUTE} {from}")) && l.contains(&file.display().to_string())),
            "no swap {from} → {to} logged: {swaps:?}"
        );
    }
    assert_eq!(world.waldur.usages(), written, "every version found what the first wrote");
    agent.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pinned_digest_refuses_another_build() -> Result<()> {
    let world = World::new().await?;
    let next = std::fs::read(components::COMPUTE_NEXT)?;
    let pin = sha256_hex(&next);
    let config = world.config(&format!("plugins:\n  {COMPUTE}:\n    sha256: {pin}\n"))?;
    let agent = Agent::start(&config)?;
    agent.wait_for_version(BUILTIN_VERSION).await?;

    // The built-in build, as a file: a valid component, but not the pinned one.
    let file = world.compute_file();
    let other = usage_agent::builtin::component(COMPUTE).context("no built-in compute")?;
    drop_file(&file, other)?;
    let wanted = format!("the config pins sha256 {pin}, the file has sha256 {}", sha256_hex(other));
    let line = wait_for("the pin to refuse the file", || {
        log_lines(&wanted).into_iter().find(|l| l.contains(&file.display().to_string()))
    })
    .await?;
    assert!(line.contains("ERROR") && line.contains("refused"), "{line}");
    assert_served_by(&agent.next_cycles(2).await?, BUILTIN_VERSION);

    // `plugins` shows the pin and the refusal, and fails for it.
    let (listing, ended) = e2e::run_cli_ending(&["plugins", "-c", config.to_str().unwrap_or_default()]).await;
    let error = format!("{:#}", ended.err().context("plugins passed a refused file")?);
    assert!(error.contains(&format!("{} refused, see above", file.display())), "{error}");
    assert!(listing.contains(&format!("pinned:     sha256 {pin}")), "{listing}");
    assert!(listing.contains(&format!("refused:    {}: {wanted}", file.display())), "{listing}");
    assert!(listing.contains("source:     default (built in)"), "{listing}");

    // The pinned build is accepted.
    drop_file(&file, &next)?;
    agent.wait_for_version(components::COMPUTE_NEXT_VERSION).await?;
    agent.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restart_with_a_warm_cache_loads_without_compiling() -> Result<()> {
    let world = World::new().await?;
    let config = world.config("")?;
    let config = config.to_str().unwrap_or_default();
    let next = std::fs::read(components::COMPUTE_NEXT)?;
    drop_file(&world.compute_file(), &next)?;

    let cold = e2e::run_cli(&["plugins", "-c", config]).await?;
    for expected in [
        format!("plugins folder: {}", world.plugins_dir().display()),
        format!("compiled cache: {}", world.cache_dir().display()),
        format!("source:     file {}", world.compute_file().display()),
        format!("component:  {COMPUTE} {}", components::COMPUTE_NEXT_VERSION),
        format!("wit:        waldur:usage@{}", usage_agent::runtime::Contract::CURRENT.version()),
        format!("sha256:     {}", sha256_hex(&next)),
        format!("size:       {} bytes", next.len()),
        "compiled in".to_owned(),
    ] {
        assert!(cold.contains(&expected), "{expected:?} missing from:\n{cold}");
    }
    assert!(!cold.contains("from the cache"), "{cold}");

    // A restart: the same file, the cache now warm.
    let warm = e2e::run_cli(&["plugins", "-c", config]).await?;
    assert!(warm.contains("from the cache in"), "{warm}");
    assert!(!warm.contains("compiled in"), "{warm}");
    assert!(warm.contains(&format!("component:  {COMPUTE} {}", components::COMPUTE_NEXT_VERSION)), "{warm}");

    // Damaged entries are misses, not errors: compiled again, and the report works.
    let mut damaged = 0;
    for entry in std::fs::read_dir(world.cache_dir())? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "cwasm") {
            let bytes = std::fs::read(&path)?;
            std::fs::write(&path, &bytes[..bytes.len() / 3])?;
            damaged += 1;
        }
    }
    assert!(damaged >= 1, "the cache holds no entry");
    let again = e2e::run_cli(&["plugins", "-c", config]).await?;
    assert!(again.contains("compiled in") && !again.contains("from the cache"), "{again}");
    let out = e2e::run_cli(&["report", "-c", config, "--once"]).await?;
    assert!(out.contains(&format!("; {COMPUTE} {}", components::COMPUTE_NEXT_VERSION)), "{out}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn plugins_without_a_config_lists_every_built_in_type() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let plugins = dir.path().join("none-here");
    let out = e2e::run_cli(&["plugins", "--plugins-dir", plugins.to_str().unwrap_or_default()]).await?;
    assert!(out.contains("(missing: the built-in components serve)"), "{out}");
    for backend_type in ["cscs-dwdi-compute", "cscs-dwdi-storage"] {
        assert!(
            out.contains(&format!(
                "\n{backend_type}\n  source:     default (built in)\n  component:  {backend_type} {BUILTIN_VERSION}"
            )),
            "{out}"
        );
    }
    Ok(())
}

/// A backend type with no built-in component keeps its last file's component when the
/// file is deleted (there is nothing to fall back to), and says so once, not at every
/// re-scan.
#[tokio::test(flavor = "multi_thread")]
async fn deleting_the_only_component_of_a_type_is_said_once() -> Result<()> {
    e2e::log::capture();
    let world = World::new().await?;
    let plugins = world.plugins_dir();
    std::fs::copy(components::PROBE, plugins.join("probe.wasm"))?;
    let text = format!(
        "offerings:\n  - name: site\n    backend_type: probe\n    backend_settings:\n{}      probe: env\n    backend_components:\n      status: {{unit_factor: 1}}\n",
        dwdi_access(&world.dwdi, &world.options)
    );
    let config = usage_agent::config::AgentConfig::parse(&text)?;
    let options = usage_agent::plugins::PluginOptions {
        settle: Duration::from_millis(50),
        rescan: Duration::from_secs(3600),
        ..usage_agent::plugins::PluginOptions::in_dir(plugins.clone())
    };
    let runtime = usage_agent::runtime::Runtime::new()?;
    let agent =
        usage_agent::plugins::Plugins::new(usage_agent::backends::Backends::new(runtime), Some(&config), options);
    agent.start().await?;
    std::fs::remove_file(plugins.join("probe.wasm"))?;
    for _ in 0..3 {
        agent.rescan().await;
    }
    let said =
        log_lines(&format!("{} was removed, but probe has no built-in default", plugins.join("probe.wasm").display()));
    assert_eq!(said.len(), 1, "{said:#?}");
    assert!(said[0].contains("probe 0.0.1") && said[0].contains("keeps serving"), "{}", said[0]);
    assert!(agent.backends().get("probe").is_some(), "the component still serves");
    Ok(())
}

/// `usage_agent_plugin_rejections_total` of the compute type for `reason`.
fn rejections(reason: &str) -> f64 {
    let wanted = format!("usage_agent_plugin_rejections_total{{backend_type=\"{COMPUTE}\",reason=\"{reason}\"}} ");
    usage_agent::metrics::global()
        .render()
        .lines()
        .find_map(|l| l.strip_prefix(&wanted).and_then(|v| v.parse().ok()))
        .unwrap_or(0.0)
}

/// The refusal lines logged for `file`.
fn refusals_of(file: &Path) -> Vec<String> {
    log_lines(&format!("plugins: {}", file.display())).into_iter().filter(|l| l.contains("refused:")).collect()
}

/// Drops `bytes` at `file` and waits for its refusal; the line must name the file and
/// `reason`, say that the built-in component keeps serving, and be the only one.
async fn refused(agent: &Agent, file: &Path, bytes: &[u8], reason: &str) -> Result<String> {
    let before = refusals_of(file).len();
    drop_file(file, bytes)?;
    let line = wait_for(&format!("{reason:?} to refuse the file"), || refusals_of(file).get(before).cloned()).await?;
    let builtin = usage_agent::builtin::component(COMPUTE).context("no built-in compute")?;
    assert!(line.contains("ERROR") && line.contains(reason), "{line}");
    assert!(
        line.contains(&format!(
            "; {COMPUTE} {BUILTIN_VERSION} (sha256 {}, built-in) keeps serving",
            sha256_hex(builtin)
        )),
        "{line}"
    );
    // The cycles go on with the built-in component, and the file is not refused again.
    assert_served_by(&agent.next_cycles(2).await?, BUILTIN_VERSION);
    assert_eq!(refusals_of(file).len(), before + 1, "one error, not one per cycle or re-scan");
    Ok(line)
}

/// Each probe whose `describe` breaks one rule (too large, not semver, a forged name, an
/// operation twice, an unknown backend type) is refused naming the rule; the forged
/// name reaches the log escaped and cut; the built-in component keeps serving.
#[tokio::test(flavor = "multi_thread")]
async fn a_description_breaking_a_rule_is_refused_and_the_serving_version_stays() -> Result<()> {
    let world = World::new().await?;
    let agent = Agent::start(&world.config("")?)?;
    agent.wait_for_version(BUILTIN_VERSION).await?;
    let written = world.waldur.usages();
    assert!(!written.is_empty());
    let file = world.compute_file();
    let counted = rejections("description");
    for (variant, path, reason) in components::PROBE_DESCRIBE {
        let bytes = std::fs::read(path)?;
        let line = refused(&agent, &file, &bytes, reason).await?;
        assert!(line.contains("refused: its describe() breaks a rule: "), "{variant}: {line}");
        assert!(line.contains(&sha256_hex(&bytes)), "{variant}: {line}");
        // A 4 MiB version or a forged name is quoted escaped and cut, never whole.
        assert!(line.len() < 1024, "{variant}: {} bytes", line.len());
    }
    let forged = log_lines("holds a control or invisible character");
    assert!(
        forged.iter().any(|l| l.contains("its name \"probe\\n2026-01-01T00:00:00Z ERROR forged\\u{1b}")),
        "{forged:#?}"
    );
    let log = e2e::log::text();
    assert!(!log.contains('\u{1b}') && !log.lines().any(|l| l.starts_with("2026-01-01T00:00:00Z ERROR forged")));
    assert_eq!(rejections("description") - counted, components::PROBE_DESCRIBE.len() as f64);
    // Waldur: the built-in component's usage stands, unchanged by the refused files.
    assert_eq!(world.waldur.usages().len(), written.len());
    agent.stop().await
}

/// A file larger than `plugins_max_file_mib` is refused without being read, a file
/// slower to compile than `plugins_compile_timeout_seconds` is refused; the built-in
/// component keeps serving, and the file within the size bound is accepted.
#[tokio::test(flavor = "multi_thread")]
async fn plugin_files_are_bounded_in_size_and_compile_time() -> Result<()> {
    let world = World::new().await?;
    let next = std::fs::read(components::COMPUTE_NEXT)?;
    let limit_mib = next.len() / (1024 * 1024) + 1;
    // The second build with a custom section of `limit_mib` MiB: still a valid
    // component, only too large.
    let mut padded = next.clone();
    let payload = limit_mib << 20;
    padded.push(0);
    let name = b"padding";
    let mut size = payload + 1 + name.len();
    while size >= 0x80 {
        padded.push((size as u8 & 0x7f) | 0x80);
        size >>= 7;
    }
    padded.push(size as u8);
    padded.push(name.len() as u8);
    padded.extend_from_slice(name);
    padded.resize(padded.len() + payload, 0);

    let config = world.config(&format!("plugins_max_file_mib: {limit_mib}\n"))?;
    let agent = Agent::start(&config)?;
    agent.wait_for_version(BUILTIN_VERSION).await?;
    let file = world.compute_file();
    let counted = rejections("too_large");
    let line = refused(&agent, &file, &padded, &format!("refused: the file is {} bytes", padded.len())).await?;
    assert!(line.contains(&format!("more than plugins_max_file_mib allows ({limit_mib} MiB)")), "{line}");
    assert!(!line.contains(&sha256_hex(&padded)), "refused unread, so no digest: {line}");
    assert_eq!(rejections("too_large") - counted, 1.0);
    // Within the limit, the same build is accepted.
    drop_file(&file, &next)?;
    agent.wait_for_version(components::COMPUTE_NEXT_VERSION).await?;
    agent.stop().await?;

    // A compile bound no compile can meet: the same file is refused, and not cached
    // for the next start to load.
    let world = World::new().await?;
    let agent = Agent::start(&world.config("plugins_compile_timeout_seconds: 0.001\n")?)?;
    agent.wait_for_version(BUILTIN_VERSION).await?;
    let file = world.compute_file();
    let counted = rejections("compile_timeout");
    let line = refused(
        &agent,
        &file,
        &next,
        "refused: compiling it took longer than 0.001 s (setting plugins_compile_timeout_seconds)",
    )
    .await?;
    assert!(line.contains(&sha256_hex(&next)), "{line}");
    assert_eq!(rejections("compile_timeout") - counted, 1.0);
    // That the abandoned compile leaves no cache entry is a unit test of `plugins`.
    agent.stop().await
}
