//! `WaldurVersion::V7`: the simulator as Waldur MasterMind 7.0.7, point by point, each
//! next to what the default (`V8`) still does for the same request.

mod common;

use serde_json::{Value, json};
use waldur_sim::{WaldurOptions, WaldurVersion, uuid_from};

use crate::common::{Fixture, STAFF, TOKEN, get, post, raw};

/// Django's 404 page without a `404.html` template, as Waldur 7 sends it.
const DJANGO_404: &str = "\n<!doctype html>\n<html lang=\"en\">\n<head>\n  <title>Not Found</title>\n</head>\n\
    <body>\n  <h1>Not Found</h1><p>The requested resource was not found on this server.</p>\n</body>\n</html>\n";

async fn v7() -> Fixture {
    Fixture::with(WaldurOptions { version: WaldurVersion::V7, ..WaldurOptions::default() }).await
}

fn usage(resource: &str, amount: &str) -> Value {
    json!({"resource": resource, "usages": [{"type": "node_hours", "amount": amount}]})
}

/// `body` with `key` set to `value`.
fn with(mut body: Value, key: &str, value: Value) -> Value {
    body[key] = value;
    body
}

#[tokio::test]
async fn the_version_is_an_option_and_v8_the_default() {
    assert_eq!(WaldurOptions::default().version, WaldurVersion::V8);
    assert_eq!(WaldurVersion::default(), WaldurVersion::V8);
    assert_eq!(Fixture::new().await.sim.version(), WaldurVersion::V8);
    assert_eq!(v7().await.sim.version(), WaldurVersion::V7);
}

#[tokio::test]
async fn a_date_is_checked_before_the_missing_resource_only_in_v8() {
    let body = json!({"usages": [], "date": "not-a-date"});

    let v8 = Fixture::new().await.set_usage(TOKEN, body.clone()).await;
    assert_eq!(v8.status, 400);
    assert_eq!(
        v8.json(),
        json!({"date": [
            "Datetime has wrong format. Use one of these formats instead: \
             YYYY-MM-DDThh:mm[:ss[.uuuuuu]][+HH:MM|-HH:MM|Z]."
        ]}),
        "a field error comes before validate()"
    );

    let v7 = v7().await.set_usage(TOKEN, body).await;
    assert_eq!(v7.status, 400);
    assert_eq!(v7.json(), json!({"non_field_errors": ["Either plan_period or resource should be provided."]}));
}

#[tokio::test]
async fn v7_files_every_set_usage_under_the_current_period() {
    let f = v7().await;
    let past = with(usage(&f.res1, "1"), "date", json!("2024-02-10T00:00:00Z"));
    // A past month, a future month, a malformed and a null date: all ignored.
    assert_eq!(f.set_usage(TOKEN, past.clone()).await.status, 201, "no back-filling refusal");
    for date in [json!("2024-05-01T00:00:00Z"), json!("not-a-date"), Value::Null] {
        let resp = f.set_usage(TOKEN, with(usage(&f.res1, "2"), "date", date.clone())).await;
        assert_eq!(resp.status, 201, "date {date}: {}", String::from_utf8_lossy(&resp.body));
        assert!(resp.body.is_empty());
    }
    let usages = f.sim.usages();
    assert_eq!(usages.len(), 1, "all four writes hit March's usage");
    assert_eq!(usages[0].billing_period, "2024-03-01");
    assert_eq!(usages[0].date, "2024-03-15T12:00:00Z", "the date is the server's now");
    assert_eq!((usages[0].amount.as_str(), usages[0].writes), ("2.00", 4));

    // V8 still refuses the same past-month write from a non-staff caller.
    let v8 = Fixture::new().await;
    let refused = v8.set_usage(TOKEN, past).await;
    assert_eq!(refused.status, 400);
    assert!(refused.json()["date"][0].as_str().expect("message").contains("backfilling past billing periods"));
}

#[tokio::test]
async fn v7_set_usage_validates_in_waldur_order() {
    let f = v7().await;
    // Field errors first, every one of them; the date is not among them.
    let resp = f
        .set_usage(
            TOKEN,
            json!({"resource": "nope", "usages": [{"type": "node_hours", "amount": "1.001"}], "date": "x"}),
        )
        .await;
    assert_eq!(resp.status, 400);
    assert_eq!(
        resp.json(),
        json!({
            "usages": [{"amount": ["Ensure that there are no more than 2 decimal places."]}],
            "resource": ["\u{201c}nope\u{201d} is not a valid UUID."],
        })
    );
    // Then the resource's state, before the components.
    f.sim.set_resource_state(&f.res2, "Erred");
    let body = json!({"resource": f.res2, "usages": [{"type": "gpu_hours", "amount": "1"}]});
    let resp = f.set_usage(TOKEN, body).await;
    assert_eq!(resp.json(), json!({"resource": ["Resource is not in valid state."]}));
    // Then components the offering lacks.
    let body = json!({"resource": f.res1, "usages": [{"type": "gpu_hours", "amount": "1"}], "date": "x"});
    let resp = f.set_usage(TOKEN, body).await;
    assert_eq!(resp.status, 400);
    assert_eq!(resp.json(), json!({"non_field_errors": ["These components are invalid: gpu_hours."]}));
    assert!(f.sim.usages().is_empty());
}

#[tokio::test]
async fn v7_has_no_bulk_user_usages_and_answers_html_for_unknown_paths() {
    let f = v7().await;
    assert_eq!(f.set_usage(TOKEN, usage(&f.res1, "1")).await.status, 201);
    let cu = f.sim.usages()[0].uuid.clone();
    let bulk = f.url(&format!("marketplace-component-usages/{cu}/set_user_usages/"));
    let html_404 = |resp: &common::Resp, what: &str| {
        assert_eq!(resp.status, 404, "{what}");
        assert_eq!(resp.header("content-type"), Some("text/html"), "{what}");
        assert_eq!(String::from_utf8_lossy(&resp.body), DJANGO_404, "{what}");
    };

    let resp = post(&bulk, TOKEN, &json!({"usages": [{"username": "alice", "usage": "1"}]})).await;
    html_404(&resp, "bulk set_user_usages");
    assert!(f.sim.user_usages().is_empty());
    // The URL resolver answers before authentication, as for any unknown path.
    html_404(&raw("POST", &bulk, &[], b"").await, "bulk without a token");
    html_404(&get(&f.url("marketplace-orders/"), TOKEN).await, "unknown collection");
    html_404(&get(&f.url("users/me"), TOKEN).await, "no trailing slash");

    // An unknown object on a known route is still DRF's JSON 404, and a wrong method 405.
    let missing = get(&f.url(&format!("marketplace-provider-resources/{}/", uuid_from("none"))), TOKEN).await;
    assert_eq!((missing.status, missing.json()), (404, json!({"detail": "Not found."})));
    let wrong = get(&f.url("marketplace-component-usages/set_usage/"), TOKEN).await;
    assert_eq!((wrong.status, wrong.header("allow")), (405, Some("POST")));

    // The 404s are counted like any request; the bulk endpoint under its template.
    let counts = f.sim.requests();
    assert_eq!((counts.total, counts.writes, counts.set_user_usages), (7, 3, 2));
    assert_eq!(counts.route("POST /api/marketplace-component-usages/{uuid}/set_user_usages/"), 2);
    assert_eq!(counts.route("GET /api/marketplace-orders/"), 1);
    // And fault injection sees them like any route.
    f.sim.fail_route("POST /api/marketplace-component-usages/{uuid}/set_user_usages/", 1, 503);
    assert_eq!(post(&bulk, TOKEN, &json!({"usages": []})).await.status, 503);

    // V8 keeps the bulk endpoint and DRF's JSON for unknown paths.
    let v8 = Fixture::new().await;
    assert_eq!(v8.set_usage(TOKEN, usage(&v8.res1, "1")).await.status, 201);
    let cu = v8.sim.usages()[0].uuid.clone();
    let bulk = v8.url(&format!("marketplace-component-usages/{cu}/set_user_usages/"));
    assert_eq!(post(&bulk, TOKEN, &json!({"usages": [{"username": "alice", "usage": "1"}]})).await.status, 201);
    let unknown = get(&v8.url("marketplace-orders/"), TOKEN).await;
    assert_eq!(unknown.status, 404);
    assert_eq!(unknown.header("content-type"), Some("application/json"));
    assert_eq!(unknown.json(), json!({"detail": "Not found."}));
}

#[tokio::test]
async fn v7_set_user_usage_ignores_dates_and_keeps_the_user_link() {
    let f = v7().await;
    let alice = f.sim.add_offering_user(&f.offering, "alice");
    let other = f.sim.add_offering_user(&f.offering, "alice2");
    assert_eq!(f.set_usage(TOKEN, usage(&f.res1, "10")).await.status, 201);
    let cu = f.sim.usages()[0].uuid.clone();
    let single = f.url(&format!("marketplace-component-usages/{cu}/set_user_usage/"));

    // Created with its link; a past-month date from a non-staff caller is ignored, and
    // the row goes under the component usage of the path.
    let resp = post(
        &single,
        TOKEN,
        &json!({"username": "alice", "usage": "6.5", "user": alice, "date": "2024-02-10T00:00:00Z"}),
    )
    .await;
    assert_eq!(resp.status, 201, "{}", String::from_utf8_lossy(&resp.body));
    assert_eq!(post(&single, TOKEN, &json!({"username": "bob", "usage": "1", "date": "junk"})).await.status, 201);
    let stored = f.sim.user_usages();
    assert_eq!(stored.len(), 2);
    assert_eq!((stored[0].usage.as_str(), stored[0].user.as_deref()), ("6.50", Some(alice.as_str())));
    assert_eq!(stored[1].user, None);
    assert!(stored.iter().all(|u| u.component_usage_uuid == cu && u.billing_period == "2024-03-01"));
    assert_eq!(f.sim.usages().len(), 1, "no February usage was made");

    // An update changes only `usage`: neither a new link nor a first one is taken.
    assert_eq!(post(&single, TOKEN, &json!({"username": "alice", "usage": "7", "user": other})).await.status, 201);
    assert_eq!(post(&single, STAFF, &json!({"username": "bob", "usage": "2", "user": alice})).await.status, 201);
    let stored = f.sim.user_usages();
    assert_eq!((stored[0].usage.as_str(), stored[0].user.as_deref(), stored[0].writes), ("7.00", Some(&*alice), 2));
    assert_eq!((stored[1].usage.as_str(), stored[1].user.as_deref()), ("2.00", None));

    // Still validated as today: decimals, links (the bulk URL matches no route in 7).
    let resp =
        post(&single, TOKEN, &json!({"username": "carol", "usage": "1.001", "user": "http://x/api/users/1/"})).await;
    assert_eq!(resp.status, 400);
    assert_eq!(
        resp.json(),
        json!({
            "usage": ["Ensure that there are no more than 2 decimal places."],
            "user": ["Invalid hyperlink - No URL match."],
        })
    );
    let bulk_link = f.url(&format!("marketplace-component-usages/{cu}/set_user_usages/"));
    let resp = post(&single, TOKEN, &json!({"username": "carol", "user": bulk_link})).await;
    assert_eq!(resp.json(), json!({"user": ["Invalid hyperlink - No URL match."]}));
    let missing = f.url(&format!("marketplace-component-usages/{}/set_user_usage/", uuid_from("none")));
    let missing = post(&missing, TOKEN, &json!({"username": "carol"})).await;
    assert_eq!((missing.status, missing.json()), (404, json!({"detail": "Not found."})));
    assert_eq!(f.sim.user_usages().len(), 2);

    // V8 relinks on update and honours the date.
    let v8 = Fixture::new().await;
    let alice = v8.sim.add_offering_user(&v8.offering, "alice");
    let other = v8.sim.add_offering_user(&v8.offering, "alice2");
    assert_eq!(v8.set_usage(TOKEN, usage(&v8.res1, "10")).await.status, 201);
    let cu = v8.sim.usages()[0].uuid.clone();
    let single = v8.url(&format!("marketplace-component-usages/{cu}/set_user_usage/"));
    assert_eq!(post(&single, TOKEN, &json!({"username": "alice", "usage": "1", "user": alice})).await.status, 201);
    assert_eq!(post(&single, TOKEN, &json!({"username": "alice", "usage": "2", "user": other})).await.status, 201);
    assert_eq!(v8.sim.user_usages()[0].user.as_deref(), Some(other.as_str()));
    let resp = post(&single, TOKEN, &json!({"username": "alice", "date": "junk"})).await;
    assert_eq!(resp.status, 400);
    assert!(resp.json()["date"].is_array());
}

#[tokio::test]
async fn v7_resources_have_no_offering_backend_id() {
    for (fixture, present) in [(Fixture::new().await, true), (v7().await, false)] {
        let f = fixture;
        let list = get(&f.url(&format!("marketplace-provider-resources/?offering_uuid={}", f.offering)), TOKEN).await;
        assert_eq!(list.status, 200);
        let detail = get(&f.url(&format!("marketplace-provider-resources/{}/", f.res1)), TOKEN).await.json();
        for resource in [&list.json()[0], &detail] {
            assert_eq!(resource["backend_id"], "account1");
            let map = resource.as_object().expect("object");
            assert_eq!(map.contains_key("offering_backend_id"), present, "{resource}");
            if present {
                assert_eq!(resource["offering_backend_id"], "Alps");
            }
        }
    }
}

#[tokio::test]
async fn v7_offering_users_have_no_state() {
    let f = v7().await;
    f.sim.add_offering_user(&f.offering, "alice");
    f.sim.add_offering_user_in_state(&f.offering, "bob", "Requested");
    let users = |query: &'static str| {
        let url = f.url(&format!("marketplace-offering-users/?offering_uuid={}{query}", f.offering));
        async move { get(&url, TOKEN).await }
    };
    let all = users("").await;
    assert_eq!(all.status, 200);
    let list = all.json();
    assert_eq!(list.as_array().map(Vec::len), Some(2));
    assert!(list.as_array().expect("list").iter().all(|u| u.get("state").is_none() && u["username"].is_string()));
    // The filter does not exist: any value, even no state at all, is ignored.
    for query in ["&state=OK", "&state=Bogus"] {
        let resp = users(query).await;
        assert_eq!((resp.status, resp.json().as_array().map(Vec::len)), (200, Some(2)), "{query}");
    }
    let one = get(list[0]["url"].as_str().expect("url"), TOKEN).await.json();
    assert!(one.get("state").is_none());

    // V8 shows and filters the state.
    let v8 = Fixture::new().await;
    v8.sim.add_offering_user(&v8.offering, "alice");
    v8.sim.add_offering_user_in_state(&v8.offering, "bob", "Requested");
    let url = |query: &str| v8.url(&format!("marketplace-offering-users/?offering_uuid={}{query}", v8.offering));
    let ok = get(&url("&state=OK"), TOKEN).await.json();
    assert_eq!((ok.as_array().map(Vec::len), &ok[0]["state"]), (Some(1), &json!("OK")));
    assert_eq!(get(&url("&state=Bogus"), TOKEN).await.status, 400);
}

#[tokio::test]
async fn v7_me_shows_is_staff_to_staff_only() {
    let f = v7().await;
    let me = get(&f.url("users/me/"), TOKEN).await.json();
    assert_eq!(me["username"], "agent");
    for key in ["is_staff", "is_active", "is_support"] {
        assert!(me.get(key).is_none(), "{key} shown to a non-staff caller: {me}");
    }
    let staff = get(&f.url("users/me/"), STAFF).await.json();
    assert_eq!((&staff["is_staff"], &staff["is_active"]), (&json!(true), &json!(true)));

    let v8 = Fixture::new().await;
    assert_eq!(get(&v8.url("users/me/"), TOKEN).await.json()["is_staff"], false);
}

#[tokio::test]
async fn v7_keeps_pagination_and_filters() {
    let f = v7().await;
    let page = get(&f.url("marketplace-provider-resources/?page_size=1"), TOKEN).await;
    assert_eq!(page.status, 200);
    assert_eq!(page.header("x-result-count"), Some("2"));
    let next = page.link("next").expect("rel=next");
    let second = get(&next, TOKEN).await;
    assert_eq!(second.json()[0]["uuid"], f.res2.as_str());
    assert_eq!(
        get(&f.url("marketplace-provider-resources/?page=3&page_size=1"), TOKEN).await.json()["detail"],
        "Invalid page."
    );
    let bad = get(&f.url("marketplace-component-usages/?resource_uuid=nope"), TOKEN).await;
    assert_eq!((bad.status, bad.json()), (400, json!({"resource_uuid": ["Enter a valid UUID."]})));
    let bad = get(&f.url("marketplace-provider-resources/?state=Bogus"), TOKEN).await;
    assert_eq!(bad.status, 400, "resource states are still validated");
    assert_eq!(raw("GET", &f.url("users/me/"), &[], b"").await.status, 401);
}
