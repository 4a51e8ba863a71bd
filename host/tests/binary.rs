//! The `usage-agent` binary itself, as systemd runs it: what reaches stderr and the
//! exit status. (The commands' behaviour is tested in-process in `tests/e2e`.)

use std::process::{Command, Output};

use anyhow::{Context as _, Result};

/// One compute offering, valid but for what `top` adds at the top level. Nothing
/// listens at its Waldur and DWDI addresses.
fn config_text(top: &str) -> String {
    format!(
        "{top}offerings:\n  - name: compute\n    waldur_api_url: http://127.0.0.1:9/api/\n    waldur_api_token: t0ken\n    waldur_offering_uuid: 11111111-2222-4333-8444-555555555555\n    backend_type: cscs-dwdi-compute\n    backend_settings:\n      cscs_dwdi_api_url: https://dwdi.example/api/v1\n      cscs_dwdi_client_id: id\n      cscs_dwdi_client_secret: s3cret\n      cscs_dwdi_oidc_token_url: https://auth.example/token\n    backend_components:\n      nodeHours: {{unit_factor: 1}}\n"
    )
}

fn usage_agent(args: &[&str], env: &[(&str, &str)]) -> Result<Output> {
    let mut command = Command::new(env!("CARGO_BIN_EXE_usage-agent"));
    command.args(args).env_remove("RUST_LOG").env_remove("USAGE_AGENT_USER_TOKEN");
    for (key, value) in env {
        command.env(key, value);
    }
    command.output().context("cannot run usage-agent")
}

#[test]
fn with_json_logs_even_the_fatal_error_is_a_json_line() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("config.yaml");
    std::fs::write(&config, config_text("reporting_periods: 0\n"))?;
    let output = usage_agent(&["--log-format", "json", "check-config", "-c", &config.to_string_lossy()], &[])?;
    assert!(!output.status.success());
    let stderr = String::from_utf8(output.stderr)?;
    let lines: Vec<serde_json::Value> =
        stderr.lines().map(serde_json::from_str).collect::<Result<_, _>>().with_context(|| stderr.clone())?;
    let last = lines.last().context("nothing on stderr")?;
    assert_eq!(last["level"], "ERROR", "{stderr}");
    assert!(last["message"].as_str().is_some_and(|m| m.contains("reporting_periods")), "{stderr}");

    // So is a command line clap refuses, with clap's usage exit code.
    for args in [&["--log-format", "json", "report", "--bogus"][..], &["report", "--log-format=json", "--bogus"]] {
        let output = usage_agent(args, &[])?;
        let stderr = String::from_utf8(output.stderr)?;
        let line: serde_json::Value = serde_json::from_str(&stderr).with_context(|| stderr.clone())?;
        assert_eq!((output.status.code(), &line["level"]), (Some(2), &"ERROR".into()), "{stderr}");
        assert!(line["message"].as_str().is_some_and(|m| m.contains("--bogus")), "{stderr}");
    }
    // Help stays text.
    let output = usage_agent(&["--log-format", "json", "report", "--help"], &[])?;
    assert!(output.status.success() && String::from_utf8(output.stdout)?.contains("Usage:"));

    // As text, the same error is one plain line.
    let output = usage_agent(&["check-config", "-c", &config.to_string_lossy()], &[])?;
    let stderr = String::from_utf8(output.stderr)?;
    assert!(stderr.starts_with("usage-agent: ") && stderr.contains("reporting_periods"), "{stderr}");
    Ok(())
}

#[test]
fn the_historical_token_can_come_from_the_environment_and_is_never_shown() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("config.yaml");
    std::fs::write(&config, config_text(""))?;
    let config = config.to_string_lossy();
    let args = [
        "load-historical-usage",
        "-c",
        &config,
        "-o",
        "2f0c4d1e-0000-4000-8000-000000000001",
        "-s",
        "2024-01-01",
        "-e",
        "2024-01-31",
    ];
    // Read from the variable: an empty one is refused as the flag would be.
    let output = usage_agent(&args, &[("USAGE_AGENT_USER_TOKEN", " ")])?;
    let stderr = String::from_utf8(output.stderr)?;
    assert!(
        !output.status.success() && stderr.contains("--user-token") && stderr.contains("the token is empty"),
        "{stderr}"
    );
    // A real one gets as far as the offering lookup, and appears in no output.
    let output = usage_agent(&args, &[("USAGE_AGENT_USER_TOKEN", "t0ken-from-env")])?;
    let everything = format!("{}{}", String::from_utf8(output.stdout)?, String::from_utf8(output.stderr)?);
    assert!(
        !output.status.success() && everything.contains("no offering with this waldur_offering_uuid"),
        "{everything}"
    );
    assert!(!everything.contains("t0ken-from-env"), "{everything}");
    // `--help` names the variable but not its value.
    let output = usage_agent(&["load-historical-usage", "--help"], &[("USAGE_AGENT_USER_TOKEN", "t0ken-from-env")])?;
    let help = String::from_utf8(output.stdout)?;
    assert!(help.contains("USAGE_AGENT_USER_TOKEN") && !help.contains("t0ken-from-env"), "{help}");
    Ok(())
}

/// `--version` names what runs: the host, the contracts, each built-in component as its
/// own `describe()` reports it (asked here through `plugins`) and the wasmtime; `-V` the
/// first line alone.
#[test]
fn the_version_names_the_contracts_and_the_built_in_components_as_they_describe_themselves() -> Result<()> {
    let output = usage_agent(&["--version"], &[])?;
    assert!(output.status.success());
    let version = String::from_utf8(output.stdout)?;
    let mut lines = version.lines();
    assert_eq!(lines.next(), Some(concat!("usage-agent ", env!("CARGO_PKG_VERSION"))), "{version}");
    assert_eq!(
        lines.next(),
        Some("contracts served: waldur:usage@3.1.0, waldur:usage@2.0.0 (components built against 2.x and 3.x)"),
        "{version}"
    );
    assert_eq!(lines.next(), Some("built-in components:"), "{version}");
    let listed: Vec<&str> = lines.by_ref().take_while(|line| line.starts_with("  ")).collect();
    let wasmtime = version.lines().last().context("empty --version")?;
    assert!(wasmtime.strip_prefix("wasmtime ").is_some_and(|v| v.split('.').count() == 3), "{version}");

    // What each built-in component says of itself, with an empty plugins folder.
    let dir = tempfile::tempdir()?;
    let plugins_dir = dir.path().join("plugins").to_string_lossy().into_owned();
    let cache = dir.path().join("cache").to_string_lossy().into_owned();
    let output = usage_agent(&["plugins", "--plugins-dir", &plugins_dir], &[("CACHE_DIRECTORY", &cache)])?;
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let plugins = String::from_utf8(output.stdout)?;
    let mut described: Vec<String> = plugins
        .split("\n\n")
        .filter(|block| block.contains("default (built in)"))
        .map(|block| {
            let field = |name: &str| {
                block.lines().find_map(|l| l.trim_start().strip_prefix(name)).map(str::trim).unwrap_or_default()
            };
            format!("  {} ({})", field("component:"), field("wit:"))
        })
        .collect();
    assert_eq!(described.len(), 3, "{plugins}");
    // `plugins` lists by backend type, `--version` in build order.
    let mut listed: Vec<String> = listed.into_iter().map(str::to_owned).collect();
    listed.sort();
    described.sort();
    assert_eq!(listed, described, "--version:\n{version}\nplugins:\n{plugins}");

    let output = usage_agent(&["-V"], &[])?;
    assert_eq!(String::from_utf8(output.stdout)?, concat!("usage-agent ", env!("CARGO_PKG_VERSION"), "\n"));
    Ok(())
}

/// Every command that reads a config, with that config.
fn every_config_command(config: &str) -> Vec<Vec<String>> {
    let uuid = "11111111-2222-4333-8444-555555555555";
    let commands: [&[&str]; 7] = [
        &["check-config", "-c", config],
        &["report", "--once", "-c", config],
        &["usage", "-c", config, "--resource", "p1"],
        &["ping", "-c", config],
        &["load-historical-usage", "-c", config, "-o", uuid, "-s", "2024-01-01", "-e", "2024-01-31", "-t", "t"],
        &["plugins", "-c", config],
        &["healthz", "-c", config],
    ];
    commands.iter().map(|args| args.iter().map(|a| (*a).to_owned()).collect()).collect()
}

#[test]
fn a_config_that_could_write_a_wrong_number_stops_every_command_before_any_request() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("config.yaml");
    // Nothing listens on the Waldur and DWDI URLs: a command that got as far as a
    // request would fail otherwise, naming them.
    std::fs::write(&config, config_text("").replace("unit_factor: 1", "unit_factor: 0"))?;
    let config = config.to_string_lossy();
    for args in every_config_command(&config) {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let output = usage_agent(&args, &[])?;
        let stderr = String::from_utf8(output.stderr)?;
        assert_eq!(output.status.code(), Some(1), "{args:?}: {stderr}");
        assert_eq!(
            stderr.trim_end(),
            format!(
                "usage-agent: invalid config file {config}: offerings[0].backend_components.nodeHours.unit_factor: must be a number above 0, not 0"
            ),
            "{args:?}"
        );
    }
    Ok(())
}

#[test]
fn unknown_and_repeated_keys_are_warned_about_by_every_command_and_listed_by_check_config() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("config.yaml");
    let text = config_text("reporting_period: 1\ntimezone: UTC\ntimezone: UTC\n")
        .replace("cscs_dwdi_client_id: id", "cscs_dwdi_client_id: id\n      socks_proxi: \"socks5://localhost:1\"");
    std::fs::write(&config, text)?;
    let config = config.to_string_lossy();
    let warnings = [
        "timezone: given twice, at lines 2 and 3; the one at line 3 is used (as the Python agent reads it), remove the other",
        "reporting_period: not a key this agent reads; ignored; did you mean reporting_periods?",
        "offerings[0].backend_settings.socks_proxi: not a setting of the host or of the DWDI backends; ignored; did you mean socks_proxy?",
    ];
    for args in every_config_command(&config) {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let output = usage_agent(&args, &[])?;
        let (stdout, stderr) = (String::from_utf8(output.stdout)?, String::from_utf8(output.stderr)?);
        if args[0] == "check-config" {
            // A warning is not a refusal; check-config prints them with its report.
            assert!(output.status.success(), "{stderr}");
            assert!(stdout.contains(": valid; timezone UTC, reporting_periods 2; 3 warnings\n"), "{stdout}");
            for warning in warnings {
                assert!(stdout.contains(&format!("\nwarning    {warning}\n")), "{warning}\n{stdout}");
            }
            continue;
        }
        for warning in warnings {
            let line = stderr.lines().find(|line| line.ends_with(&format!("config: {warning}")));
            assert!(line.is_some_and(|l| l.contains("WARN")), "{args:?}: {warning}\n{stderr}");
        }
    }
    Ok(())
}

#[test]
fn a_config_path_that_is_not_a_regular_file_is_refused_at_once() -> Result<()> {
    let started = std::time::Instant::now();
    for args in every_config_command("/dev/zero") {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let output = usage_agent(&args, &[])?;
        let stderr = String::from_utf8(output.stderr)?;
        assert_eq!(output.status.code(), Some(1), "{args:?}: {stderr}");
        assert_eq!(
            stderr.trim_end(),
            "usage-agent: cannot read config file /dev/zero: not a regular file (it is a character device)",
            "{args:?}"
        );
    }
    // Not a timing assertion: a generous bound that reading /dev/zero could never meet.
    assert!(started.elapsed() < std::time::Duration::from_secs(120));
    Ok(())
}

/// Runs usage-agent, failing instead of hanging past a generous bound (a FIFO opened by
/// mistake would block it forever).
fn usage_agent_bounded(args: &[&str]) -> Result<Output> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_usage-agent"))
        .args(args)
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    while child.try_wait()?.is_none() {
        if std::time::Instant::now() > deadline {
            child.kill()?;
            anyhow::bail!("usage-agent {args:?} did not finish: did it open a FIFO?");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    child.wait_with_output().context("cannot read usage-agent's output")
}

#[test]
fn the_plugins_folder_names_every_entry_meant_as_a_plugin_and_never_reads_a_fifo_or_a_device() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let plugins = dir.path().join("plugins");
    std::fs::create_dir(&plugins)?;
    let made = Command::new("mkfifo").arg(plugins.join("cscs-dwdi-compute.wasm")).status()?;
    assert!(made.success());
    std::fs::create_dir(plugins.join("cscs-dwdi-storage.wasm"))?;
    std::os::unix::fs::symlink("cscs-dwdi-inference.wasm", plugins.join("cscs-dwdi-inference.wasm"))?;
    std::os::unix::fs::symlink("/dev/zero", plugins.join("cscs_dwdi_compute.wasm"))?;
    std::os::unix::fs::symlink("/nonexistent/site.wasm", plugins.join("my-site-usage.wasm"))?;
    std::fs::write(plugins.join("CSCS-DWDI-Storage"), b"not even wasm")?;
    std::fs::write(plugins.join(".cscs-dwdi-compute.wasm.new"), b"being copied in")?;
    std::fs::write(plugins.join("notes.txt"), b"not meant as a plugin")?;
    let folder = plugins.to_string_lossy().into_owned();

    let output = usage_agent_bounded(&["plugins", "--plugins-dir", &folder])?;
    let (stdout, stderr) = (String::from_utf8(output.stdout)?, String::from_utf8(output.stderr)?);
    assert_eq!(output.status.code(), Some(1), "{stdout}{stderr}");
    let refused =
        |name: &str, why: &str| format!("  refused:    {folder}/{name}: {why}; only a regular file can serve\n");
    for line in [
        refused("cscs-dwdi-compute.wasm", "not a regular file (it is a FIFO)"),
        refused("cscs-dwdi-storage.wasm", "not a regular file (it is a folder)"),
        refused("cscs-dwdi-inference.wasm", "a symbolic link loop"),
        format!(
            "  {folder}/CSCS-DWDI-Storage: misnamed: a file for cscs-dwdi-storage must be named cscs-dwdi-storage.wasm; it serves nothing\n"
        ),
        format!(
            "  {folder}/cscs_dwdi_compute.wasm: misnamed: a file for cscs-dwdi-compute must be named cscs-dwdi-compute.wasm; it serves nothing\n"
        ),
        format!(
            "  {folder}/my-site-usage.wasm: no offering uses backend type \"my-site-usage\" (in use: cscs-dwdi-compute, cscs-dwdi-inference, cscs-dwdi-storage); not loaded\n"
        ),
    ] {
        assert!(stdout.contains(&line), "missing {line:?} in\n{stdout}");
    }
    assert!(!stdout.contains("notes.txt") && !stdout.contains(".new"), "{stdout}");
    // The built-in components serve meanwhile.
    assert_eq!(stdout.matches("  source:     default (built in)\n").count(), 3, "{stdout}");
    assert!(stderr.contains("usage-agent: plugins folder: ") && stderr.contains("refused, see above"), "{stderr}");

    // With a config, check-config says the same and fails; a file for a backend type
    // no offering uses is only listed.
    let config = dir.path().join("config.yaml");
    std::fs::write(&config, config_text(&format!("plugins_dir: {folder}\n")))?;
    let output = usage_agent_bounded(&["check-config", "-c", &config.to_string_lossy()])?;
    let (stdout, stderr) = (String::from_utf8(output.stdout)?, String::from_utf8(output.stderr)?);
    assert_eq!(output.status.code(), Some(1), "{stdout}{stderr}");
    assert!(
        stdout.contains(&format!("  refused  {folder}/cscs-dwdi-compute.wasm: not a regular file (it is a FIFO)")),
        "{stdout}"
    );
    assert!(stdout.contains(&format!("  refused  {folder}/cscs_dwdi_compute.wasm: misnamed")), "{stdout}");
    assert!(
        stdout.contains(&format!(
            "  ignored  {folder}/cscs-dwdi-storage.wasm: no offering uses backend type \"cscs-dwdi-storage\" (in use: cscs-dwdi-compute); not loaded\n"
        )),
        "{stdout}"
    );
    assert!(stdout.contains(&format!("  ignored  {folder}/CSCS-DWDI-Storage: misnamed")), "{stdout}");

    // A clean folder passes.
    let clean = dir.path().join("clean");
    std::fs::create_dir(&clean)?;
    let output = usage_agent_bounded(&["plugins", "--plugins-dir", &clean.to_string_lossy()])?;
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    Ok(())
}

#[test]
fn a_plugins_folder_that_is_a_file_is_an_error() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("plugins");
    std::fs::write(&file, b"")?;
    let output = usage_agent_bounded(&["plugins", "--plugins-dir", &file.to_string_lossy()])?;
    let stderr = String::from_utf8(output.stderr)?;
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert_eq!(
        stderr.trim_end(),
        format!(
            "usage-agent: plugins folder {}: a file; name a folder (plugins_dir or --plugins-dir), or one that does not exist to use only the built-in components",
            file.display()
        )
    );
    Ok(())
}

/// Simulators in this process for a `usage-agent` child: DWDI with last month and this
/// one for `accounts` accounts, Waldur answering every request `latency` late, a staff
/// token (so last month is written too), and the config file pointing at both.
struct Sims {
    /// Kept to keep serving (and the folder to stay) while the child runs.
    _dwdi: dwdi_sim::DwdiSim,
    waldur: waldur_sim::WaldurSim,
    offering: String,
    _dir: tempfile::TempDir,
    config: std::path::PathBuf,
}

impl Sims {
    async fn start(accounts: usize, latency: std::time::Duration, top: &str) -> Result<Self> {
        use waldur_sim::{WaldurOptions, WaldurSim, uuid_from};
        let now = jiff::Timestamp::now().to_zoned(jiff::tz::TimeZone::UTC);
        let last = now.date().first_of_month().checked_sub(jiff::ToSpan::days(1))?;
        let months = [(i32::from(last.year()), last.month() as u32), (i32::from(now.year()), now.month() as u32)];
        let data = dwdi_sim::DwdiData::generated(accounts, 1, &months);
        let options = dwdi_sim::DwdiOptions::default();
        let dwdi = dwdi_sim::DwdiSim::start(data.clone(), options.clone()).await?;
        let waldur = WaldurSim::start(WaldurOptions { latency, ..WaldurOptions::default() }).await?;
        waldur.add_token("staff-token", "staff", true);
        let offering = uuid_from("compute");
        waldur.add_offering(&offering, "compute", &["nodeHours"]);
        for account in data.accounts() {
            waldur.add_resource(&offering, &uuid_from(&account), &account, "", "OK");
        }
        let dir = tempfile::tempdir()?;
        let config = dir.path().join("config.yaml");
        let text = format!(
            "timezone: UTC\nreporting_periods: 2\nwaldur_max_concurrency: 2\nheartbeat_file: heartbeat\nplugins_dir: plugins\nplugins_cache_dir: cache\n{top}offerings:\n  - name: compute\n    waldur_api_url: {:?}\n    waldur_api_token: staff-token\n    waldur_offering_uuid: {offering}\n    backend_type: cscs-dwdi-compute\n    backend_settings:\n      cscs_dwdi_api_url: {:?}\n      cscs_dwdi_client_id: {:?}\n      cscs_dwdi_client_secret: {:?}\n      cscs_dwdi_oidc_token_url: {:?}\n    backend_components:\n      nodeHours: {{unit_factor: 1}}\n",
            waldur.url(),
            dwdi.api_url(),
            options.client_id,
            options.client_secret,
            dwdi.token_url(),
        );
        std::fs::write(&config, text)?;
        Ok(Self { _dwdi: dwdi, waldur, offering, _dir: dir, config })
    }

    fn config(&self) -> String {
        self.config.to_string_lossy().into_owned()
    }

    /// Starts `usage-agent ARGS…` with its output captured.
    fn spawn(&self, args: &[&str]) -> Result<std::process::Child> {
        Command::new(env!("CARGO_BIN_EXE_usage-agent"))
            .args(args)
            .env_remove("RUST_LOG")
            .env_remove("USAGE_AGENT_USER_TOKEN")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .context("cannot start usage-agent")
    }

    /// Waits until Waldur has taken `writes` usage writes (the child is mid-cycle).
    async fn wait_for_writes(&self, writes: u64) -> Result<()> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
        while self.waldur.requests().set_usage < writes {
            anyhow::ensure!(std::time::Instant::now() < deadline, "no {writes} writes: {:?}", self.waldur.requests());
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        Ok(())
    }
}

/// Sends SIGTERM to `child` and waits (in a blocking thread) for it to exit.
async fn terminate(child: std::process::Child) -> Result<Output> {
    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status()?;
    anyhow::ensure!(status.success(), "kill -TERM failed");
    let waited = tokio::task::spawn_blocking(move || child.wait_with_output());
    Ok(tokio::time::timeout(std::time::Duration::from_secs(120), waited)
        .await
        .context("no exit after SIGTERM")???)
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_cuts_report_once_short_with_exit_status_75_naming_what_is_unfinished() -> Result<()> {
    let sims = Sims::start(200, std::time::Duration::from_millis(10), "").await?;
    let config = sims.config();
    let child = sims.spawn(&["report", "--once", "-c", &config])?;
    sims.wait_for_writes(5).await?;
    let output = terminate(child).await?;
    let (stdout, stderr) = (String::from_utf8(output.stdout)?, String::from_utf8(output.stderr)?);
    assert_eq!(output.status.code(), Some(75), "{stdout}\n{stderr}");
    // The summary line says which months are not finished, and the final error names
    // the offering with them.
    let summary = stdout.lines().find(|l| l.starts_with("compute ")).unwrap_or_default();
    assert!(summary.contains("; interrupted: ") && summary.ends_with(" not finished"), "{stdout}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("usage-agent: stopped by a signal before the work was done; not finished: compute (")
            && last.contains("Run the same command again"),
        "{stderr}"
    );
    // The writes in flight finished; far from all 400 were made.
    let written = sims.waldur.requests().set_usage;
    assert!(written < 400, "{written} writes: the signal did not stop the cycle");

    // Run again without a signal: it finishes, and exits 0.
    let output = sims.spawn(&["report", "--once", "-c", &config])?.wait_with_output()?;
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(String::from_utf8(output.stdout)?.contains(" 0 failed;"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_cuts_load_historical_usage_short_with_exit_status_75() -> Result<()> {
    let sims = Sims::start(200, std::time::Duration::from_millis(10), "").await?;
    let config = sims.config();
    let month = jiff::Timestamp::now().to_zoned(jiff::tz::TimeZone::UTC).date().first_of_month();
    let start = month.checked_sub(jiff::ToSpan::months(1))?.to_string();
    let args = ["load-historical-usage", "-c", &config, "-o", &sims.offering, "-s", &start, "-e", &start];
    let child = sims.spawn(&args)?;
    sims.wait_for_writes(5).await?;
    let output = terminate(child).await?;
    let stderr = String::from_utf8(output.stderr)?;
    assert_eq!(output.status.code(), Some(75), "{stderr}");
    let unfinished = format!("not finished: compute ({})", &start[..7]);
    assert!(stderr.lines().last().is_some_and(|l| l.contains(&unfinished)), "{stderr}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_ends_the_report_loop_with_status_0_after_the_writes_in_flight() -> Result<()> {
    let sims = Sims::start(200, std::time::Duration::from_millis(10), "").await?;
    let config = sims.config();
    let child = sims.spawn(&["report", "-c", &config, "--period-minutes", "60"])?;
    sims.wait_for_writes(5).await?;
    let output = terminate(child).await?;
    let stderr = String::from_utf8(output.stderr)?;
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("signal received: finishing the work in flight"), "{stderr}");
    assert!(stderr.contains("; interrupted: ") && stderr.contains("stopped by signal"), "{stderr}");
    assert!(sims.waldur.requests().set_usage < 400, "the signal did not stop the cycle");
    Ok(())
}
