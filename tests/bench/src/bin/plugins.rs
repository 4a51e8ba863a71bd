//! Plugins folder: what a swap costs.
//!
//! - compile time of each built-in component (Cranelift, what a cold start or a new
//!   file pays), side by side with loading the same component from the compiled cache
//!   (what a restart pays);
//! - the time from a file landing in the watched folder to the new version serving,
//!   for a build never seen (compiled) and one already in the cache. Both include the
//!   wait until the file holds still (the `settle` interval, 250 ms, checked twice at
//!   most once the events arrive), validation and setup with one offering.
//!
//! Run: `cargo run --release -p bench --bin plugins`.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use bench::median;
use usage_agent::backends::Backends;
use usage_agent::config::AgentConfig;
use usage_agent::plugins::{Cache, Compiled, PluginEvent, PluginOptions, Plugins};
use usage_agent::runtime::{Runtime, sha256_hex};
use wasmtime::component::Component;

const ROUNDS: usize = 5;
const CACHE_ROUNDS: usize = 20;

/// `bytes` with a custom section appended: the same component with another digest, as
/// a rebuild would have.
fn variant(bytes: &[u8], nonce: usize) -> Vec<u8> {
    let name = b"bench-nonce";
    let payload = nonce.to_le_bytes();
    let mut content = vec![name.len() as u8];
    content.extend_from_slice(name);
    content.extend_from_slice(&payload);
    let mut out = bytes.to_vec();
    out.push(0x00);
    let mut size = content.len();
    loop {
        let byte = (size & 0x7f) as u8;
        size >>= 7;
        if size == 0 {
            out.push(byte);
            break;
        }
        out.push(byte | 0x80);
    }
    out.extend_from_slice(&content);
    out
}

fn config_text() -> String {
    "offerings:\n  - name: compute\n    backend_type: cscs-dwdi-compute\n    backend_settings:\n      cscs_dwdi_api_url: \"https://dwdi.invalid/api/v1\"\n      cscs_dwdi_client_id: bench\n      cscs_dwdi_client_secret: bench\n      cscs_dwdi_oidc_token_url: \"https://auth.invalid/token\"\n    backend_components:\n      nodeHours: {measured_unit: node-hours, unit_factor: 1, accounting_type: usage, label: Node Hours}\n".to_owned()
}

/// Drops `bytes` into the folder and waits for the swap to it.
async fn land(plugins: &Plugins, file: &Path, bytes: &[u8]) -> Result<(f64, Compiled)> {
    let digest = sha256_hex(bytes);
    let mut events = plugins.subscribe();
    // Written beside and renamed in, as the README tells operators to do.
    let temp = file.with_extension("wasm.part");
    std::fs::write(&temp, bytes)?;
    let started = Instant::now();
    std::fs::rename(&temp, file)?;
    loop {
        match tokio::time::timeout(Duration::from_secs(120), events.recv()).await.context("no swap within 120 s")?? {
            PluginEvent::Swapped { new, .. } if new.loaded.sha256 == digest => {
                return Ok((started.elapsed().as_secs_f64(), new.compiled));
            }
            PluginEvent::Refused { reason, .. } => bail!("refused: {reason}"),
            _ => {}
        }
    }
}

/// Removes the file and waits for the default to serve again.
async fn remove(plugins: &Plugins, file: &Path) -> Result<()> {
    let mut events = plugins.subscribe();
    std::fs::remove_file(file)?;
    loop {
        if let PluginEvent::Swapped { new, .. } = tokio::time::timeout(Duration::from_secs(120), events.recv())
            .await
            .context("no fallback within 120 s")??
            && matches!(new.loaded.source, usage_agent::runtime::Source::Builtin)
        {
            return Ok(());
        }
    }
}

fn ms(seconds: f64) -> String {
    format!("{:.1} ms", seconds * 1000.0)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<()> {
    let runtime = Runtime::new()?;
    let engine = runtime.engine().clone();
    let dir = tempfile_dir()?;

    println!("| component | size | compile (median of {ROUNDS}) | load from cache (median of {CACHE_ROUNDS}) |");
    println!("|---|---:|---:|---:|");
    for (name, bytes) in usage_agent::builtin::BUILTIN {
        let mut compile = Vec::new();
        let mut component = None;
        for _ in 0..ROUNDS {
            let started = Instant::now();
            component = Some(Component::new(&engine, bytes)?);
            compile.push(started.elapsed().as_secs_f64());
        }
        let component = component.context("no round ran")?;
        let cache = Cache::new(dir.join("cache-direct"), &engine);
        let digest = sha256_hex(bytes);
        cache.store(&digest, &component);
        let mut load = Vec::new();
        for _ in 0..CACHE_ROUNDS {
            let started = Instant::now();
            cache.load(&engine, &digest).context("cache miss")?;
            load.push(started.elapsed().as_secs_f64());
        }
        println!("| {name} | {} KiB | {} | {} |", bytes.len() / 1024, ms(median(&mut compile)), ms(median(&mut load)));
    }

    // A running agent's folder, watched.
    let config = AgentConfig::parse(&config_text())?;
    let plugins_dir = dir.join("plugins");
    std::fs::create_dir_all(&plugins_dir)?;
    let mut options = PluginOptions::resolve(Some(&config), None, Some(plugins_dir.clone()));
    options.cache_dir = Some(dir.join("cache"));
    let plugins = Plugins::new(Backends::new(runtime.clone()), Some(&config), options.clone());
    plugins.start().await?;
    let _watch = plugins.watch();
    let file = plugins.file_of("cscs-dwdi-compute");
    let builtin = usage_agent::builtin::component("cscs-dwdi-compute").context("no built-in compute")?;

    let mut cold = Vec::new();
    let mut warm = Vec::new();
    for round in 0..ROUNDS {
        let bytes = variant(builtin, round);
        let (seconds, how) = land(&plugins, &file, &bytes).await?;
        if !matches!(how, Compiled::Compiled(_)) {
            bail!("round {round}: a new build came from the cache");
        }
        cold.push(seconds);
        remove(&plugins, &file).await?;
        // The same build again: compiled before, so the cache has it.
        let (seconds, how) = land(&plugins, &file, &bytes).await?;
        if !matches!(how, Compiled::Cached(_)) {
            bail!("round {round}: a known build was compiled again");
        }
        warm.push(seconds);
        remove(&plugins, &file).await?;
    }
    println!();
    println!("| file lands → new version serving (median of {ROUNDS}) | time |");
    println!("|---|---:|");
    println!("| a build never seen (compiled) | {} |", ms(median(&mut cold)));
    println!("| a build in the cache | {} |", ms(median(&mut warm)));
    println!("| of which the settle interval (floor) | {} |", ms(options.settle.as_secs_f64()));
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// A fresh folder under the system temp dir.
fn tempfile_dir() -> Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("usage-agent-bench-plugins-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
