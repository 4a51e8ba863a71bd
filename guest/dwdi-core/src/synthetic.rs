//! Deterministic DWDI compute answers of any size, for benchmarks and load tests.
//!
//! The values depend only on the account name and the user's position, never on how
//! accounts were split over requests, so an answer built per request and one built for
//! all accounts report the same numbers. Every value is a multiple of 1/64, so sums are
//! exact in `f64` and a test can compare totals with `==`.

use std::fmt::Write as _;
use std::hash::Hasher as _;

/// FNV-1a of a string's bytes: stable across platforms and releases, so the data is.
fn fnv1a(s: &str) -> u64 {
    let mut hasher = fnv::FnvHasher::default();
    hasher.write(s.as_bytes());
    hasher.finish()
}

/// The account name [`synthetic_compute_answer`] uses at position `i`.
pub fn synthetic_account(i: usize) -> String {
    format!("acct{i:05}")
}

/// The username of the user at position `u` of every synthetic account.
pub fn synthetic_user(u: usize) -> String {
    format!("user{u:04}")
}

/// A compute answer (`{"compute":[…]}`) for `accounts` accounts named by
/// [`synthetic_account`], each with `users` users; about `90 × users` bytes per account.
pub fn synthetic_compute_answer(accounts: usize, users: usize) -> String {
    let names: Vec<String> = (0..accounts).map(synthetic_account).collect();
    synthetic_compute_answer_for(&names, users)
}

/// The same for the given account names: what a simulator answers to one request.
/// Node hours per user are `(h + 7919·u) mod 4096 / 64`, `h` a hash of the account;
/// CPU hours are 128 × node hours; every third user also has 4 GPU hours per node
/// hour. Account totals are the sums over users.
pub fn synthetic_compute_answer_for<S: AsRef<str>>(accounts: &[S], users: usize) -> String {
    let mut out = String::with_capacity(accounts.len() * (150 + users * 90) + 16);
    out.push_str("{\"compute\":[");
    for (a, account) in accounts.iter().enumerate() {
        let account = account.as_ref();
        let seed = fnv1a(account);
        let rows: Vec<[f64; 3]> = (0..users)
            .map(|u| {
                let u64_index = u as u64;
                let node = ((seed.wrapping_add(7919 * u64_index)) % 4096) as f64 / 64.0;
                let gpu = if seed.wrapping_add(u64_index).is_multiple_of(3) { node * 4.0 } else { 0.0 };
                [node, node * 128.0, gpu]
            })
            .collect();
        let total = |i: usize| rows.iter().map(|r| r[i]).sum::<f64>();
        if a > 0 {
            out.push(',');
        }
        // Writing to a String cannot fail.
        let _ = write!(
            out,
            "{{\"account\":{},\"cluster\":\"alps\",\"totalNodeHours\":{},\"totalCpuHours\":{},\
             \"totalGpuHours\":{},\"users\":[",
            serde_json::Value::from(account),
            total(0),
            total(1),
            total(2)
        );
        for (u, [node, cpu, gpu]) in rows.iter().enumerate() {
            if u > 0 {
                out.push(',');
            }
            let _ = write!(
                out,
                "{{\"username\":\"{}\",\"nodeHours\":{node},\"cpuHours\":{cpu},\"gpuHours\":{gpu}}}",
                synthetic_user(u)
            );
        }
        out.push_str("]}");
    }
    out.push_str("]}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_account_hash_is_fnv1a_and_never_changes() {
        assert_eq!(fnv1a(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a("a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a("foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn answers_are_deterministic_valid_json() {
        let a = synthetic_compute_answer(3, 4);
        assert_eq!(a, synthetic_compute_answer(3, 4));
        let v: serde_json::Value = serde_json::from_str(&a).expect("valid JSON");
        let rows = v["compute"].as_array().expect("array");
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[2]["account"], "acct00002");
        let users = rows[0]["users"].as_array().expect("users");
        assert_eq!(users.len(), 4);
        assert_eq!(users[3]["username"], "user0003");
        let sum: f64 = users.iter().filter_map(|u| u["nodeHours"].as_f64()).sum();
        assert_eq!(rows[0]["totalNodeHours"].as_f64(), Some(sum));
        assert_eq!(synthetic_compute_answer(0, 5), "{\"compute\":[]}");
    }

    #[test]
    fn values_do_not_depend_on_the_request_split() {
        let all = synthetic_compute_answer(2, 3);
        let one = synthetic_compute_answer_for(&[synthetic_account(1)], 3);
        let all: serde_json::Value = serde_json::from_str(&all).expect("valid");
        let one: serde_json::Value = serde_json::from_str(&one).expect("valid");
        assert_eq!(all["compute"][1], one["compute"][0]);
    }

    #[test]
    fn odd_account_names_are_escaped() {
        let a = synthetic_compute_answer_for(&["a\"b\\c"], 1);
        let v: serde_json::Value = serde_json::from_str(&a).expect("valid JSON");
        assert_eq!(v["compute"][0]["account"], "a\"b\\c");
    }
}
