//! The report cycle end to end: real components, real host, DWDI and Waldur simulators.

use std::collections::{BTreeMap, HashSet};

use anyhow::Result;
use dwdi_sim::{DwdiData, DwdiOptions, DwdiSim};
use e2e::{ComputeSims, NODE_AND_CPU, cents, cycle_at, dwdi_access, report_targets};
use usage_agent::config::Secret;
use usage_agent::report::OfferingSummary;
use usage_agent::waldur::WaldurClient;
use waldur_sim::{WaldurOptions, WaldurSim, WaldurVersion, uuid_from};

const TOKEN: &str = "provider-token";
const STAFF: &str = "staff-token";

/// A DWDI simulator, a Waldur simulator and a compute offering wired together.
struct World {
    dwdi: DwdiSim,
    options: DwdiOptions,
    waldur: WaldurSim,
    data: DwdiData,
    offering: String,
}

impl World {
    async fn new(accounts: usize, users: usize, waldur_options: WaldurOptions) -> Result<Self> {
        let data = DwdiData::generated(accounts, users, &[(2024, 2), (2024, 3)]);
        let ComputeSims { dwdi, options, waldur, offering } =
            ComputeSims::start(&data, waldur_options, "compute", TOKEN, "").await?;
        waldur.add_token(STAFF, "admin", true);
        waldur.set_today(2024, 3, 15);
        Ok(Self { dwdi, options, waldur, data, offering })
    }

    fn config(&self, token: &str, periods: u32, extra_top: &str) -> String {
        format!(
            "timezone: UTC\nreporting_periods: {periods}\n{extra_top}offerings:\n  - name: compute\n    waldur_api_url: {:?}\n    waldur_api_token: {token}\n    waldur_offering_uuid: {}\n    backend_type: cscs-dwdi-compute\n    backend_settings:\n{}    backend_components:\n{NODE_AND_CPU}",
            self.waldur.url(),
            self.offering,
            dwdi_access(&self.dwdi, &self.options)
        )
    }

    /// The stored totals: (backend id, period, type) → amount.
    fn stored(&self) -> BTreeMap<(String, String, String), String> {
        let ids: BTreeMap<String, String> = self.data.accounts().into_iter().map(|a| (uuid_from(&a), a)).collect();
        self.waldur
            .usages()
            .into_iter()
            .map(|u| {
                let id = ids.get(&u.resource_uuid).cloned().unwrap_or(u.resource_uuid);
                ((id, u.billing_period, u.component_type), u.amount)
            })
            .collect()
    }
}

const MID_MARCH: &str = "2024-03-15T12:00:00Z";

#[tokio::test(flavor = "multi_thread")]
async fn a_cycle_submits_totals_and_users_and_a_second_writes_nothing() -> Result<()> {
    let world = World::new(6, 3, WaldurOptions::default()).await?;
    let text = world.config(TOKEN, 1, "");
    let targets = report_targets(&text).await?;
    let summary = cycle_at(&targets[0], &text, MID_MARCH).await?;
    assert_eq!((summary.resources, summary.submitted, summary.failed), (6, 6, 0), "{summary:?}");
    let stored = world.stored();
    for account in world.data.accounts() {
        let expected = world.data.compute_usage(&account, None, "2024-03-01", "2024-03-31");
        let key = |t: &str| (account.clone(), "2024-03-01".to_owned(), t.to_owned());
        assert_eq!(stored.get(&key("nodeHours")), Some(&cents(expected.node_hours)), "{account}");
        assert_eq!(stored.get(&key("cpuHours")), Some(&cents(expected.cpu_hours)), "{account}");
    }
    // Per-user usage: one record per (component usage, user), summed over days and clusters.
    let user_usages = world.waldur.user_usages();
    let account = world.data.accounts()[0].clone();
    let expected = world.data.compute_usage(&account, None, "2024-03-01", "2024-03-31");
    for (user, (node, _, _)) in &expected.users {
        let found: Vec<_> = user_usages
            .iter()
            .filter(|u| {
                u.resource_uuid == uuid_from(&account) && &u.username == user && u.component_type == "nodeHours"
            })
            .collect();
        assert_eq!(found.len(), 1, "{user}");
        assert_eq!(found[0].usage, cents(*node));
    }
    // One component call for all six resources: one DWDI request.
    assert_eq!(world.dwdi.stats().api_count("/compute/usage-month/account"), 1);
    let first = world.waldur.requests();
    // One set_user_usages per component usage (6 resources × 2 components), no per-user calls.
    assert_eq!((first.set_usage, first.set_user_usages, first.set_user_usage), (6, 12, 0));

    world.waldur.reset_counters();
    let again = cycle_at(&targets[0], &text, MID_MARCH).await?;
    assert_eq!((again.submitted, again.unchanged, again.failed), (0, 6, 0), "{again:?}");
    let second = world.waldur.requests();
    assert_eq!(second.writes, 0, "unchanged data must write nothing: {second:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_result_count_listings_follow_the_link_chain() -> Result<()> {
    // A server whose pages are smaller than the 300 asked for: its own size is followed.
    let options = WaldurOptions { result_count: false, max_page_size: 100, ..WaldurOptions::default() };
    let world = World::new(250, 1, options).await?;
    let text = world.config(TOKEN, 1, "");
    let targets = report_targets(&text).await?;
    let first = cycle_at(&targets[0], &text, MID_MARCH).await?;
    assert_eq!((first.resources, first.submitted, first.failed), (250, 250, 0), "{first:?}");
    assert_eq!(world.waldur.requests().by_route.get("GET /api/marketplace-provider-resources/"), Some(&3));

    // 500 stored usages on five pages: each must be read, or the cycle would write again.
    world.waldur.reset_counters();
    let again = cycle_at(&targets[0], &text, MID_MARCH).await?;
    assert_eq!((again.unchanged, again.failed), (250, 0), "{again:?}");
    let requests = world.waldur.requests();
    assert_eq!(requests.writes, 0, "{requests:?}");
    assert_eq!(requests.by_route.get("GET /api/marketplace-component-usages/"), Some(&5), "{requests:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_read_back_asks_for_its_pages_at_once_and_drops_those_past_the_end() -> Result<()> {
    // Pages of 100, not the 300 asked for: the client learns that size from the first
    // listing of more than one page (the 250 resources).
    let options = WaldurOptions { max_page_size: 100, ..WaldurOptions::default() };
    let world = World::new(250, 1, options).await?;
    let text = world.config(TOKEN, 1, "");
    let targets = report_targets(&text).await?;
    let first = cycle_at(&targets[0], &text, MID_MARCH).await?;
    assert_eq!((first.submitted, first.failed), (250, 0), "{first:?}");

    let client = WaldurClient::new(&world.waldur.url(), Secret::new(TOKEN.to_owned()), true)?;
    let route = "GET /api/marketplace-component-usages/";
    // 500 usages stored. Told to expect 1,000 it asks for ten pages together; the five
    // past the end are answered 404 and dropped.
    for (expected, requests) in [(1000, 10), (500, 5), (150, 5), (0, 5)] {
        world.waldur.reset_counters();
        let listed = client.component_usages_expecting(&world.offering, "2024-03-01", expected).await?;
        let distinct: HashSet<&str> = listed.iter().map(|u| u.uuid.as_str()).collect();
        assert_eq!((listed.len(), distinct.len()), (500, 500), "expecting {expected}");
        let asked = world.waldur.requests().by_route.get(route).copied();
        assert_eq!(asked, Some(requests), "expecting {expected}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_answer_that_knows_no_resource_is_pointed_out_once() -> Result<()> {
    e2e::log::capture();
    let world = World::new(3, 1, WaldurOptions::default()).await?;
    // A cluster with no data: every account comes back absent.
    let text = world
        .config(TOKEN, 1, "")
        .replace("    backend_components:", "      cscs_dwdi_cluster: nowhere\n    backend_components:");
    let targets = report_targets(&text).await?;
    for _ in 0..2 {
        let summary = cycle_at(&targets[0], &text, MID_MARCH).await?;
        assert_eq!(summary.failed, 0, "{summary:?}");
    }
    let said: Vec<String> = e2e::log::text()
        .lines()
        .filter(|l| l.contains("found none of the 3 resources upstream"))
        .map(str::to_owned)
        .collect();
    assert_eq!(said.len(), 1, "{said:#?}");
    assert!(said[0].contains("2024-03") && said[0].contains("storage_path_mapping"), "{}", said[0]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn changed_data_updates_and_absence_never_lowers() -> Result<()> {
    let world = World::new(3, 2, WaldurOptions::default()).await?;
    let text = world.config(TOKEN, 1, "");
    let targets = report_targets(&text).await?;
    cycle_at(&targets[0], &text, MID_MARCH).await?;
    let accounts = world.data.accounts();

    // New usage for account 0; account 1 vanishes from DWDI; account 2 unchanged.
    let mut data = DwdiData::new();
    for account in [&accounts[0], &accounts[2]] {
        let usage = world.data.compute_usage(account, None, "2024-03-01", "2024-03-31");
        for (user, (node, cpu, gpu)) in usage.users {
            let extra = if account == &accounts[0] { 10.0 } else { 0.0 };
            data.add_compute("alps", account, &user, "2024-03-10", node + extra, cpu, gpu);
        }
    }
    world.dwdi.set_data(data);
    world.waldur.reset_counters();
    let before = world.stored();
    let summary = cycle_at(&targets[0], &text, MID_MARCH).await?;
    let after = world.stored();
    let key = |a: &str, t: &str| (a.to_owned(), "2024-03-01".to_owned(), t.to_owned());
    assert_ne!(before.get(&key(&accounts[0], "nodeHours")), after.get(&key(&accounts[0], "nodeHours")));
    // Absent from a successful answer: the stored non-zero value stays.
    assert_eq!(before.get(&key(&accounts[1], "nodeHours")), after.get(&key(&accounts[1], "nodeHours")));
    assert!(after.get(&key(&accounts[1], "nodeHours")).is_some_and(|v| v != "0.00"));
    assert_eq!(world.waldur.requests().set_usage, 1, "{summary:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_absent_resource_reports_zero_in_the_current_month() -> Result<()> {
    let world = World::new(2, 2, WaldurOptions::default()).await?;
    world.waldur.add_resource(&world.offering, &uuid_from("ghost"), "ghost", "", "OK");
    let text = world.config(TOKEN, 1, "");
    let summary = cycle_at(&report_targets(&text).await?[0], &text, MID_MARCH).await?;
    assert_eq!(summary.failed, 0, "{summary:?}");
    let ghost: Vec<(String, String)> = world
        .waldur
        .usages()
        .into_iter()
        .filter(|u| u.resource_uuid == uuid_from("ghost"))
        .map(|u| (u.component_type, u.amount))
        .collect();
    assert_eq!(ghost.len(), 2, "{ghost:?}");
    assert!(ghost.iter().all(|(_, amount)| amount == "0.00"), "{ghost:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn dwdi_failing_for_one_offering_leaves_the_other_reporting() -> Result<()> {
    let world = World::new(2, 2, WaldurOptions::default()).await?;
    // A second offering whose DWDI refuses our client: its token request fails.
    let broken = uuid_from("broken");
    world.waldur.add_offering(&broken, "broken", &["nodeHours"]);
    world.waldur.add_resource(&broken, &uuid_from("b1"), "b1", "", "OK");
    let text = format!(
        "{}  - name: broken\n    waldur_api_url: {:?}\n    waldur_api_token: {TOKEN}\n    waldur_offering_uuid: {broken}\n    backend_type: cscs-dwdi-compute\n    backend_settings:\n{}    backend_components:\n{NODE_AND_CPU}",
        world.config(TOKEN, 1, ""),
        world.waldur.url(),
        dwdi_access(&world.dwdi, &world.options).replace(&world.options.client_secret, "wrong-secret"),
    );
    let targets = report_targets(&text).await?;
    let good = cycle_at(&targets[0], &text, MID_MARCH).await?;
    let bad = cycle_at(&targets[1], &text, MID_MARCH).await?;
    assert_eq!((good.submitted, good.failed), (2, 0));
    assert_eq!((bad.submitted, bad.failed), (0, 1), "{bad:?}");
    assert!(bad.errors[0].contains("invalid_client"), "{:?}", bad.errors);
    assert!(!world.waldur.usages().iter().any(|u| u.resource_uuid == uuid_from("b1")), "nothing from a failed answer");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn waldur_rejecting_one_resource_does_not_stop_the_others() -> Result<()> {
    let world = World::new(4, 2, WaldurOptions::default()).await?;
    let accounts = world.data.accounts();
    world.waldur.reject_resource(&uuid_from(&accounts[1]), 400, serde_json::json!({"detail": "locked for audit"}));
    let text = world.config(TOKEN, 1, "");
    let summary = cycle_at(&report_targets(&text).await?[0], &text, MID_MARCH).await?;
    assert_eq!((summary.submitted, summary.failed), (3, 1), "{summary:?}");
    assert!(
        summary.errors.iter().any(|e| e.contains(&accounts[1]) && e.contains("locked for audit")),
        "{:?}",
        summary.errors
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn two_reporting_periods_fill_the_previous_month_with_a_staff_token() -> Result<()> {
    let world = World::new(2, 2, WaldurOptions::default()).await?;
    let text = world.config(STAFF, 2, "");
    let summary = cycle_at(&report_targets(&text).await?[0], &text, MID_MARCH).await?;
    assert_eq!((summary.submitted, summary.failed), (4, 0), "{summary:?}");
    let stored = world.stored();
    let account = &world.data.accounts()[0];
    let feb = world.data.compute_usage(account, None, "2024-02-01", "2024-02-29");
    assert_eq!(stored.get(&(account.clone(), "2024-02-01".into(), "nodeHours".into())), Some(&cents(feb.node_hours)));
    assert_eq!(world.dwdi.stats().api_count("/compute/usage-month/account"), 2, "one call per month");

    // A provider token cannot back-fill February: its resources fail, with one error
    // for the offering, every cycle (a later one asks again: the token may have
    // changed its rights); March is written.
    let text = world.config(TOKEN, 2, "");
    world.dwdi.set_data(DwdiData::generated(2, 3, &[(2024, 2), (2024, 3)]));
    let targets = report_targets(&text).await?;
    let february = |stored: &BTreeMap<(String, String, String), String>| {
        stored
            .iter()
            .filter(|((_, p, _), _)| p == "2024-02-01")
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect::<Vec<_>>()
    };
    let staff_wrote = february(&world.stored());
    for cycle in 0..2 {
        world.waldur.reset_counters();
        let summary = cycle_at(&targets[0], &text, MID_MARCH).await?;
        assert_eq!((summary.failed, summary.months), (2, 2), "cycle {cycle}: {summary:?}");
        let refused: Vec<&String> = summary.errors.iter().filter(|e| e.contains("refuses to back-fill")).collect();
        assert_eq!((refused.len(), summary.errors.len()), (1, 1), "cycle {cycle}: {:?}", summary.errors);
        assert!(refused[0].contains("the next run asks again") && refused[0].contains("staff token"), "{}", refused[0]);
        assert_eq!(summary.held, ["Waldur refuses past-month writes with this token"], "cycle {cycle}");
        assert_eq!(summary.submitted + summary.unchanged, 2, "cycle {cycle}: March is written: {summary:?}");
        assert_eq!(february(&world.stored()), staff_wrote, "cycle {cycle}: February is as the staff token left it");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_zone_east_of_utc_writes_the_new_month_once_it_is_twelve_hours_old() -> Result<()> {
    // Waldur runs in UTC+1 too; it is already March 1st there.
    let world = World::new(2, 2, WaldurOptions { utc_offset_minutes: 60, ..WaldurOptions::default() }).await?;
    world.waldur.set_today(2024, 3, 1);
    let text = world.config(TOKEN, 1, "").replace("timezone: UTC", "timezone: Europe/Zurich");
    let target = &report_targets(&text).await?[0];
    // 00:30 in Zurich: a Waldur in UTC would still file a write under February.
    let summary = cycle_at(target, &text, "2024-02-29T23:30:00Z").await?;
    assert_eq!((summary.failed, summary.skipped, summary.submitted), (0, 2, 0), "{summary:?}");
    assert!(world.waldur.usages().is_empty());
    // 12:30 in Zurich: written, under March.
    let summary = cycle_at(target, &text, "2024-03-01T11:30:00Z").await?;
    assert_eq!((summary.failed, summary.submitted), (0, 2), "{summary:?}");
    let periods: Vec<String> = world.waldur.usages().into_iter().map(|u| u.billing_period).collect();
    assert!(!periods.is_empty() && periods.iter().all(|p| p == "2024-03-01"), "{periods:?}");
    assert!(world.dwdi.stats().recent_urls().iter().any(|u| u.contains("from=2024-03&to=2024-03")));
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn components_the_offering_lacks_are_not_submitted() -> Result<()> {
    let world = World::new(2, 2, WaldurOptions::default()).await?;
    let offering = uuid_from("node only");
    world.waldur.add_offering(&offering, "node only", &["nodeHours"]);
    world.waldur.add_resource(&offering, &uuid_from("n1"), &world.data.accounts()[0], "", "OK");
    let text = world.config(TOKEN, 1, "").replace(&world.offering, &offering);
    let summary = cycle_at(&report_targets(&text).await?[0], &text, MID_MARCH).await?;
    assert_eq!((summary.submitted, summary.failed), (1, 0), "{summary:?}");
    let types: Vec<String> = world.waldur.usages().into_iter().map(|u| u.component_type).collect();
    assert_eq!(types, vec!["nodeHours".to_owned()]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn listings_follow_pagination_and_users_link_to_offering_users() -> Result<()> {
    let world = World::new(330, 1, WaldurOptions::default()).await?;
    let linked = world.waldur.add_offering_user(&world.offering, "user_0000");
    let text = world.config(TOKEN, 1, "");
    let summary = cycle_at(&report_targets(&text).await?[0], &text, MID_MARCH).await?;
    assert_eq!((summary.resources, summary.submitted, summary.failed), (330, 330, 0), "{summary:?}");
    let counts = world.waldur.requests();
    assert_eq!(
        counts.route("GET /api/marketplace-provider-resources/"),
        2,
        "330 resources in pages of 300, Waldur's largest: {counts:?}"
    );
    let users = world.waldur.user_usages();
    assert!(users.iter().filter(|u| u.username == "user_0000").all(|u| u.user.as_deref() == Some(linked.as_str())));
    assert!(users.iter().filter(|u| u.username != "user_0000").all(|u| u.user.is_none()));
    // 330 accounts do not fit in one URL: the component split them.
    assert!(world.dwdi.stats().api_count("/compute/usage-month/account") >= 2);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn report_once_from_the_command_line() -> Result<()> {
    let world = World::new(2, 2, WaldurOptions::default()).await?;
    world.waldur.use_wall_clock();
    let now = jiff::Timestamp::now();
    let month = usage_agent::period::Month::containing(now, &jiff::tz::TimeZone::UTC);
    world.dwdi.set_data(DwdiData::generated(2, 2, &[(i32::from(month.year), month.month as u32)]));
    let config = e2e::ConfigFile::new(&world.config(TOKEN, 1, ""))?;
    let out = e2e::run_cli(&["report", "--config-file", config.arg(), "--once"]).await?;
    // In the first 12 hours of a month nothing is written yet (see sync::dates).
    let expected = match usage_agent::sync::dates::current_month(month, now, &jiff::tz::TimeZone::UTC) {
        usage_agent::sync::dates::CurrentDate::TooEarly => {
            "2 resources × 1 months: 0 written, 0 unchanged, 0 absent, 2 skipped"
        }
        _ => "2 resources × 1 months: 2 written, 0 unchanged",
    };
    assert!(out.contains(expected), "{out}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn waldur_7_gets_the_current_month_only_and_users_one_at_a_time() -> Result<()> {
    let world = World::new(3, 2, WaldurOptions { version: WaldurVersion::V7, ..WaldurOptions::default() }).await?;
    let linked = world.waldur.add_offering_user(&world.offering, "user_0000");
    let text = world.config(STAFF, 2, "");
    let target = &report_targets(&text).await?[0];
    let summary = cycle_at(target, &text, MID_MARCH).await?;
    assert!(!summary.has_failures(), "{summary:?}");
    // February cannot be dated on this Waldur: left out, not written into March.
    assert_eq!((summary.submitted, summary.skipped), (3, 3), "{summary:?}");
    let stored = world.stored();
    assert!(stored.keys().all(|(_, period, _)| period == "2024-03-01"), "{stored:?}");
    for account in world.data.accounts() {
        let march = world.data.compute_usage(&account, None, "2024-03-01", "2024-03-31");
        assert_eq!(
            stored.get(&(account.clone(), "2024-03-01".into(), "nodeHours".into())),
            Some(&cents(march.node_hours))
        );
    }
    // The bulk endpoint answered 404 once; then one set_user_usage per user and component.
    let counts = world.waldur.requests();
    assert_eq!(counts.set_user_usages, 1, "{counts:?}");
    assert_eq!(counts.set_user_usage, 3 * 2 * 2, "{counts:?}");
    let users = world.waldur.user_usages();
    assert_eq!(users.len(), 12);
    assert!(
        users.iter().all(|u| (u.username == "user_0000") == (u.user.as_deref() == Some(linked.as_str()))),
        "{users:?}"
    );
    // A second cycle writes nothing at all, the question included.
    world.waldur.reset_counters();
    let again = cycle_at(target, &text, MID_MARCH).await?;
    assert!(!again.has_failures(), "{again:?}");
    assert_eq!(world.waldur.requests().writes, 0, "{:?}", world.waldur.requests());
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn after_a_misfiled_write_every_cycle_fails_until_waldur_files_it_right() -> Result<()> {
    // Waldur 25 hours behind the agent: February's date falls in January there.
    let world = World::new(2, 1, WaldurOptions { utc_offset_minutes: -11 * 60, ..WaldurOptions::default() }).await?;
    let text = world.config(STAFF, 2, "").replace("timezone: UTC", "timezone: Pacific/Kiritimati");
    let target = &report_targets(&text).await?[0];
    let first = cycle_at(target, &text, MID_MARCH).await?;
    assert!(first.has_failures(), "{first:?}");
    assert!(first.errors.iter().any(|e| e.contains("not under billing period 2024-02-01")), "{:?}", first.errors);
    let misfiled = world.stored();
    // Every later cycle: the same error, February's resources failed, and nothing in
    // Waldur changed: the one write is the value written again with the same date,
    // which lands where it lies already.
    for cycle in 0..2 {
        world.waldur.reset_counters();
        let again = cycle_at(target, &text, MID_MARCH).await?;
        assert_eq!(world.waldur.requests().set_usage, 1, "cycle {cycle}: {again:?}");
        assert_eq!(again.failed, 2, "cycle {cycle}: {again:?}");
        let held: Vec<&String> = again.errors.iter().filter(|e| e.contains("past-month writes are held")).collect();
        assert_eq!(held.len(), 1, "cycle {cycle}: {:?}", again.errors);
        assert!(held[0].contains("is under 2024-01-01"), "{}", held[0]);
        assert_eq!(again.held.len(), 1, "cycle {cycle}: {again:?}");
        assert_eq!(world.stored(), misfiled, "cycle {cycle}");
    }
    // Waldur's operator moves it to the agent's zone: the next cycle sees the value
    // land where it belongs, and February is written and read back.
    world.waldur.set_utc_offset_minutes(14 * 60);
    let fixed = cycle_at(target, &text, MID_MARCH).await?;
    assert!(!fixed.has_failures(), "{fixed}: {:?}", fixed.errors);
    assert!(fixed.held.is_empty(), "{fixed:?}");
    let stored = world.stored();
    for account in world.data.accounts() {
        let feb = world.data.compute_usage(&account, None, "2024-02-01", "2024-02-29");
        let held = stored.get(&(account.clone(), "2024-02-01".into(), "nodeHours".into()));
        assert!(holds(held, feb.node_hours), "{account}: {held:?}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hold_on_past_months_ends_when_its_evidence_is_deleted() -> Result<()> {
    // Waldur 25 hours behind the agent: February's writes land in January.
    let world = World::new(2, 1, WaldurOptions { utc_offset_minutes: -11 * 60, ..WaldurOptions::default() }).await?;
    let text = world.config(STAFF, 2, "").replace("timezone: UTC", "timezone: Pacific/Kiritimati");
    let target = &report_targets(&text).await?[0];
    let first = cycle_at(target, &text, MID_MARCH).await?;
    assert_eq!(first.held.len(), 1, "{first:?}");
    // The operator deletes the misfiled usages and moves Waldur to the agent's zone.
    world.waldur.delete_usages();
    world.waldur.set_utc_offset_minutes(14 * 60);
    let again = cycle_at(target, &text, MID_MARCH).await?;
    assert!(!again.has_failures() && again.held.is_empty(), "{again}: {:?}", again.errors);
    assert_eq!((again.submitted, again.months), (4, 2), "{again}");
    let periods: std::collections::BTreeSet<String> =
        world.waldur.usages().into_iter().map(|u| u.billing_period).collect();
    assert_eq!(periods.into_iter().collect::<Vec<_>>(), ["2024-02-01", "2024-03-01"]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn after_waldur_s_usages_are_deleted_the_next_cycle_writes_them_all_again() -> Result<()> {
    let world = World::new(20, 2, WaldurOptions::default()).await?;
    let text = world.config(STAFF, 2, "");
    let target = &report_targets(&text).await?[0];
    let first = cycle_running(target, &text).await?;
    assert!(!first.has_failures(), "{first}: {:?}", first.errors);
    assert_holds_everything(&world)?;
    world.waldur.delete_usages();
    let again = cycle_running(target, &text).await?;
    assert!(!again.has_failures(), "{again}: {:?}", again.errors);
    assert_eq!((again.submitted, again.months), (40, 2), "{again}");
    assert_holds_everything(&world)?;
    Ok(())
}

/// Whether Waldur's `held` is `value` rounded to cents (either way at a half cent: DWDI's
/// days summed in another order differ in the last bits).
fn holds(held: Option<&String>, value: f64) -> bool {
    held.and_then(|h| h.parse::<f64>().ok()).is_some_and(|h| (h - value).abs() <= 0.005 + 1e-6)
}

/// Fails unless Waldur holds what DWDI says for every account, in February and March
/// (node and CPU hours, and every user's node hours).
fn assert_holds_everything(world: &World) -> Result<()> {
    let stored = world.stored();
    let users: BTreeMap<(String, String, String), String> = world
        .waldur
        .user_usages()
        .into_iter()
        .filter(|u| u.component_type == "nodeHours")
        .map(|u| ((u.resource_uuid, u.billing_period, u.username), u.usage))
        .collect();
    for account in world.data.accounts() {
        for (period, last) in [("2024-02-01", "2024-02-29"), ("2024-03-01", "2024-03-31")] {
            let expected = world.data.compute_usage(&account, None, period, last);
            let key = |t: &str| (account.clone(), period.to_owned(), t.to_owned());
            for (component, value) in [("nodeHours", expected.node_hours), ("cpuHours", expected.cpu_hours)] {
                let held = stored.get(&key(component));
                anyhow::ensure!(
                    holds(held, value),
                    "{account} {period} {component}: Waldur holds {held:?}, DWDI says {value}"
                );
            }
            for (user, (node, _, _)) in &expected.users {
                let held = users.get(&(uuid_from(&account), period.to_owned(), user.clone()));
                anyhow::ensure!(holds(held, *node), "{account} {period} {user}: Waldur holds {held:?}");
            }
        }
    }
    Ok(())
}

/// A clock that starts at `start` and runs: every write of the current month carries
/// another `date`, which moves its row in Waldur's listing order, as on a real server.
struct Running(std::time::Instant, jiff::Timestamp);

impl usage_agent::report::Clock for Running {
    fn now(&self) -> jiff::Timestamp {
        self.1 + jiff::SignedDuration::try_from(self.0.elapsed()).unwrap_or_default()
    }
}

/// One cycle of `target` on a running clock that starts mid-March.
async fn cycle_running(target: &usage_agent::report::ReportTarget, text: &str) -> Result<OfferingSummary> {
    use usage_agent::report::{CycleOptions, StopFlag, report_offering};
    let options = CycleOptions::from_config(&usage_agent::config::AgentConfig::parse(text)?)?;
    let clock = Running(std::time::Instant::now(), MID_MARCH.parse()?);
    Ok(report_offering(target, &options, &clock, &StopFlag::default()).await)
}

#[tokio::test(flavor = "multi_thread")]
async fn two_agents_at_once_on_the_same_offering_both_succeed() -> Result<()> {
    // Two agents on other hosts (no shared lock), no latency: each one's writes reorder
    // the listings the other reads back. Repeated, since the interleaving varies.
    for round in 0..3 {
        // Pages of 50, so a read-back spans many pages for the writes to reorder.
        let world = World::new(400, 2, WaldurOptions { max_page_size: 50, ..WaldurOptions::default() }).await?;
        let text = world.config(STAFF, 2, "");
        let (one, two) = (report_targets(&text).await?, report_targets(&text).await?);
        let (first, second) = tokio::join!(cycle_running(&one[0], &text), cycle_running(&two[0], &text));
        let (first, second) = (first?, second?);
        for summary in [&first, &second] {
            assert!(!summary.has_failures(), "round {round}: {summary}: {:?}", summary.errors);
            assert_eq!(summary.months, 2, "round {round}: {summary}");
        }
        assert_holds_everything(&world)?;
        // And a later cycle of each finds everything in place.
        for targets in [&one, &two] {
            let again = cycle_running(&targets[0], &text).await?;
            assert_eq!((again.unchanged, again.failed), (800, 0), "round {round}: {again}: {:?}", again.errors);
        }
    }
    Ok(())
}
