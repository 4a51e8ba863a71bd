//! The plugins folder: `<backend_type>.wasm` files that replace the built-in components
//! while the agent runs.
//!
//! Sites upgrade backend logic by dropping a file, without a restart, and a bad file
//! must never take down a working backend. So a file is only ever a candidate: it is
//! read once it has stopped changing, compiled off the async threads (or taken from
//! the [`cache`]), and validated — it is no larger than `plugins_max_file_mib` and
//! compiles within `plugins_compile_timeout_seconds`, it imports only what the sandbox
//! provides, exports `usage-backend` in a WIT version of this host's major, describes
//! itself within the rules of `runtime::check_description` as serving the backend type
//! of its file name (and no type the host does not know), passes the pinned digest if
//! there is one, and accepts the config of every offering of that type. Only then does it replace the
//! serving component, by swapping one `Arc` in [`Backends`]: calls already running
//! finish on the old version, the next cycle uses the new one. Any failure leaves the
//! old version serving and is logged once, naming the file and the reason. Deleting
//! the file brings the built-in default back.
//!
//! Nothing in the folder is ever opened unless it is a regular file (a FIFO would block,
//! a device never end): any other entry named `<backend_type>.wasm` — a folder, a FIFO,
//! a device, a dangling link, a link loop — is refused with what it is. Entries that look
//! meant as a plugin but serve nothing (misnamed, for a backend type nobody uses) are
//! listed by [`Plugins::strays`] for `usage-agent plugins` and `check-config`.
//!
//! What it deliberately does not do: load files for backend types no offering uses,
//! or look into sub-folders.

pub mod cache;
mod watch;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, Instant, SystemTime};

#[cfg(test)]
use anyhow::Context as _;
use anyhow::{Result, anyhow};
use tokio::sync::{Mutex, Semaphore, broadcast};
use wasmtime::component::Component;

use crate::backends::Backends;
use crate::config::AgentConfig;
use crate::runtime::{
    CallError, ExportError, LoadedBackend, Runtime, Source, check_backend_types, check_description, contract_of,
    one_line, sha256_hex, wit, wit_config,
};
pub use cache::Cache;
pub use watch::WatchHandle;

/// Where the plugins folder is when neither the config nor the command line says.
pub const DEFAULT_PLUGINS_DIR: &str = "/var/lib/usage-agent/plugins";
/// Largest plugin file by default (`plugins_max_file_mib`), in MiB: the built-in
/// components are a few MiB; compiling takes memory in proportion to the code.
pub const DEFAULT_MAX_FILE_MIB: u64 = 64;
/// How long compiling one plugin file may take by default
/// (`plugins_compile_timeout_seconds`): a built-in component compiles in about a second.
pub const DEFAULT_COMPILE_TIMEOUT: Duration = Duration::from_secs(120);

/// The metric counting swaps, and its help text.
const SWAPS: &str = "usage_agent_plugin_swaps_total";
const SWAPS_HELP: &str = "Components put in service in place of another (a new file, or the built-in back).";

/// Where compiled components are cached by default: systemd's `CACHE_DIRECTORY`
/// (`CacheDirectory=` in the unit), else `$XDG_CACHE_HOME/usage-agent`, else
/// `~/.cache/usage-agent`; `None` when none of these is known.
pub fn default_cache_dir() -> Option<PathBuf> {
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(systemd) = std::env::var("CACHE_DIRECTORY").ok().filter(|v| !v.is_empty()) {
        // systemd lists several folders separated by `:` when the unit names several.
        return systemd.split(':').next().map(PathBuf::from);
    }
    var("XDG_CACHE_HOME")
        .map(|dir| dir.join("usage-agent"))
        .or_else(|| var("HOME").map(|home| home.join(".cache/usage-agent")))
}

/// What a file-system entry is, for messages: `a folder`, `a FIFO`, `a character device`…
pub fn describe_kind(kind: std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt as _;
    if kind.is_file() {
        "a regular file"
    } else if kind.is_dir() {
        "a folder"
    } else if kind.is_symlink() {
        "a symbolic link"
    } else if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_char_device() {
        "a character device"
    } else if kind.is_block_device() {
        "a block device"
    } else if kind.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    }
}

/// How the plugins folder is watched.
#[derive(Debug, Clone)]
pub struct PluginOptions {
    /// The folder with `<backend_type>.wasm` files.
    pub dir: PathBuf,
    /// Compiled components are kept here; `None`: no cache.
    pub cache_dir: Option<PathBuf>,
    /// A file is read once its size and modification time stayed the same this long.
    pub settle: Duration,
    /// The folder is re-read this often even without file-system events (a fallback
    /// for file systems that send none, such as some network mounts).
    pub rescan: Duration,
    /// A larger file is refused without being read (`plugins_max_file_mib`).
    pub max_file_bytes: u64,
    /// Compiling a file may take this long (`plugins_compile_timeout_seconds`).
    pub compile_timeout: Duration,
}

impl PluginOptions {
    /// The folder and cache from the config, the command line overriding the folder;
    /// relative paths in the config are relative to the config file's folder.
    pub fn resolve(config: Option<&AgentConfig>, config_path: Option<&Path>, dir_flag: Option<PathBuf>) -> Self {
        let base = config_path.and_then(Path::parent).unwrap_or(Path::new("."));
        let from_config = |p: &Option<PathBuf>| p.as_ref().map(|p| base.join(p));
        let dir = dir_flag
            .or_else(|| config.and_then(|c| from_config(&c.plugins_dir)))
            .unwrap_or_else(|| PathBuf::from(DEFAULT_PLUGINS_DIR));
        let cache_dir = config.and_then(|c| from_config(&c.plugins_cache_dir)).or_else(default_cache_dir);
        let max_file_mib = config.and_then(|c| c.plugins_max_file_mib).unwrap_or(DEFAULT_MAX_FILE_MIB);
        let compile_timeout = config
            .and_then(|c| c.plugins_compile_timeout_seconds)
            .map(Duration::from_secs_f64)
            .unwrap_or(DEFAULT_COMPILE_TIMEOUT);
        Self {
            dir,
            cache_dir,
            settle: Duration::from_millis(250),
            rescan: Duration::from_secs(10),
            max_file_bytes: max_file_mib.saturating_mul(1024 * 1024),
            compile_timeout,
        }
    }

    /// The defaults for `dir`, without a cache: what tests and tools start from.
    pub fn in_dir(dir: PathBuf) -> Self {
        Self {
            dir,
            cache_dir: None,
            settle: Duration::from_millis(250),
            rescan: Duration::from_secs(10),
            max_file_bytes: DEFAULT_MAX_FILE_MIB * 1024 * 1024,
            compile_timeout: DEFAULT_COMPILE_TIMEOUT,
        }
    }
}

/// How a component came to be compiled, and how long it took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compiled {
    /// Compiled from the `.wasm` now.
    Compiled(Duration),
    /// Loaded from the cache of compiled components.
    Cached(Duration),
}

impl std::fmt::Display for Compiled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Compiled::Compiled(d) => write!(f, "compiled in {}", millis(*d)),
            Compiled::Cached(d) => write!(f, "from the cache in {}", millis(*d)),
        }
    }
}

fn millis(d: Duration) -> String {
    format!("{} ms", d.as_millis())
}

/// A component ready to serve, and what the plugins folder knows about it.
#[derive(Debug, Clone)]
pub struct Plugin {
    pub loaded: Arc<LoadedBackend>,
    pub compiled: Compiled,
}

impl Plugin {
    /// `name version (sha256 …, source)`, for the log.
    pub fn label(&self) -> String {
        let info = &self.loaded.info;
        format!("{} {} (sha256 {}, {})", info.name, info.version, self.loaded.sha256, self.loaded.source)
    }
}

/// Why a file was not put in service.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the config pins sha256 {pinned}, the file has sha256 {actual}")]
    Pinned { pinned: String, actual: String },
    #[error("cannot read the file: {0}")]
    Unreadable(String),
    /// A folder, a FIFO, a device, a dangling link or a link loop: never opened.
    #[error("{0}; only a regular file can serve")]
    NotAFile(String),
    #[error(
        "the file is {} bytes ({}), more than plugins_max_file_mib allows ({} MiB)",
        .bytes, crate::runtime::size_text(*.bytes), .limit / (1024 * 1024)
    )]
    TooLarge { bytes: u64, limit: u64 },
    #[error(
        "compiling it took longer than {} s (setting plugins_compile_timeout_seconds); it is not tried again until it changes",
        .limit.as_secs_f64()
    )]
    CompileTimeout { limit: Duration },
    #[error("not a usable WebAssembly component: {0}")]
    NotComponent(String),
    /// It exports no contract this host serves.
    #[error("{0}")]
    Export(ExportError),
    #[error("imports what the sandbox does not provide: {0}")]
    Imports(String),
    #[error("describe failed: {0}")]
    Describe(String),
    #[error("its describe() breaks a rule: {0}")]
    Description(crate::runtime::DescriptionError),
    #[error("it describes itself as {name} {version} serving {served}, not {expected} as its file name says")]
    WrongBackendType { name: String, version: String, served: String, expected: String },
    #[error("setup of offerings[{index}] ({offering}) failed: {reason}")]
    Setup { index: usize, offering: String, reason: String },
}

impl Refusal {
    /// A short, stable name of the reason, for the metrics label.
    pub fn kind(&self) -> &'static str {
        match self {
            Refusal::Pinned { .. } => "pinned",
            Refusal::Unreadable(_) => "unreadable",
            Refusal::NotAFile(_) => "not_a_file",
            Refusal::TooLarge { .. } => "too_large",
            Refusal::CompileTimeout { .. } => "compile_timeout",
            Refusal::NotComponent(_) => "not_component",
            Refusal::Export(ExportError::Missing { .. }) => "no_export",
            Refusal::Export(ExportError::UnknownMajor { .. }) => "wit_version",
            Refusal::Imports(_) => "imports",
            Refusal::Describe(_) => "describe",
            Refusal::Description(_) => "description",
            Refusal::WrongBackendType { .. } => "wrong_backend_type",
            Refusal::Setup { .. } => "setup",
        }
    }
}

/// What happened to a backend type; each is also logged.
#[derive(Debug, Clone)]
pub enum PluginEvent {
    /// `new` serves `backend_type` from now on, replacing `old`.
    Swapped { backend_type: String, old: Option<Box<Plugin>>, new: Box<Plugin> },
    /// `file` was refused; whatever served before still does.
    Refused { backend_type: String, file: PathBuf, sha256: Option<String>, reason: Refusal },
}

/// What a backend type needs: its pin and the offerings that use it.
#[derive(Debug, Clone, Default)]
struct TypeRules {
    pin: Option<String>,
    /// (index in the config, display name, component config).
    offerings: Vec<(usize, String, wit::Config)>,
}

/// Size and modification time: a file whose fingerprint has not changed is not read again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fingerprint {
    len: u64,
    modified: Option<SystemTime>,
}

#[derive(Debug, Default)]
struct TypeState {
    /// The built-in component, kept ready for when the file is deleted.
    default: Option<Plugin>,
    /// The one serving now.
    serving: Option<Plugin>,
    /// The file last looked at, and its digest.
    seen: Option<(Fingerprint, String)>,
    /// The file's last refusal, while the refused file is still there.
    refused: Option<(PathBuf, Refusal)>,
    /// The serving file is gone and nothing can replace it; said once.
    orphan_said: bool,
}

/// An entry of the plugins folder that looks meant as a plugin (a `.wasm` name, or a
/// backend type's name spelt with other separators) but serves nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stray {
    pub path: PathBuf,
    pub reason: String,
    /// It was meant for a backend type this agent serves (the config's, or without a
    /// config the built-in ones): `check-config` and `plugins` fail on it.
    pub meant_for_served_type: bool,
}

/// What an entry of the folder is, looked at without opening it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Entry {
    Missing,
    /// A regular file, or a link to one.
    File,
    /// Anything else, described: `not a regular file (it is a FIFO)`.
    Other(String),
}

fn entry_at(path: &Path) -> Entry {
    let link = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Entry::Missing,
        Err(e) => return Entry::Other(format!("cannot look at it: {e}")),
    };
    let through = if link.is_symlink() { "a symbolic link to " } else { "" };
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_file() => Entry::File,
        Ok(meta) => Entry::Other(format!("not a regular file (it is {through}{})", describe_kind(meta.file_type()))),
        Err(e) if link.is_symlink() && e.raw_os_error() == Some(libc::ELOOP) => {
            Entry::Other("a symbolic link loop".to_owned())
        }
        Err(e) if link.is_symlink() && e.kind() == std::io::ErrorKind::NotFound => {
            let target = std::fs::read_link(path).map(|t| t.display().to_string()).unwrap_or_default();
            Entry::Other(format!("a dangling symbolic link (to {target})"))
        }
        Err(e) => Entry::Other(format!("cannot look at it: {e}")),
    }
}

/// A name with `_`, `.` and spaces read as `-`, in lower case, without `.wasm`: how a
/// backend type's name may have been spelt by a build or a hand.
fn loosely(name: &str) -> String {
    let lower = name.to_ascii_lowercase();
    let stem = lower.strip_suffix(".wasm").unwrap_or(&lower);
    stem.chars().map(|c| if matches!(c, '_' | '.' | ' ') { '-' } else { c }).collect()
}

/// The state of one backend type, for `usage-agent plugins`.
#[derive(Debug, Clone)]
pub struct Status {
    pub backend_type: String,
    pub serving: Option<Plugin>,
    pub pin: Option<String>,
    /// A file in the folder that was refused, and why.
    pub refused: Option<(PathBuf, Refusal)>,
}

/// The plugins folder of one agent.
#[derive(Clone)]
pub struct Plugins {
    inner: Arc<Inner>,
}

struct Inner {
    backends: Backends,
    options: PluginOptions,
    cache: Option<Arc<Cache>>,
    types: BTreeMap<String, TypeRules>,
    state: Mutex<BTreeMap<String, TypeState>>,
    events: broadcast::Sender<PluginEvent>,
    /// `.wasm` files for backend types no offering uses: noted once each.
    ignored: StdMutex<HashSet<PathBuf>>,
    /// One compile at a time. A compile past its timeout cannot be stopped (Cranelift
    /// has no cancellation): it runs on, holding this, so files replaced again and
    /// again never pile up compiles.
    compiling: Arc<Semaphore>,
}

impl Plugins {
    /// The plugins folder for the backend types `config` uses (every built-in type when
    /// there is no config). Nothing is loaded until [`Plugins::start`].
    pub fn new(backends: Backends, config: Option<&AgentConfig>, options: PluginOptions) -> Self {
        let mut types: BTreeMap<String, TypeRules> = BTreeMap::new();
        match config {
            Some(config) => {
                for backend_type in config.backend_types() {
                    let pin = config.pinned_sha256(&backend_type);
                    types.insert(backend_type, TypeRules { pin, offerings: Vec::new() });
                }
                for (index, offering) in config.offerings() {
                    if let Some(rules) = offering.usage_backend().and_then(|t| types.get_mut(t)) {
                        rules.offerings.push((index, offering.display_name(index), wit_config(offering)));
                    }
                }
            }
            None => {
                for (backend_type, _) in crate::builtin::BUILTIN {
                    types.insert((*backend_type).to_owned(), TypeRules::default());
                }
            }
        }
        let cache = options.cache_dir.clone().map(|dir| Arc::new(Cache::new(dir, backends.runtime().engine())));
        let (events, _) = broadcast::channel(64);
        Self {
            inner: Arc::new(Inner {
                backends,
                options,
                cache,
                types,
                state: Mutex::default(),
                events,
                ignored: StdMutex::default(),
                compiling: Arc::new(Semaphore::new(1)),
            }),
        }
    }

    pub fn options(&self) -> &PluginOptions {
        &self.inner.options
    }

    pub fn backends(&self) -> &Backends {
        &self.inner.backends
    }

    /// Events from now on: swaps and refusals.
    pub fn subscribe(&self) -> broadcast::Receiver<PluginEvent> {
        self.inner.events.subscribe()
    }

    /// Loads the built-in default of every backend type, then the folder's files over
    /// them. A refused file leaves the default serving; a backend type with neither a
    /// default nor a usable file is an error.
    pub async fn start(&self) -> Result<()> {
        // A missing folder is fine (the built-in components serve); something else under
        // its name is a mistake worth stopping for.
        let dir = &self.inner.options.dir;
        let wrong = match entry_at(dir) {
            Entry::Missing => None,
            _ if dir.is_dir() => None,
            Entry::File => Some("a file".to_owned()),
            Entry::Other(what) => Some(what.replace("not a regular file", "not a folder")),
        };
        if let Some(what) = wrong {
            return Err(anyhow!(
                "plugins folder {}: {what}; name a folder (plugins_dir or --plugins-dir), or one that does not exist to use only the built-in components",
                dir.display()
            ));
        }
        for (backend_type, _) in self.inner.types.iter() {
            // Zero from the start, so a dashboard's rate() has a series to work on.
            crate::metrics::global().add(SWAPS, SWAPS_HELP, &[("backend_type", backend_type)], 0.0);
            if let Some(bytes) = crate::builtin::component(backend_type) {
                let plugin = self
                    .prepare(backend_type, bytes.to_vec(), sha256_hex(bytes), Source::Builtin)
                    .await
                    .map_err(|reason| anyhow!("the built-in component for {backend_type} cannot serve: {reason}"))?;
                let mut states = self.inner.state.lock().await;
                let state = states.entry(backend_type.clone()).or_default();
                state.default = Some(plugin.clone());
                // The default serves until a file is accepted, so a refused file at
                // start-up still leaves a working backend.
                self.serve(backend_type, state, plugin);
            }
            self.sync(backend_type).await;
            let state = self.inner.state.lock().await;
            if state.get(backend_type).and_then(|s| s.serving.as_ref()).is_none() {
                let why = match state.get(backend_type).and_then(|s| s.refused.as_ref()) {
                    Some((file, reason)) => format!("{} was refused: {reason}", file.display()),
                    None => format!("{} has no {backend_type}.wasm", self.inner.options.dir.display()),
                };
                return Err(anyhow!(
                    "no component serves backend type {backend_type:?}: it is not built in (built in: {}) and {why}",
                    crate::builtin::names()
                ));
            }
        }
        Ok(())
    }

    /// Starts watching the folder; the watch ends when the handle is dropped.
    pub fn watch(&self) -> WatchHandle {
        watch::spawn(self.clone())
    }

    /// Looks at every backend type's file now.
    pub async fn rescan(&self) {
        for backend_type in self.inner.types.keys() {
            self.sync(backend_type).await;
        }
    }

    /// Every backend type, what serves it and what was refused.
    pub async fn status(&self) -> Vec<Status> {
        let state = self.inner.state.lock().await;
        self.inner
            .types
            .iter()
            .map(|(backend_type, rules)| {
                let entry = state.get(backend_type);
                Status {
                    backend_type: backend_type.clone(),
                    serving: entry.and_then(|s| s.serving.clone()),
                    pin: rules.pin.clone(),
                    refused: entry.and_then(|s| s.refused.clone()),
                }
            })
            .collect()
    }

    /// The folder's entries that look meant as a plugin but are not the file of a
    /// backend type this agent serves: misnamed ones, and files for types nobody uses.
    /// Looked at by name and kind only; nothing is opened.
    pub fn strays(&self) -> Vec<Stray> {
        let Ok(entries) = std::fs::read_dir(&self.inner.options.dir) else { return Vec::new() };
        let mut strays: Vec<Stray> = entries
            .filter_map(|entry| {
                let path = entry.ok()?.path();
                let name = path.file_name()?.to_str()?.to_owned();
                // Hidden names are how a file is copied in before its rename.
                if name.starts_with('.') {
                    return None;
                }
                let stem = name.strip_suffix(".wasm");
                if stem.is_some_and(|stem| self.inner.types.contains_key(stem)) {
                    // The file of a served type: its own status says how it went.
                    return None;
                }
                let loose = loosely(&name);
                let served = self.inner.types.keys().find(|t| loosely(t) == loose);
                let known =
                    served.map(String::as_str).or_else(|| crate::builtin::types().find(|t| loosely(t) == loose));
                let reason = match (known, stem) {
                    (Some(meant), _) if stem != Some(meant) => {
                        format!("misnamed: a file for {meant} must be named {meant}.wasm; it serves nothing")
                    }
                    (_, Some(stem)) => {
                        let used: Vec<&str> = self.inner.types.keys().map(String::as_str).collect();
                        format!("no offering uses backend type {stem:?} (in use: {}); not loaded", used.join(", "))
                    }
                    (Some(_), None) => return None,
                    (None, None) => return None,
                };
                Some(Stray { path, reason, meant_for_served_type: served.is_some() })
            })
            .collect();
        strays.sort_by(|a, b| a.path.cmp(&b.path));
        strays
    }

    /// The file of `backend_type` in the folder.
    pub fn file_of(&self, backend_type: &str) -> PathBuf {
        self.inner.options.dir.join(format!("{backend_type}.wasm"))
    }

    /// The backend type a path in the folder serves, if an offering uses it. A `.wasm`
    /// file of another type is noted once.
    fn backend_type_of(&self, path: &Path) -> Option<&str> {
        let name = path.file_name()?.to_str()?;
        let stem = name.strip_suffix(".wasm").filter(|s| !s.is_empty() && !s.starts_with('.'))?;
        if let Some((known, _)) = self.inner.types.get_key_value(stem) {
            return Some(known.as_str());
        }
        let first = self.inner.ignored.lock().map(|mut seen| seen.insert(path.to_owned())).unwrap_or(false);
        if first {
            let used: Vec<&str> = self.inner.types.keys().map(String::as_str).collect();
            tracing::info!(
                "plugins: {} ignored: no offering uses backend type {stem:?} (in use: {})",
                path.display(),
                used.join(", ")
            );
        }
        None
    }

    /// Brings `backend_type` in line with its file: loads a new or changed file, goes
    /// back to the default when it is gone, and leaves everything as it is otherwise.
    async fn sync(&self, backend_type: &str) {
        let mut states = self.inner.state.lock().await;
        let state = states.entry(backend_type.to_owned()).or_default();
        let path = self.file_of(backend_type);
        match entry_at(&path) {
            Entry::Missing => {
                self.file_gone(backend_type, state);
                return;
            }
            Entry::Other(what) => {
                state.seen = None;
                self.refuse(backend_type, state, &path, None, Refusal::NotAFile(what));
                return;
            }
            Entry::File => {}
        }
        let Some(fingerprint) = fingerprint(&path) else {
            // Gone or replaced since: the next event or rescan looks again.
            return;
        };
        if state.seen.as_ref().is_some_and(|(seen, _)| *seen == fingerprint) {
            return;
        }
        let limit = self.inner.options.max_file_bytes;
        let settled = read_when_stable(&path, fingerprint, self.inner.options.settle, limit).await;
        let (bytes, fingerprint) = match settled {
            Ok(Settled::Read(bytes, fingerprint)) => (bytes, fingerprint),
            Ok(Settled::TooLarge(fingerprint)) => {
                // Refused on its settled size alone, unread (so without a digest); not
                // looked at again until it changes.
                state.seen = Some((fingerprint, String::new()));
                self.refuse(backend_type, state, &path, None, Refusal::TooLarge { bytes: fingerprint.len, limit });
                return;
            }
            Ok(Settled::Changing) => {
                // Still being written, or gone again: the next event or rescan looks again.
                tracing::debug!("plugins: {} is still changing; looking again later", path.display());
                return;
            }
            Err(error) => {
                self.refuse(backend_type, state, &path, None, Refusal::Unreadable(error.to_string()));
                return;
            }
        };
        let sha256 = sha256_hex(&bytes);
        let known = state.seen.as_ref().is_some_and(|(_, digest)| *digest == sha256);
        state.seen = Some((fingerprint, sha256.clone()));
        if known {
            return;
        }
        if state
            .serving
            .as_ref()
            .is_some_and(|p| p.loaded.sha256 == sha256 && p.loaded.source == Source::File(path.clone()))
        {
            state.refused = None;
            return;
        }
        if let Some(pin) = self.inner.types.get(backend_type).and_then(|r| r.pin.clone())
            && pin != sha256
        {
            self.refuse(
                backend_type,
                state,
                &path,
                Some(sha256.clone()),
                Refusal::Pinned { pinned: pin, actual: sha256 },
            );
            return;
        }
        match self.prepare(backend_type, bytes, sha256.clone(), Source::File(path.clone())).await {
            Ok(plugin) => {
                state.refused = None;
                self.serve(backend_type, state, plugin);
            }
            Err(reason) => self.refuse(backend_type, state, &path, Some(sha256), reason),
        }
    }

    /// The file is gone: the default serves again.
    fn file_gone(&self, backend_type: &str, state: &mut TypeState) {
        state.seen = None;
        state.refused = None;
        let from_file = state.serving.as_ref().is_some_and(|p| matches!(p.loaded.source, Source::File(_)));
        if !from_file && state.serving.is_some() {
            return;
        }
        match state.default.clone() {
            Some(default) => self.serve(backend_type, state, default),
            None if from_file && !state.orphan_said => {
                state.orphan_said = true;
                if let Some(serving) = &state.serving {
                    tracing::warn!(
                        "plugins: {} was removed, but {backend_type} has no built-in default; {} keeps serving",
                        self.file_of(backend_type).display(),
                        serving.label()
                    );
                }
            }
            None => {}
        }
    }

    fn serve(&self, backend_type: &str, state: &mut TypeState, plugin: Plugin) {
        state.orphan_said = false;
        self.inner.backends.install(backend_type, plugin.loaded.clone());
        let old = state.serving.replace(plugin.clone());
        match &old {
            Some(old) => tracing::info!(
                backend_type,
                old_version = %old.loaded.info.version,
                old_sha256 = %old.loaded.sha256,
                new_version = %plugin.loaded.info.version,
                new_sha256 = %plugin.loaded.sha256,
                "plugins: {backend_type} is now served by {}, replacing {}; {}",
                plugin.label(),
                old.label(),
                plugin.compiled
            ),
            // The built-in default at start-up is what every command begins with: not
            // news. A file serving from the start is.
            None if plugin.loaded.source == Source::Builtin => {
                tracing::debug!(
                    backend_type,
                    "plugins: {backend_type} is served by {}; {}",
                    plugin.label(),
                    plugin.compiled
                );
            }
            None => tracing::info!(
                backend_type,
                new_version = %plugin.loaded.info.version,
                new_sha256 = %plugin.loaded.sha256,
                "plugins: {backend_type} is served by {}; {}",
                plugin.label(),
                plugin.compiled
            ),
        }
        if old.is_some() {
            crate::metrics::global().inc(SWAPS, SWAPS_HELP, &[("backend_type", backend_type)]);
        }
        let _ = self.inner.events.send(PluginEvent::Swapped {
            backend_type: backend_type.to_owned(),
            old: old.map(Box::new),
            new: Box::new(plugin),
        });
    }

    fn refuse(&self, backend_type: &str, state: &mut TypeState, path: &Path, sha256: Option<String>, reason: Refusal) {
        if state.refused.as_ref().is_some_and(|(p, r)| p == path && *r == reason) {
            // Said already (an unreadable file is looked at again at every re-scan).
            tracing::debug!("plugins: {} still refused: {reason}", path.display());
            return;
        }
        let keeps = match &state.serving {
            Some(serving) => format!("{} keeps serving", serving.label()),
            None => "nothing serves it".to_owned(),
        };
        let digest = sha256.as_deref().map(|d| format!(" (sha256 {d})")).unwrap_or_default();
        tracing::error!(backend_type, file = %path.display(), "plugins: {}{digest} refused: {reason}; {keeps}", path.display());
        crate::metrics::global().inc(
            "usage_agent_plugin_rejections_total",
            "Plugin files refused; the component serving before keeps serving.",
            &[("backend_type", backend_type), ("reason", reason.kind())],
        );
        state.refused = Some((path.to_owned(), reason.clone()));
        let _ = self.inner.events.send(PluginEvent::Refused {
            backend_type: backend_type.to_owned(),
            file: path.to_owned(),
            sha256,
            reason,
        });
    }

    /// Compiles (or loads from the cache) and validates a component for `backend_type`.
    /// The checks run from the cheapest to the one that runs the most guest code.
    async fn prepare(
        &self,
        backend_type: &str,
        bytes: Vec<u8>,
        sha256: String,
        source: Source,
    ) -> Result<Plugin, Refusal> {
        let runtime = self.inner.backends.runtime().clone();
        let size = bytes.len();
        // The built-in components are part of the host: only files are held to a
        // compile timeout.
        let timeout = matches!(source, Source::File(_)).then_some(self.inner.options.compile_timeout);
        let slot = self.inner.compiling.clone();
        let (component, compiled) =
            compile(&runtime, self.inner.cache.clone(), bytes, sha256.clone(), slot, timeout).await?;
        let (contract, wit_version) = contract_of(runtime.engine(), &component).map_err(Refusal::Export)?;
        let imports = runtime.check_imports(&component).map_err(|e| Refusal::Imports(one_line(&format!("{e:#}"))))?;
        let described = runtime
            .describe_component(imports, contract)
            .await
            .map_err(|e| Refusal::Describe(one_line(&format!("{e:#}"))))?;
        let info = &described.info;
        // Before anything quotes the description (the refusal below names it).
        check_description(info).map_err(Refusal::Description)?;
        if !info.backend_types.iter().any(|t| t == backend_type) {
            return Err(Refusal::WrongBackendType {
                name: info.name.clone(),
                version: info.version.clone(),
                served: format!("{:?}", info.backend_types),
                expected: backend_type.to_owned(),
            });
        }
        let known: std::collections::BTreeSet<&str> = crate::builtin::BUILTIN
            .iter()
            .map(|(name, _)| *name)
            .chain(self.inner.types.keys().map(String::as_str))
            .collect();
        let known: Vec<&str> = known.into_iter().collect();
        check_backend_types(info, backend_type, &known).map_err(Refusal::Description)?;
        let loaded = LoadedBackend::new(component, described, wit_version, source, sha256, size);
        // The built-in default's setup is checked by `prepare_offering` at start-up, with
        // the errors an operator fixing a config needs; a file must pass it here.
        if matches!(loaded.source, Source::File(_)) {
            let offerings = self.inner.types.get(backend_type).map(|r| r.offerings.as_slice()).unwrap_or_default();
            for (index, offering, config) in offerings {
                let reason = match runtime.check_setup(&loaded, config).await {
                    Ok(()) => continue,
                    Err(CallError::Backend { error: wit::BackendError::InvalidConfig(message), .. }) => {
                        one_line(&message)
                    }
                    Err(other) => one_line(&other.to_string()),
                };
                return Err(Refusal::Setup { index: *index, offering: offering.clone(), reason });
            }
        }
        Ok(Plugin { loaded: Arc::new(loaded), compiled })
    }
}

/// Compiles `bytes` on a blocking thread, or loads the compiled form from the cache;
/// stores what it compiled. Compiles take turns on `slot`; past `timeout` the file is
/// refused (the compile runs on to its end on its thread, and is not cached).
async fn compile(
    runtime: &Runtime,
    cache: Option<Arc<Cache>>,
    bytes: Vec<u8>,
    sha256: String,
    slot: Arc<Semaphore>,
    timeout: Option<Duration>,
) -> Result<(Component, Compiled), Refusal> {
    let engine = runtime.engine().clone();
    let permit =
        slot.acquire_owned().await.map_err(|e| Refusal::NotComponent(format!("the compile task failed: {e}")))?;
    let task = tokio::task::spawn_blocking(move || {
        let _turn = permit;
        let started = Instant::now();
        if let Some(component) = cache.as_ref().and_then(|c| c.load(&engine, &sha256)) {
            return Ok((component, Compiled::Cached(started.elapsed())));
        }
        let component = Component::new(&engine, &bytes).map_err(|e| {
            if bytes.starts_with(b"\0asm\x01\0\0\0") {
                Refusal::NotComponent("a core WebAssembly module, not a component (build for wasm32-wasip2)".to_owned())
            } else {
                Refusal::NotComponent(one_line(&format!("{e:#}")))
            }
        })?;
        let took = started.elapsed();
        // A compile that took too long was refused: caching it would let the next start
        // load what this one refused.
        if let Some(cache) = cache.as_ref().filter(|_| timeout.is_none_or(|limit| took <= limit)) {
            cache.store(&sha256, &component);
        }
        Ok((component, Compiled::Compiled(took)))
    });
    let joined = match timeout {
        Some(limit) => tokio::time::timeout(limit, task).await.map_err(|_| Refusal::CompileTimeout { limit })?,
        None => task.await,
    };
    joined.map_err(|e| Refusal::NotComponent(format!("the compile task failed: {e}")))?
}

fn fingerprint(path: &Path) -> Option<Fingerprint> {
    let meta = std::fs::metadata(path).ok().filter(|m| m.is_file())?;
    Some(Fingerprint { len: meta.len(), modified: meta.modified().ok() })
}

/// How many settle intervals a file may keep changing before this round gives up.
const MAX_SETTLE_ROUNDS: u32 = 240;

/// What a file in the folder came to once it held still.
#[derive(Debug)]
enum Settled {
    /// Its bytes, which match its size and modification time.
    Read(Vec<u8>, Fingerprint),
    /// Larger than the limit: not read.
    TooLarge(Fingerprint),
    /// It kept changing, or disappeared.
    Changing,
}

/// Reads `path` once its size and modification time hold still for `settle`, and the
/// bytes read match them; a file larger than `limit` is not read at all, and never more
/// than `limit` bytes (a file growing between the look and the read is still changing).
async fn read_when_stable(
    path: &Path,
    mut last: Fingerprint,
    settle: Duration,
    limit: u64,
) -> std::io::Result<Settled> {
    use tokio::io::AsyncReadExt as _;
    for _ in 0..MAX_SETTLE_ROUNDS {
        tokio::time::sleep(settle).await;
        let Some(now) = fingerprint(path) else { return Ok(Settled::Changing) };
        if now != last {
            last = now;
            continue;
        }
        if now.len > limit {
            return Ok(Settled::TooLarge(now));
        }
        let mut bytes = Vec::new();
        // Opened without waiting: a FIFO put in its place since the look must not block,
        // and is not read.
        let file = tokio::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(path).await?;
        if !file.metadata().await?.is_file() {
            return Ok(Settled::Changing);
        }
        file.take(limit.saturating_add(1)).read_to_end(&mut bytes).await?;
        if fingerprint(path) == Some(now) && bytes.len() as u64 == now.len {
            return Ok(Settled::Read(bytes, now));
        }
        last = fingerprint(path).unwrap_or(now);
    }
    Ok(Settled::Changing)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The smallest component: no imports, no exports.
    const EMPTY: &[u8] = b"\0asm\x0d\0\x01\0";

    /// A component that imports the instance `x:y/z@1.0.0` (with one function),
    /// which the sandbox does not provide.
    fn importing_unknown() -> Vec<u8> {
        let name = b"x:y/z@1.0.0";
        let mut bytes = EMPTY.to_vec();
        // Type section: one instance type exporting `f: func()`.
        bytes.extend_from_slice(&[
            0x07, 0x0e, 0x01, 0x42, 0x02, 0x01, 0x40, 0x00, 0x01, 0x00, 0x04, 0x00, 0x01, b'f', 0x01, 0x00,
        ]);
        // Import section: one import, a plain name, of an instance of type 0.
        let mut import = vec![0x01, 0x00, name.len() as u8];
        import.extend_from_slice(name);
        import.extend_from_slice(&[0x05, 0x00]);
        bytes.push(0x0a);
        bytes.push(import.len() as u8);
        bytes.extend_from_slice(&import);
        bytes
    }

    #[test]
    fn entries_are_told_apart_without_being_opened() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let at = |name: &str| dir.path().join(name);
        std::fs::write(at("file.wasm"), b"x")?;
        std::os::unix::fs::symlink(at("file.wasm"), at("link.wasm"))?;
        std::os::unix::fs::symlink("/dev/zero", at("zero.wasm"))?;
        std::os::unix::fs::symlink(at("gone"), at("dangling.wasm"))?;
        std::os::unix::fs::symlink(at("loop-b.wasm"), at("loop-a.wasm"))?;
        std::os::unix::fs::symlink(at("loop-a.wasm"), at("loop-b.wasm"))?;
        assert_eq!(entry_at(&at("file.wasm")), Entry::File);
        assert_eq!(entry_at(&at("link.wasm")), Entry::File);
        assert_eq!(entry_at(&at("missing.wasm")), Entry::Missing);
        let other = |what: &str| Entry::Other(what.to_owned());
        assert_eq!(
            entry_at(&at("zero.wasm")),
            other("not a regular file (it is a symbolic link to a character device)")
        );
        assert_eq!(
            entry_at(&at("dangling.wasm")),
            other(&format!("a dangling symbolic link (to {})", at("gone").display()))
        );
        assert_eq!(entry_at(&at("loop-a.wasm")), other("a symbolic link loop"));
        assert_eq!(entry_at(dir.path()), other("not a regular file (it is a folder)"));
        assert_eq!(loosely("CSCS_DWDI.Compute.WASM"), "cscs-dwdi-compute");
        Ok(())
    }

    #[test]
    fn an_import_the_sandbox_lacks_is_named() -> Result<()> {
        let runtime = Runtime::new()?;
        let empty = Component::new(runtime.engine(), EMPTY)?;
        runtime.check_imports(&empty)?;
        let component = Component::new(runtime.engine(), importing_unknown())?;
        let error = format!("{:#}", runtime.check_imports(&component).err().context("accepted an unknown import")?);
        assert!(error.contains("x:y/z@1.0.0"), "{error}");
        Ok(())
    }

    #[test]
    fn a_component_without_the_export_is_refused() -> Result<()> {
        let runtime = Runtime::new()?;
        let empty = Component::new(runtime.engine(), EMPTY)?;
        let refusal = contract_of(runtime.engine(), &empty).err();
        assert_eq!(refusal, Some(ExportError::Missing { exports: "nothing".to_owned() }));
        assert_eq!(Refusal::Export(refusal.context("refused")?).kind(), "no_export");
        Ok(())
    }

    #[tokio::test]
    async fn a_file_over_the_limit_is_not_read() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("x.wasm");
        std::fs::write(&path, vec![0u8; 2048])?;
        let seen = fingerprint(&path).context("no fingerprint")?;
        let settle = Duration::from_millis(1);
        assert!(matches!(read_when_stable(&path, seen, settle, 2047).await?, Settled::TooLarge(f) if f.len == 2048));
        assert!(matches!(read_when_stable(&path, seen, settle, 2048).await?, Settled::Read(b, _) if b.len() == 2048));
        Ok(())
    }

    #[test]
    fn file_bounds_are_refused_with_the_setting() {
        let refusal = Refusal::TooLarge { bytes: (64 << 20) + 1, limit: 64 << 20 };
        assert_eq!(refusal.kind(), "too_large");
        assert_eq!(
            refusal.to_string(),
            "the file is 67108865 bytes (64.0 MiB), more than plugins_max_file_mib allows (64 MiB)"
        );
        assert_eq!(
            Refusal::CompileTimeout { limit: Duration::from_millis(1500) }.to_string(),
            "compiling it took longer than 1.5 s (setting plugins_compile_timeout_seconds); it is not tried again until it changes"
        );
    }

    #[tokio::test]
    async fn a_compile_past_its_timeout_is_refused_and_not_cached() -> Result<()> {
        let runtime = Runtime::new()?;
        let dir = tempfile::tempdir()?;
        let cache = Arc::new(Cache::new(dir.path().to_owned(), runtime.engine()));
        let bytes = crate::builtin::BUILTIN.first().map(|(_, b)| b.to_vec()).context("no built-in component")?;
        let sha = sha256_hex(&bytes);
        let slot = Arc::new(Semaphore::new(1));
        let outcome =
            compile(&runtime, Some(cache.clone()), bytes.clone(), sha.clone(), slot.clone(), Some(Duration::ZERO))
                .await;
        assert!(matches!(outcome, Err(Refusal::CompileTimeout { .. })), "{:?}", outcome.err());
        // The compile ran on: the slot comes back once it ends, and it left no entry.
        let turn = tokio::time::timeout(Duration::from_secs(120), slot.clone().acquire_owned()).await??;
        drop(turn);
        assert!(cache.load(runtime.engine(), &sha).is_none(), "a refused compile must not be cached");
        let (_, compiled) = compile(&runtime, Some(cache), bytes, sha, slot, None).await.map_err(|e| anyhow!("{e}"))?;
        assert!(matches!(compiled, Compiled::Compiled(_)));
        Ok(())
    }

    #[test]
    fn messages_are_one_line() {
        assert_eq!(one_line("expected=[0,\n  97]\n"), "expected=[0, 97]");
    }
}
