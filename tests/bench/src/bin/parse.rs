//! Parsing a large DWDI answer (default 5,000 accounts × 20 users) inside the compute
//! component versus the same `dwdi-core` code run natively, and the host's start-up
//! time to its first DWDI request.
//!
//! `cargo run --release -p bench --bin parse -- [--accounts 5000] [--users 20] [--runs 10] [--component FILE]`
//!
//! `--component` runs a compute component from a file instead of the built-in one, e.g.
//! `tests/components/compute-v2` (the same backend behind the `waldur:usage@2.0.0`
//! binding, whose calls the host converts), to compare what the two bindings cost.
//!
//! The answers are built once, natively, per planned request, and served from memory
//! by a small loopback server, so the component's time is its own work (HTTP over
//! loopback included) and not a simulator's. A run with empty answers shows what the
//! HTTP requests and the call itself cost without parsing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{Result, bail};
use axum::extract::{RawQuery, State};
use axum::routing::{get, post};
use bench::median;
use dwdi_core::{Backend, BillingPeriod, Component, Config, HttpAnswer, Resource};
use usage_agent::backends::{Backends, prepare_offering};
use usage_agent::config::AgentConfig;
use usage_agent::runtime::{Runtime, Source, wit};

#[derive(Clone, Default)]
struct Served {
    answers: Arc<HashMap<String, String>>,
    empty: Arc<Mutex<bool>>,
    first_request: Arc<Mutex<Option<Instant>>>,
}

async fn token() -> &'static str {
    r#"{"access_token":"bench","token_type":"Bearer","expires_in":3600}"#
}

async fn usage(State(served): State<Served>, RawQuery(query): RawQuery) -> String {
    if let Ok(mut first) = served.first_request.lock() {
        first.get_or_insert_with(Instant::now);
    }
    if served.empty.lock().map(|e| *e).unwrap_or(false) {
        return r#"{"compute":[]}"#.to_owned();
    }
    served.answers.get(query.as_deref().unwrap_or("")).cloned().unwrap_or_else(|| r#"{"compute":[]}"#.to_owned())
}

#[tokio::main]
async fn main() -> Result<()> {
    let mut accounts = 5000usize;
    let mut users = 20usize;
    let mut runs = 10usize;
    let mut file: Option<std::path::PathBuf> = None;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| anyhow::anyhow!("{flag} needs a value"))?;
        match flag.as_str() {
            "--accounts" => accounts = value.parse()?,
            "--users" => users = value.parse()?,
            "--runs" => runs = value.parse()?,
            "--component" => file = Some(value.into()),
            other => bail!("unknown flag {other}"),
        }
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let settings = serde_json::json!({ "cscs_dwdi_api_url": format!("{base}/api/v1") }).to_string();
    let components = vec![Component::named("nodeHours", 1.0), Component::named("cpuHours", 1.0)];
    let core_config = Config { settings_json: settings, components };
    let ids: Vec<String> = (0..accounts).map(dwdi_core::synthetic_account).collect();
    let resources: Vec<Resource> = ids.iter().map(|id| Resource::new(id)).collect();
    let period = BillingPeriod { year: 2024, month: 3 };
    let plan = dwdi_core::plan_usage_report(Backend::Compute, &core_config, &resources, period)?;
    let mut answers = HashMap::new();
    let mut bodies = Vec::new();
    let mut bytes = 0;
    for request in plan.requests() {
        let body = dwdi_core::synthetic_compute_answer_for(request.keys(), users);
        bytes += body.len();
        let query = request.url().split_once('?').map(|(_, q)| q.to_owned()).unwrap_or_default();
        answers.insert(query, body.clone());
        bodies.push(HttpAnswer { status: 200, body: body.into_bytes() });
    }

    // Native: the same assembly code on the same bodies.
    let mut native = Vec::new();
    for _ in 0..runs {
        let start = Instant::now();
        let report = dwdi_core::assemble(&plan, &bodies)?;
        native.push(start.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(report.resources.len(), accounts);
    }

    let served = Served { answers: Arc::new(answers), ..Served::default() };
    let app = axum::Router::new()
        .route("/token", post(token))
        .route("/api/v1/compute/usage-month/account", get(usage))
        .with_state(served.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let text = format!(
        "offerings:\n  - name: parse\n    backend_type: cscs-dwdi-compute\n    backend_settings:\n      cscs_dwdi_api_url: \"{base}/api/v1\"\n      cscs_dwdi_client_id: bench\n      cscs_dwdi_client_secret: bench\n      cscs_dwdi_oidc_token_url: \"{base}/token\"\n    backend_components:\n      nodeHours: {{unit_factor: 1}}\n      cpuHours: {{unit_factor: 1}}\n"
    );
    // Start-up as a host does it: parse config, start wasmtime, compile, set up.
    let started = Instant::now();
    let config = AgentConfig::parse(&text)?;
    let backends = Backends::new(Runtime::new()?);
    match &file {
        Some(path) => {
            let loaded = backends.runtime().load(&std::fs::read(path)?, Source::File(path.clone())).await?;
            println!("component: {} {} (waldur:usage@{})", loaded.info.name, loaded.info.version, loaded.wit_version);
            backends.install("cscs-dwdi-compute", loaded);
        }
        None => backends.load_builtins_for(&config).await?,
    }
    let loaded = Instant::now();
    let backend = prepare_offering(&backends, 0, &config.offerings[0]).await?;
    let wit_resources: Vec<wit::WaldurResource> =
        ids.iter().map(|id| wit::WaldurResource { backend_id: id.clone(), offering_backend_id: None }).collect();
    let wit_period = wit::BillingPeriod { year: 2024, month: 3 };
    let first = backend.usage_report(wit_resources.clone(), wit_period).await?;
    let first_request = served.first_request.lock().ok().and_then(|f| *f);
    assert_eq!(first.resources.len(), accounts);

    let mut component = Vec::new();
    for _ in 0..runs {
        let start = Instant::now();
        backend.usage_report(wit_resources.clone(), wit_period).await?;
        component.push(start.elapsed().as_secs_f64() * 1000.0);
    }
    if let Ok(mut empty) = served.empty.lock() {
        *empty = true;
    }
    let mut http_only = Vec::new();
    for _ in 0..runs {
        let start = Instant::now();
        backend.usage_report(wit_resources.clone(), wit_period).await?;
        http_only.push(start.elapsed().as_secs_f64() * 1000.0);
    }

    println!(
        "{accounts} accounts × {users} users: {} requests, {:.1} MiB of JSON; median of {runs} runs",
        plan.requests().len(),
        bytes as f64 / 1048576.0
    );
    println!("| what | ms |");
    println!("|---|---:|");
    println!("| native `dwdi_core::assemble` (parse + aggregate) | {:.1} |", median(&mut native));
    println!("| component `usage-report` (HTTP + parse + aggregate + WIT) | {:.1} |", median(&mut component));
    println!("| component `usage-report`, empty answers (HTTP + call only) | {:.1} |", median(&mut http_only));
    if let Some(first) = first_request {
        println!(
            "\nhost start-up to first DWDI request: {:.0} ms (of which compiling the built-in component: {:.0} ms)",
            (first - started).as_secs_f64() * 1000.0,
            (loaded - started).as_secs_f64() * 1000.0
        );
    }
    Ok(())
}
