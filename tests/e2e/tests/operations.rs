//! What operators run around the service: `check-config` and `healthz`, end to end
//! against the simulators. The metrics endpoint has a test binary of its own
//! (`metrics.rs`), since the registry is one per process.

use anyhow::Result;
use clap::Parser as _;
use e2e::{ConfigFile, OpsWorld, examples_dir, run_cli};

#[tokio::test(flavor = "multi_thread")]
async fn every_example_passes_check_config_and_a_broken_one_names_the_key() -> Result<()> {
    for name in ["cscs-dwdi-compute-config.yaml", "cscs-dwdi-storage-config.yaml", "cscs-dwdi-combined-config.yaml"] {
        let path = examples_dir().join(name);
        let out = run_cli(&["check-config", "-c", &path.to_string_lossy()]).await?;
        assert!(out.contains(": valid;") && out.contains("offerings[0]"), "{name}: {out}");
        assert!(!out.contains("your_oidc_client_secret"), "a secret was printed: {out}");
    }
    let text = std::fs::read_to_string(examples_dir().join("cscs-dwdi-storage-config.yaml"))?
        .replace("      storage_data_type: \"projects\"\n", "");
    let broken = ConfigFile::new(&text)?;
    let error = run_cli(&["check-config", "-c", broken.arg()]).await.err().map(|e| format!("{e:#}")).unwrap_or_default();
    assert_eq!(error, "offerings[0].backend_settings.storage_data_type: missing");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn healthz_follows_the_heartbeat_and_the_services() -> Result<()> {
    let s = OpsWorld::start().await?;
    let dir = tempfile::tempdir()?;
    let file = ConfigFile::new(&s.config(dir.path(), "heartbeat_max_age_seconds: 300\n"))?;
    let heartbeat = dir.path().join("heartbeat");

    // Missing heartbeat: dead.
    let error = run_cli(&["healthz", "--liveness-only", "-c", file.arg()]).await.err().map(|e| format!("{e:#}"));
    assert!(error.is_some_and(|e| e.contains("unhealthy")));
    // Fresh: alive, and both services answer.
    usage_agent::heartbeat::touch(&heartbeat)?;
    let out = run_cli(&["healthz", "-c", file.arg()]).await?;
    assert!(out.contains("ok    liveness") && out.contains("ok    ops: Waldur") && out.contains("ok    ops: DWDI token"), "{out}");
    // Stale: written 10 minutes ago.
    let old = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs() - 600;
    std::fs::write(&heartbeat, format!("{old}\n"))?;
    assert!(run_cli(&["healthz", "--liveness-only", "-c", file.arg()]).await.is_err());
    // Fresh again but Waldur down: not ready, and the failing check is named.
    usage_agent::heartbeat::touch(&heartbeat)?;
    let waldur_url = s.waldur.url();
    s.waldur.shutdown().await;
    let mut cli_out = Vec::new();
    let cli = usage_agent::cli::Cli::try_parse_from(["usage-agent", "healthz", "-c", file.arg()])?;
    let result = usage_agent::cli::run(cli, &mut cli_out).await;
    let printed = String::from_utf8(cli_out)?;
    assert!(result.is_err(), "{printed}");
    assert!(printed.contains("FAIL  ops: Waldur"), "{printed} ({waldur_url})");
    assert!(!printed.contains(&s.options.client_secret) && !printed.contains("ops-token"), "{printed}");
    Ok(())
}
