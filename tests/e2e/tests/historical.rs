//! `load-historical-usage` end to end: the real command and components against the DWDI
//! and Waldur simulators.

use std::collections::BTreeMap;

use anyhow::{Context as _, Result};
use dwdi_sim::{DwdiData, DwdiSim};
use e2e::{ComputeSims, ConfigFile, NODE_AND_CPU, cents, dwdi_access, run_cli};
use usage_agent::backends::Backends;
use usage_agent::config::{AgentConfig, Secret};
use usage_agent::historical::{self, HistoricalOptions, HistoricalSummary, Observer};
use usage_agent::period::Month;
use usage_agent::report::StopFlag;
use usage_agent::runtime::Runtime;
use waldur_sim::{WaldurOptions, WaldurSim, WaldurVersion, uuid_from};

const PROVIDER: &str = "provider-token";
const STAFF: &str = "staff-token";
const MONTHS: [(i32, u32); 3] = [(2024, 1), (2024, 2), (2024, 3)];

/// The DWDI and Waldur simulators and a compute offering wired together. Waldur's
/// "today" is mid-December 2024, so January to March are past months.
struct World {
    dwdi: DwdiSim,
    waldur: WaldurSim,
    data: DwdiData,
    offering: String,
    config: ConfigFile,
}

impl World {
    async fn new(accounts: usize, users: usize) -> Result<Self> {
        Self::with_settings(accounts, users, "").await
    }

    /// `settings`: extra `backend_settings` lines (6-space indent).
    async fn with_settings(accounts: usize, users: usize, settings: &str) -> Result<Self> {
        Self::with_waldur(accounts, users, settings, WaldurOptions::default()).await
    }

    async fn with_waldur(accounts: usize, users: usize, settings: &str, waldur: WaldurOptions) -> Result<Self> {
        let data = DwdiData::generated(accounts, users, &MONTHS);
        // The cluster Waldur knows ("alps") is not used for past months: the seed's
        // loader filters by `cscs_dwdi_cluster` only.
        let ComputeSims { dwdi, options, waldur, offering } =
            ComputeSims::start(&data, waldur, "compute", PROVIDER, "alps").await?;
        waldur.add_token(STAFF, "admin", true);
        waldur.set_today(2024, 12, 15);
        let text = format!(
            "timezone: UTC\nofferings:\n  - name: compute\n    waldur_api_url: {:?}\n    waldur_api_token: {PROVIDER}\n    waldur_offering_uuid: {offering}\n    backend_type: cscs-dwdi-compute\n    backend_settings:\n{}{settings}    backend_components:\n{NODE_AND_CPU}",
            waldur.url(),
            dwdi_access(&dwdi, &options)
        );
        let config = ConfigFile::new(&text)?;
        Ok(Self { dwdi, waldur, data, offering, config })
    }

    /// Runs `load-historical-usage` with the staff token and `args`.
    async fn load(&self, args: &[&str]) -> Result<String> {
        let mut argv =
            vec!["load-historical-usage", "-c", self.config.arg(), "-o", &self.offering, "--user-token", STAFF];
        argv.extend_from_slice(args);
        run_cli(&argv).await
    }

    fn backend_id(&self, resource_uuid: &str) -> String {
        let extra = ["ghost".to_owned(), "empty".to_owned()];
        self.data
            .accounts()
            .into_iter()
            .chain(extra)
            .find(|a| uuid_from(a) == resource_uuid)
            .unwrap_or_else(|| resource_uuid.to_owned())
    }

    /// Stored totals: (backend id, period, type) → amount.
    fn stored(&self) -> BTreeMap<(String, String, String), String> {
        self.waldur
            .usages()
            .into_iter()
            .map(|u| ((self.backend_id(&u.resource_uuid), u.billing_period, u.component_type), u.amount))
            .collect()
    }

    /// Stored per-user usage: (backend id, period, type, username) → usage.
    fn stored_users(&self) -> BTreeMap<(String, String, String, String), String> {
        self.waldur
            .user_usages()
            .into_iter()
            .map(|u| ((self.backend_id(&u.resource_uuid), u.billing_period, u.component_type, u.username), u.usage))
            .collect()
    }

    /// What DWDI says for `account` in a month: totals and per-user, as Waldur stores them.
    fn expected(
        &self,
        account: &str,
        cluster: Option<&str>,
        (year, month): (i32, u32),
    ) -> (String, String, BTreeMap<String, (String, String)>) {
        let (first, last) = month_days(year, month);
        let usage = self.data.compute_usage(account, cluster, &first, &last);
        let users = usage.users.iter().map(|(u, (node, cpu, _))| (u.clone(), (cents(*node), cents(*cpu)))).collect();
        (cents(usage.node_hours), cents(usage.cpu_hours), users)
    }

    /// Asserts that Waldur holds exactly what DWDI says for every account and month,
    /// per user too when `users`.
    fn assert_loaded(&self, cluster: Option<&str>, users: bool) {
        let stored = self.stored();
        let stored_users = self.stored_users();
        for account in self.data.accounts() {
            for month in MONTHS {
                let period = format!("{:04}-{:02}-01", month.0, month.1);
                let (node, cpu, per_user) = self.expected(&account, cluster, month);
                let key = |t: &str| (account.clone(), period.clone(), t.to_owned());
                assert_eq!(stored.get(&key("nodeHours")), Some(&node), "{account} {period}");
                assert_eq!(stored.get(&key("cpuHours")), Some(&cpu), "{account} {period}");
                if users {
                    for (user, (node, cpu)) in per_user {
                        let key = |t: &str| (account.clone(), period.clone(), t.to_owned(), user.clone());
                        assert_eq!(stored_users.get(&key("nodeHours")), Some(&node), "{account} {period} {user}");
                        assert_eq!(stored_users.get(&key("cpuHours")), Some(&cpu), "{account} {period} {user}");
                    }
                }
            }
        }
        if !users {
            assert!(stored_users.is_empty(), "{stored_users:?}");
        }
    }

    /// The same run through the library API, to read the summary of a failing run.
    async fn load_with(
        &self,
        token: &str,
        options: HistoricalOptions,
        stop: &StopFlag,
        observer: &dyn Observer,
    ) -> Result<HistoricalSummary> {
        let config = AgentConfig::load(&self.config.path)?;
        let target =
            historical::prepare(&config, &self.offering, Some(Secret::new(token)), &Backends::new(Runtime::new()?))
                .await?;
        historical::load(&target, &options, stop, observer).await
    }
}

fn month_days(year: i32, month: u32) -> (String, String) {
    let last = match month {
        2 if year % 4 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    };
    (format!("{year:04}-{month:02}-01"), format!("{year:04}-{month:02}-{last}"))
}

fn options() -> Result<HistoricalOptions> {
    Ok(HistoricalOptions {
        months: MONTHS.iter().map(|&(y, m)| Month::new(y as i16, m as i8)).collect::<Result<_>>()?,
        user_usage: true,
        dry_run: false,
        reconcile_stale: false,
        resources: Vec::new(),
        concurrency: 4,
        time_zone: jiff::tz::TimeZone::UTC,
    })
}

const Q1: [&str; 4] = ["-s", "2024-01-10", "-e", "2024-03-05"];

#[tokio::test(flavor = "multi_thread")]
async fn three_months_with_user_usage() -> Result<()> {
    let world = World::new(4, 3).await?;
    let linked = world.waldur.add_offering_user(&world.offering, "user_0000");
    let out = world.load(&Q1).await?;
    assert!(out.contains("compute 2024-01..2024-03: 4 resources × 3 months: 12 written,"), "{out}");
    assert!(out.contains("Waldur writes: 12 set_usage, 24 per-user"), "{out}");
    let users = world.waldur.user_usages();
    assert!(users.iter().any(|u| u.username == "user_0000"));
    assert!(
        users.iter().all(|u| (u.username == "user_0000") == (u.user.as_deref() == Some(linked.as_str()))),
        "linked to the offering user"
    );
    assert!(out.contains(" 0 failed;"), "{out}");
    world.assert_loaded(None, true);
    // Dated the first day of each month at noon, so a Waldur in another zone files them alike.
    for usage in world.waldur.usages() {
        assert_eq!(usage.date, format!("{}T12:00:00Z", usage.billing_period), "{usage:?}");
    }
    // One component call per month, no cluster filter (no cscs_dwdi_cluster set).
    assert_eq!(world.dwdi.stats().api_count("/compute/usage-month/account"), 3);
    assert!(world.dwdi.stats().recent_urls().iter().all(|u| !u.contains("cluster=")));
    let counts = world.waldur.requests();
    // One set_usage per resource and month (and the one question whether Waldur honours
    // `date`), one bulk per-user write per component usage.
    assert_eq!((counts.set_usage, counts.set_user_usages, counts.set_user_usage), (13, 24, 0), "{counts:?}");
    // Two listings a month (what is held, then the read-back, which also has the new
    // usages' UUIDs), none per user; nothing held before, so the only per-user listings
    // are the read-backs, one per component and month.
    assert_eq!(counts.route("GET /api/marketplace-component-usages/"), 6, "{counts:?}");
    assert_eq!(counts.route("GET /api/marketplace-component-user-usages/"), 6, "{counts:?}");
    assert_eq!(counts.route("GET /api/marketplace-offering-users/"), 1, "{counts:?}");
    assert_eq!(counts.route("GET /api/users/me/"), 1, "{counts:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn three_months_totals_only() -> Result<()> {
    let world = World::new(4, 3).await?;
    let out = world.load(&[&Q1[..], &["--skip-user-usage"]].concat()).await?;
    assert!(out.contains("Waldur writes: 12 set_usage, 0 per-user (0 user values)"), "{out}");
    world.assert_loaded(None, false);
    let counts = world.waldur.requests();
    // 12 writes and the question whether Waldur honours `date`.
    assert_eq!((counts.set_usage, counts.set_user_usages, counts.set_user_usage), (13, 0, 0), "{counts:?}");
    // As the seed says: not even the offering users are listed.
    assert_eq!(counts.route("GET /api/marketplace-offering-users/"), 0, "{counts:?}");
    // What is held, then the read-back of what was written, each month.
    assert_eq!(counts.route("GET /api/marketplace-component-usages/"), 6, "{counts:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dry_run_prints_and_submits_nothing() -> Result<()> {
    let world = World::new(3, 2).await?;
    let out = world.load(&[&Q1[..], &["--dry-run"]].concat()).await?;
    // The one POST is the question whether Waldur honours `date`, which no Waldur accepts.
    assert_eq!(world.waldur.requests().writes, 1);
    assert!(world.waldur.usages().is_empty() && world.waldur.user_usages().is_empty());
    let account = &world.data.accounts()[1];
    let (node, cpu, users) = world.expected(account, None, (2024, 2));
    assert!(out.contains(&format!("2024-02 {account} totals nodeHours={node} cpuHours={cpu}\n")), "{out}");
    let (user, (user_node, _)) = users.iter().next().ok_or_else(|| anyhow::anyhow!("no users"))?;
    assert!(
        out.contains(&format!("2024-02 {account} users nodeHours")) && out.contains(&format!(" {user}={user_node}")),
        "{out}"
    );
    assert!(
        out.contains("dry run, nothing submitted: compute 2024-01..2024-03: 3 resources × 3 months: 9 to write"),
        "{out}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_run_over_the_same_range_submits_nothing() -> Result<()> {
    let world = World::new(4, 3).await?;
    world.load(&Q1).await?;
    let before = (world.stored(), world.stored_users());
    world.waldur.reset_counters();
    let out = world.load(&Q1).await?;
    assert_eq!(world.waldur.requests().writes, 0, "{:?}", world.waldur.requests());
    assert!(out.contains("0 written, 12 unchanged") && out.contains("Waldur writes: 0 set_usage, 0 per-user"), "{out}");
    assert_eq!(before, (world.stored(), world.stored_users()));
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn reconcile_zeroes_stale_values_and_nothing_else() -> Result<()> {
    let world = World::new(3, 2).await?;
    world.load(&Q1).await?;
    // Stale data: a resource DWDI does not know, with January usage, one user of it, and
    // a user of a real account DWDI does not mention; and a resource DWDI does not know
    // with nothing stored.
    let ghost = uuid_from("ghost");
    world.waldur.add_resource(&world.offering, &ghost, "ghost", "", "OK");
    world.waldur.add_resource(&world.offering, &uuid_from("empty"), "empty", "", "OK");
    let ghost_node = world.waldur.seed_usage(&ghost, "nodeHours", "7.50", "2024-01-01");
    world.waldur.seed_user_usage(&ghost_node, "someone", "7.50");
    let account = world.data.accounts()[0].clone();
    let held = world
        .waldur
        .usages()
        .into_iter()
        .find(|u| {
            u.resource_uuid == uuid_from(&account) && u.billing_period == "2024-02-01" && u.component_type == "cpuHours"
        })
        .ok_or_else(|| anyhow::anyhow!("no February usage of {account}"))?;
    world.waldur.seed_user_usage(&held.uuid, "departed", "3.00");

    // Without --reconcile-stale, stale values stay and nothing is written.
    world.waldur.reset_counters();
    let out = world.load(&Q1).await?;
    assert_eq!(world.waldur.requests().writes, 0, "{out}");
    assert!(out.contains(" 6 absent,"), "{out}");

    let before = (world.stored(), world.stored_users());
    world.waldur.reset_counters();
    let out = world.load(&[&Q1[..], &["--reconcile-stale"]].concat()).await?;
    let (totals, users) = (world.stored(), world.stored_users());
    let mut expected_totals = before.0.clone();
    expected_totals.insert(("ghost".into(), "2024-01-01".into(), "nodeHours".into()), "0.00".into());
    let mut expected_users = before.1.clone();
    expected_users.insert(("ghost".into(), "2024-01-01".into(), "nodeHours".into(), "someone".into()), "0.00".into());
    expected_users.insert((account.clone(), "2024-02-01".into(), "cpuHours".into(), "departed".into()), "0.00".into());
    assert_eq!(totals, expected_totals, "{out}");
    assert_eq!(users, expected_users, "{out}");
    let counts = world.waldur.requests();
    // One set_usage (ghost, January); two per-user writes (ghost's, and the departed user's).
    assert_eq!((counts.set_usage, counts.set_user_usages), (1, 2), "{out}\n{counts:?}");
    assert!(
        !world.waldur.usages().iter().any(|u| u.resource_uuid == uuid_from("empty")),
        "nothing created for an empty resource"
    );

    // Reconciled once, nothing left to write.
    world.waldur.reset_counters();
    world.load(&[&Q1[..], &["--reconcile-stale"]].concat()).await?;
    assert_eq!(world.waldur.requests().writes, 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn one_resource_filter_loads_only_that_resource() -> Result<()> {
    let world = World::new(4, 2).await?;
    let account = world.data.accounts()[2].clone();
    let out = world.load(&[&Q1[..], &["--resource-backend-id", &account]].concat()).await?;
    assert!(out.contains("1 resources × 3 months: 3 written"), "{out}");
    let stored = world.stored();
    assert_eq!(stored.len(), 6, "{stored:?}");
    assert!(stored.keys().all(|(id, _, _)| id == &account), "{stored:?}");
    assert!(world.stored_users().keys().all(|(id, _, _, _)| id == &account));
    for url in world.dwdi.stats().recent_urls().iter().filter(|u| u.contains("usage-month")) {
        assert!(url.contains(&format!("account={account}")) && url.matches("account=").count() == 1, "{url}");
    }

    // An id no resource has is refused before anything is read from DWDI or written.
    world.waldur.reset_counters();
    world.dwdi.reset_stats();
    let error = world
        .load(&[&Q1[..], &["--resource-backend-id", "nope"]].concat())
        .await
        .map(|_| ())
        .err()
        .map(|e| format!("{e:#}"));
    assert!(error.as_deref().is_some_and(|e| e.contains("--resource-backend-id nope: no resource")), "{error:?}");
    assert_eq!(world.waldur.requests().writes, 0);
    assert_eq!(world.dwdi.stats().api_requests, 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_load_honours_waldur_timeout_seconds() -> Result<()> {
    // Waldur answers after 3 s; the config allows half a second per request.
    let data = DwdiData::generated(1, 1, &MONTHS);
    let slow = WaldurOptions { latency: std::time::Duration::from_secs(3), ..WaldurOptions::default() };
    let sims = ComputeSims::start(&data, slow, "compute", PROVIDER, "").await?;
    let config = ConfigFile::new(&format!(
        "timezone: UTC\nwaldur_timeout_seconds: 0.5\nofferings:\n  - name: compute\n    waldur_api_url: {:?}\n    waldur_api_token: {PROVIDER}\n    waldur_offering_uuid: {}\n    backend_type: cscs-dwdi-compute\n    backend_settings:\n{}    backend_components:\n{NODE_AND_CPU}",
        sims.waldur.url(),
        sims.offering,
        dwdi_access(&sims.dwdi, &sims.options)
    ))?;
    let args = [
        "load-historical-usage",
        "-c",
        config.arg(),
        "-o",
        &sims.offering,
        "--no-staff-check",
        "-s",
        "2024-01-01",
        "-e",
        "2024-01-31",
    ];
    let error = run_cli(&args).await.err().context("the load waited for the slow Waldur")?;
    assert!(format!("{error:#}").contains("no answer within 500ms"), "{error:#}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_ranges_are_refused_before_any_call() -> Result<()> {
    let world = World::new(2, 2).await?;
    for (args, message) in [
        (["-s", "2019-01-01", "-e", "2024-03-31"], "longer than 5 years"),
        (["-s", "2024-03-01", "-e", "2024-01-31"], "--start-date 2024-03-01 is after --end-date 2024-01-31"),
        (["-s", "2029-12-01", "-e", "2030-01-31"], "future month"),
    ] {
        let error = world.load(&args).await.map(|_| ()).err().map(|e| format!("{e:#}"));
        assert!(error.as_deref().is_some_and(|e| e.contains(message)), "{args:?}: {error:?}");
    }
    let error = world.load(&["-s", "2024-02-30", "-e", "2024-03-31"]).await.map(|_| ()).err().map(|e| e.to_string());
    assert!(error.as_deref().is_some_and(|e| e.contains("--start-date")), "{error:?}");
    assert_eq!(world.waldur.requests().total, 0);
    assert_eq!(world.dwdi.stats().token_requests + world.dwdi.stats().api_requests, 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_non_staff_token_is_refused_unless_told_otherwise() -> Result<()> {
    let world = World::new(3, 2).await?;
    let error = run_cli(&[
        "load-historical-usage",
        "-c",
        world.config.arg(),
        "-o",
        &world.offering,
        "-s",
        "2024-01-01",
        "-e",
        "2024-03-31",
    ])
    .await
    .map(|_| ())
    .err()
    .map(|e| format!("{e:#}"));
    assert!(error.as_deref().is_some_and(|e| e.contains("\"provider\", who is not staff")), "{error:?}");
    let counts = world.waldur.requests();
    assert_eq!((counts.total, counts.route("GET /api/users/me/")), (1, 1), "only the staff check: {counts:?}");
    assert_eq!(world.dwdi.stats().api_requests, 0);
    assert!(!error.unwrap_or_default().contains(PROVIDER), "the token is never shown");

    // With --no-staff-check the load runs; Waldur refuses to back-fill, said once per resource.
    world.waldur.reset_counters();
    let summary = world.load_with(PROVIDER, options()?, &StopFlag::default(), &historical::NoObserver).await?;
    assert_eq!((summary.totals_submitted, summary.failed), (0, 9), "{summary}");
    assert_eq!(summary.errors.len(), 3, "{:?}", summary.errors);
    for (error, account) in summary.errors.iter().zip(world.data.accounts()) {
        assert!(
            error.contains(&format!("resource {account}: Waldur refuses to back-fill"))
                && error.contains("use a staff token"),
            "{error}"
        );
    }
    let out = run_cli(&[
        "load-historical-usage",
        "-c",
        world.config.arg(),
        "-o",
        &world.offering,
        "-s",
        "2024-01-01",
        "-e",
        "2024-03-31",
        "--no-staff-check",
    ])
    .await;
    assert!(out.is_err(), "a failed load exits non-zero");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn waldur_refusing_one_resource_does_not_stop_the_month() -> Result<()> {
    let world = World::new(4, 2).await?;
    let accounts = world.data.accounts();
    world.waldur.reject_resource(&uuid_from(&accounts[1]), 400, serde_json::json!({"detail": "locked for audit"}));
    let summary = world.load_with(STAFF, options()?, &StopFlag::default(), &historical::NoObserver).await?;
    assert_eq!((summary.months, summary.totals_submitted, summary.failed), (3, 9, 3), "{summary}");
    assert!(
        summary.errors.iter().all(|e| e.contains(&accounts[1]) && e.contains("locked for audit")),
        "{:?}",
        summary.errors
    );
    let stored = world.stored();
    for account in [&accounts[0], &accounts[2], &accounts[3]] {
        assert_eq!(stored.keys().filter(|(id, _, _)| id == account).count(), 6, "{account}");
    }
    assert!(!stored.keys().any(|(id, _, _)| id == &accounts[1]));
    // The command exits non-zero and still prints its summary first.
    let error = world.load(&Q1).await.map(|_| ()).err().map(|e| format!("{e:#}"));
    assert!(error.as_deref().is_some_and(|e| e.contains("3 resource-month(s) failed")), "{error:?}");
    Ok(())
}

/// Raises the stop flag when the first month is done, as Ctrl-C would.
struct StopAfterFirstMonth(StopFlag);

impl Observer for StopAfterFirstMonth {
    fn month_done(&self, _month: Month) {
        self.0.stop();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stopped_run_keeps_what_it_did_and_a_rerun_finishes_it() -> Result<()> {
    let world = World::new(3, 2).await?;
    let stop = StopFlag::default();
    let summary = world.load_with(STAFF, options()?, &stop, &StopAfterFirstMonth(stop.clone())).await?;
    let unfinished: Vec<String> = summary.unfinished.iter().map(Month::to_string).collect();
    assert_eq!((unfinished, summary.months), (vec!["2024-02".to_owned(), "2024-03".to_owned()], 1), "{summary}");
    assert!(summary.to_string().ends_with("; interrupted: 2024-02, 2024-03 not finished"), "{summary}");
    // January is complete; February, in flight beside it, may hold totals; March nothing.
    let periods: std::collections::BTreeSet<String> = world.stored().into_keys().map(|(_, p, _)| p).collect();
    assert!(periods.contains("2024-01-01") && !periods.contains("2024-03-01"), "{periods:?}");

    world.waldur.reset_counters();
    let out = world.load(&Q1).await?;
    assert!(out.contains(" 0 failed;"), "{out}");
    world.assert_loaded(None, true);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cluster_comes_from_cscs_dwdi_cluster() -> Result<()> {
    let world = World::with_settings(4, 2, "      cscs_dwdi_cluster: eiger\n").await?;
    world.load(&[&Q1[..], &["--skip-user-usage"]].concat()).await?;
    assert!(
        world
            .dwdi
            .stats()
            .recent_urls()
            .iter()
            .filter(|u| u.contains("usage-month"))
            .all(|u| u.contains("cluster=eiger") && !u.contains("alps"))
    );
    // Only even accounts run on eiger; the odd ones are absent, and nothing is written for them.
    let stored = world.stored();
    for (i, account) in world.data.accounts().iter().enumerate() {
        let (node, _, _) = world.expected(account, Some("eiger"), (2024, 2));
        let held = stored.get(&(account.clone(), "2024-02-01".into(), "nodeHours".into()));
        if i % 2 == 0 {
            assert_eq!(held, Some(&node), "{account}");
        } else {
            assert_eq!(held, None, "{account}");
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_offering_without_resources_loads_nothing() -> Result<()> {
    let world = World::new(0, 0).await?;
    let out = world.load(&Q1).await?;
    assert!(out.contains("compute 2024-01..2024-03: 0 resources × 3 months: 0 written"), "{out}");
    assert_eq!(world.dwdi.stats().api_requests, 0);
    assert_eq!(world.waldur.requests().writes, 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn waldur_7_refuses_past_months_before_any_write() -> Result<()> {
    let world =
        World::with_waldur(3, 2, "", WaldurOptions { version: WaldurVersion::V7, ..WaldurOptions::default() }).await?;
    let error = world.load(&Q1).await.map(|_| ()).err().map(|e| format!("{e:#}"));
    assert!(
        error
            .as_deref()
            .is_some_and(|e| e.contains("cannot back-fill past months") && e.contains("nothing was written")),
        "{error:?}"
    );
    // The only POST was the question, which Waldur 7 refuses for the missing resource.
    let counts = world.waldur.requests();
    assert_eq!((counts.writes, counts.set_usage), (1, 1), "{counts:?}");
    assert!(world.waldur.usages().is_empty() && world.waldur.user_usages().is_empty());
    assert_eq!(world.dwdi.stats().api_count("/compute/usage-month/account"), 0, "refused before any component call");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_waldur_in_utc_files_zurich_months_where_they_belong() -> Result<()> {
    let world = World::new(3, 2).await?;
    world.waldur.add_offering_user(&world.offering, "user_0000");
    let zurich = ConfigFile::new(
        &std::fs::read_to_string(&world.config.path)?.replace("timezone: UTC", "timezone: Europe/Zurich"),
    )?;
    let argv = ["load-historical-usage", "-c", zurich.arg(), "-o", &world.offering, "--user-token", STAFF];
    let out = run_cli(&[&argv[..], &Q1[..]].concat()).await?;
    assert!(out.contains(" 0 failed;"), "{out}");
    // Midnight of the 1st in Zurich is the last day of the month before in UTC; noon is not.
    world.assert_loaded(None, true);
    assert!(world.waldur.usages().iter().all(|u| u.date == format!("{}T11:00:00Z", u.billing_period)));
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_value_filed_under_another_month_stops_the_run_with_the_likely_cause() -> Result<()> {
    // 25 hours apart: no date in a month is safe for both, and the read-back must notice.
    let world =
        World::with_waldur(2, 1, "", WaldurOptions { utc_offset_minutes: -11 * 60, ..WaldurOptions::default() })
            .await?;
    let mut options = options()?;
    options.time_zone = jiff::tz::TimeZone::get("Pacific/Kiritimati")?;
    options.user_usage = false;
    let summary = world.load_with(STAFF, options, &StopFlag::default(), &historical::NoObserver).await?;
    assert!(summary.has_failures(), "{summary}");
    let error = summary.errors.iter().find(|e| e.contains("not under billing period")).cloned().unwrap_or_default();
    assert!(error.contains("ignores `date`") && error.contains("Pacific/Kiritimati"), "{:?}", summary.errors);
    // January's writes go to December, February's to January; January and February are
    // in flight together and either may be read back first. Once one is seen, nothing
    // more is written: March (which would land in February) never.
    let periods: std::collections::BTreeSet<String> =
        world.waldur.usages().into_iter().map(|u| u.billing_period).collect();
    assert!(!periods.is_empty() && periods.iter().all(|p| p.as_str() < "2024-02-01"), "{periods:?}");
    Ok(())
}
