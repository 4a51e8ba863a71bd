//! Whole-call tests: config → plan → answers → report, through the public API only.

use crate::*;

const BASE: &str = "https://dwdi.example/api/v1";

fn compute_config(extra: &str, components: Vec<Component>) -> Config {
    Config { settings_json: format!(r#"{{"cscs_dwdi_api_url":"{BASE}/"{extra}}}"#), components }
}

fn hours() -> Vec<Component> {
    vec![Component::named("nodeHours", 1.0), Component::named("cpuHours", 1.0)]
}

fn storage_config(extra: &str) -> Config {
    Config {
        settings_json: format!(
            r#"{{"cscs_dwdi_api_url":"{BASE}","storage_filesystem":"lustre",
                "storage_data_type":"projects"{extra}}}"#
        ),
        components: vec![Component::named("storage_space", 0.000000001), Component::named("storage_inodes", 1.0)],
    }
}

fn resource(id: &str, cluster: Option<&str>) -> Resource {
    Resource { backend_id: id.to_owned(), cluster: cluster.map(str::to_owned) }
}

fn may_2024() -> BillingPeriod {
    BillingPeriod { year: 2024, month: 5 }
}

fn ok(body: &str) -> HttpAnswer {
    HttpAnswer { status: 200, body: body.as_bytes().to_vec() }
}

fn urls(plan: &Plan) -> Vec<&str> {
    plan.requests().iter().map(Request::url).collect()
}

fn plan_ok(result: Result<Plan, BackendError>) -> Plan {
    match result {
        Ok(plan) => plan,
        Err(e) => panic!("planning failed: {e}"),
    }
}

fn report_ok(result: Result<UsageReport, BackendError>) -> UsageReport {
    match result {
        Ok(report) => report,
        Err(e) => panic!("assembly failed: {e}"),
    }
}

fn amounts(list: &[Amount]) -> Vec<(&str, f64)> {
    list.iter().map(|a| (a.component.as_str(), a.value)).collect()
}

#[test]
fn compute_month_url() {
    let resources = [resource("acct-a", None), resource("acct b/c", None)];
    let plan = plan_ok(plan_usage_report(Backend::Compute, &compute_config("", hours()), &resources, may_2024()));
    assert_eq!(
        urls(&plan),
        [format!("{BASE}/compute/usage-month/account?from=2024-05&to=2024-05&account=acct-a&account=acct%20b%2Fc")]
    );
    assert_eq!(plan.requests()[0].keys(), ["acct-a", "acct b/c"]);
    assert_eq!(plan.requests()[0].endpoint(), format!("{BASE}/compute/usage-month/account"));
}

#[test]
fn compute_day_url_with_default_cluster() {
    let config = compute_config(r#","cscs_dwdi_cluster":"Alps""#, hours());
    let first = Date { year: 2024, month: 2, day: 1 };
    let last = Date { year: 2024, month: 2, day: 29 };
    let plan = plan_ok(plan_daily_report(Backend::Compute, &config, &[resource("a", None)], first, last));
    assert_eq!(
        urls(&plan),
        [format!("{BASE}/compute/usage-day/account?from=2024-02-01&to=2024-02-29&account=a&cluster=alps")]
    );
}

#[test]
fn compute_groups_by_cluster_and_dedups() {
    let config = compute_config(r#","cscs_dwdi_cluster":"daint""#, hours());
    let resources = [
        resource("a", Some("Alps")),
        resource("b", None),
        resource("c", Some("alps")),
        resource("a", Some("ALPS")),
        resource("d", Some("")),
    ];
    let plan = plan_ok(plan_usage_report(Backend::Compute, &config, &resources, may_2024()));
    let head = format!("{BASE}/compute/usage-month/account?from=2024-05&to=2024-05");
    assert_eq!(
        urls(&plan),
        [format!("{head}&account=a&account=c&cluster=alps"), format!("{head}&account=b&account=d&cluster=daint"),]
    );
    let no_default = compute_config("", hours());
    let plan = plan_ok(plan_usage_report(Backend::Compute, &no_default, &resources[..2], may_2024()));
    assert_eq!(urls(&plan), [format!("{head}&account=a&cluster=alps"), format!("{head}&account=b")]);
}

#[test]
fn compute_chunks_cover_every_account_once() {
    let ids: Vec<String> = (0..2500).map(|i| format!("project_{i:06}")).collect();
    let mut resources: Vec<Resource> = ids.iter().map(|id| resource(id, Some("alps"))).collect();
    resources.extend(ids.iter().take(700).map(|id| resource(id, Some("eiger"))));
    let plan = plan_ok(plan_usage_report(Backend::Compute, &compute_config("", hours()), &resources, may_2024()));
    assert!(plan.requests().len() >= 8, "{}", plan.requests().len());
    let mut alps = Vec::new();
    let mut eiger = Vec::new();
    for request in plan.requests() {
        assert!(request.url().len() < MAX_URL_BYTES);
        let list = if request.url().ends_with("&cluster=alps") { &mut alps } else { &mut eiger };
        assert!(request.url().ends_with("&cluster=alps") || request.url().ends_with("&cluster=eiger"));
        // The keys are exactly the accounts in the URL, in order.
        let in_url: Vec<&str> = request.url().split('&').filter_map(|p| p.strip_prefix("account=")).collect();
        assert_eq!(in_url, request.keys());
        list.extend(request.keys().iter().cloned());
    }
    assert_eq!(alps, ids);
    assert_eq!(eiger, ids[..700]);
}

#[test]
fn storage_urls_use_mapping_and_last_day() {
    let config = storage_config(
        r#","storage_tenant":"cscs","storage_path_mapping":{"project_123":"/store/projects/proj123",
            "alias":"/store/projects/proj123"}"#,
    );
    let resources = [resource("project_123", None), resource("/scratch/x y", None), resource("alias", None)];
    let plan = plan_ok(plan_usage_report(Backend::Storage, &config, &resources, may_2024()));
    assert_eq!(
        urls(&plan),
        [format!(
            "{BASE}/storage/usage-month?exact-month=2024-05&paths=%2Fstore%2Fprojects%2Fproj123\
             &paths=%2Fscratch%2Fx%20y&filesystem=lustre&data_type=projects&tenant=cscs"
        )]
    );
    let first = Date { year: 2023, month: 12, day: 30 };
    let last = Date { year: 2024, month: 1, day: 2 };
    let plan = plan_ok(plan_daily_report(Backend::Storage, &storage_config(""), &resources[1..2], first, last));
    assert_eq!(
        urls(&plan),
        [format!(
            "{BASE}/storage/usage-day?exact-date=2024-01-02&paths=%2Fscratch%2Fx%20y\
             &filesystem=lustre&data_type=projects"
        )]
    );
}

#[test]
fn storage_chunks_stay_under_the_limit() {
    let resources: Vec<Resource> =
        (0..400).map(|i| resource(&format!("/store/projects/a-rather-long-project-path-{i:04}"), None)).collect();
    let plan = plan_ok(plan_usage_report(Backend::Storage, &storage_config(""), &resources, may_2024()));
    assert!(plan.requests().len() > 1);
    let mut all = Vec::new();
    for request in plan.requests() {
        assert!(request.url().len() < MAX_URL_BYTES);
        assert!(request.url().ends_with("&filesystem=lustre&data_type=projects"));
        all.extend(request.keys().iter().cloned());
    }
    let ids: Vec<String> = resources.iter().map(|r| r.backend_id.clone()).collect();
    assert_eq!(all, ids);
}

#[test]
fn no_resources_means_no_requests() {
    let plan = plan_ok(plan_usage_report(Backend::Compute, &compute_config("", hours()), &[], may_2024()));
    assert!(plan.requests().is_empty());
    let report = report_ok(assemble(&plan, &[]));
    assert_eq!(report, UsageReport { resources: vec![], upstream_requests: 0 });
}

#[test]
fn compute_report_sums_orders_and_marks_absent() {
    let resources = [resource("B", None), resource("A", None), resource("missing", None), resource("B", None)];
    let mut components = hours();
    components[1].reporting_factor = Some(0.5);
    let plan = plan_ok(plan_usage_report(Backend::Compute, &compute_config("", components), &resources, may_2024()));
    let body = r#"{"compute":[
        {"account":"A","totalNodeHours":1.25,"totalCpuHours":10,
         "users":[{"username":"zoe","nodeHours":1,"cpuHours":8},{"username":"al","nodeHours":0.25,"cpuHours":2}]},
        {"account":"B","totalNodeHours":2,"totalCpuHours":64,
         "users":[{"username":"bo","nodeHours":1,"cpuHours":32}]},
        {"account":"B","totalNodeHours":3,"totalCpuHours":96,
         "users":[{"username":"bo","nodeHours":3,"cpuHours":96}]},
        {"account":"stranger","totalNodeHours":999,"totalCpuHours":999}
    ]}"#;
    let report = report_ok(assemble(&plan, &[ok(body)]));
    assert_eq!(report.upstream_requests, 1);
    let ids: Vec<&str> = report.resources.iter().map(|r| r.backend_id.as_str()).collect();
    assert_eq!(ids, ["B", "A", "missing", "B"]);

    let b = &report.resources[0];
    assert!(b.found);
    assert_eq!(amounts(&b.totals), [("nodeHours", 5.0), ("cpuHours", 80.0)]);
    assert_eq!(b.users.len(), 1);
    assert_eq!(b.users[0].username, "bo");
    assert_eq!(amounts(&b.users[0].amounts), [("nodeHours", 4.0), ("cpuHours", 64.0)]);
    assert_eq!(report.resources[3], *b);

    let a = &report.resources[1];
    let names: Vec<&str> = a.users.iter().map(|u| u.username.as_str()).collect();
    assert_eq!(names, ["al", "zoe"]);
    assert_eq!(amounts(&a.totals), [("nodeHours", 1.25), ("cpuHours", 5.0)]);

    let missing = &report.resources[2];
    assert!(!missing.found);
    assert_eq!(amounts(&missing.totals), [("nodeHours", 0.0), ("cpuHours", 0.0)]);
    assert!(missing.users.is_empty());
}

#[test]
fn same_account_on_two_clusters_is_reported_per_cluster() {
    let resources = [resource("A", Some("alps")), resource("A", Some("eiger"))];
    let plan = plan_ok(plan_usage_report(Backend::Compute, &compute_config("", hours()), &resources, may_2024()));
    assert_eq!(plan.requests().len(), 2);
    let alps = ok(r#"{"compute":[{"account":"A","totalNodeHours":1,"totalCpuHours":1}]}"#);
    let eiger = ok(r#"{"compute":[]}"#);
    let report = report_ok(assemble(&plan, &[alps, eiger]));
    assert!(report.resources[0].found);
    assert!(!report.resources[1].found);
    assert_eq!(report.upstream_requests, 2);
}

#[test]
fn storage_report_applies_factor_without_rounding() {
    let config = storage_config(r#","storage_path_mapping":{"p123":"/store/p123","alias":"/store/p123"}"#);
    let resources = [resource("p123", None), resource("/store/other", None), resource("alias", None)];
    let plan = plan_ok(plan_usage_report(Backend::Storage, &config, &resources, may_2024()));
    let body = r#"{"storage":[{"path":"/store/p123","spaceUsed":1500000000000,"inodesUsed":1234},
                               {"path":"/store/p123","spaceUsed":1400000000000,"inodesUsed":1300}]}"#;
    let report = report_ok(assemble(&plan, &[ok(body)]));
    let p = &report.resources[0];
    assert!(p.found);
    assert_eq!(amounts(&p.totals), [("storage_space", 1500.0), ("storage_inodes", 1300.0)]);
    assert!(p.users.is_empty());
    assert!(!report.resources[1].found);
    assert_eq!(report.resources[2].backend_id, "alias");
    assert_eq!(report.resources[2].totals, p.totals);

    // Unrounded: 1,234,567 bytes is 0.001234567 GB, not 0.
    let body = r#"{"storage":[{"path":"/store/other","spaceUsed":1234567,"inodesUsed":1}]}"#;
    let plan = plan_ok(plan_usage_report(Backend::Storage, &storage_config(""), &resources[1..2], may_2024()));
    let report = report_ok(assemble(&plan, &[ok(body)]));
    let value = report.resources[0].totals[0].value;
    assert!((value - 0.001234567).abs() < 1e-15, "{value}");
}

#[test]
fn statuses_map_to_errors() {
    let plan =
        plan_ok(plan_usage_report(Backend::Compute, &compute_config("", hours()), &[resource("a", None)], may_2024()));
    let endpoint = format!("{BASE}/compute/usage-month/account");
    for status in [401, 403] {
        let answer = HttpAnswer { status, body: b"token expired".to_vec() };
        match assemble(&plan, &[answer]) {
            Err(BackendError::Unauthorized(m)) => {
                assert_eq!(m, format!("DWDI refused the credentials (HTTP {status}) at {endpoint}: token expired"));
            }
            other => panic!("{status}: {other:?}"),
        }
    }
    let long = format!("<html>\n<body>{}</body></html>", "oops ".repeat(100));
    for status in [500, 404, 302, 199] {
        let answer = HttpAnswer { status, body: long.clone().into_bytes() };
        match assemble(&plan, &[answer]) {
            Err(BackendError::UpstreamStatus { endpoint: e, status: s, message }) => {
                assert_eq!(e, endpoint);
                assert_eq!(s, status);
                assert!(message.starts_with("<html> <body>oops oops"), "{message}");
                assert!(message.chars().count() <= 201);
            }
            other => panic!("{status}: {other:?}"),
        }
    }
}

#[test]
fn status_errors_win_over_parse_errors() {
    let resources: Vec<Resource> = (0..1000).map(|i| resource(&format!("account-{i:05}"), None)).collect();
    let plan = plan_ok(plan_usage_report(Backend::Compute, &compute_config("", hours()), &resources, may_2024()));
    assert!(plan.requests().len() >= 2);
    let mut answers: Vec<HttpAnswer> = plan.requests().iter().map(|_| ok("not json")).collect();
    if let Some(last) = answers.last_mut() {
        last.status = 403;
    }
    assert!(matches!(assemble(&plan, &answers), Err(BackendError::Unauthorized(_))));
}

#[test]
fn bad_answers_name_endpoint_and_path() {
    let plan =
        plan_ok(plan_usage_report(Backend::Compute, &compute_config("", hours()), &[resource("a", None)], may_2024()));
    let body = r#"{"compute":[{"account":"a","totalNodeHours":1,"totalCpuHours":1,
        "users":[{"username":"u","nodeHours":1,"cpuHours":1},{"username":"v","nodeHours":1}]}]}"#;
    assert_eq!(
        assemble(&plan, &[ok(body)]),
        Err(BackendError::BadResponse(format!(
            "{BASE}/compute/usage-month/account: compute[0].users[1].cpuHours: missing"
        )))
    );
    match assemble(&plan, &[ok("<html>")]) {
        Err(BackendError::BadResponse(m)) => assert!(m.contains("not valid JSON"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(assemble(&plan, &[]), Err(BackendError::Transport(_))));
}

#[test]
fn ping_asks_for_today_as_the_python_client_does_and_needs_a_success() {
    let today = Date { year: 2024, month: 2, day: 29 };
    let request = match plan_ping(Backend::Storage, &storage_config(""), today) {
        Ok(r) => r,
        Err(e) => panic!("{e}"),
    };
    assert_eq!(request.url(), format!("{BASE}/storage/usage-day?exact-date=2024-02-29"));
    assert_eq!(request.endpoint(), format!("{BASE}/storage/usage-day"));
    // Ping needs no components.
    let bare = Config { settings_json: format!(r#"{{"cscs_dwdi_api_url":"{BASE}"}}"#), components: vec![] };
    let compute = plan_ping(Backend::Compute, &bare, today).map(|r| r.url().to_owned());
    assert_eq!(compute, Ok(format!("{BASE}/compute/usage-day?from=2024-02-29&to=2024-02-29")));
    let not_a_day = plan_ping(Backend::Compute, &bare, Date { year: 2023, month: 2, day: 29 });
    assert!(matches!(not_a_day, Err(BackendError::InvalidRequest(_))), "{not_a_day:?}");

    let verdict = |status: u16| check_ping(&request, &HttpAnswer { status, body: b"nope".to_vec() });
    for status in [200, 204] {
        assert_eq!(verdict(status), Ok(()), "{status}");
    }
    assert!(matches!(verdict(401), Err(BackendError::Unauthorized(_))));
    assert!(matches!(verdict(403), Err(BackendError::Unauthorized(_))));
    for status in [301, 400, 404, 405, 422, 500, 502, 503] {
        match verdict(status) {
            Err(BackendError::UpstreamStatus { endpoint, status: got, .. }) => {
                assert_eq!((endpoint.as_str(), got), (request.endpoint(), status));
            }
            other => panic!("{status}: {other:?}"),
        }
    }
}

#[test]
fn config_errors_reach_the_planner() {
    let bad_component = compute_config("", vec![Component::named("foo", 1.0)]);
    assert!(matches!(
        plan_usage_report(Backend::Compute, &bad_component, &[], may_2024()),
        Err(BackendError::InvalidConfig(m)) if m.starts_with("backend_components.foo: ")
    ));
    let missing = Config { settings_json: r#"{"cscs_dwdi_api_url":"http://x"}"#.into(), components: vec![] };
    assert_eq!(
        setup(Backend::Storage, &missing),
        Err(BackendError::InvalidConfig("backend_settings.storage_filesystem: missing".into()))
    );
    assert!(setup(Backend::Storage, &storage_config("")).is_ok());
    assert!(setup(Backend::Compute, &storage_config("")).is_err(), "storage components on compute");
}

#[test]
/// Days and months out of range are the call's fault, not the config's.
fn periods_and_dates_are_checked() {
    let config = compute_config("", hours());
    let r = [resource("a", None)];
    for period in [
        BillingPeriod { year: 2024, month: 0 },
        BillingPeriod { year: 2024, month: 13 },
        BillingPeriod { year: 0, month: 1 },
    ] {
        assert!(matches!(
            plan_usage_report(Backend::Compute, &config, &r, period),
            Err(BackendError::InvalidRequest(_))
        ));
    }
    let d = |year, month, day| Date { year, month, day };
    let bad = [
        (d(2023, 2, 29), d(2023, 3, 1)),
        (d(2024, 4, 31), d(2024, 5, 1)),
        (d(2024, 1, 0), d(2024, 1, 1)),
        (d(2024, 3, 2), d(2024, 3, 1)),
    ];
    for (first, last) in bad {
        assert!(
            matches!(
                plan_daily_report(Backend::Compute, &config, &r, first, last),
                Err(BackendError::InvalidRequest(_))
            ),
            "{first:?}..{last:?}"
        );
    }
    assert!(plan_daily_report(Backend::Compute, &config, &r, d(2000, 2, 29), d(2000, 2, 29)).is_ok());
}

#[test]
fn empty_backend_ids_are_not_requested() {
    let resources = [resource("", None), resource("a", None)];
    let plan = plan_ok(plan_usage_report(Backend::Compute, &compute_config("", hours()), &resources, may_2024()));
    assert_eq!(plan.requests()[0].keys(), ["a"]);
    let body = r#"{"compute":[{"account":"","totalNodeHours":1,"totalCpuHours":1}]}"#;
    let report = report_ok(assemble(&plan, &[ok(body)]));
    assert!(!report.resources[0].found);
    assert!(!report.resources[1].found);
}

#[test]
fn read_only_message() {
    assert_eq!(
        read_only(Backend::Compute, "create-account"),
        BackendError::Unsupported("cscs-dwdi-compute is read-only: create-account is not supported".into())
    );
}

#[test]
fn synthetic_answers_assemble_exactly() {
    let resources: Vec<Resource> = (0..1200).map(|i| resource(&synthetic_account(i), None)).collect();
    let components =
        vec![Component::named("nodeHours", 1.0), Component::named("cpuHours", 1.0), Component::named("gpuHours", 1.0)];
    let plan = plan_ok(plan_usage_report(Backend::Compute, &compute_config("", components), &resources, may_2024()));
    assert!(plan.requests().len() > 1);
    let answers: Vec<HttpAnswer> =
        plan.requests().iter().map(|r| ok(&synthetic_compute_answer_for(r.keys(), 7))).collect();
    let report = report_ok(assemble(&plan, &answers));
    assert_eq!(report.resources.len(), 1200);
    for r in &report.resources {
        assert!(r.found);
        assert_eq!(r.users.len(), 7);
        for (i, total) in r.totals.iter().enumerate() {
            let sum: f64 = r.users.iter().map(|u| u.amounts[i].value).sum();
            assert_eq!(total.value, sum, "{}", r.backend_id);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Inference
// ---------------------------------------------------------------------------------------

fn inference_config(components: Vec<Component>) -> Config {
    // Keys of the other backends in the same block are ignored.
    Config { settings_json: format!(r#"{{"cscs_dwdi_api_url":"{BASE}/","cscs_dwdi_cluster":"alps"}}"#), components }
}

fn token_cost(factor: f64) -> Vec<Component> {
    vec![Component::named("Token_Cost", factor)]
}

fn uuid(i: usize) -> String {
    format!("6f1c2a7e-0b3d-4c5e-9f80-{i:012}")
}

#[test]
fn inference_month_url_repeats_resource_uuid() {
    // Clusters mean nothing here; a repeated or empty id is asked for once or not at all.
    let resources =
        [resource("uuid-1", Some("alps")), resource("a b/c", None), resource("uuid-1", None), resource("", None)];
    let plan =
        plan_ok(plan_usage_report(Backend::Inference, &inference_config(token_cost(1.0)), &resources, may_2024()));
    assert_eq!(
        urls(&plan),
        [format!(
            "{BASE}/inference/resource/cost?from=2024-05&to=2024-05&resource_uuid=uuid-1&resource_uuid=a%20b%2Fc"
        )]
    );
    assert_eq!(plan.requests()[0].keys(), ["uuid-1", "a b/c"]);
    assert_eq!(plan.requests()[0].endpoint(), format!("{BASE}/inference/resource/cost"));
    let none = plan_ok(plan_usage_report(Backend::Inference, &inference_config(token_cost(1.0)), &[], may_2024()));
    assert!(none.requests().is_empty());
}

#[test]
fn inference_chunks_cover_every_resource_once() {
    let ids: Vec<String> = (0..1000).map(uuid).collect();
    let resources: Vec<Resource> = ids.iter().map(|id| resource(id, None)).collect();
    let plan =
        plan_ok(plan_usage_report(Backend::Inference, &inference_config(token_cost(1.0)), &resources, may_2024()));
    assert!(plan.requests().len() >= 8, "{}", plan.requests().len());
    let head = format!("{BASE}/inference/resource/cost?from=2024-05&to=2024-05&resource_uuid=");
    let mut all = Vec::new();
    for request in plan.requests() {
        assert!(request.url().len() < MAX_URL_BYTES);
        assert!(request.url().starts_with(&head), "{}", request.url());
        let in_url: Vec<&str> = request.url().split('&').filter_map(|p| p.strip_prefix("resource_uuid=")).collect();
        assert_eq!(in_url, request.keys());
        all.extend(request.keys().iter().cloned());
    }
    assert_eq!(all, ids);

    // Each chunk's answer is read against its own ids.
    let answers: Vec<HttpAnswer> = plan
        .requests()
        .iter()
        .map(|r| {
            let rows: Vec<String> =
                r.keys().iter().map(|k| format!(r#"{{"waldurResourceUuid":"{k}","totalCost":2.5}}"#)).collect();
            ok(&format!(r#"{{"inference":[{}]}}"#, rows.join(",")))
        })
        .collect();
    let report = report_ok(assemble(&plan, &answers));
    assert_eq!(report.resources.len(), 1000);
    assert_eq!(usize::try_from(report.upstream_requests).ok(), Some(plan.requests().len()));
    assert!(report.resources.iter().all(|r| r.found && amounts(&r.totals) == [("Token_Cost", 2.5)]));
}

#[test]
fn inference_report_applies_factor_and_marks_absent() {
    let resources = [resource("r2", None), resource("missing", None), resource("r1", None), resource("r2", None)];
    let mut components = token_cost(0.5);
    components[0].reporting_factor = Some(0.001);
    let plan = plan_ok(plan_usage_report(Backend::Inference, &inference_config(components), &resources, may_2024()));
    let body = r#"{"inference":[
        {"waldurResourceUuid":"r1","totalCost":12.5},
        {"waldurResourceUuid":"stranger","totalCost":"not asked for, not read"},
        {"waldurResourceUuid":"r2","totalCost":1000}
    ]}"#;
    let report = report_ok(assemble(&plan, &[ok(body)]));
    let ids: Vec<&str> = report.resources.iter().map(|r| r.backend_id.as_str()).collect();
    assert_eq!(ids, ["r2", "missing", "r1", "r2"]);
    // reported = upstream × factor (the reporting factor wins), unrounded.
    assert_eq!(amounts(&report.resources[0].totals), [("Token_Cost", 1.0)]);
    assert_eq!(amounts(&report.resources[2].totals), [("Token_Cost", 0.0125)]);
    assert_eq!(report.resources[3], report.resources[0]);
    let missing = &report.resources[1];
    assert!(!missing.found);
    assert_eq!(amounts(&missing.totals), [("Token_Cost", 0.0)]);
    assert!(report.resources.iter().all(|r| r.users.is_empty()));
}

#[test]
fn inference_cost_may_go_down_between_cycles() {
    let plan = plan_ok(plan_usage_report(
        Backend::Inference,
        &inference_config(token_cost(1.0)),
        &[resource("r1", None)],
        may_2024(),
    ));
    for cost in [10.0, 4.25, 0.0] {
        let body = format!(r#"{{"inference":[{{"waldurResourceUuid":"r1","totalCost":{cost}}}]}}"#);
        let report = report_ok(assemble(&plan, &[ok(&body)]));
        assert_eq!(amounts(&report.resources[0].totals), [("Token_Cost", cost)]);
    }
}

#[test]
fn inference_bad_answers_name_endpoint_and_path() {
    let plan = plan_ok(plan_usage_report(
        Backend::Inference,
        &inference_config(token_cost(1.0)),
        &[resource("r1", None)],
        may_2024(),
    ));
    let endpoint = format!("{BASE}/inference/resource/cost");
    let cases = [
        (r#"{"inference":[{"waldurResourceUuid":"r1","totalCost":-1}]}"#, "inference[0].totalCost: negative value -1"),
        (
            r#"{"inference":[{"waldurResourceUuid":"r1","totalCost":1},{"waldurResourceUuid":"r1","totalCost":1}]}"#,
            "inference[1].waldurResourceUuid: a second row for \"r1\"",
        ),
        (r#"{"inference":[{"waldurResourceUuid":"r1","cost":1}]}"#, "inference[0].totalCost: missing"),
        (r#"["r1"]"#, "expected a JSON object at the top level, found an array"),
        (r#"{"compute":[]}"#, "inference: missing"),
    ];
    for (body, want) in cases {
        assert_eq!(
            assemble(&plan, &[ok(body)]),
            Err(BackendError::BadResponse(format!("{endpoint}: {want}"))),
            "{body}"
        );
    }
    let refused = HttpAnswer { status: 403, body: Vec::new() };
    assert!(matches!(assemble(&plan, &[refused]), Err(BackendError::Unauthorized(_))));
}

#[test]
fn inference_ping_asks_for_today() {
    let today = Date { year: 2024, month: 2, day: 29 };
    // Ping needs no components.
    let request = match plan_ping(Backend::Inference, &inference_config(vec![]), today) {
        Ok(r) => r,
        Err(e) => panic!("{e}"),
    };
    assert_eq!(request.url(), format!("{BASE}/inference/resource/cost?exact-date=2024-02-29"));
    assert!(request.keys().is_empty());
    assert_eq!(check_ping(&request, &HttpAnswer { status: 200, body: b"{\"inference\":[]}".to_vec() }), Ok(()));
    assert!(matches!(
        check_ping(&request, &HttpAnswer { status: 404, body: Vec::new() }),
        Err(BackendError::UpstreamStatus { status: 404, .. })
    ));
    let not_a_day = plan_ping(Backend::Inference, &inference_config(vec![]), Date { year: 2023, month: 2, day: 29 });
    assert!(matches!(not_a_day, Err(BackendError::InvalidRequest(_))), "{not_a_day:?}");
}

#[test]
fn inference_has_no_daily_report() {
    let first = Date { year: 2024, month: 5, day: 1 };
    let last = Date { year: 2024, month: 5, day: 31 };
    let want = Err(BackendError::Unsupported(
        "cscs-dwdi-inference does not implement daily-report: DWDI has no such data for it; it implements ping, \
         usage-report"
            .into(),
    ));
    let r = [resource("r1", None)];
    assert_eq!(plan_daily_report(Backend::Inference, &inference_config(token_cost(1.0)), &r, first, last), want);
    // Refused before the config or the dates are looked at: no fix there would help.
    let broken = Config { settings_json: "{}".into(), components: vec![] };
    assert_eq!(plan_daily_report(Backend::Inference, &broken, &r, last, first), want);
    // The other backends keep theirs.
    assert!(plan_daily_report(Backend::Compute, &compute_config("", hours()), &r, first, last).is_ok());
    assert!(plan_daily_report(Backend::Storage, &storage_config(""), &r, first, last).is_ok());
}

#[test]
fn inference_setup_checks_components() {
    assert!(setup(Backend::Inference, &inference_config(token_cost(1.0))).is_ok());
    assert!(matches!(
        setup(Backend::Inference, &inference_config(hours())),
        Err(BackendError::InvalidConfig(m)) if m.starts_with("backend_components.nodeHours: ")
    ));
    assert!(matches!(
        setup(Backend::Compute, &compute_config("", token_cost(1.0))),
        Err(BackendError::InvalidConfig(m)) if m.starts_with("backend_components.Token_Cost: ")
    ));
}
