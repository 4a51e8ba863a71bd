//! DWDI answer rows → per-account (compute), per-path (storage) or per-resource
//! (inference) usage.
//!
//! One engine ([`collect`]) reads every answer; what differs is how a second row for
//! the same key is merged: compute sums, storage keeps the larger snapshot, inference
//! refuses it. Only the fields of configured metrics are read and required; rows for
//! keys the request did not ask for are skipped before anything else in them is
//! checked. Every error names the JSON path of the offending value.

use fnv::FnvHashMap;

use crate::json::{Json, for_each_row};
use crate::metric::Metric;
use crate::model::{BackendError, bad};

/// One value per [`Metric`], indexed by [`Metric::index`].
pub(crate) type Values = [f64; Metric::ALL.len()];

/// Usage found for one account, path or resource of a request.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Usage {
    pub(crate) totals: Values,
    /// Per user, summed over every row of the user; always empty for storage.
    pub(crate) users: FnvHashMap<String, Values>,
}

/// Parses a compute answer for a request that asked for `keys` (accounts). The
/// result has one entry per key, `None` where the answer had no row for it. Rows of
/// one account are summed: DWDI returns one per cluster, and a user may appear in
/// several.
pub(crate) fn compute(body: &[u8], keys: &[String], metrics: &[Metric]) -> Result<Vec<Option<Usage>>, BackendError> {
    collect(body, "compute", "account", keys, |entry, row, at| {
        let usage = entry.get_or_insert_with(Usage::default);
        let totals = values(row, metrics, |m| Some(m.total_field()), at)?;
        let users: &[Json<'_>] = match row.get("users") {
            // An account without a per-user breakdown still has totals.
            None | Some(Json::Null) => &[],
            Some(Json::Array(users)) => users,
            Some(other) => {
                return Err(bad(format!("{}.users: expected an array, found {}", at(), other.kind())));
            }
        };
        add(&mut usage.totals, &totals);
        for (j, user) in users.iter().enumerate() {
            let at = || format!("{}.users[{j}]", at());
            expect_object(user, &at)?;
            let username = text(user, "username", &at)?;
            if username.is_empty() {
                return Err(bad(format!("{}.username: empty", at())));
            }
            let values = values(user, metrics, Metric::user_field, &at)?;
            match usage.users.get_mut(username) {
                Some(sum) => add(sum, &values),
                None => {
                    usage.users.insert(username.to_owned(), values);
                }
            }
        }
        Ok(())
    })
}

/// Parses a storage answer for a request that asked for `keys` (paths). Storage rows
/// are snapshots, so a path listed twice keeps the larger value of each metric rather
/// than a sum.
pub(crate) fn storage(body: &[u8], keys: &[String], metrics: &[Metric]) -> Result<Vec<Option<Usage>>, BackendError> {
    collect(body, "storage", "path", keys, |entry, row, at| {
        let usage = entry.get_or_insert_with(Usage::default);
        let values = values(row, metrics, |m| Some(m.total_field()), at)?;
        for (kept, new) in usage.totals.iter_mut().zip(values) {
            *kept = kept.max(new);
        }
        Ok(())
    })
}

/// Parses an inference answer for a request that asked for `keys` (resource ids, as
/// sent). A cost is a month's total, neither a part to add nor a snapshot to pick
/// from: two rows for one requested id leave no right answer, so they fail the call.
/// A cost lower than last cycle's is fine here; nothing compares cycles.
pub(crate) fn inference(body: &[u8], keys: &[String], metrics: &[Metric]) -> Result<Vec<Option<Usage>>, BackendError> {
    collect(body, "inference", "waldurResourceUuid", keys, |entry, row, at| {
        if entry.is_some() {
            let id = text(row, "waldurResourceUuid", at)?;
            return Err(bad(format!("{}.waldurResourceUuid: a second row for {id:?}", at())));
        }
        let totals = values(row, metrics, |m| Some(m.total_field()), at)?;
        *entry = Some(Usage { totals, users: FnvHashMap::default() });
        Ok(())
    })
}

/// The usage of each of `keys` from the rows of `section`: every row whose `key_field`
/// names one of them is merged into its entry by `merge` (the entry is `None` until a
/// row fills it; the last argument names the row's JSON path); rows for other keys are
/// skipped before anything else in them is checked. An error anywhere fails the whole
/// answer.
fn collect<'a>(
    body: &'a [u8],
    section: &str,
    key_field: &str,
    keys: &[String],
    mut merge: impl FnMut(&mut Option<Usage>, &Json<'a>, &dyn Fn() -> String) -> Result<(), BackendError>,
) -> Result<Vec<Option<Usage>>, BackendError> {
    let lookup = index(keys);
    let mut found: Vec<Option<Usage>> = vec![None; keys.len()];
    for_each_row(body, section, &mut |i, row| {
        let at = || format!("{section}[{i}]");
        expect_object(&row, &at)?;
        let Some(&slot) = lookup.get(text(&row, key_field, &at)?) else {
            return Ok(());
        };
        merge(&mut found[slot], &row, &at)
    })?;
    Ok(found)
}

fn index(keys: &[String]) -> FnvHashMap<&str, usize> {
    keys.iter().enumerate().map(|(i, k)| (k.as_str(), i)).collect()
}

fn add(sum: &mut Values, values: &Values) {
    for (s, v) in sum.iter_mut().zip(values) {
        *s += v;
    }
}

fn expect_object(value: &Json<'_>, at: &dyn Fn() -> String) -> Result<(), BackendError> {
    match value {
        Json::Object(_) => Ok(()),
        other => Err(bad(format!("{}: expected an object, found {}", at(), other.kind()))),
    }
}

fn text<'j>(row: &'j Json<'_>, key: &str, at: &dyn Fn() -> String) -> Result<&'j str, BackendError> {
    match row.get(key) {
        Some(Json::String(s)) => Ok(s),
        Some(other) => Err(bad(format!("{}.{key}: expected a string, found {}", at(), other.kind()))),
        None => Err(bad(format!("{}.{key}: missing", at()))),
    }
}

/// The figures of `metrics` in `object`, each from the field `field` names for it
/// (a metric without one stays zero).
fn values(
    object: &Json<'_>,
    metrics: &[Metric],
    field: impl Fn(Metric) -> Option<&'static str>,
    at: &dyn Fn() -> String,
) -> Result<Values, BackendError> {
    let mut values = [0.0; Metric::ALL.len()];
    for &metric in metrics {
        if let Some(key) = field(metric) {
            values[metric.index()] = number(object, key, metric, at)?;
        }
    }
    Ok(values)
}

/// A usage figure: present, a number, finite, not negative and plausible.
fn number(row: &Json<'_>, key: &str, metric: Metric, at: &dyn Fn() -> String) -> Result<f64, BackendError> {
    let value = match row.get(key) {
        Some(Json::Number(v)) => *v,
        Some(other) => {
            return Err(bad(format!("{}.{key}: expected a number, found {}", at(), other.kind())));
        }
        None => return Err(bad(format!("{}.{key}: missing", at()))),
    };
    if !value.is_finite() {
        Err(bad(format!("{}.{key}: not a finite number", at())))
    } else if value < 0.0 {
        Err(bad(format!("{}.{key}: negative value {value}", at())))
    } else if value > metric.plausible_max() {
        Err(bad(format!("{}.{key}: implausibly large value {value:e} (more than {:e})", at(), metric.plausible_max())))
    } else {
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOURS: [Metric; 2] = [Metric::NodeHours, Metric::CpuHours];

    fn keys(k: &[&str]) -> Vec<String> {
        k.iter().map(|s| (*s).to_owned()).collect()
    }

    fn compute_err(body: &str, metrics: &[Metric]) -> String {
        match compute(body.as_bytes(), &keys(&["A", "B"]), metrics) {
            Err(BackendError::BadResponse(m)) => m,
            other => panic!("expected BadResponse for {body}, got {other:?}"),
        }
    }

    #[test]
    fn compute_rows_are_summed_per_account_and_user() {
        let body = r#"{"compute":[
            {"account":"A","cluster":"alps","totalNodeHours":10.5,"totalCpuHours":100,
             "users":[{"username":"u2","nodeHours":4,"cpuHours":40},
                      {"username":"u1","nodeHours":1.5,"cpuHours":15},
                      {"username":"u2","nodeHours":5,"cpuHours":45}]},
            {"account":"Z","totalNodeHours":"ignored, not asked for"},
            {"account":"A","cluster":"eiger","totalNodeHours":2,"totalCpuHours":20,
             "users":[{"username":"u1","nodeHours":2,"cpuHours":20}]}
        ]}"#;
        let got = compute(body.as_bytes(), &keys(&["A", "B"]), &HOURS).expect("parses");
        let a = got[0].as_ref().expect("A found");
        assert_eq!(a.totals[Metric::NodeHours.index()], 12.5);
        assert_eq!(a.totals[Metric::CpuHours.index()], 120.0);
        assert_eq!(a.users.len(), 2);
        assert_eq!(a.users["u1"][Metric::NodeHours.index()], 3.5);
        assert_eq!(a.users["u1"][Metric::CpuHours.index()], 35.0);
        assert_eq!(a.users["u2"][Metric::NodeHours.index()], 9.0);
        assert_eq!(got[1], None);
    }

    #[test]
    fn only_configured_fields_are_required() {
        let body = r#"{"compute":[{"account":"A","totalNodeHours":3,
            "users":[{"username":"u","nodeHours":3,"cpuHours":"n/a"}]}]}"#;
        let got = compute(body.as_bytes(), &keys(&["A"]), &[Metric::NodeHours]).expect("parses");
        assert_eq!(got[0].as_ref().map(|u| u.totals[0]), Some(3.0));
    }

    #[test]
    fn users_may_be_absent_or_null() {
        for body in [
            r#"{"compute":[{"account":"A","totalNodeHours":3}]}"#,
            r#"{"compute":[{"account":"A","totalNodeHours":3,"users":null}]}"#,
            r#"{"compute":[{"account":"A","totalNodeHours":3,"users":[]}]}"#,
        ] {
            let got = compute(body.as_bytes(), &keys(&["A"]), &[Metric::NodeHours]).expect(body);
            let a = got[0].as_ref().expect("found");
            assert!(a.users.is_empty());
        }
    }

    #[test]
    fn compute_errors_name_the_json_path() {
        let cases = [
            (
                r#"{"compute":[{"account":"A","totalNodeHours":1,"totalCpuHours":1},{"account":"B","totalNodeHours":1,"totalCpuHours":1,"users":[{"username":"u","nodeHours":1,"cpuHours":1},{"username":"v","nodeHours":1}]}]}"#,
                "compute[1].users[1].cpuHours: missing",
            ),
            (r#"{"compute":[{"account":"A","totalNodeHours":1}]}"#, "compute[0].totalCpuHours: missing"),
            (
                r#"{"compute":[{"account":"A","totalNodeHours":"1","totalCpuHours":1}]}"#,
                "compute[0].totalNodeHours: expected a number, found a string",
            ),
            (
                r#"{"compute":[{"account":"A","totalNodeHours":null,"totalCpuHours":1}]}"#,
                "compute[0].totalNodeHours: expected a number, found null",
            ),
            (
                r#"{"compute":[{"account":"A","totalNodeHours":-0.5,"totalCpuHours":1}]}"#,
                "compute[0].totalNodeHours: negative value -0.5",
            ),
            (
                r#"{"compute":[{"account":"A","totalNodeHours":2e15,"totalCpuHours":1}]}"#,
                "compute[0].totalNodeHours: implausibly large value 2e15 (more than 1e15)",
            ),
            (r#"{"compute":[{"totalNodeHours":1}]}"#, "compute[0].account: missing"),
            (r#"{"compute":[{"account":7}]}"#, "compute[0].account: expected a string, found a number"),
            (r#"{"compute":[[]]}"#, "compute[0]: expected an object, found an array"),
            (
                r#"{"compute":[{"account":"A","totalNodeHours":1,"totalCpuHours":1,"users":{}}]}"#,
                "compute[0].users: expected an array, found an object",
            ),
            (
                r#"{"compute":[{"account":"A","totalNodeHours":1,"totalCpuHours":1,"users":["u"]}]}"#,
                "compute[0].users[0]: expected an object, found a string",
            ),
            (
                r#"{"compute":[{"account":"A","totalNodeHours":1,"totalCpuHours":1,"users":[{"nodeHours":1}]}]}"#,
                "compute[0].users[0].username: missing",
            ),
            (
                r#"{"compute":[{"account":"A","totalNodeHours":1,"totalCpuHours":1,"users":[{"username":"","nodeHours":1,"cpuHours":1}]}]}"#,
                "compute[0].users[0].username: empty",
            ),
            (
                r#"{"compute":[{"account":"A","totalNodeHours":1,"totalCpuHours":1,"users":[{"username":"u","nodeHours":true,"cpuHours":1}]}]}"#,
                "compute[0].users[0].nodeHours: expected a number, found a boolean",
            ),
            (r#"{"storage":[]}"#, "compute: missing"),
        ];
        for (body, want) in cases {
            assert_eq!(compute_err(body, &HOURS), want, "{body}");
        }
    }

    #[test]
    fn gpu_hours_are_read_when_configured() {
        let body = r#"{"compute":[{"account":"A","totalGpuHours":8,
            "users":[{"username":"u","gpuHours":8}]}]}"#;
        let got = compute(body.as_bytes(), &keys(&["A"]), &[Metric::GpuHours]).expect("parses");
        let a = got[0].as_ref().expect("found");
        assert_eq!(a.totals[Metric::GpuHours.index()], 8.0);
        assert_eq!(a.users["u"][Metric::GpuHours.index()], 8.0);
    }

    #[test]
    fn storage_takes_the_larger_of_repeated_paths() {
        let body = r#"{"storage":[
            {"path":"/p1","spaceUsed":1500000000000,"inodesUsed":10},
            {"path":"/elsewhere","spaceUsed":-1},
            {"path":"/p1","spaceUsed":1000,"inodesUsed":20}
        ]}"#;
        let metrics = [Metric::SpaceUsed, Metric::InodesUsed];
        let got = storage(body.as_bytes(), &keys(&["/p1", "/p2"]), &metrics).expect("parses");
        let p1 = got[0].as_ref().expect("found");
        assert_eq!(p1.totals[Metric::SpaceUsed.index()], 1.5e12);
        assert_eq!(p1.totals[Metric::InodesUsed.index()], 20.0);
        assert!(p1.users.is_empty());
        assert_eq!(got[1], None);
    }

    #[test]
    fn storage_allows_petabytes_but_not_absurd_sizes() {
        let metrics = [Metric::SpaceUsed];
        let ok = r#"{"storage":[{"path":"/p","spaceUsed":5e15}]}"#;
        assert!(storage(ok.as_bytes(), &keys(&["/p"]), &metrics).is_ok());
        let absurd = r#"{"storage":[{"path":"/p","spaceUsed":5e19}]}"#;
        let err = storage(absurd.as_bytes(), &keys(&["/p"]), &metrics);
        assert_eq!(err, Err(bad("storage[0].spaceUsed: implausibly large value 5e19 (more than 1e18)")));
        let inodes = r#"{"storage":[{"path":"/p","inodesUsed":5e15}]}"#;
        assert!(storage(inodes.as_bytes(), &keys(&["/p"]), &[Metric::InodesUsed]).is_err());
    }

    #[test]
    fn inference_reads_one_cost_per_requested_resource() {
        let body = r#"{"inference":[
            {"waldurResourceUuid":"r2","totalCost":0.5},
            {"waldurResourceUuid":"stranger","totalCost":-3},
            {"waldurResourceUuid":"stranger","totalCost":-3},
            {"waldurResourceUuid":"r1","totalCost":12.5,"extra":"ignored"}
        ],"meta":{}}"#;
        let got = inference(body.as_bytes(), &keys(&["r1", "r2", "r3"]), &[Metric::TokenCost]).expect("parses");
        let cost = |i: usize| got[i].as_ref().map(|u| u.totals[Metric::TokenCost.index()]);
        assert_eq!((cost(0), cost(1), cost(2)), (Some(12.5), Some(0.5), None));
        assert!(got.iter().flatten().all(|u| u.users.is_empty()));
        // Zero is a cost like any other: found, not absent.
        let zero = inference(
            br#"{"inference":[{"waldurResourceUuid":"r1","totalCost":0}]}"#,
            &keys(&["r1"]),
            &[Metric::TokenCost],
        );
        assert_eq!(zero.map(|v| v[0].as_ref().map(|u| u.totals[Metric::TokenCost.index()])), Ok(Some(0.0)));
    }

    #[test]
    fn inference_errors_name_the_json_path() {
        let cases = [
            (
                r#"{"inference":[{"waldurResourceUuid":"r1","totalCost":1},{"waldurResourceUuid":"r1","totalCost":1}]}"#,
                "inference[1].waldurResourceUuid: a second row for \"r1\"",
            ),
            (
                r#"{"inference":[{"waldurResourceUuid":"r1","totalCost":-0.01}]}"#,
                "inference[0].totalCost: negative value -0.01",
            ),
            (r#"{"inference":[{"waldurResourceUuid":"r1"}]}"#, "inference[0].totalCost: missing"),
            (
                r#"{"inference":[{"waldurResourceUuid":"r1","totalCost":"12.5"}]}"#,
                "inference[0].totalCost: expected a number, found a string",
            ),
            (
                r#"{"inference":[{"waldurResourceUuid":"r1","totalCost":null}]}"#,
                "inference[0].totalCost: expected a number, found null",
            ),
            (r#"{"inference":[{"totalCost":1}]}"#, "inference[0].waldurResourceUuid: missing"),
            (
                r#"{"inference":[{"waldurResourceUuid":7,"totalCost":1}]}"#,
                "inference[0].waldurResourceUuid: expected a string, found a number",
            ),
            (r#"{"inference":["r1"]}"#, "inference[0]: expected an object, found a string"),
            (r#"{"inference":{"r1":1}}"#, "inference: expected an array, found an object"),
            (r#"{"inference":null}"#, "inference: expected an array, found null"),
            (r#"{"compute":[]}"#, "inference: missing"),
            (
                r#"[{"waldurResourceUuid":"r1","totalCost":1}]"#,
                "expected a JSON object at the top level, found an array",
            ),
            ("12.5", "expected a JSON object at the top level, found a number"),
        ];
        for (body, want) in cases {
            let got = inference(body.as_bytes(), &keys(&["r1"]), &[Metric::TokenCost]);
            assert_eq!(got, Err(bad(want)), "{body}");
        }
        // JSON cannot spell an infinite or NaN cost; an overflowing literal is refused whole.
        for body in [
            r#"{"inference":[{"waldurResourceUuid":"r1","totalCost":1e999}]}"#,
            r#"{"inference":[{"waldurResourceUuid":"r1","totalCost":NaN}]}"#,
        ] {
            match inference(body.as_bytes(), &keys(&["r1"]), &[Metric::TokenCost]) {
                Err(BackendError::BadResponse(m)) => assert!(m.starts_with("the answer is not valid JSON: "), "{m}"),
                other => panic!("{body}: {other:?}"),
            }
        }
    }

    #[test]
    fn storage_errors_name_the_json_path() {
        let metrics = [Metric::SpaceUsed, Metric::InodesUsed];
        let cases = [
            (r#"{"storage":[{"path":"/p","spaceUsed":1}]}"#, "storage[0].inodesUsed: missing"),
            (r#"{"storage":[{"spaceUsed":1}]}"#, "storage[0].path: missing"),
            (r#"{"storage":[1]}"#, "storage[0]: expected an object, found a number"),
            (
                r#"{"storage":[{"path":"/p","spaceUsed":[],"inodesUsed":1}]}"#,
                "storage[0].spaceUsed: expected a number, found an array",
            ),
            (r#"{"compute":[]}"#, "storage: missing"),
        ];
        for (body, want) in cases {
            let got = storage(body.as_bytes(), &keys(&["/p"]), &metrics);
            assert_eq!(got, Err(bad(want)), "{body}");
        }
    }
}
