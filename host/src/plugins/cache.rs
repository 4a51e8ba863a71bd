//! Compiled components on disk, so a restart does not recompile.
//!
//! Compiling a component takes Cranelift most of a second per component; loading the
//! machine code it produced takes milliseconds. An entry is keyed by the sha256 of the
//! `.wasm` file and by wasmtime's compatibility hash of the engine (wasmtime version,
//! target, compiler settings), so a different file or a different host build simply
//! misses. An entry holds a digest of its own content, checked before wasmtime sees a
//! byte of it: a stale, truncated or corrupt entry is a cache miss, never an error and
//! never code that runs.
//!
//! This module is the only place in the host that uses `unsafe`: wasmtime cannot check
//! that precompiled machine code is what it claims to be, so loading it is `unsafe`.
//!
//! Why not wasmtime's own cache (its `cache` feature, `Config::cache`): it is keyed by
//! content too and works offline, but it stores entries zstd-compressed without a
//! checksum and loads whatever they decompress to, so a damaged entry can become code
//! that runs (one flipped bit decoded silently to other bytes at 191 of 200 positions
//! of a 346 KB zstd frame); it cannot say whether a given load was a hit, which the
//! plugins log and `a_restart_with_a_warm_cache_loads_without_compiling` rely on; and it
//! adds 19 crates, zstd's C library among them (about a minute of CPU for a debug build here).
//! Neither guards against a deliberate rewrite of an entry (that takes the agent's own
//! user): the folder must be writable by the agent alone.

use std::hash::{Hash as _, Hasher};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use sha2::{Digest as _, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

/// Marks an entry written by this module, format version 1.
const MAGIC: &[u8; 8] = b"UACWASM1";
/// Magic, then the sha256 of the rest.
const HEADER_LEN: usize = MAGIC.len() + 32;

/// A folder of compiled components for one engine.
#[derive(Debug)]
pub struct Cache {
    dir: PathBuf,
    /// The engine's compatibility hash, hex: part of every entry's name.
    engine_key: String,
    /// Write failures are logged once: a read-only cache must not flood the log.
    write_warned: AtomicBool,
}

/// Feeds what `Hash` writes into sha256, so the key is stable across runs (std's
/// hashers are not meant to be).
struct DigestHasher(Sha256);

impl Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        0
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

impl Cache {
    /// A cache in `dir` for components compiled by `engine`. The folder is created on
    /// the first store.
    pub fn new(dir: PathBuf, engine: &Engine) -> Self {
        let mut hasher = DigestHasher(Sha256::new());
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let digest = hasher.0.finalize();
        let engine_key = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
        Self { dir, engine_key, write_warned: AtomicBool::new(false) }
    }

    /// The entry of the component whose `.wasm` has digest `sha256`.
    pub fn entry_path(&self, sha256: &str) -> PathBuf {
        self.dir.join(format!("{sha256}-{}.cwasm", self.engine_key))
    }

    /// The compiled component for `sha256`, or `None` on any miss: absent, unreadable,
    /// corrupt, or made by another engine.
    pub fn load(&self, engine: &Engine, sha256: &str) -> Option<Component> {
        let path = self.entry_path(sha256);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => {
                tracing::warn!("plugins cache: cannot read {}: {e}; compiling instead", path.display());
                return None;
            }
        };
        let Some(artifact) = verified(&bytes) else {
            tracing::warn!("plugins cache: {} is corrupt; compiling instead", path.display());
            return None;
        };
        match deserialize(engine, artifact) {
            Ok(component) => Some(component),
            Err(e) => {
                tracing::warn!("plugins cache: {} cannot be used ({e:#}); compiling instead", path.display());
                None
            }
        }
    }

    /// Stores `component` (compiled from the `.wasm` with digest `sha256`). Written to a
    /// temporary file and renamed, so a reader never sees half an entry; failures are
    /// logged (once) and otherwise ignored.
    pub fn store(&self, sha256: &str, component: &Component) {
        if let Err(e) = self.try_store(sha256, component)
            && !self.write_warned.swap(true, Ordering::Relaxed)
        {
            tracing::warn!(
                "plugins cache: cannot write to {}: {e:#}; components are compiled at every start",
                self.dir.display()
            );
        }
    }

    fn try_store(&self, sha256: &str, component: &Component) -> anyhow::Result<()> {
        let artifact = component.serialize()?;
        std::fs::create_dir_all(&self.dir)?;
        let path = self.entry_path(sha256);
        let mut temp = tempfile_in(&self.dir)?;
        temp.1.write_all(MAGIC)?;
        temp.1.write_all(&Sha256::digest(&artifact))?;
        temp.1.write_all(&artifact)?;
        temp.1.sync_all()?;
        drop(temp.1);
        std::fs::rename(&temp.0, &path).inspect_err(|_| {
            let _ = std::fs::remove_file(&temp.0);
        })?;
        Ok(())
    }
}

/// A new file in `dir` with a name no other writer uses.
fn tempfile_in(dir: &Path) -> std::io::Result<(PathBuf, std::fs::File)> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    for attempt in 0..16u32 {
        let path = dir.join(format!(".tmp-{}-{nanos}-{attempt}", std::process::id()));
        match std::fs::OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(file) => return Ok((path, file)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(std::io::Error::other("no free temporary file name"))
}

/// The artifact inside an entry, if its digest matches.
fn verified(entry: &[u8]) -> Option<&[u8]> {
    if entry.len() <= HEADER_LEN || &entry[..MAGIC.len()] != MAGIC {
        return None;
    }
    let (digest, artifact) = entry[MAGIC.len()..].split_at(32);
    (Sha256::digest(artifact).as_slice() == digest).then_some(artifact)
}

#[allow(unsafe_code)]
fn deserialize(engine: &Engine, artifact: &[u8]) -> wasmtime::Result<Component> {
    // SAFETY: wasmtime requires that the bytes were produced by `serialize` of a
    // compatible engine and not altered since. They come from the agent's own cache
    // folder, were written by `Cache::store` from `Component::serialize`, and their
    // sha256 (written with them) has just been checked, so a truncated or damaged entry
    // never gets here. Wasmtime itself checks its version and the engine's settings in
    // the artifact's header and refuses a mismatch with an error.
    unsafe { Component::deserialize(engine, artifact) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn engine() -> Engine {
        Engine::default()
    }

    /// The smallest component: no imports, no exports.
    const EMPTY_COMPONENT: &[u8] = b"\0asm\x0d\0\x01\0";

    #[test]
    fn a_stored_entry_loads_and_damage_is_a_miss() -> anyhow::Result<()> {
        let engine = engine();
        let dir = tempfile::tempdir()?;
        let cache = Cache::new(dir.path().join("cache"), &engine);
        let digest = crate::runtime::sha256_hex(EMPTY_COMPONENT);
        assert!(cache.load(&engine, &digest).is_none(), "empty cache");
        let component = Component::new(&engine, EMPTY_COMPONENT)?;
        cache.store(&digest, &component);
        assert!(cache.load(&engine, &digest).is_some(), "stored entry loads");

        // Truncated: a miss.
        let path = cache.entry_path(&digest);
        let bytes = std::fs::read(&path)?;
        std::fs::write(&path, &bytes[..bytes.len() / 2])?;
        assert!(cache.load(&engine, &digest).is_none());
        // One flipped byte in the machine code: a miss.
        let mut flipped = bytes.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 0xff;
        std::fs::write(&path, &flipped)?;
        assert!(cache.load(&engine, &digest).is_none());
        // Garbage: a miss.
        std::fs::write(&path, b"not a cache entry")?;
        assert!(cache.load(&engine, &digest).is_none());
        Ok(())
    }

    #[test]
    fn another_engine_configuration_uses_another_key() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let plain = Cache::new(dir.path().to_owned(), &engine());
        let mut config = wasmtime::Config::new();
        config.cranelift_opt_level(wasmtime::OptLevel::None);
        let other = Cache::new(dir.path().to_owned(), &Engine::new(&config)?);
        assert_ne!(plain.entry_path("ab"), other.entry_path("ab"));
        Ok(())
    }

    #[test]
    fn an_unwritable_cache_is_not_an_error() -> anyhow::Result<()> {
        let engine = engine();
        let dir = tempfile::tempdir()?;
        // A file where the folder should be: creating the folder fails.
        let blocked = dir.path().join("blocked");
        std::fs::write(&blocked, b"")?;
        let cache = Cache::new(blocked, &engine);
        let component = Component::new(&engine, EMPTY_COMPONENT)?;
        cache.store("ab", &component);
        assert!(cache.load(&engine, "ab").is_none());
        Ok(())
    }
}
