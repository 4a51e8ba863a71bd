//! DWDI answers, as any server (or anything between it and us) could send them, through
//! the components' parser. `assemble` must never panic, and whatever it accepts must
//! be a report the host can submit: one entry per requested resource, every value
//! finite and not negative.
//!
//! The first input byte picks the backend (bit 0) and the status (bit 1); the rest is
//! the body, given as the answer to every request of the plan.

#![no_main]

use dwdi_core::{
    Backend, BillingPeriod, Component, Config, HttpAnswer, Resource, assemble, plan_usage_report,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else { return };
    let (backend, settings, names) = if selector & 1 == 0 {
        (
            Backend::Compute,
            r#"{"cscs_dwdi_api_url":"http://dwdi.invalid/api/v1"}"#,
            &["nodeHours", "cpuHours", "gpuHours"][..],
        )
    } else {
        (
            Backend::Storage,
            r#"{"cscs_dwdi_api_url":"http://dwdi.invalid/api/v1","storage_filesystem":"lustre","storage_data_type":"projects"}"#,
            &["storage_space", "storage_inodes"][..],
        )
    };
    let config = Config {
        settings_json: settings.to_owned(),
        components: names.iter().map(|n| Component::named(n, 0.5)).collect(),
    };
    // Short names the fuzzer finds quickly, also as storage paths.
    let resources: Vec<Resource> = ["a", "b", "/p"].iter().map(|id| Resource::new(id)).collect();
    let period = BillingPeriod { year: 2024, month: 3 };
    let Ok(plan) = plan_usage_report(backend, &config, &resources, period) else {
        panic!("the fixed config must plan");
    };
    let status = if selector & 2 == 0 { 200 } else { 503 };
    let answers: Vec<HttpAnswer> =
        plan.requests().iter().map(|_| HttpAnswer { status, body: body.to_vec() }).collect();
    if let Ok(report) = assemble(&plan, &answers) {
        assert_eq!(status, 200, "a failed status must fail the report");
        assert_eq!(report.resources.len(), resources.len());
        for usage in &report.resources {
            let users = usage.users.iter().flat_map(|u| u.amounts.iter());
            for amount in usage.totals.iter().chain(users) {
                assert!(amount.value.is_finite() && amount.value >= 0.0, "{amount:?}");
            }
        }
    }
});
