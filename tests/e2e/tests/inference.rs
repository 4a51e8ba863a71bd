//! The `cscs-dwdi-inference` backend end to end: the built-in component against the DWDI
//! simulator's `/inference/resource/cost` and the Waldur simulator.

use std::collections::BTreeMap;

use anyhow::{Context as _, Result};
use dwdi_sim::{DwdiData, DwdiOptions, DwdiSim};
use e2e::{ConfigFile, cents, cycle_at, dwdi_access, parse_json, report_targets, run_cli, total};
use waldur_sim::{WaldurOptions, WaldurSim, uuid_from};

const STAFF: &str = "staff-token";
const MID_MARCH: &str = "2024-03-15T12:00:00Z";

/// Resources by `backend_id`, which is the id DWDI keys its costs by. `quiet` has no
/// cost at all.
const RESOURCES: [&str; 4] = ["llm-a", "llm-b", "llm-c", "quiet"];

/// Costs per (resource, month): multiples of 1/4, so cents are exact.
fn costs() -> Vec<(&'static str, (i32, u32), f64)> {
    vec![
        ("llm-a", (2024, 1), 3.25),
        ("llm-a", (2024, 2), 12.5),
        ("llm-a", (2024, 3), 40.75),
        ("llm-b", (2024, 2), 0.25),
        ("llm-b", (2024, 3), 1234.5),
        ("llm-c", (2024, 1), 7.0),
        ("llm-c", (2024, 3), 0.0),
    ]
}

fn data(costs: &[(&str, (i32, u32), f64)]) -> DwdiData {
    let mut data = DwdiData::new();
    for (id, (year, month), cost) in costs {
        data.add_inference_cost(id, *year, *month, *cost);
    }
    data
}

struct World {
    dwdi: DwdiSim,
    /// What `dwdi` was started with.
    data: DwdiData,
    waldur: WaldurSim,
    offering: String,
    config: ConfigFile,
    text: String,
}

impl World {
    /// Waldur's "today" is mid-March 2024; `factor` is the `token_cost` factor.
    async fn new(factor: f64) -> Result<Self> {
        let options = DwdiOptions::default();
        let data = data(&costs());
        let dwdi = DwdiSim::start(data.clone(), options.clone()).await?;
        let waldur = WaldurSim::start(WaldurOptions::default()).await?;
        waldur.add_token(STAFF, "admin", true);
        waldur.set_today(2024, 3, 15);
        let offering = uuid_from("inference");
        // Spelt as upstream's README never does: the name maps case-insensitively.
        waldur.add_offering(&offering, "inference", &["Token_Cost"]);
        for id in RESOURCES {
            waldur.add_resource(&offering, &uuid_from(id), id, "", "OK");
        }
        let text = format!(
            "timezone: UTC\nreporting_periods: 2\nofferings:\n  - name: inference\n    waldur_api_url: {:?}\n    waldur_api_token: {STAFF}\n    waldur_offering_uuid: {offering}\n    backend_type: cscs-dwdi-inference\n    backend_settings:\n{}    backend_components:\n      Token_Cost: {{measured_unit: EUR, unit_factor: {factor}, accounting_type: usage, label: Inference cost}}\n",
            waldur.url(),
            dwdi_access(&dwdi, &options)
        );
        let config = ConfigFile::new(&text)?;
        Ok(Self { dwdi, data, waldur, offering, config, text })
    }

    /// Stored totals: (backend id, billing period) → amount, all of type `Token_Cost`.
    fn stored(&self) -> BTreeMap<(String, String), String> {
        let ids: BTreeMap<String, &str> = RESOURCES.iter().map(|id| (uuid_from(id), *id)).collect();
        self.waldur
            .usages()
            .into_iter()
            .map(|u| {
                assert_eq!(u.component_type, "Token_Cost", "{u:?}");
                let id = ids.get(&u.resource_uuid).map_or(u.resource_uuid.clone(), |id| (*id).to_owned());
                ((id, u.billing_period), u.amount)
            })
            .collect()
    }

    /// What the simulator serves for `months`, × `factor`: (backend id, period) → amount.
    fn served(&self, months: &[(i32, u32)], factor: f64) -> BTreeMap<(String, String), String> {
        let data = &self.data;
        let mut served = BTreeMap::new();
        for id in RESOURCES {
            for &(year, month) in months {
                if let Some(cost) = data.inference_cost(id, (year, month), (year, month)) {
                    served.insert((id.to_owned(), format!("{year}-{month:02}-01")), cents(cost * factor));
                }
            }
        }
        served
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_report_lands_the_costs_dwdi_serves_and_a_lower_cost_replaces_the_stored_one() -> Result<()> {
    let world = World::new(2.0).await?;
    let targets = report_targets(&world.text).await?;
    let first = cycle_at(&targets[0], &world.text, MID_MARCH).await?;
    assert_eq!(first.failed, 0, "{first:?}");
    // February and March, the factor applied, each month in one request for all
    // resources (a staff token: Waldur 8 lets only staff back-fill February).
    let mut expected = world.served(&[(2024, 2), (2024, 3)], 2.0);
    // A resource without a cost is reported as zero where Waldur holds nothing yet, in
    // the current month only.
    for id in ["llm-c", "quiet"] {
        expected.entry((id.to_owned(), "2024-03-01".to_owned())).or_insert_with(|| "0.00".to_owned());
    }
    assert_eq!(world.stored(), expected);
    assert_eq!(world.dwdi.stats().api_count("/inference/resource/cost"), 2);
    assert!(world.waldur.user_usages().is_empty(), "inference has no per-user usage");

    // Nothing changed: nothing is written.
    world.waldur.reset_counters();
    let second = cycle_at(&targets[0], &world.text, MID_MARCH).await?;
    assert_eq!((second.submitted, second.failed, world.waldur.requests().writes), (0, 0, 0), "{second:?}");

    // DWDI revised llm-b's March cost down: the lower value replaces the stored one.
    let mut revised = costs();
    for (id, month, cost) in &mut revised {
        if *id == "llm-b" && *month == (2024, 3) {
            *cost = 1000.25;
        }
    }
    world.dwdi.set_data(data(&revised));
    let third = cycle_at(&targets[0], &world.text, MID_MARCH).await?;
    assert_eq!((third.submitted, third.failed), (1, 0), "{third:?}");
    let stored = world.stored();
    assert_eq!(stored.get(&("llm-b".to_owned(), "2024-03-01".to_owned())).map(String::as_str), Some("2000.50"));
    assert_eq!(stored.len(), expected.len(), "{stored:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_back_fill_lands_each_past_months_costs() -> Result<()> {
    let world = World::new(1.0).await?;
    let out = run_cli(&[
        "load-historical-usage",
        "-c",
        world.config.arg(),
        "-o",
        &world.offering,
        "--user-token",
        STAFF,
        "-s",
        "2024-01-01",
        "-e",
        "2024-02-29",
    ])
    .await?;
    assert!(out.contains("0 failed"), "{out}");
    // Only what DWDI has: a past month without a cost is not written as zero.
    assert_eq!(world.stored(), world.served(&[(2024, 1), (2024, 2)], 1.0), "{out}");
    assert!(!world.stored().keys().any(|(_, period)| period == "2024-03-01"), "the current month is not touched");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn usage_and_ping_work_and_daily_usage_is_refused_by_name() -> Result<()> {
    let world = World::new(1.0).await?;
    let out =
        run_cli(&["usage", "-c", world.config.arg(), "--month", "2024-03", "--json", "--resource", "llm-a"]).await?;
    let json = parse_json(&out)?;
    assert_eq!(total(&json, 0, "llm-a", "Token_Cost"), Some("40.75"), "{out}");

    let out = run_cli(&["ping", "-c", world.config.arg()]).await?;
    assert!(out.contains("inference"), "{out}");
    let pinged = world.dwdi.stats().recent_urls();
    assert!(pinged.iter().any(|url| url.contains("/inference/resource/cost?exact-date=")), "{pinged:?}");

    let before = world.dwdi.stats().api_requests;
    let error = run_cli(&[
        "usage",
        "-c",
        world.config.arg(),
        "--from",
        "2024-03-01",
        "--to",
        "2024-03-10",
        "--resource",
        "llm-a",
    ])
    .await
    .err()
    .context("a daily usage of inference must fail")?;
    let message = format!("{error:#}");
    assert!(message.contains("does not implement daily-report"), "{message}");
    assert_eq!(world.dwdi.stats().api_requests, before, "nothing is asked for a refused call");
    Ok(())
}
