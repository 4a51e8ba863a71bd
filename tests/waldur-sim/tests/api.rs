//! The simulator's HTTP contract, exercised over real sockets with a minimal HTTP/1.1
//! client, so nothing between the test and the server hides a wire-level detail.

mod common;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::net::TcpStream;
use waldur_sim::{OfferingComponent, WaldurOptions, uuid_from};

use crate::common::{Fixture, STAFF, TOKEN, get, post, raw};

#[tokio::test]
async fn token_authentication_follows_drf() {
    let f = Fixture::new().await;
    let me = f.url("users/me/");

    let none = raw("GET", &me, &[], b"").await;
    assert_eq!(none.status, 401);
    assert_eq!(none.json(), json!({"detail": "Authentication credentials were not provided."}));
    assert_eq!(none.header("www-authenticate"), Some("Token"));

    let bearer = raw("GET", &me, &[("Authorization", "Bearer agent-token")], b"").await;
    assert_eq!(bearer.status, 401);

    let wrong = get(&me, "nope").await;
    assert_eq!(wrong.status, 401);
    assert_eq!(wrong.json(), json!({"detail": "Invalid token."}));

    let ok = get(&me, TOKEN).await;
    assert_eq!(ok.status, 200);
    assert_eq!(ok.json()["username"], "agent");
    assert_eq!(ok.json()["is_staff"], false);
    assert_eq!(get(&me, STAFF).await.json()["is_staff"], true);

    // A write with a bad token stores nothing.
    let denied =
        f.set_usage("nope", json!({"resource": f.res1, "usages": [{"type": "node_hours", "amount": "1"}]})).await;
    assert_eq!(denied.status, 401);
    assert!(f.sim.usages().is_empty());
}

/// A JWT in shape with `claims`: what an OIDC provider issues (the signature unchecked).
fn jwt(claims: &Value) -> String {
    use base64::Engine as _;
    let encode = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    format!("{}.{}.{}", encode(br#"{"alg":"RS256"}"#), encode(claims.to_string().as_bytes()), encode(b"sig"))
}

#[tokio::test]
async fn bearer_tokens_are_read_then_introspected_once_oidc_login_is_set_up() {
    let f = Fixture::new().await;
    let me = f.url("users/me/");
    let later = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs() + 300;
    let active = jwt(&json!({"exp": later, "jti": "1"}));
    let bearer = |token: &str| format!("Bearer {token}");
    // Not set up (Waldur 7.0.7 has no OIDC login): a bearer token is not looked at.
    let ignored = raw("GET", &me, &[("Authorization", &bearer(&active))], b"").await;
    assert_eq!(ignored.json(), json!({"detail": "Authentication credentials were not provided."}));

    let active_for_test = active.clone();
    f.sim.accept_oidc(move |token| (token == active_for_test).then(|| "agent".to_owned()));
    let ok = raw("GET", &me, &[("Authorization", &bearer(&active))], b"").await;
    assert_eq!((ok.status, ok.json()["username"].clone()), (200, json!("agent")), "{:?}", ok.json());
    let cases = [
        ("not-a-jwt".to_owned(), "Invalid JWT token."),
        ("a.!!!.c".to_owned(), "Invalid JWT token."),
        (jwt(&json!({"exp": 1, "jti": "2"})), "Token has expired."),
        (jwt(&json!({"exp": later, "jti": "3"})), "Token is inactive or invalid."),
    ];
    for (token, message) in cases {
        let refused = raw("GET", &me, &[("Authorization", &bearer(&token))], b"").await;
        assert_eq!((refused.status, refused.json()), (401, json!({"detail": message})), "{token}");
    }
    // A write with an inactive token stores nothing; with the active one it lands.
    let body = json!({"resource": f.res1, "usages": [{"type": "node_hours", "amount": "1"}]}).to_string();
    let header = [("Authorization", bearer(&jwt(&json!({"jti": "4"})))), ("Content-Type", "application/json".into())];
    let headers: Vec<(&str, &str)> = header.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let denied = raw("POST", &f.url("marketplace-component-usages/set_usage/"), &headers, body.as_bytes()).await;
    assert_eq!(denied.status, 401);
    assert!(f.sim.usages().is_empty());
    let header = [("Authorization", bearer(&active)), ("Content-Type", "application/json".into())];
    let headers: Vec<(&str, &str)> = header.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let written = raw("POST", &f.url("marketplace-component-usages/set_usage/"), &headers, body.as_bytes()).await;
    assert_eq!(written.status, 201);
    assert_eq!(f.sim.usages().len(), 1);
}

#[tokio::test]
async fn paths_and_methods_are_strict() {
    let f = Fixture::new().await;
    assert_eq!(get(&f.url("users/me"), TOKEN).await.status, 404, "no trailing slash");
    assert_eq!(get(&f.url("marketplace-orders/"), TOKEN).await.status, 404);
    let wrong_method = get(&f.url("marketplace-component-usages/set_usage/"), TOKEN).await;
    assert_eq!(wrong_method.status, 405);
    assert_eq!(wrong_method.json(), json!({"detail": "Method \"GET\" not allowed."}));
    assert_eq!(wrong_method.header("allow"), Some("POST"));
}

#[tokio::test]
async fn offering_details_and_unknown_offering() {
    let f = Fixture::new().await;
    f.sim.add_offering_component(
        &f.offering,
        OfferingComponent {
            component_type: "storage".into(),
            name: "Storage".into(),
            measured_unit: "GB".into(),
            billing_type: "fixed".into(),
        },
    );
    let resp = get(&f.url(&format!("marketplace-provider-offerings/{}/", f.offering)), TOKEN).await;
    assert_eq!(resp.status, 200);
    let body = resp.json();
    assert_eq!(body["uuid"], f.offering.as_str());
    assert_eq!(body["name"], "Alps compute");
    let components: Vec<(String, String)> = body["components"]
        .as_array()
        .expect("components")
        .iter()
        .map(|c| (c["type"].as_str().unwrap_or("").to_owned(), c["billing_type"].as_str().unwrap_or("").to_owned()))
        .collect();
    assert_eq!(
        components,
        vec![
            ("node_hours".into(), "usage".into()),
            ("cpu_hours".into(), "usage".into()),
            ("storage".into(), "fixed".into())
        ]
    );
    // Dashed UUIDs are accepted, as Django accepts them.
    let o = &f.offering;
    let dashed = format!("{}-{}-{}-{}-{}", &o[..8], &o[8..12], &o[12..16], &o[16..20], &o[20..]);
    assert_eq!(get(&f.url(&format!("marketplace-provider-offerings/{dashed}/")), TOKEN).await.status, 200);

    let missing = get(&f.url(&format!("marketplace-provider-offerings/{}/", uuid_from("x"))), TOKEN).await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.json(), json!({"detail": "Not found."}));
}

#[tokio::test]
async fn pagination_follows_link_headers_across_pages() {
    let f = Fixture::new().await;
    for i in 0..23 {
        f.sim.add_resource(&f.offering, &uuid_from(&format!("extra {i}")), &format!("acct{i}"), "alps", "OK");
    }
    // 25 resources, 10 per page: three pages, linked by absolute `next` URLs.
    let mut url = f.url(&format!("marketplace-provider-resources/?offering_uuid={}&state=OK&page_size=10", f.offering));
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        let resp = get(&url, TOKEN).await;
        assert_eq!(resp.status, 200);
        assert_eq!(resp.header("x-result-count"), Some("25"));
        pages += 1;
        for r in resp.json().as_array().expect("list") {
            seen.push(r["uuid"].as_str().expect("uuid").to_owned());
        }
        assert!(resp.link("first").is_some() && resp.link("last").is_some());
        match resp.link("next") {
            Some(next) => {
                assert!(next.starts_with("http://127.0.0.1:"), "absolute: {next}");
                assert!(next.contains("state=OK") && next.contains("page_size=10"), "{next}");
                url = next;
            }
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen.len(), 25);
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 25, "no resource twice");

    let last = get(&f.url("marketplace-provider-resources/?page=3&page_size=10"), TOKEN).await;
    assert_eq!(last.json().as_array().map(Vec::len), Some(5));
    assert!(last.link("prev").expect("prev").contains("page=2"));
    assert!(last.link("next").is_none());

    let beyond = get(&f.url("marketplace-provider-resources/?page=4&page_size=10"), TOKEN).await;
    assert_eq!(beyond.status, 404);
    assert_eq!(beyond.json(), json!({"detail": "Invalid page."}));

    let default = get(&f.url("marketplace-provider-resources/"), TOKEN).await;
    assert_eq!(default.json().as_array().map(Vec::len), Some(10), "default page size");
}

#[tokio::test]
async fn page_size_is_clamped() {
    let f = Fixture::new().await;
    for i in 0..448 {
        f.sim.add_resource(&f.offering, &uuid_from(&format!("bulk {i}")), &format!("b{i}"), "Alps", "OK");
    }
    let resp = get(&f.url("marketplace-provider-resources/?page_size=1000"), TOKEN).await;
    assert_eq!(resp.status, 200);
    // MasterMind's max_page_size.
    assert_eq!(resp.json().as_array().map(Vec::len), Some(300));
    assert_eq!(resp.header("x-result-count"), Some("450"));
    assert!(resp.link("next").expect("next").contains("page=2"));
    let second = get(&resp.link("next").expect("next"), TOKEN).await;
    assert_eq!(second.json().as_array().map(Vec::len), Some(150));
}

#[tokio::test]
async fn resource_state_filter_takes_repeated_keys() {
    let f = Fixture::new().await;
    f.sim.add_resource(&f.offering, &uuid_from("erred"), "erred", "ALPS", "Erred");
    f.sim.add_resource(&f.offering, &uuid_from("creating"), "creating", "Alps", "Creating");
    f.sim.add_resource(&f.offering, &uuid_from("gone"), "gone", "Alps", "Terminated");
    let other = uuid_from("other offering");
    f.sim.add_offering(&other, "Other", &["node_hours"]);
    f.sim.add_resource(&other, &uuid_from("elsewhere"), "elsewhere", "eiger", "OK");

    let list = |query: String| {
        let url = f.url(&format!("marketplace-provider-resources/?{query}"));
        async move {
            let resp = get(&url, TOKEN).await;
            assert_eq!(resp.status, 200, "{}", String::from_utf8_lossy(&resp.body));
            let mut ids: Vec<String> = resp
                .json()
                .as_array()
                .expect("list")
                .iter()
                .map(|r| r["backend_id"].as_str().expect("backend_id").to_owned())
                .collect();
            ids.sort();
            ids
        }
    };
    assert_eq!(
        list(format!("offering_uuid={}&state=OK&state=Erred", f.offering)).await,
        vec!["account1", "account2", "erred"]
    );
    assert_eq!(list(format!("offering_uuid={}&state=Erred", f.offering)).await, vec!["erred"]);
    assert_eq!(list(format!("offering_uuid={other}")).await, vec!["elsewhere"]);
    assert_eq!(list("state=Terminated".into()).await, vec!["gone"]);

    let resp = get(&f.url("marketplace-provider-resources/?state=OK&state=ok"), TOKEN).await;
    assert_eq!(resp.status, 400);
    assert_eq!(resp.json(), json!({"state": ["Select a valid choice. ok is not one of the available choices."]}));
    let resp = get(&f.url("marketplace-provider-resources/?offering_uuid=alps"), TOKEN).await;
    assert_eq!(resp.status, 400);
    assert_eq!(resp.json(), json!({"offering_uuid": ["Enter a valid UUID."]}));

    let resp =
        get(&f.url(&format!("marketplace-provider-resources/?backend_id=erred&offering_uuid={}", f.offering)), TOKEN)
            .await;
    let body = resp.json();
    assert_eq!(body[0]["offering_backend_id"], "ALPS", "case kept as stored");
    assert_eq!(body[0]["state"], "Erred");
    assert_eq!(body[0]["offering_uuid"], f.offering.as_str());
    assert!(
        body[0]["url"]
            .as_str()
            .expect("url")
            .ends_with(&format!("/api/marketplace-provider-resources/{}/", uuid_from("erred")))
    );
}

#[tokio::test]
async fn set_usage_creates_then_updates_one_record() {
    let f = Fixture::new().await;
    let first = f
        .set_usage(
            TOKEN,
            json!({"resource": f.res1, "usages": [{"type": "node_hours", "amount": "12.3"}], "date": "2024-03-15T00:00:00Z"}),
        )
        .await;
    assert_eq!(first.status, 201, "{}", String::from_utf8_lossy(&first.body));
    assert!(first.body.is_empty(), "Waldur answers 201 with no body");
    assert_eq!(f.sim.usages().len(), 1);
    assert_eq!(f.sim.usages()[0].amount, "12.30");
    assert_eq!(f.sim.usages()[0].billing_period, "2024-03-01");

    // A number is accepted too, and an unknown field is ignored.
    let second = f
        .set_usage(TOKEN, json!({"resource": f.res1, "usages": [{"type": "node_hours", "amount": 20.5}], "extra": 1}))
        .await;
    assert_eq!(second.status, 201);
    let usages = f.sim.usages();
    assert_eq!(usages.len(), 1, "one usage per (resource, type, period)");
    assert_eq!(usages[0].amount, "20.50");
    assert_eq!(usages[0].writes, 2);
    assert!(usages[0].modified_seq > usages[0].created_seq);

    let listed = get(
        &f.url(&format!("marketplace-component-usages/?resource_uuid={}&billing_period=2024-03-01", f.res1)),
        TOKEN,
    )
    .await;
    assert_eq!(listed.status, 200);
    let body = listed.json();
    assert_eq!(body.as_array().map(Vec::len), Some(1));
    assert_eq!(body[0]["usage"], "20.50", "the amount is rendered as `usage`, a 2-place string");
    assert_eq!(body[0]["type"], "node_hours");
    assert_eq!(body[0]["billing_period"], "2024-03-01");
    assert_eq!(body[0]["resource_uuid"], f.res1.as_str());
    assert_eq!(body[0]["offering_uuid"], f.offering.as_str());
    assert_eq!(body[0]["uuid"], usages[0].uuid.as_str());
}

#[tokio::test]
async fn set_usage_refuses_more_than_two_decimals() {
    let f = Fixture::new().await;
    for amount in [json!("1.234"), json!("1.230"), json!(0.001)] {
        let resp = f
            .set_usage(
                TOKEN,
                json!({"resource": f.res1, "usages": [{"type": "cpu_hours", "amount": "1.00"}, {"type": "node_hours", "amount": amount}]}),
            )
            .await;
        assert_eq!(resp.status, 400);
        assert_eq!(
            resp.json(),
            json!({"usages": [{}, {"amount": ["Ensure that there are no more than 2 decimal places."]}]})
        );
    }
    let negative =
        f.set_usage(TOKEN, json!({"resource": f.res1, "usages": [{"type": "node_hours", "amount": "-1"}]})).await;
    assert_eq!(negative.status, 400);
    let not_a_number =
        f.set_usage(TOKEN, json!({"resource": f.res1, "usages": [{"type": "node_hours", "amount": "1,5"}]})).await;
    assert_eq!(not_a_number.json(), json!({"usages": [{"amount": ["A valid number is required."]}]}));
    assert!(f.sim.usages().is_empty(), "nothing of a refused request is stored");
}

#[tokio::test]
async fn set_usage_refuses_unknown_components_and_bad_resources() {
    let f = Fixture::new().await;
    f.sim.add_offering_component(
        &f.offering,
        OfferingComponent {
            component_type: "storage".into(),
            name: "Storage".into(),
            measured_unit: "GB".into(),
            billing_type: "fixed".into(),
        },
    );
    let resp = f
        .set_usage(
            TOKEN,
            json!({"resource": f.res1, "usages": [
                {"type": "node_hours", "amount": "1"}, {"type": "gpu_hours", "amount": "1"}, {"type": "storage", "amount": "1"}
            ]}),
        )
        .await;
    assert_eq!(resp.status, 400);
    assert_eq!(resp.json(), json!({"non_field_errors": ["These components are invalid: gpu_hours, storage."]}));

    let erred = uuid_from("erred");
    f.sim.add_resource(&f.offering, &erred, "erred", "Alps", "Erred");
    let resp = f.set_usage(TOKEN, json!({"resource": erred, "usages": [{"type": "node_hours", "amount": "1"}]})).await;
    assert_eq!(resp.json(), json!({"resource": ["Resource is not in valid state."]}));

    let unknown = uuid_from("nowhere");
    let resp =
        f.set_usage(TOKEN, json!({"resource": unknown, "usages": [{"type": "node_hours", "amount": "1"}]})).await;
    assert_eq!(resp.json(), json!({"resource": [format!("Object with uuid={unknown} does not exist.")]}));

    let resp = f.set_usage(TOKEN, json!({"usages": [{"type": "node_hours", "amount": "1"}]})).await;
    assert_eq!(resp.json(), json!({"non_field_errors": ["Either plan_period or resource should be provided."]}));

    let resp = f.set_usage(TOKEN, json!({"resource": f.res1})).await;
    assert_eq!(resp.json(), json!({"usages": ["This field is required."]}));

    let resp = f.set_usage(TOKEN, json!({"resource": f.res1, "usages": [{"amount": "1"}]})).await;
    assert_eq!(resp.json(), json!({"usages": [{"type": ["This field is required."]}]}));

    let resp = f.set_usage(TOKEN, json!({"resource": f.res1, "usages": [], "date": "15/03/2024"})).await;
    assert_eq!(resp.status, 400);
    assert!(resp.json()["date"][0].as_str().expect("message").starts_with("Datetime has wrong format."));

    let auth = format!("Token {TOKEN}");
    let bad_json = raw(
        "POST",
        &f.url("marketplace-component-usages/set_usage/"),
        &[("Authorization", &auth), ("Content-Type", "application/json")],
        b"{\"resource\":",
    )
    .await;
    assert_eq!(bad_json.status, 400);
    assert!(bad_json.json()["detail"].as_str().expect("detail").starts_with("JSON parse error"));
    let form = raw(
        "POST",
        &f.url("marketplace-component-usages/set_usage/"),
        &[("Authorization", &auth), ("Content-Type", "text/plain")],
        b"hello",
    )
    .await;
    assert_eq!(form.status, 415);
    assert!(f.sim.usages().is_empty());
}

#[tokio::test]
async fn backfill_is_staff_only_and_future_months_are_refused() {
    let f = Fixture::new().await; // today is 2024-03-15
    let body =
        |date: &str| json!({"resource": f.res1, "usages": [{"type": "node_hours", "amount": "5.00"}], "date": date});
    let refused = f.set_usage(TOKEN, body("2024-02-01T00:00:00Z")).await;
    assert_eq!(refused.status, 400);
    let message = refused.json()["date"][0].as_str().expect("message").to_owned();
    assert!(message.contains("backfilling past billing periods"), "{message}");
    assert!(f.sim.usages().is_empty());

    let allowed = f.set_usage(STAFF, body("2024-02-01T00:00:00Z")).await;
    assert_eq!(allowed.status, 201);
    assert_eq!(f.sim.usages()[0].billing_period, "2024-02-01");

    // Earlier in the current month is not a backfill.
    assert_eq!(f.set_usage(TOKEN, body("2024-03-01T00:00:00Z")).await.status, 201);

    let future = f.set_usage(STAFF, body("2024-04-01T00:00:00Z")).await;
    assert_eq!(future.status, 400);
    assert_eq!(future.json(), json!({"date": ["Cannot submit usage for future dates."]}));

    // The period follows the server's zone: 1 Feb 00:00 at +01:00 is still January in UTC.
    assert_eq!(f.set_usage(STAFF, body("2024-02-01T00:00:00+01:00")).await.status, 201);
    let periods: Vec<String> = f.sim.usages().into_iter().map(|u| u.billing_period).collect();
    assert_eq!(periods, vec!["2024-02-01", "2024-03-01", "2024-01-01"]);
}

#[tokio::test]
async fn billing_periods_follow_the_server_time_zone() {
    let options = WaldurOptions { utc_offset_minutes: 60, ..WaldurOptions::default() };
    let f = Fixture::with(options).await;
    f.sim.set_today(2024, 2, 10);
    let resp = f
        .set_usage(
            STAFF,
            json!({"resource": f.res1, "usages": [{"type": "node_hours", "amount": "1"}], "date": "2024-01-31T23:30:00Z"}),
        )
        .await;
    assert_eq!(resp.status, 201);
    let usage = &f.sim.usages()[0];
    assert_eq!(usage.billing_period, "2024-02-01");
    assert_eq!(usage.date, "2024-02-01T00:30:00+01:00");
}

#[tokio::test]
async fn set_user_usages_creates_and_updates_per_username() {
    let f = Fixture::new().await;
    let alice_url = f.sim.add_offering_user(&f.offering, "alice");
    assert_eq!(
        f.set_usage(TOKEN, json!({"resource": f.res1, "usages": [{"type": "node_hours", "amount": "10"}]}))
            .await
            .status,
        201
    );
    let cu = f.sim.usages()[0].uuid.clone();
    let bulk = f.url(&format!("marketplace-component-usages/{cu}/set_user_usages/"));

    let resp = post(
        &bulk,
        TOKEN,
        &json!({"usages": [
            {"username": "alice", "usage": "6.50", "user": alice_url, "date": "2024-03-15T00:00:00Z"},
            {"username": "bob", "usage": "3.5"}
        ]}),
    )
    .await;
    assert_eq!(resp.status, 201, "{}", String::from_utf8_lossy(&resp.body));
    assert!(resp.body.is_empty());
    let stored = f.sim.user_usages();
    assert_eq!(stored.len(), 2);
    assert_eq!((stored[0].username.as_str(), stored[0].usage.as_str()), ("alice", "6.50"));
    assert_eq!(stored[0].user.as_deref(), Some(alice_url.as_str()));
    assert_eq!(stored[0].component_usage_uuid, cu);
    assert_eq!(stored[0].billing_period, "2024-03-01");
    assert_eq!(stored[1].user, None);

    // Update alice through the single form; bob is untouched.
    let single = f.url(&format!("marketplace-component-usages/{cu}/set_user_usage/"));
    assert_eq!(post(&single, TOKEN, &json!({"username": "alice", "usage": "7"})).await.status, 201);
    let stored = f.sim.user_usages();
    assert_eq!(stored.len(), 2);
    assert_eq!(stored[0].usage, "7.00");
    assert_eq!(stored[0].writes, 2);
    assert_eq!(stored[0].user.as_deref(), Some(alice_url.as_str()), "link kept when not resent");
    assert_eq!(stored[1].writes, 1);

    // Per-item errors, all-or-nothing; `user` may be omitted but not null.
    let resp = post(
        &bulk,
        TOKEN,
        &json!({"usages": [
            {"username": "carol", "usage": "1.00"},
            {"username": "dave", "usage": "1.001", "user": null},
            {"usage": "1"}
        ]}),
    )
    .await;
    assert_eq!(resp.status, 400);
    assert_eq!(
        resp.json(),
        json!({"usages": [
            {},
            {"usage": ["Ensure that there are no more than 2 decimal places."], "user": ["This field may not be null."]},
            {"username": ["This field is required."]}
        ]})
    );
    let resp =
        post(&bulk, TOKEN, &json!({"usages": [{"username": "erin", "user": "http://elsewhere/api/users/1/"}]})).await;
    assert_eq!(resp.json(), json!({"usages": [{"user": ["Invalid hyperlink - No URL match."]}]}));
    assert_eq!(f.sim.user_usages().len(), 2);

    let missing = post(
        &f.url(&format!("marketplace-component-usages/{}/set_user_usages/", uuid_from("none"))),
        TOKEN,
        &json!({"usages": []}),
    )
    .await;
    assert_eq!(missing.status, 404);

    // Non-staff cannot date a per-user usage into a past month.
    let resp = post(&single, TOKEN, &json!({"username": "alice", "usage": "1", "date": "2024-02-10T00:00:00Z"})).await;
    assert_eq!(resp.status, 400);
    assert!(resp.json()["date"][0].as_str().expect("message").contains("backfilling past billing periods"));
    // Staff can; the user usage then lands under February's component usage.
    let resp = post(&single, STAFF, &json!({"username": "alice", "usage": "1", "date": "2024-02-10T00:00:00Z"})).await;
    assert_eq!(resp.status, 201);
    let feb = f.sim.usages().into_iter().find(|u| u.billing_period == "2024-02-01").expect("February usage");
    assert_eq!(feb.amount, "0.00");
    assert!(f.sim.user_usages().iter().any(|u| u.component_usage_uuid == feb.uuid && u.username == "alice"));
}

#[tokio::test]
async fn listings_filter_like_waldur() {
    let f = Fixture::new().await;
    f.sim.add_offering_user(&f.offering, "alice");
    f.sim.add_offering_user_in_state(&f.offering, "pending", "Requested");
    let other = uuid_from("other");
    f.sim.add_offering(&other, "Other", &["node_hours"]);
    f.sim.add_offering_user(&other, "zed");

    let feb1 = f.sim.seed_usage(&f.res1, "node_hours", "1.00", "2024-02-01");
    f.sim.seed_user_usage(&feb1, "alice", "1.00");
    for (res, amount) in [(&f.res1, "2"), (&f.res2, "3")] {
        let resp = f
            .set_usage(TOKEN, json!({"resource": res, "usages": [{"type": "node_hours", "amount": amount}, {"type": "cpu_hours", "amount": amount}]}))
            .await;
        assert_eq!(resp.status, 201);
    }
    let mar1 = f
        .sim
        .usages()
        .into_iter()
        .find(|u| u.resource_uuid == f.res1 && u.billing_period == "2024-03-01" && u.component_type == "node_hours")
        .expect("March usage")
        .uuid;
    let url = f.url(&format!("marketplace-component-usages/{mar1}/set_user_usages/"));
    assert_eq!(post(&url, TOKEN, &json!({"usages": [{"username": "alice", "usage": "2"}]})).await.status, 201);

    let count = |path: String| {
        let url = f.url(&path);
        async move {
            let resp = get(&url, TOKEN).await;
            assert_eq!(resp.status, 200, "{path}: {}", String::from_utf8_lossy(&resp.body));
            resp.json().as_array().map(Vec::len).unwrap_or(0)
        }
    };
    assert_eq!(count(format!("marketplace-component-usages/?offering_uuid={}", f.offering)).await, 5);
    assert_eq!(
        count(format!("marketplace-component-usages/?offering_uuid={}&billing_period=2024-03-01", f.offering)).await,
        4
    );
    assert_eq!(count(format!("marketplace-component-usages/?resource_uuid={}", f.res1)).await, 3);
    assert_eq!(
        count(format!("marketplace-component-usages/?resource_uuid={}&billing_period=2024-02-01", f.res1)).await,
        1
    );
    assert_eq!(count(format!("marketplace-component-usages/?offering_uuid={other}")).await, 0);

    assert_eq!(count(format!("marketplace-component-user-usages/?resource_uuid={}", f.res1)).await, 2);
    assert_eq!(
        count(format!(
            "marketplace-component-user-usages/?offering_uuid={}&component_usage__billing_period=2024-03-01",
            f.offering
        ))
        .await,
        1
    );
    // A misspelt filter is ignored, as django-filter ignores unknown keys.
    assert_eq!(
        count(format!(
            "marketplace-component-user-usages/?offering_uuid={}&component_usage_billing_period=2024-03-01",
            f.offering
        ))
        .await,
        2
    );
    let resp = get(&f.url("marketplace-component-usages/?billing_period=March"), TOKEN).await;
    assert_eq!(resp.json(), json!({"billing_period": ["Enter a valid date."]}));

    let listed = get(
        &f.url(&format!(
            "marketplace-component-user-usages/?resource_uuid={}&component_usage__billing_period=2024-03-01",
            f.res1
        )),
        TOKEN,
    )
    .await;
    let row = &listed.json()[0];
    assert_eq!(row["username"], "alice");
    assert_eq!(row["usage"], "2.00");
    assert_eq!(row["component_type"], "node_hours");
    assert_eq!(row["billing_period"], "2024-03-01");
    assert!(
        row["component_usage"].as_str().expect("url").ends_with(&format!("/api/marketplace-component-usages/{mar1}/"))
    );
    assert_eq!(row["user"], Value::Null);

    assert_eq!(count(format!("marketplace-offering-users/?offering_uuid={}", f.offering)).await, 2);
    assert_eq!(count(format!("marketplace-offering-users/?offering_uuid={}&state=OK", f.offering)).await, 1);
    let users =
        get(&f.url(&format!("marketplace-offering-users/?offering_uuid={}&state=OK", f.offering)), TOKEN).await.json();
    assert_eq!(users[0]["username"], "alice");
    assert_eq!(users[0]["offering_uuid"], f.offering.as_str());
    let url = users[0]["url"].as_str().expect("url").to_owned();
    assert_eq!(get(&url, TOKEN).await.json()["username"], "alice");

    // Field selection.
    let slim =
        get(&f.url(&format!("marketplace-component-usages/?resource_uuid={}&field=type&field=usage", f.res2)), TOKEN)
            .await;
    for row in slim.json().as_array().expect("list") {
        let keys: Vec<&String> = row.as_object().expect("object").keys().collect();
        assert_eq!(keys, vec!["type", "usage"]);
    }
}

#[tokio::test]
async fn counters_count_every_request_by_route() {
    let f = Fixture::new().await;
    get(&f.url("users/me/"), TOKEN).await;
    get(&f.url("marketplace-provider-resources/"), TOKEN).await;
    get(&f.url("marketplace-provider-resources/?page=2"), TOKEN).await;
    get(&f.url("users/me/"), "bad").await;
    f.set_usage(TOKEN, json!({"resource": f.res1, "usages": [{"type": "node_hours", "amount": "1"}]})).await;
    f.set_usage(TOKEN, json!({"resource": f.res1, "usages": [{"type": "node_hours", "amount": "1.001"}]})).await;
    let cu = f.sim.usages()[0].uuid.clone();
    post(&f.url(&format!("marketplace-component-usages/{cu}/set_user_usages/")), TOKEN, &json!({"usages": []})).await;
    post(&f.url(&format!("marketplace-component-usages/{cu}/set_user_usage/")), TOKEN, &json!({"username": "u"})).await;

    let counts = f.sim.requests();
    assert_eq!(counts.total, 8);
    assert_eq!(counts.reads, 4);
    assert_eq!(counts.writes, 4);
    assert_eq!(counts.set_usage, 2);
    assert_eq!(counts.set_user_usages, 1);
    assert_eq!(counts.set_user_usage, 1);
    assert_eq!(counts.route("GET /api/users/me/"), 2);
    assert_eq!(counts.route("GET /api/marketplace-provider-resources/"), 2);
    assert_eq!(counts.route("POST /api/marketplace-component-usages/{uuid}/set_user_usages/"), 1);

    f.sim.reset_counters();
    assert_eq!(f.sim.requests(), Default::default());
    assert_eq!(f.sim.usages().len(), 1, "data survives a counter reset");
}

#[tokio::test]
async fn faults_can_be_injected() {
    let f = Fixture::new().await;
    f.sim.reject_resource(&f.res1, 500, json!({"detail": "Database is locked."}));
    let resp = f.set_usage(TOKEN, json!({"resource": f.res1, "usages": [{"type": "node_hours", "amount": "1"}]})).await;
    assert_eq!(resp.status, 500);
    assert_eq!(resp.json(), json!({"detail": "Database is locked."}));
    let ok = f.set_usage(TOKEN, json!({"resource": f.res2, "usages": [{"type": "node_hours", "amount": "1"}]})).await;
    assert_eq!(ok.status, 201);
    assert_eq!(f.sim.usages().len(), 1);
    assert_eq!(f.sim.usages()[0].resource_uuid, f.res2);

    // Per-user writes under the rejected resource fail too.
    let cu = f.sim.seed_usage(&f.res1, "node_hours", "1", "2024-03-01");
    let resp = post(
        &f.url(&format!("marketplace-component-usages/{cu}/set_user_usages/")),
        TOKEN,
        &json!({"usages": [{"username": "alice", "usage": "1"}]}),
    )
    .await;
    assert_eq!(resp.status, 500);
    assert!(f.sim.user_usages().is_empty());

    f.sim.fail_next(2, 503);
    assert_eq!(get(&f.url("users/me/"), TOKEN).await.status, 503);
    assert_eq!(get(&f.url("users/me/"), TOKEN).await.status, 503);
    assert_eq!(get(&f.url("users/me/"), TOKEN).await.status, 200);

    f.sim.clear_faults();
    let resp = f.set_usage(TOKEN, json!({"resource": f.res1, "usages": [{"type": "node_hours", "amount": "1"}]})).await;
    assert_eq!(resp.status, 201);
}

#[tokio::test]
async fn latency_is_added_to_every_request() {
    let options = WaldurOptions { latency: Duration::from_millis(40), ..WaldurOptions::default() };
    let f = Fixture::with(options).await;
    let started = Instant::now();
    assert_eq!(get(&f.url("users/me/"), TOKEN).await.status, 200);
    assert_eq!(get(&f.url("nowhere/"), TOKEN).await.status, 404);
    assert!(started.elapsed() >= Duration::from_millis(80));
}

#[tokio::test]
async fn shutdown_stops_serving() {
    let f = Fixture::new().await;
    let addr = f.sim.addr();
    f.sim.shutdown().await;
    assert!(TcpStream::connect(addr).await.is_err());
}
