//! The real Waldur MasterMind 7.0.7 (tests/real-waldur), end to end. First the agent's
//! Waldur client against every endpoint it calls, as the provider; then the agent itself,
//! DWDI from its simulator, with what lands read back through Waldur's API and compared
//! with what DWDI served.
//!
//! Waldur 7 files every write under its current month and has no bulk per-user
//! endpoint, so: a report cycle writes the current month only (the past month with one
//! warning), per-user usage goes one user at a time with its offering-user link, a
//! second cycle changes nothing on the server, and a back-fill of a past month is
//! refused before any write. Needs `tests/real-waldur/setup` (tests/run-all runs it).

use std::collections::BTreeMap;

use dwdi_sim::{DwdiData, DwdiOptions, DwdiSim};
use e2e::real_waldur::{RealWaldur, current_billing_period};
use e2e::{ConfigFile, NODE_AND_CPU, cents, dwdi_access, run_cli};
use serde_json::{Value, json};
use usage_agent::amount::Cents;
use usage_agent::config::Secret;
use usage_agent::period::Month;
use usage_agent::sync::dates::{CurrentDate, current_month};
use usage_agent::waldur::{UserUsageInput, WaldurClient};

fn component(kind: &str, billing_type: &str) -> Value {
    json!({"type": kind, "name": kind, "measured_unit": "hours", "billing_type": billing_type})
}

fn spec() -> Value {
    json!({
        "offerings": [
            {
                "name": "daint-compute",
                "backend_id": "daint",
                "components": [component("cpuHours", "usage"), component("nodeHours", "usage")],
                "resources": [
                    {"name": "acct1", "backend_id": "acct1", "state": "OK"},
                    {"name": "acct2", "backend_id": "acct2", "state": "OK"},
                    {"name": "acct3", "backend_id": "acct3", "state": "Terminated"},
                ],
                "offering_users": [
                    {"username": "alice", "user": "alice"},
                    {"username": "bob", "user": "bob"},
                ],
            },
            {
                "name": "eiger-compute",
                "backend_id": "eiger",
                "components": [
                    component("cpuHours", "usage"),
                    component("nodeHours", "usage"),
                    component("gpuLimit", "limit"),
                ],
                "resources": [{"name": "acct9", "backend_id": "acct9", "state": "OK"}],
                "offering_users": [{"username": "alice", "user": "alice"}],
            },
        ],
    })
}

fn str_at<'a>(value: &'a Value, pointer: &str) -> &'a str {
    value.pointer(pointer).and_then(Value::as_str).unwrap_or_else(|| panic!("no {pointer} in {value}"))
}

fn amount(text: &str) -> Cents {
    Cents::parse(text).unwrap_or_else(|| panic!("{text} is not an amount"))
}

#[tokio::test(flavor = "multi_thread")]
async fn the_agent_client_reads_and_writes_the_real_waldur() {
    let waldur = RealWaldur::start().expect("start the real Waldur");
    let seeded = waldur.seed(&spec()).expect("seed");
    let provider_token = str_at(&seeded, "/provider/token").to_owned();
    let staff_token = str_at(&seeded, "/staff/token").to_owned();
    let daint = &seeded["offerings"][0];
    let eiger = &seeded["offerings"][1];
    let daint_uuid = str_at(daint, "/uuid");
    let period = current_billing_period();
    let today = format!("{}T00:00:00Z", &jiff::Timestamp::now().to_string()[..10]);

    let client = WaldurClient::new(waldur.api_url(), Secret::new(provider_token.clone()), true).expect("client");
    let staff = WaldurClient::new(waldur.api_url(), Secret::new(staff_token), true).expect("client");

    // users/me/: the provider is not staff (7.x omits the key; the client's default
    // reads that as false), the staff user is.
    let me = client.me().await.expect("users/me as provider");
    assert_eq!(me.username, "provider");
    assert!(!me.is_staff);
    assert!(staff.me().await.expect("users/me as staff").is_staff);

    // The offering with its components and billing types.
    let offering = client.offering(str_at(eiger, "/uuid")).await.expect("offering");
    let mut components: Vec<(String, Option<String>)> =
        offering.components.iter().map(|c| (c.component_type.clone(), c.billing_type.clone())).collect();
    components.sort();
    assert_eq!(
        components,
        [
            ("cpuHours".to_owned(), Some("usage".to_owned())),
            ("gpuLimit".to_owned(), Some("limit".to_owned())),
            ("nodeHours".to_owned(), Some("usage".to_owned())),
        ]
    );
    assert_eq!(offering.name, "eiger-compute");

    // Resources in OK (the Terminated one is filtered out); 7.x has no offering_backend_id.
    let mut resources = client.resources(daint_uuid).await.expect("resources");
    resources.sort_by(|a, b| a.name.cmp(&b.name));
    let names: Vec<(&str, Option<&str>, &str)> =
        resources.iter().map(|r| (r.name.as_str(), r.backend_id.as_deref(), r.state.as_str())).collect();
    assert_eq!(names, [("acct1", Some("acct1"), "OK"), ("acct2", Some("acct2"), "OK")]);
    assert!(resources.iter().all(|r| r.offering_backend_id.is_none()));

    // Offering users, with the URLs per-user usages link to.
    let mut users = client.offering_users(daint_uuid).await.expect("offering users");
    users.sort_by(|a, b| a.username.cmp(&b.username));
    let usernames: Vec<Option<&str>> = users.iter().map(|u| u.username.as_deref()).collect();
    assert_eq!(usernames, [Some("alice"), Some("bob")]);
    let alice_url = str_at(daint, "/offering_users/0/url");
    assert_eq!(users[0].url, alice_url);

    // set_usage for the current month, read back by the agent and by the harness.
    let acct1 = str_at(daint, "/resources/0/uuid");
    client
        .set_usage(acct1, &[("cpuHours".to_owned(), amount("12.34")), ("nodeHours".to_owned(), amount("1.50"))], &today)
        .await
        .expect("set_usage");
    let usages = client.component_usages(daint_uuid, &period).await.expect("component usages");
    let mut read: Vec<(String, String, Cents, String)> = usages
        .iter()
        .map(|u| (u.resource_uuid.clone(), u.component_type.clone(), u.amount, u.billing_period.clone()))
        .collect();
    read.sort_by(|a, b| a.1.cmp(&b.1));
    assert_eq!(
        read,
        [
            (acct1.to_owned(), "cpuHours".to_owned(), amount("12.34"), period.clone()),
            (acct1.to_owned(), "nodeHours".to_owned(), amount("1.50"), period.clone()),
        ]
    );
    assert_eq!(client.resource_component_usages(acct1, &period).await.expect("resource usages").len(), 2);
    let rows = waldur.component_usages(daint_uuid, &period).expect("harness component usages");
    assert_eq!(rows.len(), 2);
    assert!(rows.iter().all(|r| r["billing_period"] == period.as_str()), "{rows:?}");

    // A Terminated resource is refused.
    let acct3 = str_at(daint, "/resources/2/uuid");
    let refused =
        client.set_usage(acct3, &[("cpuHours".to_owned(), amount("1"))], &today).await.expect_err("terminated");
    assert_eq!(refused.status(), Some(400), "{refused}");

    // The singular set_user_usage, with the offering user linked, read back.
    let cpu = usages.iter().find(|u| u.component_type == "cpuHours").expect("cpuHours usage");
    let alice = UserUsageInput { username: "alice".into(), usage: amount("3.21"), user: Some(alice_url.to_owned()) };
    client.set_user_usage(&cpu.uuid, &alice, &today).await.expect("set_user_usage");
    let user_usages = client.component_user_usages(daint_uuid, &period).await.expect("user usages");
    assert_eq!(user_usages.len(), 1, "{user_usages:?}");
    assert_eq!(user_usages[0].username, "alice");
    assert_eq!(user_usages[0].usage, amount("3.21"));
    assert_eq!(user_usages[0].user.as_deref(), Some(alice_url));
    assert_eq!(user_usages[0].component_usage_uuid(), cpu.uuid);
    assert_eq!(client.resource_user_usages(acct1, &period).await.expect("resource user usages").len(), 1);
    let rows = waldur.component_user_usages(daint_uuid, &period).expect("harness user usages");
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["user"], alice_url);
    assert_eq!(rows[0]["username"], "alice");

    // 7.x has no bulk set_user_usages: 404.
    let missing = client.set_user_usages(&cpu.uuid, &[alice], &today).await.expect_err("no bulk endpoint");
    assert_eq!(missing.status(), Some(404), "{missing}");
}

/// What Waldur holds for the month: (resource uuid, component) → usage, and
/// (resource uuid, component, username) → (usage, offering-user uuid of the link).
type Held = (BTreeMap<(String, String), String>, BTreeMap<(String, String, String), (String, Option<String>)>);

fn held(waldur: &RealWaldur, offering: &str, period: &str) -> Held {
    let usages = waldur.component_usages(offering, period).expect("component usages");
    let by_uuid: BTreeMap<String, (String, String)> = usages
        .iter()
        .map(|u| {
            (str_at(u, "/uuid").to_owned(), (str_at(u, "/resource_uuid").to_owned(), str_at(u, "/type").to_owned()))
        })
        .collect();
    let totals = usages
        .iter()
        .map(|u| {
            ((str_at(u, "/resource_uuid").to_owned(), str_at(u, "/type").to_owned()), str_at(u, "/usage").to_owned())
        })
        .collect();
    let users = waldur
        .component_user_usages(offering, period)
        .expect("user usages")
        .iter()
        .map(|u| {
            let parent = str_at(u, "/component_usage").trim_end_matches('/').rsplit('/').next().unwrap_or_default();
            let (resource, component) = by_uuid.get(parent).cloned().unwrap_or_default();
            let link = u["user"]
                .as_str()
                .map(|url| url.trim_end_matches('/').rsplit('/').next().unwrap_or_default().to_owned());
            ((resource, component, str_at(u, "/username").to_owned()), (str_at(u, "/usage").to_owned(), link))
        })
        .collect();
    (totals, users)
}

#[tokio::test(flavor = "multi_thread")]
async fn report_and_back_fill_against_the_real_waldur() {
    let now = jiff::Timestamp::now();
    let month = Month::containing(now, &jiff::tz::TimeZone::UTC);
    let previous = month.previous();
    let months = [(i32::from(previous.year), previous.month as u32), (i32::from(month.year), month.month as u32)];
    let data = DwdiData::generated(4, 3, &months);
    let accounts = data.accounts();
    let options = DwdiOptions::default();
    let dwdi = DwdiSim::start(data.clone(), options.clone()).await.expect("DWDI simulator");

    let waldur = RealWaldur::start().expect("start the real Waldur");
    let resources: Vec<Value> = accounts
        .iter()
        .map(|a| json!({"name": a, "backend_id": a, "state": "OK"}))
        .chain([json!({"name": "gone", "backend_id": accounts[0].clone() + "-gone", "state": "Terminated"})])
        .collect();
    let component = |kind: &str| json!({"type": kind, "name": kind, "measured_unit": "hours", "billing_type": "usage"});
    let seeded = waldur
        .seed(&json!({"offerings": [{
            "name": "compute",
            "backend_id": "alps",
            "components": [component("nodeHours"), component("cpuHours")],
            "resources": resources,
            // Two of the three DWDI users are offering users; the third stays unlinked.
            "offering_users": [{"username": "user_0000", "user": "alice"}, {"username": "user_0001", "user": "bob"}],
        }]}))
        .expect("seed");
    let offering = str_at(&seeded, "/offerings/0/uuid").to_owned();
    let provider = str_at(&seeded, "/provider/token").to_owned();
    let staff = str_at(&seeded, "/staff/token").to_owned();
    let uuid_of: BTreeMap<String, String> = seeded["offerings"][0]["resources"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| (str_at(r, "/backend_id").to_owned(), str_at(r, "/uuid").to_owned()))
        .collect();
    let link_of: BTreeMap<String, String> = seeded["offerings"][0]["offering_users"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|u| (str_at(u, "/username").to_owned(), str_at(u, "/uuid").to_owned()))
        .collect();

    let config = ConfigFile::new(&format!(
        "timezone: UTC\nreporting_periods: 2\nofferings:\n  - name: compute\n    waldur_api_url: {:?}\n    waldur_api_token: {provider}\n    waldur_offering_uuid: {offering}\n    backend_type: cscs-dwdi-compute\n    backend_settings:\n{}    backend_components:\n{NODE_AND_CPU}",
        waldur.api_url(),
        dwdi_access(&dwdi, &options)
    ))
    .expect("config");
    let period = current_billing_period();
    let past = previous.first_day().to_string();

    // Two cycles with the provider's token.
    let first = run_cli(&["report", "-c", config.arg(), "--once"]).await;
    let after_first = held(&waldur, &offering, &period);
    let second = run_cli(&["report", "-c", config.arg(), "--once"]).await;
    let after_second = held(&waldur, &offering, &period);
    let first = first.unwrap_or_else(|e| panic!("first cycle: {e:#}\n{}", waldur.log()));
    second.unwrap_or_else(|e| panic!("second cycle: {e:#}"));
    // The past month is never written on this Waldur, and the Terminated resource never.
    assert!(held(&waldur, &offering, &past).0.is_empty(), "nothing under {past}");
    let gone = &uuid_of[&(accounts[0].clone() + "-gone")];
    assert!(after_first.0.keys().all(|(resource, _)| resource != gone));

    match current_month(month, now, &jiff::tz::TimeZone::UTC) {
        CurrentDate::Now(_) => {
            assert!(first.contains("4 resources × 2 months: 4 written"), "{first}");
            // Exactly what DWDI served, totals and per-user, linked where an offering user exists.
            let (totals, users) = &after_first;
            let (first_day, last_day) = (month.first_day().to_string(), month.first_day().last_of_month().to_string());
            let mut expected_users = 0;
            for account in &accounts {
                let usage = data.compute_usage(account, None, &first_day, &last_day);
                let resource = &uuid_of[account];
                assert_eq!(
                    totals.get(&(resource.clone(), "nodeHours".into())),
                    Some(&cents(usage.node_hours)),
                    "{account}"
                );
                assert_eq!(
                    totals.get(&(resource.clone(), "cpuHours".into())),
                    Some(&cents(usage.cpu_hours)),
                    "{account}"
                );
                for (user, (node, cpu, _)) in &usage.users {
                    for (component, value) in [("nodeHours", node), ("cpuHours", cpu)] {
                        expected_users += 1;
                        let stored = users.get(&(resource.clone(), component.to_owned(), user.clone()));
                        assert_eq!(
                            stored,
                            Some(&(cents(*value), link_of.get(user).cloned())),
                            "{account} {user} {component}"
                        );
                    }
                }
            }
            assert_eq!(users.len(), expected_users, "{users:?}");
            // The second cycle changed nothing on the server (a write would move `date`).
            let listing = |p: &str| waldur.component_usages(&offering, p).expect("listing");
            assert_eq!(after_first, after_second);
            assert!(listing(&period).iter().all(|u| u["date"].as_str().is_some()));
        }
        // Near the edges of a month nothing is written into it (see sync::dates).
        _ => assert!(after_first.0.is_empty() && after_second.0.is_empty(), "{after_first:?}"),
    }
    let rows_before = waldur.component_usages(&offering, &period).expect("listing");

    // A back-fill of the past month is refused before any write, with the staff token.
    let start = previous.first_day().to_string();
    let end = previous.first_day().last_of_month().to_string();
    let refused = run_cli(&[
        "load-historical-usage",
        "-c",
        config.arg(),
        "-o",
        &offering,
        "-t",
        &staff,
        "-s",
        &start,
        "-e",
        &end,
    ])
    .await
    .map(|_| ())
    .err()
    .map(|e| format!("{e:#}"));
    assert!(refused.as_deref().is_some_and(|e| e.contains("cannot back-fill past months")), "{refused:?}");
    assert!(held(&waldur, &offering, &past).0.is_empty());
    assert_eq!(
        waldur.component_usages(&offering, &period).expect("listing"),
        rows_before,
        "the current month is untouched"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn listings_of_more_than_300_rows_are_read_whole() {
    let waldur = RealWaldur::start().expect("start the real Waldur");
    let resources: Vec<Value> = (0..310)
        .map(|i| json!({"name": format!("r{i:03}"), "backend_id": format!("r{i:03}"), "state": "OK"}))
        .collect();
    let seeded = waldur
        .seed(&json!({"offerings": [{
            "name": "many",
            "backend_id": "many",
            "components": [{"type": "nodeHours", "name": "nodeHours", "measured_unit": "hours", "billing_type": "usage"}],
            "resources": resources,
        }]}))
        .expect("seed");
    let client = WaldurClient::new(waldur.api_url(), Secret::new(str_at(&seeded, "/provider/token").to_owned()), true)
        .expect("client");
    let listed = client.resources(str_at(&seeded, "/offerings/0/uuid")).await.expect("resources");
    let mut ids: Vec<String> = listed.into_iter().filter_map(|r| r.backend_id).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 310);
}
