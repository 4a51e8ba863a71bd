//! The real Waldur MasterMind (tests/real-waldur) answers every endpoint the agent's
//! Waldur client calls, as the client expects, for the provider token: the offering,
//! its resources and offering users, `users/me/`, a `set_usage` read back from the
//! component usages and a singular `set_user_usage` read back with its user link.
//! Where this Waldur (7.0.7) differs from the 8.x the agent was written against, the
//! test says so (no `offering_backend_id`, no bulk `set_user_usages`).
//!
//! Needs `tests/real-waldur/setup` to have been run once (tests/run-all does).

use e2e::real_waldur::{RealWaldur, current_billing_period};
use serde_json::{Value, json};
use usage_agent::amount::Cents;
use usage_agent::config::Secret;
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

fn cents(text: &str) -> Cents {
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
        .set_usage(acct1, &[("cpuHours".to_owned(), cents("12.34")), ("nodeHours".to_owned(), cents("1.50"))], &today)
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
            (acct1.to_owned(), "cpuHours".to_owned(), cents("12.34"), period.clone()),
            (acct1.to_owned(), "nodeHours".to_owned(), cents("1.50"), period.clone()),
        ]
    );
    assert_eq!(client.resource_component_usages(acct1, &period).await.expect("resource usages").len(), 2);
    let rows = waldur.component_usages(daint_uuid, &period).expect("harness component usages");
    assert_eq!(rows.len(), 2);
    assert!(rows.iter().all(|r| r["billing_period"] == period.as_str()), "{rows:?}");

    // A Terminated resource is refused.
    let acct3 = str_at(daint, "/resources/2/uuid");
    let refused =
        client.set_usage(acct3, &[("cpuHours".to_owned(), cents("1"))], &today).await.expect_err("terminated");
    assert_eq!(refused.status(), Some(400), "{refused}");

    // The singular set_user_usage, with the offering user linked, read back.
    let cpu = usages.iter().find(|u| u.component_type == "cpuHours").expect("cpuHours usage");
    let alice = UserUsageInput { username: "alice".into(), usage: cents("3.21"), user: Some(alice_url.to_owned()) };
    client.set_user_usage(&cpu.uuid, &alice, &today).await.expect("set_user_usage");
    let user_usages = client.component_user_usages(daint_uuid, &period).await.expect("user usages");
    assert_eq!(user_usages.len(), 1, "{user_usages:?}");
    assert_eq!(user_usages[0].username, "alice");
    assert_eq!(user_usages[0].usage, cents("3.21"));
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
