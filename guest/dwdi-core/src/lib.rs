//! The DWDI logic of the `cscs-dwdi-compute`, `cscs-dwdi-storage` and
//! `cscs-dwdi-inference` components.
//!
//! Everything here is sans-IO and builds natively, so it is tested without a wasm
//! runtime; the components only convert WIT types and move bytes. A usage call is
//! two pure steps around the network:
//!
//! 1. [`plan_usage_report`] / [`plan_daily_report`] validate the config and build
//!    every DWDI URL ([`Plan::requests`]), grouped by cluster and split so each URL
//!    stays under [`MAX_URL_BYTES`]. A backend without daily data (inference) answers
//!    [`plan_daily_report`] with [`BackendError::Unsupported`].
//! 2. [`assemble`] turns the answers, in the same order, into a [`UsageReport`] in
//!    Waldur's units (DWDI value × factor, unrounded).
//!
//! [`setup`] is the validation alone; [`plan_ping`] and [`check_ping`] the
//! reachability check; [`Backend::operations`] what a component's `describe` lists.
//! With the `wasi` feature on `wasm32`, the `fetch` module sends a plan's requests
//! through `wasi:http` (the one executor every component shares).
//!
//! Modules: `model` mirrors the WIT records, `settings` reads `backend_settings`,
//! `metric` names the backends (their metrics and operations) and maps components to
//! DWDI fields, `url` builds and splits URLs, `plan` decides the requests, `json` +
//! `parse` read answers row by row, `report` builds the result, `synthetic` makes
//! benchmark answers (compute only).
//!
//! Every map hashes with FNV-1a, unseeded (`fnv`): `std`'s default `RandomState` asks
//! the platform for a random seed, which on `wasm32-wasip2` makes the component import
//! `wasi:random/insecure-seed` — a capability it otherwise does not need — and makes
//! iteration order vary between runs. The keys are accounts, paths, resource ids and
//! usernames from the site's own warehouse, short and not adversarial, which is what FNV
//! is good at.

mod json;
mod metric;
mod model;
mod parse;
mod plan;
mod report;
mod settings;
mod synthetic;
mod url;

#[cfg(all(feature = "wasi", target_arch = "wasm32"))]
pub mod fetch;

#[cfg(test)]
mod tests;

pub use metric::{Backend, DWDI_METRIC, MappedComponent, Metric, map_components};
pub use model::{
    Amount, BackendError, BillingPeriod, Component, Config, Date, HttpAnswer, Operation, Resource, ResourceUsage,
    UsageReport, UserUsage,
};
pub use plan::{Plan, Request, ValidConfig, plan_daily_report, plan_ping, plan_usage_report, read_only, setup};
pub use report::{assemble, check_ping};
pub use settings::{BackendSettings, SETTING_KEYS, Settings, StorageSettings};
pub use synthetic::{synthetic_account, synthetic_compute_answer, synthetic_compute_answer_for, synthetic_user};
pub use url::{MAX_URL_BYTES, Scheme, UrlParts, endpoint, split_url};
