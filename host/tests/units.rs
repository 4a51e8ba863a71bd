//! The example systemd units, run as systemd would run them: `systemd-analyze verify`
//! accepts them without a warning, and their command lines — after systemd's own
//! specifier and `$` expansion, which a unit's shell snippet must survive — start the
//! binary as the units' comments promise.

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use serde_json::Value;

const REPORT_UNIT: &str = "usage-agent-report.service";
const HISTORICAL_UNIT: &str = "usage-agent-historical@.service";
const INSTALLED_BINARY: &str = "/usr/local/bin/usage-agent";
const INSTALLED_CONFIG: &str = "/etc/waldur/cscs-dwdi-config.yaml";
const OFFERING_UUID: &str = "11111111-2222-4333-8444-555555555555";

/// A unit from `examples/`, with the installed binary and config paths replaced by this
/// build's binary and `config`.
fn unit(name: &str, config: &Path) -> Result<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples").join(name);
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(text
        .replace(INSTALLED_BINARY, env!("CARGO_BIN_EXE_usage-agent"))
        .replace(INSTALLED_CONFIG, &config.to_string_lossy()))
}

/// The value of the one `key=` line of `unit`.
fn directive<'a>(unit: &'a str, key: &str) -> Result<&'a str> {
    let mut values = unit.lines().filter_map(|line| line.strip_prefix(key)?.strip_prefix('='));
    let value = values.next().with_context(|| format!("no {key}= line"))?;
    ensure!(values.next().is_none(), "more than one {key}= line");
    Ok(value)
}

/// The variables of the unit's `Environment=` lines (one assignment per line, unquoted).
fn environment(unit: &str) -> Result<BTreeMap<String, String>> {
    unit.lines()
        .filter_map(|line| line.strip_prefix("Environment="))
        .map(|assignment| {
            let (name, value) = assignment.split_once('=').with_context(|| format!("not NAME=VALUE: {assignment}"))?;
            Ok((name.to_owned(), value.to_owned()))
        })
        .collect()
}

/// The argv systemd (252, Debian 12) starts for an `ExecStart=` value of unit instance
/// `instance`: specifiers are expanded when the unit is loaded, then the line is split
/// into words, then each word's `$` expressions are replaced from the service's
/// environment. Anything these units do not use is refused rather than guessed.
fn systemd_argv(value: &str, instance: &str, env: &BTreeMap<String, String>) -> Result<Vec<String>> {
    ensure!(!value.starts_with(['-', '@', '+', '!', ':']), "exec prefixes are not emulated: {value}");
    let expanded = expand_specifiers(value, instance)?;
    let mut argv = Vec::new();
    for word in split_words(&expanded)? {
        match word.strip_prefix('$') {
            // A word that is only $NAME becomes the value's whitespace-separated words.
            Some(name) if !name.starts_with(['{', '$']) => {
                if let Some(value) = env.get(name).filter(|_| is_variable_name(name)) {
                    argv.extend(value.split_whitespace().map(str::to_owned));
                }
            }
            _ => argv.push(replace_variables(&word, env)),
        }
    }
    Ok(argv)
}

/// `%i` is the instance, `%%` a percent sign.
fn expand_specifiers(value: &str, instance: &str) -> Result<String> {
    let mut out = String::new();
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('i') => out.push_str(instance),
            Some('%') => out.push('%'),
            other => bail!("specifier %{} is not emulated", other.map(String::from).unwrap_or_default()),
        }
    }
    Ok(out)
}

/// Words separated by whitespace; single or double quotes group, and are removed.
fn split_words(line: &str) -> Result<Vec<String>> {
    ensure!(!line.contains('\\'), "backslash escapes are not emulated: {line}");
    let mut words = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return Ok(words);
        }
        let mut word = String::new();
        while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
            if c == '\'' || c == '"' {
                let quoted: String = chars.by_ref().take_while(|&q| q != c).collect();
                word.push_str(&quoted);
            } else {
                word.push(c);
            }
        }
        words.push(word);
    }
}

/// Within a word: `$$` is `$`, `${NAME}` the variable's value or nothing when it is unset
/// or NAME is not a variable name (so a shell's `${0%_*}` is lost unless written
/// `$${...}`), and `${` before a `:` is left as written.
fn replace_variables(word: &str, env: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = word;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('{') {
            match inner.find(['}', ':']) {
                Some(end) if inner[end..].starts_with('}') => {
                    let name = &inner[..end];
                    out.push_str(env.get(name).filter(|_| is_variable_name(name)).map_or("", String::as_str));
                    rest = &inner[end + 1..];
                }
                _ => {
                    out.push_str("${");
                    rest = inner;
                }
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

fn is_variable_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[test]
fn the_systemd_emulation_follows_systemd() -> Result<()> {
    let env = BTreeMap::from([("A".to_owned(), "x y".to_owned()), ("B".to_owned(), "z".to_owned())]);
    let argv = systemd_argv("/bin/p $A \"${B}-$B\" '${0%%_*}' '$${0%%_*}' ${A:-d} %i 100%%", "I_J", &env)?;
    assert_eq!(argv, ["/bin/p", "x", "y", "z-$B", "", "${0%_*}", "${A:-d}", "I_J", "100%"]);
    assert!(systemd_argv("/bin/p %n", "i", &env).is_err());
    Ok(())
}

/// A config whose Waldur refuses connections at once, with the heartbeat and plugins
/// folder in `dir`, logging at debug level.
fn config_in(dir: &Path) -> Result<PathBuf> {
    let closed_port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let config = dir.join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "log_level: DEBUG\nheartbeat_file: {heartbeat:?}\nplugins_dir: {plugins:?}\nofferings:\n  - name: compute\n    waldur_api_url: http://127.0.0.1:{closed_port}/api/\n    waldur_api_token: t0ken\n    waldur_offering_uuid: {OFFERING_UUID}\n    backend_type: cscs-dwdi-compute\n    backend_settings:\n      cscs_dwdi_api_url: https://dwdi.example/api/v1\n      cscs_dwdi_client_id: id\n      cscs_dwdi_client_secret: s3cret\n      cscs_dwdi_oidc_token_url: https://auth.example/token\n    backend_components:\n      nodeHours: {{unit_factor: 1}}\n",
            heartbeat = dir.join("heartbeat"),
            plugins = dir.join("plugins"),
        ),
    )?;
    Ok(config)
}

/// Runs `argv` with only `env` (and PATH) in its environment.
fn command(argv: &[String], env: &BTreeMap<String, String>) -> Result<Command> {
    let (program, args) = argv.split_first().context("an empty command line")?;
    let mut command = Command::new(program);
    command.args(args).env_clear().envs(env);
    if let Some(path) = std::env::var_os("PATH") {
        command.env("PATH", path);
    }
    Ok(command)
}

/// The JSON log lines on `stderr`; any other line fails.
fn json_lines(stderr: &[u8]) -> Result<Vec<Value>> {
    let text = String::from_utf8_lossy(stderr);
    text.lines().map(|line| serde_json::from_str(line).with_context(|| format!("not JSON: {line}"))).collect()
}

#[test]
fn both_units_pass_systemd_analyze_verify() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let config = config_in(dir.path())?;
    for name in [REPORT_UNIT, HISTORICAL_UNIT] {
        let path = dir.path().join(name);
        std::fs::write(&path, unit(name, &config)?)?;
        let output = Command::new("systemd-analyze")
            .arg("verify")
            .arg(&path)
            .output()
            .context("cannot run systemd-analyze (Debian package systemd; tests/run-all installs it)")?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        // An unknown key or a bad value is only a warning: any output fails the test.
        ensure!(output.status.success() && stderr.trim().is_empty(), "{name}: {}\n{stderr}", output.status);
    }
    Ok(())
}

#[test]
fn the_historical_unit_hands_its_instance_dates_to_the_loader() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let config = config_in(dir.path())?;
    let unit = unit(HISTORICAL_UNIT, &config)?;
    // What the unit's EnvironmentFile holds.
    let env = BTreeMap::from([
        ("OFFERING_UUID".to_owned(), OFFERING_UUID.to_owned()),
        ("USAGE_AGENT_USER_TOKEN".to_owned(), "t0ken-from-env-file".to_owned()),
    ]);
    let exec_start = directive(&unit, "ExecStart")?;

    let argv = systemd_argv(exec_start, "2024-01-01_2024-12-31", &env)?;
    let output = command(&argv, &env)?.output()?;
    let lines = json_lines(&output.stderr)?;
    let started = lines
        .iter()
        .find(|line| line["message"] == "historical load started")
        .with_context(|| format!("the load did not start: {}", String::from_utf8_lossy(&output.stderr)))?;
    assert_eq!(
        (&started["first"], &started["last"], &started["months"]),
        (&"2024-01-01".into(), &"2024-12-31".into(), &12.into())
    );
    assert_eq!(started["offering"], "compute");
    // Waldur is down here, so the load fails, naming it.
    assert!(!output.status.success());
    assert!(
        lines.last().is_some_and(
            |line| line["level"] == "ERROR" && line["message"].as_str().is_some_and(|m| m.contains("Waldur"))
        )
    );

    // Dates the wrong way round are refused, both named.
    let argv = systemd_argv(exec_start, "2024-12-31_2024-01-01", &env)?;
    let output = command(&argv, &env)?.output()?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success() && stderr.contains("--start-date 2024-12-31 is after --end-date 2024-01-01"),
        "{stderr}"
    );
    assert!(!stderr.contains("t0ken-from-env-file"), "{stderr}");
    Ok(())
}

#[test]
fn the_report_unit_validates_then_loops_and_stops_cleanly_on_sigterm() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let config = config_in(dir.path())?;
    let unit = unit(REPORT_UNIT, &config)?;
    let env = environment(&unit)?;
    assert_eq!(env.get("WALDUR_SITE_AGENT_REPORT_PERIOD_MINUTES").map(String::as_str), Some("30"));

    let pre = systemd_argv(directive(&unit, "ExecStartPre")?, "", &env)?;
    let output = command(&pre, &env)?.output()?;
    ensure!(output.status.success(), "ExecStartPre failed: {}", String::from_utf8_lossy(&output.stderr));

    let start = systemd_argv(directive(&unit, "ExecStart")?, "", &env)?;
    let mut child = command(&start, &env)?.stdout(Stdio::null()).stderr(Stdio::piped()).spawn()?;
    let stderr = child.stderr.take().context("no stderr")?;
    let (lines, received) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    // The first cycle runs (and fails: Waldur is down); the loop then waits 30 minutes.
    let mut seen = Vec::new();
    let summary = loop {
        let line = received
            .recv_timeout(Duration::from_secs(120))
            .with_context(|| format!("no cycle summary:\n{}", seen.join("\n")))?;
        let parsed: Value = serde_json::from_str(&line).with_context(|| format!("not JSON: {line}"))?;
        seen.push(line);
        // The cycle's summary: `compute 2026-11..2026-12: 0 resources × 0 months: …`.
        if parsed["message"].as_str().is_some_and(|m| m.starts_with("compute ") && m.contains(" resources × ")) {
            break parsed;
        }
    };
    assert_eq!(summary["backend_type"], "cscs-dwdi-compute");
    // The unit leaves the level to the config's log_level.
    ensure!(seen.iter().any(|line| line.contains(r#""level":"DEBUG""#)), "no debug line:\n{}", seen.join("\n"));

    // systemd stops it with SIGTERM (KillSignal=): a clean exit, so Restart=on-failure
    // does not start it again.
    assert_eq!(directive(&unit, "KillSignal")?, "SIGTERM");
    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status()?;
    ensure!(status.success(), "kill failed");
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!("still running a minute after SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "{status}");
    // The pipe closes with the process, which ends the reader.
    let rest: Vec<String> = received.iter().collect();
    assert!(rest.iter().any(|line| line.contains("stopped by signal")), "{rest:?}");
    ensure!(dir.path().join("heartbeat").exists(), "the loop touched no heartbeat");
    Ok(())
}
