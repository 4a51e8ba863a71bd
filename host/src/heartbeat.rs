//! The heartbeat file: the report loop rewrites it after every cycle, and
//! `usage-agent healthz` calls the agent alive while it is fresh — the same contract as
//! the Python agent's health check (stale after 300 seconds by default).
//!
//! The first line is the Unix time of the beat. Each further line names what keeps an
//! offering's writes out after the last cycle (`held: compute: past-month writes held:
//! …`), which `healthz` reports as not ready.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result, bail};

/// Where the report loop writes its heartbeat unless `heartbeat_file` says otherwise.
pub const DEFAULT_PATH: &str = "/tmp/usage-agent-report.heartbeat";
/// How old a heartbeat may be before the agent counts as dead.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(300);

/// The configured heartbeat file; a relative path is relative to the config file's
/// folder, like the plugins folders, so `report` and `healthz` agree wherever they run.
pub fn path(configured: Option<&Path>, config_file: &Path) -> PathBuf {
    match configured {
        Some(path) => config_file.parent().unwrap_or(Path::new(".")).join(path),
        None => PathBuf::from(DEFAULT_PATH),
    }
}

/// Records "alive now": the Unix time, written to a temporary file and renamed over
/// the heartbeat so a reader never sees half a file.
pub fn touch(path: &Path) -> Result<()> {
    touch_with(path, &[])
}

/// What keeps writes out, per offering, after the last cycle: one line each, shared by
/// the report loop (which sets it) and the beat (which writes it).
pub type Held = Arc<Mutex<Vec<String>>>;

/// [`touch`], with the lines of what keeps writes out.
pub fn touch_with(path: &Path, held: &[String]) -> Result<()> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let mut text = format!("{now}\n");
    for line in held {
        // One line each, whatever an error message holds.
        text.push_str(&format!("held: {}\n", line.replace(['\n', '\r'], " ")));
    }
    let temporary = path.with_extension("tmp");
    std::fs::write(&temporary, text).with_context(|| format!("cannot write heartbeat {}", temporary.display()))?;
    std::fs::rename(&temporary, path).with_context(|| format!("cannot write heartbeat {}", path.display()))
}

/// How often the loop's heartbeat is rewritten between and during cycles.
const BEAT_EVERY: Duration = Duration::from_secs(60);

/// Rewrites the heartbeat every minute while the process runs (cycles can take longer
/// than the staleness limit; the process being alive is what liveness means). Dropping
/// the handle stops it.
pub fn spawn_beat(path: PathBuf, held: Held) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut failed_before = false;
        loop {
            let lines = held.lock().unwrap_or_else(PoisonError::into_inner).clone();
            match touch_with(&path, &lines) {
                Ok(()) => failed_before = false,
                Err(error) if !failed_before => {
                    tracing::warn!("{error:#}");
                    failed_before = true;
                }
                Err(_) => {}
            }
            tokio::time::sleep(BEAT_EVERY).await;
        }
    })
}

/// The age of the heartbeat, from the time written in it.
pub fn age(path: &Path) -> Result<Duration> {
    Ok(read(path)?.0)
}

/// The age of the heartbeat and what keeps writes out (the `held:` lines).
pub fn read(path: &Path) -> Result<(Duration, Vec<String>)> {
    let text = std::fs::read_to_string(path).with_context(|| format!("no heartbeat at {}", path.display()))?;
    let mut lines = text.lines();
    let written: u64 = lines
        .next()
        .unwrap_or_default()
        .trim()
        .parse()
        .with_context(|| format!("heartbeat {} does not hold a time", path.display()))?;
    let held = lines.filter_map(|line| line.strip_prefix("held: ")).map(str::to_owned).collect();
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    if written > now + 60 {
        bail!("heartbeat {} is in the future", path.display());
    }
    Ok((Duration::from_secs(now.saturating_sub(written)), held))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_are_relative_to_the_config_file() {
        let config = Path::new("/etc/waldur/agent.yaml");
        assert_eq!(path(Some(Path::new("run/heartbeat")), config), Path::new("/etc/waldur/run/heartbeat"));
        assert_eq!(
            path(Some(Path::new("/run/usage-agent/heartbeat")), config),
            Path::new("/run/usage-agent/heartbeat")
        );
        assert_eq!(path(None, config), Path::new(DEFAULT_PATH));
    }

    #[test]
    fn fresh_after_touch_and_errors_name_the_file() -> Result<()> {
        let dir = std::env::temp_dir().join(format!("hb-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let file = dir.join("heartbeat");
        let missing = age(&file).err().context("a missing heartbeat has no age")?;
        assert!(format!("{missing:#}").contains("no heartbeat at"), "{missing:#}");
        touch(&file)?;
        assert!(age(&file)? < Duration::from_secs(5));
        touch_with(&file, &["compute: past-month writes held:\nsomething".to_owned()])?;
        let (fresh, held) = read(&file)?;
        assert!(fresh < Duration::from_secs(5));
        assert_eq!(held, ["compute: past-month writes held: something"]);
        std::fs::write(&file, "garbage")?;
        let garbage = age(&file).err().context("garbage has no age")?;
        assert!(format!("{garbage:#}").contains("does not hold a time"), "{garbage:#}");
        std::fs::remove_dir_all(&dir)?;
        Ok(())
    }
}
