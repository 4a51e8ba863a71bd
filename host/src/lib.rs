//! The usage-agent host: runs usage backends as sandboxed WebAssembly components
//! and reports what they measure to Waldur.
//!
//! - [`config`]: the waldur-site-agent YAML, read unchanged.
//! - [`runtime`]: wasmtime, one fresh instance per component call.
//! - [`egress`]: the only way out of the sandbox: allow-list, OIDC, proxies, TLS.
//! - [`backends`]: which component serves which offering.
//! - [`plugins`]: the plugins folder: validated hot swaps and the compiled-component cache.
//! - [`waldur`], [`report`]: the Waldur client and the report cycle.
//! - [`historical`]: back-filling past months (`load-historical-usage`).
//! - [`period`], [`amount`]: billing months and two-decimal amounts.
//! - [`cli`]: the `usage-agent` commands.

pub mod amount;
pub mod backends;
pub mod builtin;
pub mod cli;
pub mod config;
pub mod egress;
pub mod heartbeat;
pub mod historical;
pub mod metrics;
pub mod period;
pub mod plugins;
pub mod report;
mod run_errors;
pub mod runtime;
pub mod sync;
pub mod waldur;
