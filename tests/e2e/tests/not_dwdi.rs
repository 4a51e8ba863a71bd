//! A backend that is not DWDI needs no host change: the worked example of
//! `docs/writing-a-backend.md` (`tests/components/my-site-usage`), built and dropped into
//! the plugins folder, reports into Waldur from a stand-in accounting API that wants its
//! own key header, with no `cscs_dwdi_*` key anywhere in the offering.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use anyhow::{Context as _, Result};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use e2e::{components, run_cli};
use serde_json::{Value, json};
use waldur_sim::{WaldurOptions, WaldurSim, uuid_from};

const TOKEN: &str = "provider-token";
const KEY: &str = "s1te-k3y";

/// What the stand-in API saw: the `X-Api-Key` and `Authorization` of each request, and
/// its query.
type Seen = Arc<Mutex<Vec<(Option<String>, Option<String>, BTreeMap<String, String>)>>>;

/// The site's accounting API of the guide: `GET /api/usage?instance=…&month=YYYY-MM` and
/// `GET /api/health`, both only with the right key.
async fn stand_in() -> Result<(String, Seen)> {
    let seen: Seen = Arc::default();
    let record = |seen: &Seen, headers: &HeaderMap, query: BTreeMap<String, String>| {
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
        if let Ok(mut seen) = seen.lock() {
            seen.push((header("x-api-key"), header("authorization"), query));
        }
        header("x-api-key").as_deref() == Some(KEY)
    };
    let app = axum::Router::new()
        .route(
            "/api/usage",
            get(move |State(seen): State<Seen>, headers: HeaderMap, Query(query): Query<BTreeMap<String, String>>| {
                let allowed = record(&seen, &headers, query.clone());
                async move {
                    if !allowed {
                        return (StatusCode::UNAUTHORIZED, axum::Json(json!({"error": "key"})));
                    }
                    if query.get("instance").map(String::as_str) != Some("prod") || !query.contains_key("month") {
                        return (StatusCode::BAD_REQUEST, axum::Json(json!({"error": "query"})));
                    }
                    (StatusCode::OK, axum::Json(usage()))
                }
            }),
        )
        .route(
            "/api/health",
            get(move |State(seen): State<Seen>, headers: HeaderMap| {
                let allowed = record(&seen, &headers, BTreeMap::new());
                async move { if allowed { StatusCode::OK } else { StatusCode::UNAUTHORIZED } }
            }),
        )
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((format!("http://{addr}/api"), seen))
}

/// The answer of the guide's example (one value changed to round exactly), every month.
fn usage() -> Value {
    json!({"accounts": {
        "acct1": {"cpu_hours": 1234.5, "gpu_hours": 10.25,
                  "users": {"alice": {"cpu_hours": 1000, "gpu_hours": 10.25}, "bob": {"cpu_hours": 234.5}}},
        "acct2": {"cpu_hours": 7.25}
    }})
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backend_that_is_not_dwdi_reports_into_waldur_from_the_plugins_folder() -> Result<()> {
    let (api, seen) = stand_in().await?;
    let waldur = WaldurSim::start(WaldurOptions::default()).await?;
    waldur.add_token(TOKEN, "provider", false);
    let offering = uuid_from("my-site");
    waldur.add_offering(&offering, "my-site", &["cpu_hours", "gpu_hours"]);
    for account in ["acct1", "acct2"] {
        waldur.add_resource(&offering, &uuid_from(account), account, "", "OK");
    }
    for user in ["alice", "bob"] {
        waldur.add_offering_user(&offering, user);
    }

    let dir = tempfile::tempdir()?;
    std::fs::create_dir(dir.path().join("plugins"))?;
    std::fs::copy(components::MY_SITE_USAGE, dir.path().join("plugins/my-site-usage.wasm"))?;
    std::fs::write(dir.path().join("site.key"), format!("{KEY}\n"))?;
    let config = dir.path().join("config.yaml");
    let text = format!(
        "timezone: UTC\nreporting_periods: 1\nplugins_dir: plugins\nofferings:\n  - name: my-site\n    waldur_api_url: {:?}\n    waldur_api_token: {TOKEN}\n    waldur_offering_uuid: {offering}\n    backend_type: my-site-usage\n    backend_settings:\n      my_site_instance: prod\n      upstream:\n        urls: [{api:?}]\n        auth: {{type: header, name: X-Api-Key, value_file: {:?}}}\n    backend_components:\n      cpu_hours: {{measured_unit: hours, unit_factor: 1, accounting_type: usage, label: CPU hours}}\n      gpu_hours: {{measured_unit: hours, unit_factor: 2, accounting_type: usage, label: GPU hours}}\n",
        waldur.url(),
        dir.path().join("site.key").display()
    );
    assert!(!text.contains("cscs_dwdi") && !text.contains("dwdi"), "{text}");
    std::fs::write(&config, &text)?;
    let config = config.to_str().context("temp path is not UTF-8")?;

    let checked = run_cli(&["check-config", "-c", config]).await?;
    assert!(checked.contains("my-site-usage 0.1.0") && checked.contains("x-api-key header"), "{checked}");
    assert!(!checked.contains(KEY), "the key is never shown: {checked}");
    let pinged = run_cli(&["ping", "-c", config]).await?;
    assert!(pinged.contains("none needed") && pinged.contains("answers the backend's request"), "{pinged}");

    let out = run_cli(&["report", "-c", config, "--once"]).await?;
    assert!(out.contains("2 written") && out.contains("0 failed"), "{out}");
    let month = waldur.current_billing_period();
    let totals: BTreeMap<(String, String), String> = waldur
        .usages()
        .into_iter()
        .map(|u| {
            assert_eq!(u.billing_period, month, "{u:?}");
            let id = if u.resource_uuid == uuid_from("acct1") { "acct1" } else { "acct2" };
            ((id.to_owned(), u.component_type), u.amount)
        })
        .collect();
    let want = |id: &str, c: &str, v: &str| ((id.to_owned(), c.to_owned()), v.to_owned());
    let expected = BTreeMap::from([
        want("acct1", "cpu_hours", "1234.50"),
        want("acct1", "gpu_hours", "20.50"),
        want("acct2", "cpu_hours", "7.25"),
        want("acct2", "gpu_hours", "0.00"),
    ]);
    assert_eq!(totals, expected);
    let users: BTreeMap<(String, String), String> =
        waldur.user_usages().into_iter().map(|u| ((u.username, u.component_type), u.usage)).collect();
    assert_eq!(users.get(&("alice".to_owned(), "gpu_hours".to_owned())).map(String::as_str), Some("20.50"));
    assert_eq!(users.get(&("bob".to_owned(), "cpu_hours".to_owned())).map(String::as_str), Some("234.50"));

    // Every request carried the host's key header and no bearer token.
    let seen = seen.lock().map(|seen| seen.clone()).unwrap_or_default();
    assert!(seen.len() >= 2, "{seen:?}");
    for (key, authorization, _) in &seen {
        assert_eq!((key.as_deref(), authorization.as_deref()), (Some(KEY), None), "{seen:?}");
    }
    Ok(())
}

/// The guide shows the example's code: it must be what the tests build.
#[test]
fn the_guide_shows_the_code_the_tests_build() -> Result<()> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let guide = std::fs::read_to_string(root.join("docs/writing-a-backend.md"))?;
    let start = guide.find("`src/lib.rs`:\n\n```rust\n").context("the guide's src/lib.rs")? + 22;
    let shown = &guide[start..start + guide[start..].find("```").context("end of the code")?];
    let built = std::fs::read_to_string(root.join("tests/components/my-site-usage/src/lib.rs"))?;
    // Compared without whitespace: `cargo fmt` lays the crate's copy out for the
    // repository's wider lines. The crate wraps the guide's code in a wasm32-only module.
    let tokens = |text: &str| -> String {
        let kept: String =
            text.lines().filter(|line| !line.trim_start().starts_with("//!")).flat_map(str::split_whitespace).collect();
        kept.replace(",)", ")")
    };
    let wrapper = tokens(
        "#[cfg(target_arch = \"wasm32\")]\n#[allow(unsafe_code, unreachable_pub)] // Only wit-bindgen's generated ABI glue.\nmod component {",
    );
    let built = tokens(&built).replace("\"../../../wit\"", "\"wit\"");
    let inner = built.strip_prefix(&wrapper).and_then(|rest| rest.strip_suffix('}')).context("the crate's wrapper")?;
    assert_eq!(tokens(shown), inner, "docs/writing-a-backend.md and tests/components/my-site-usage differ");
    Ok(())
}
