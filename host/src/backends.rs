//! Which component serves which offering.
//!
//! [`Backends`] holds one compiled component per backend type; [`prepare_offering`]
//! binds it to an offering: the offering's egress (token, proxy, allow-list) and its
//! config, validated by the component's own `setup` before anything runs.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use anyhow::{Result, anyhow, bail};

use crate::config::{AgentConfig, OfferingConfig};
use crate::egress::Egress;
use crate::runtime::{CallError, LoadedBackend, OfferingBackend, Runtime, Source, wit, wit_config};

/// The components in service, by backend type. Swapping one is replacing an `Arc`:
/// calls already running keep the version they started with.
#[derive(Clone)]
pub struct Backends {
    runtime: Runtime,
    serving: Arc<RwLock<BTreeMap<String, Arc<LoadedBackend>>>>,
}

impl Backends {
    pub fn new(runtime: Runtime) -> Self {
        Self { runtime, serving: Arc::default() }
    }

    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    /// Loads the built-in component of every backend type `config` uses.
    pub async fn load_builtins_for(&self, config: &AgentConfig) -> Result<()> {
        for (index, offering) in config.offerings() {
            self.load_builtin(index, offering).await?;
        }
        Ok(())
    }

    /// Loads the built-in component of one offering's backend type, unless one serves
    /// it already (commands that work on one offering compile only its component).
    pub async fn load_builtin(&self, index: usize, offering: &OfferingConfig) -> Result<()> {
        let Some(backend_type) = offering.usage_backend() else { return Ok(()) };
        if self.get(backend_type).is_some() {
            return Ok(());
        }
        let Some(bytes) = crate::builtin::component(backend_type) else {
            bail!(
                "offerings[{index}].backend_type: no component serves {backend_type:?} (built in: {})",
                crate::builtin::names()
            );
        };
        let loaded = self.runtime.load(bytes, Source::Builtin).await?;
        self.install(backend_type, loaded);
        Ok(())
    }

    /// The component serving `backend_type` now.
    pub fn get(&self, backend_type: &str) -> Option<Arc<LoadedBackend>> {
        self.serving.read().ok()?.get(backend_type).cloned()
    }

    /// Puts `loaded` in service for `backend_type`; returns the one it replaced.
    pub fn install(&self, backend_type: &str, loaded: impl Into<Arc<LoadedBackend>>) -> Option<Arc<LoadedBackend>> {
        let loaded = loaded.into();
        record_serving(backend_type, &loaded);
        let mut map = match self.serving.write() {
            Ok(map) => map,
            Err(poisoned) => poisoned.into_inner(),
        };
        map.insert(backend_type.to_owned(), loaded)
    }
}

/// The `usage_agent_component_info` series of `backend_type`: one, for the component
/// serving it now, so a dashboard shows which build runs where.
fn record_serving(backend_type: &str, loaded: &LoadedBackend) {
    const NAME: &str = "usage_agent_component_info";
    let metrics = crate::metrics::global();
    metrics.clear_gauges(NAME, ("backend_type", backend_type));
    let source = match loaded.source {
        Source::Builtin => "builtin",
        Source::File(_) => "file",
    };
    metrics.set(
        NAME,
        "The component serving each backend type (always 1; the labels say which).",
        &[
            ("backend_type", backend_type),
            ("name", &loaded.info.name),
            ("version", &loaded.info.version),
            ("sha256", &loaded.sha256),
            ("source", source),
            ("wit", &loaded.wit_version),
            ("upstream", &loaded.info.upstream),
        ],
        1.0,
    );
}

/// Binds the component of `offering`'s backend type to it and validates the config.
pub async fn prepare_offering(backends: &Backends, index: usize, offering: &OfferingConfig) -> Result<OfferingBackend> {
    let at = |e: String| anyhow!("offerings[{index}].{e}");
    let backend_type = offering.usage_backend().ok_or_else(|| at("backend_type: missing".to_owned()))?;
    let backend =
        backends.get(backend_type).ok_or_else(|| at(format!("backend_type: no component serves {backend_type:?}")))?;
    let name = offering.display_name(index);
    let egress = Egress::new(&name, offering).map_err(|e| at(format!("{e:#}")))?;
    let prepared = OfferingBackend::new(backends.runtime().clone(), backend, egress, wit_config(offering));
    match prepared.setup().await {
        Ok(()) => Ok(prepared),
        Err(CallError::Backend { error: wit::BackendError::InvalidConfig(message), .. }) => {
            // The component names keys relative to the offering, e.g. `backend_settings.x`.
            if message.starts_with("backend_") {
                Err(at(message))
            } else {
                Err(anyhow!("offerings[{index}] ({name}): {message}"))
            }
        }
        Err(other) => Err(anyhow!("offerings[{index}] ({name}): setup failed: {other}")),
    }
}
