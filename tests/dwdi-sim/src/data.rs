//! The usage data a simulator serves, the queries the endpoints run over it, and a
//! deterministic generator of realistic data.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::Serialize;

/// A calendar day. Ordered chronologically, printed as `YYYY-MM-DD`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Day {
    year: i32,
    month: u32,
    day: u32,
}

impl Day {
    const MIN: Day = Day { year: 0, month: 1, day: 1 };

    /// Parses exactly `YYYY-MM-DD` (zero-padded, a real calendar date).
    pub(crate) fn parse(text: &str) -> Option<Day> {
        let (month_part, day_part) = text.rsplit_once('-')?;
        let (year, month) = parse_month(month_part)?;
        let day = parse_digits(day_part, 2)?;
        (1..=days_in_month(year, month)).contains(&day).then_some(Day { year, month, day })
    }

    pub(crate) fn first_of(year: i32, month: u32) -> Day {
        Day { year, month, day: 1 }
    }

    pub(crate) fn last_of(year: i32, month: u32) -> Day {
        Day { year, month, day: days_in_month(year, month) }
    }

    /// Parses a date given to a builder method; a malformed one is a bug in the test.
    fn expect(text: &str, what: &str) -> Day {
        Day::parse(text).unwrap_or_else(|| panic!("dwdi-sim: {what} date {text:?} is not a valid YYYY-MM-DD date"))
    }
}

impl fmt::Display for Day {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}-{:02}", self.year, self.month, self.day)
    }
}

/// Parses exactly `YYYY-MM` (zero-padded, month 01–12).
pub(crate) fn parse_month(text: &str) -> Option<(i32, u32)> {
    let (year_part, month_part) = text.split_once('-')?;
    let year = i32::try_from(parse_digits(year_part, 4)?).ok()?;
    let month = parse_digits(month_part, 2)?;
    (year >= 1 && (1..=12).contains(&month)).then_some((year, month))
}

/// Parses a run of exactly `len` ASCII digits.
fn parse_digits(text: &str, len: usize) -> Option<u32> {
    if text.len() != len || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

fn days_in_month(year: i32, month: u32) -> u32 {
    match month {
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Hours {
    node: f64,
    cpu: f64,
    gpu: f64,
}

/// (account, cluster, day, user): the order answers are built in.
type ComputeKey = (String, String, Day, String);
/// (filesystem, data type, path, day, tenant).
type StorageKey = (String, String, String, Day, Option<String>);
/// (resource id, year, month): a range of months of one resource is one B-tree range.
type InferenceKey = (String, i32, u32);

/// The accounting data a [`crate::DwdiSim`] serves: compute usage per
/// (cluster, account, user, day), storage snapshots per (filesystem, data type, tenant,
/// path, day) and LLM inference costs per (resource, month).
#[derive(Clone, Debug, Default)]
pub struct DwdiData {
    compute: BTreeMap<ComputeKey, Hours>,
    storage: BTreeMap<StorageKey, (u64, u64)>,
    inference: BTreeMap<InferenceKey, f64>,
}

/// One `compute` entry of an answer: one (account, cluster) pair.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ComputeEntry {
    account: String,
    cluster: String,
    total_node_hours: f64,
    total_cpu_hours: f64,
    total_gpu_hours: f64,
    users: Vec<UserRow>,
}

/// One user row: one (user, day) within an entry.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct UserRow {
    username: String,
    node_hours: f64,
    cpu_hours: f64,
    gpu_hours: f64,
}

/// One `storage` row of an answer: one path.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct StorageRow {
    path: String,
    filesystem: String,
    data_type: String,
    space_used: u64,
    inodes_used: u64,
}

/// One `inference` row of an answer: one resource's cost over the months asked for.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct InferenceRow {
    waldur_resource_uuid: String,
    total_cost: f64,
}

/// Compute usage of one account summed over a period, for tests that need the expected
/// value independently of the client under test. See [`DwdiData::compute_usage`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ComputeUsage {
    /// Sum of node hours over all users, clusters and days.
    pub node_hours: f64,
    /// Sum of CPU hours.
    pub cpu_hours: f64,
    /// Sum of GPU hours.
    pub gpu_hours: f64,
    /// Per user: (node hours, CPU hours, GPU hours).
    pub users: BTreeMap<String, (f64, f64, f64)>,
}

/// Clusters used by [`DwdiData::generated`].
pub const GENERATED_CLUSTERS: [&str; 2] = ["alps", "eiger"];
/// Filesystem of the storage snapshots made by [`DwdiData::generated`].
pub const GENERATED_FILESYSTEM: &str = "lustre";
/// Data type of the storage snapshots made by [`DwdiData::generated`].
pub const GENERATED_DATA_TYPE: &str = "projects";
/// Tenant of the storage snapshots made by [`DwdiData::generated`].
pub const GENERATED_TENANT: &str = "cscs";

impl DwdiData {
    /// Empty data: every query answers an empty list.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `node_hours`, `cpu_hours` and `gpu_hours` of `user` in `account` on `cluster` on
    /// day `date` (`YYYY-MM-DD`). Adding twice to the same key accumulates: the answer still
    /// has one row per (user, day).
    ///
    /// # Panics
    /// If `date` is not a valid `YYYY-MM-DD` date.
    #[allow(clippy::too_many_arguments)]
    pub fn add_compute(
        &mut self,
        cluster: &str,
        account: &str,
        user: &str,
        date: &str,
        node_hours: f64,
        cpu_hours: f64,
        gpu_hours: f64,
    ) {
        let day = Day::expect(date, "compute");
        let key = (account.to_owned(), cluster.to_owned(), day, user.to_owned());
        let hours = self.compute.entry(key).or_default();
        hours.node += node_hours;
        hours.cpu += cpu_hours;
        hours.gpu += gpu_hours;
    }

    /// Records a storage snapshot of `path` on `filesystem` / `data_type` (and `tenant`, if
    /// any) taken on `date` (`YYYY-MM-DD`). A second snapshot for the same key replaces the
    /// first: a snapshot is a state, not an increment.
    ///
    /// # Panics
    /// If `date` is not a valid `YYYY-MM-DD` date.
    #[allow(clippy::too_many_arguments)]
    pub fn add_storage(
        &mut self,
        filesystem: &str,
        data_type: &str,
        tenant: Option<&str>,
        path: &str,
        date: &str,
        space_bytes: u64,
        inodes: u64,
    ) {
        let day = Day::expect(date, "storage");
        let key = (filesystem.to_owned(), data_type.to_owned(), path.to_owned(), day, tenant.map(str::to_owned));
        self.storage.insert(key, (space_bytes, inodes));
    }

    /// Adds `cost` to the LLM inference cost of the resource `resource_id` in month
    /// `year`-`month`. Adding twice to the same month accumulates; to show a cost that
    /// went down between two runs, serve new data ([`crate::DwdiSim::set_data`]). The
    /// value is served as given, negative ones included, so a client's checks can be
    /// tested; a non-finite one is served as `null` (what JSON can say).
    ///
    /// # Panics
    /// If the month is not in 1–12 or the year is not positive.
    pub fn add_inference_cost(&mut self, resource_id: &str, year: i32, month: u32, cost: f64) {
        assert!(year >= 1 && (1..=12).contains(&month), "dwdi-sim: inference month {year}-{month} is not valid");
        *self.inference.entry((resource_id.to_owned(), year, month)).or_default() += cost;
    }

    /// Deterministic, realistic data (the same arguments always give the same data):
    ///
    /// - accounts `project_000`, `project_001`, … (`accounts` of them), each with `users`
    ///   users `user_0000`, … — the last user of each account is also the first user of
    ///   the next account (people work in several projects);
    /// - compute usage on `alps` for every account, and also on `eiger` for even-numbered
    ///   accounts, on about 70 % of the (user, day) pairs of every given month, with
    ///   fractional node hours (up to 24), CPU hours = node hours × cores per node (288 on
    ///   alps, 128 on eiger) and GPU hours = 4 × node hours on alps, 0 on eiger;
    /// - one storage snapshot per day of every given month for each account path
    ///   `/store/projects/<account>` on [`GENERATED_FILESYSTEM`] / [`GENERATED_DATA_TYPE`],
    ///   tenant [`GENERATED_TENANT`]; space follows a random walk (it also shrinks some
    ///   days, so the last snapshot of a month is not always its largest);
    /// - one inference resource per account, named by [`generated_inference_resource`]
    ///   (`00000000-0000-4000-8000-000000000000`, …, a UUID as Waldur's are), with a cost
    ///   below 1000 in about 80 % of the given months (none in the others, so a client
    ///   sees resources without a row); costs are multiples of 1/64, so sums are exact.
    ///
    /// `months` are `(year, month)` pairs.
    ///
    /// # Panics
    /// If a month is not in 1–12.
    pub fn generated(accounts: usize, users: usize, months: &[(i32, u32)]) -> Self {
        let mut months = months.to_vec();
        months.sort_unstable();
        months.dedup();
        for &(year, month) in &months {
            assert!((1..=12).contains(&month) && year >= 1, "dwdi-sim: invalid month {year}-{month}");
        }
        let mut data = Self::new();
        for a in 0..accounts {
            let account = generated_account(a);
            let members: Vec<String> = (0..users)
                .map(|u| {
                    if u == 0 && a > 0 && users > 1 {
                        // Shared with the previous account, whose last user this is.
                        generated_user(a * users - 1)
                    } else {
                        generated_user(a * users + u)
                    }
                })
                .collect();
            let clusters: &[&str] = if a % 2 == 0 { &GENERATED_CLUSTERS } else { &GENERATED_CLUSTERS[..1] };
            for &(year, month) in &months {
                for day in 1..=days_in_month(year, month) {
                    let date = Day { year, month, day }.to_string();
                    for &cluster in clusters {
                        for user in &members {
                            let r = mix(&[&account, cluster, user, &date]);
                            if r % 10 < 3 {
                                continue;
                            }
                            let node = ((r >> 8) % 24_000) as f64 / 1000.0 + 0.001;
                            let (cores, gpus) = if cluster == "alps" { (288.0, 4.0) } else { (128.0, 0.0) };
                            data.add_compute(cluster, &account, user, &date, node, node * cores, node * gpus);
                        }
                    }
                }
            }
            // Storage: a random walk over all given days, in order.
            let path = format!("/store/projects/{account}");
            let mut space: u64 = (1 + mix(&[&account, "base"]) % 500) * 1_000_000_000;
            for &(year, month) in &months {
                for day in 1..=days_in_month(year, month) {
                    let date = Day { year, month, day }.to_string();
                    let r = mix(&[&account, "walk", &date]);
                    // Between -1 % and +3 % a day.
                    let permille = (r % 41) as i64 - 10;
                    let delta = space as i64 / 1000 * permille;
                    space = space.saturating_add_signed(delta).max(1_000_000);
                    let inodes = space / (512 * 1024 + (r >> 16) % (1024 * 1024));
                    data.add_storage(
                        GENERATED_FILESYSTEM,
                        GENERATED_DATA_TYPE,
                        Some(GENERATED_TENANT),
                        &path,
                        &date,
                        space,
                        inodes,
                    );
                }
            }
            let resource = generated_inference_resource(a);
            for &(year, month) in &months {
                let r = mix(&[&resource, "inference", &format!("{year:04}-{month:02}")]);
                if r.is_multiple_of(5) {
                    continue;
                }
                data.add_inference_cost(&resource, year, month, ((r >> 8) % 64_000) as f64 / 64.0);
            }
        }
        data
    }

    /// The distinct accounts that have compute usage, sorted.
    pub fn accounts(&self) -> Vec<String> {
        let set: BTreeSet<&String> = self.compute.keys().map(|k| &k.0).collect();
        set.into_iter().cloned().collect()
    }

    /// The distinct storage paths that have snapshots, sorted.
    pub fn storage_paths(&self) -> Vec<String> {
        let set: BTreeSet<&String> = self.storage.keys().map(|k| &k.2).collect();
        set.into_iter().cloned().collect()
    }

    /// The distinct resources that have inference costs, sorted.
    pub fn inference_resources(&self) -> Vec<String> {
        let set: BTreeSet<&String> = self.inference.keys().map(|k| &k.0).collect();
        set.into_iter().cloned().collect()
    }

    /// The inference cost of `resource_id` summed over the months `from` to `to`
    /// (inclusive, `(year, month)`), as `/inference/resource/cost` answers it; `None` when
    /// it has no cost in those months (the answer then has no row for it).
    pub fn inference_cost(&self, resource_id: &str, from: (i32, u32), to: (i32, u32)) -> Option<f64> {
        self.inference_rows(&[resource_id.to_owned()], from, to).first().map(|row| row.total_cost)
    }

    /// The expected compute usage of `account` from day `from` to day `to` (inclusive,
    /// `YYYY-MM-DD`), on `cluster` only if given, summed over clusters, days and users.
    ///
    /// # Panics
    /// If a date is malformed.
    pub fn compute_usage(&self, account: &str, cluster: Option<&str>, from: &str, to: &str) -> ComputeUsage {
        let (first, last) = (Day::expect(from, "from"), Day::expect(to, "to"));
        let clusters: Vec<String> = cluster.into_iter().map(str::to_owned).collect();
        let mut usage = ComputeUsage::default();
        for entry in self.compute_entries(&[account.to_owned()], &clusters, first, last) {
            for row in entry.users {
                usage.node_hours += row.node_hours;
                usage.cpu_hours += row.cpu_hours;
                usage.gpu_hours += row.gpu_hours;
                let user = usage.users.entry(row.username).or_default();
                user.0 += row.node_hours;
                user.1 += row.cpu_hours;
                user.2 += row.gpu_hours;
            }
        }
        usage
    }

    /// The latest snapshot `(space bytes, inodes)` of `path` between days `from` and `to`
    /// (inclusive), as the storage endpoints pick it.
    ///
    /// # Panics
    /// If a date is malformed.
    pub fn storage_snapshot(
        &self,
        filesystem: &str,
        data_type: &str,
        tenant: Option<&str>,
        path: &str,
        from: &str,
        to: &str,
    ) -> Option<(u64, u64)> {
        let (first, last) = (Day::expect(from, "from"), Day::expect(to, "to"));
        self.storage_rows(filesystem, data_type, tenant, &[path.to_owned()], first, last)
            .first()
            .map(|row| (row.space_used, row.inodes_used))
    }

    /// The compute answer: one entry per (account, cluster) with data between `first` and
    /// `last`, sorted by account then cluster; within it one row per (user, day), by day then
    /// user. `clusters` empty means all clusters.
    pub(crate) fn compute_entries(
        &self,
        accounts: &[String],
        clusters: &[String],
        first: Day,
        last: Day,
    ) -> Vec<ComputeEntry> {
        let accounts: BTreeSet<&String> = accounts.iter().collect();
        let mut entries: Vec<ComputeEntry> = Vec::new();
        for account in accounts {
            let start = (account.clone(), String::new(), Day::MIN, String::new());
            for ((acct, cluster, day, user), hours) in self.compute.range(start..) {
                if acct != account {
                    break;
                }
                if *day < first || *day > last || (!clusters.is_empty() && !clusters.contains(cluster)) {
                    continue;
                }
                let same_entry = entries.last().is_some_and(|e| e.account == *acct && e.cluster == *cluster);
                if !same_entry {
                    entries.push(ComputeEntry {
                        account: acct.clone(),
                        cluster: cluster.clone(),
                        total_node_hours: 0.0,
                        total_cpu_hours: 0.0,
                        total_gpu_hours: 0.0,
                        users: Vec::new(),
                    });
                }
                let Some(entry) = entries.last_mut() else {
                    continue;
                };
                entry.users.push(UserRow {
                    username: user.clone(),
                    node_hours: hours.node,
                    cpu_hours: hours.cpu,
                    gpu_hours: hours.gpu,
                });
            }
        }
        for entry in &mut entries {
            // Rows are already in (day, user) order; totals are the plain sums of the rows.
            entry.total_node_hours = entry.users.iter().map(|r| r.node_hours).sum();
            entry.total_cpu_hours = entry.users.iter().map(|r| r.cpu_hours).sum();
            entry.total_gpu_hours = entry.users.iter().map(|r| r.gpu_hours).sum();
        }
        entries
    }

    /// The storage answer: for each requested path (first occurrence order), the latest
    /// snapshot between `first` and `last` on `filesystem` / `data_type`, of `tenant` if
    /// given (else of any tenant). Paths without one are absent.
    pub(crate) fn storage_rows(
        &self,
        filesystem: &str,
        data_type: &str,
        tenant: Option<&str>,
        paths: &[String],
        first: Day,
        last: Day,
    ) -> Vec<StorageRow> {
        let mut seen = BTreeSet::new();
        let mut rows = Vec::new();
        for path in paths {
            if !seen.insert(path) {
                continue;
            }
            let start = (filesystem.to_owned(), data_type.to_owned(), path.clone(), Day::MIN, None);
            let latest = self
                .storage
                .range(start..)
                .take_while(|((fs, dt, p, _, _), _)| fs == filesystem && dt == data_type && p == path)
                .filter(|((_, _, _, day, t), _)| {
                    *day >= first && *day <= last && (tenant.is_none() || t.as_deref() == tenant)
                })
                .last();
            if let Some((_, &(space_used, inodes_used))) = latest {
                rows.push(StorageRow {
                    path: path.clone(),
                    filesystem: filesystem.to_owned(),
                    data_type: data_type.to_owned(),
                    space_used,
                    inodes_used,
                });
            }
        }
        rows
    }

    /// The inference answer: for each requested resource (first occurrence order) that
    /// has a cost in the months `first` to `last`, one row with the sum of those months.
    pub(crate) fn inference_rows(&self, ids: &[String], first: (i32, u32), last: (i32, u32)) -> Vec<InferenceRow> {
        let mut seen = BTreeSet::new();
        let mut rows = Vec::new();
        for id in ids {
            if !seen.insert(id) {
                continue;
            }
            let range = (id.clone(), first.0, first.1)..=(id.clone(), last.0, last.1);
            let mut costs = self.inference.range(range).map(|(_, cost)| *cost).peekable();
            if costs.peek().is_some() {
                rows.push(InferenceRow { waldur_resource_uuid: id.clone(), total_cost: costs.sum() });
            }
        }
        rows
    }
}

/// The id of the inference resource [`DwdiData::generated`] makes for account `index`.
pub fn generated_inference_resource(index: usize) -> String {
    format!("00000000-0000-4000-8000-{index:012}")
}

fn generated_account(index: usize) -> String {
    format!("project_{index:03}")
}

fn generated_user(index: usize) -> String {
    format!("user_{index:04}")
}

/// A deterministic 64-bit mix of strings (FNV-1a, then a splitmix64 finaliser).
fn mix(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in part.bytes().chain(std::iter::once(0)) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_only_exact_dates() {
        assert_eq!(Day::parse("2024-02-29").map(|d| d.to_string()).as_deref(), Some("2024-02-29"));
        for bad in [
            "2023-02-29",
            "2024-2-01",
            "2024-02-1",
            "24-02-01",
            "2024-13-01",
            "2024-00-10",
            "2024-01-32",
            "",
            "2024-01-01x",
            "+024-01-01",
        ] {
            assert_eq!(Day::parse(bad), None, "{bad}");
        }
        assert_eq!(parse_month("2024-12"), Some((2024, 12)));
        for bad in ["2024-13", "2024-1", "2024", "2024-01-01", "0000-01", "abcd-01"] {
            assert_eq!(parse_month(bad), None, "{bad}");
        }
    }

    #[test]
    fn generated_is_deterministic_and_shares_users() {
        let a = DwdiData::generated(3, 4, &[(2024, 1)]);
        let b = DwdiData::generated(3, 4, &[(2024, 1)]);
        assert_eq!(a.compute, b.compute);
        assert_eq!(a.storage, b.storage);
        assert_eq!(a.inference, b.inference);
        assert_eq!(a.accounts(), ["project_000", "project_001", "project_002"]);
        let first = a.compute_usage("project_000", None, "2024-01-01", "2024-01-31");
        let second = a.compute_usage("project_001", None, "2024-01-01", "2024-01-31");
        assert!(first.users.contains_key("user_0003"));
        assert!(second.users.contains_key("user_0003"));
        assert_eq!(first.users.len(), 4);
    }

    #[test]
    fn generated_inference_has_gaps_and_exact_costs() {
        let months: Vec<(i32, u32)> = (1..=12).map(|m| (2024, m)).collect();
        let data = DwdiData::generated(20, 1, &months);
        let ids = data.inference_resources();
        assert_eq!(ids.len(), 20);
        assert_eq!(ids[3], generated_inference_resource(3));
        assert_eq!(ids[3], "00000000-0000-4000-8000-000000000003");
        let months_with_cost = data.inference.len();
        assert!((150..240).contains(&months_with_cost), "{months_with_cost} of 240");
        for cost in data.inference.values() {
            assert!((0.0..1000.0).contains(cost) && (cost * 64.0).fract() == 0.0, "{cost}");
        }
        let year: f64 = data.inference.iter().filter(|(k, _)| k.0 == ids[0]).map(|(_, c)| c).sum();
        assert_eq!(data.inference_cost(&ids[0], (2024, 1), (2024, 12)), Some(year));
        assert_eq!(data.inference_cost(&ids[0], (2023, 1), (2023, 12)), None);
    }

    #[test]
    fn inference_costs_accumulate_and_ranges_sum_months() {
        let mut data = DwdiData::new();
        data.add_inference_cost("r1", 2024, 1, 10.0);
        data.add_inference_cost("r1", 2024, 1, 2.5);
        data.add_inference_cost("r1", 2024, 3, 1.0);
        data.add_inference_cost("r1", 2025, 1, 100.0);
        data.add_inference_cost("r10", 2024, 2, 7.0);
        assert_eq!(data.inference_cost("r1", (2024, 1), (2024, 1)), Some(12.5));
        assert_eq!(data.inference_cost("r1", (2024, 1), (2024, 12)), Some(13.5));
        assert_eq!(data.inference_cost("r1", (2024, 2), (2024, 2)), None);
        assert_eq!(data.inference_cost("r1", (2024, 2), (2025, 1)), Some(101.0));
        assert_eq!(data.inference_cost("r", (2024, 1), (2025, 12)), None, "ids are exact, not prefixes");
        let rows =
            data.inference_rows(&["r10".into(), "r1".into(), "r10".into(), "none".into()], (2024, 1), (2024, 12));
        let got: Vec<(&str, f64)> = rows.iter().map(|r| (r.waldur_resource_uuid.as_str(), r.total_cost)).collect();
        assert_eq!(got, [("r10", 7.0), ("r1", 13.5)]);
    }

    #[test]
    #[should_panic(expected = "inference month 2024-13")]
    fn inference_builder_refuses_bad_months() {
        DwdiData::new().add_inference_cost("r1", 2024, 13, 1.0);
    }
}
