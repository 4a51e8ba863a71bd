//! The simulator at volume: thousands of resources and tens of thousands of usages written
//! through the HTTP API, then listed page by page. The listings must stay complete, free
//! of duplicates and in Waldur's order — the order a stable sort of the creation-ordered
//! table gives — also after updates that move records around in that order.
//!
//! `bench_volume` (ignored) is the manual measurement of the simulator's own cost at
//! benchmark scale; it asserts the same facts but is run by hand:
//! `cargo test -p waldur-sim --test volume -- --ignored --nocapture` (sizes from
//! `WSIM_BENCH_RESOURCES`, default 10000, and `WSIM_BENCH_USERS`, default 5).

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use waldur_sim::{StoredUsage, StoredUserUsage, WaldurOptions, WaldurSim, uuid_from};

const TOKEN: &str = "agent-token";
const COMPONENTS: [&str; 2] = ["node_hours", "cpu_hours"];

/// A keep-alive HTTP/1.1 connection, so that the volume is not dominated by connects.
struct Conn {
    stream: BufReader<TcpStream>,
    host: String,
    auth: String,
}

struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The path and query of `rel` in the `Link` header.
    fn link(&self, rel: &str) -> Option<String> {
        let header = self.header("link")?;
        header.split(", ").find_map(|part| {
            let (url, param) = part.split_once("; ")?;
            let url = url.trim_start_matches('<').trim_end_matches('>');
            let rest = url.strip_prefix("http://")?;
            let path = &rest[rest.find('/')?..];
            (param == format!("rel=\"{rel}\"")).then(|| path.to_owned())
        })
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("JSON body")
    }
}

impl Conn {
    async fn open(sim: &WaldurSim) -> Conn {
        let stream = TcpStream::connect(sim.addr()).await.expect("connect");
        stream.set_nodelay(true).expect("TCP_NODELAY");
        Conn { stream: BufReader::new(stream), host: sim.addr().to_string(), auth: format!("Token {TOKEN}") }
    }

    async fn request(&mut self, method: &str, path: &str, body: Option<&Value>) -> Resp {
        let body = body.map(Value::to_string).unwrap_or_default();
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: {}\r\n", self.host, self.auth);
        if !body.is_empty() {
            head.push_str(&format!("Content-Type: application/json\r\nContent-Length: {}\r\n", body.len()));
        }
        head.push_str("\r\n");
        // One write: a separate small body write would wait for the delayed ACK of the
        // head (Nagle), about 40 ms per request.
        head.push_str(&body);
        let stream = self.stream.get_mut();
        stream.write_all(head.as_bytes()).await.expect("write request");

        let mut line = String::new();
        self.stream.read_line(&mut line).await.expect("status line");
        let status: u16 = line.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("status code");
        let mut headers = Vec::new();
        loop {
            line.clear();
            self.stream.read_line(&mut line).await.expect("header");
            let text = line.trim_end();
            if text.is_empty() {
                break;
            }
            if let Some((k, v)) = text.split_once(": ") {
                headers.push((k.to_owned(), v.to_owned()));
            }
        }
        let length: usize = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; length];
        self.stream.read_exact(&mut body).await.expect("body");
        Resp { status, headers, body }
    }

    /// Follows `next` links from `path`; checks `X-Result-Count` on every page.
    async fn list_all(&mut self, path: &str) -> Vec<Value> {
        let mut items = Vec::new();
        let mut next = Some(path.to_owned());
        let mut total = None;
        while let Some(path) = next {
            let resp = self.request("GET", &path, None).await;
            assert_eq!(resp.status, 200, "{path}: {:?}", resp.json());
            let count: usize = resp.header("x-result-count").and_then(|v| v.parse().ok()).expect("X-Result-Count");
            assert_eq!(*total.get_or_insert(count), count, "{path}: count changed");
            match resp.json() {
                Value::Array(page) => items.extend(page),
                other => panic!("{path}: not a list: {other}"),
            }
            next = resp.link("next");
        }
        assert_eq!(Some(items.len()), total, "{path}: items ≠ X-Result-Count");
        items
    }
}

fn resource(i: usize) -> String {
    uuid_from(&format!("volume resource {i}"))
}

/// The `date` written for resource `i` in `round`: many resources share an instant, so
/// the order's tie-breaks (type, then creation) are exercised, and a later round moves
/// some resources to other instants.
fn date_of(i: usize, round: usize) -> String {
    let hour = (i * 7 + round * 5) % 24;
    let day = 1 + (i + round) % 14;
    format!("2024-03-{day:02}T{hour:02}:00:00Z")
}

/// A simulator with one offering of two usage components and `n` OK resources.
async fn fixture(n: usize) -> (WaldurSim, String) {
    let sim = WaldurSim::start(WaldurOptions::default()).await.expect("start");
    sim.add_token(TOKEN, "agent", false);
    sim.set_today(2024, 3, 15);
    let offering = uuid_from("volume offering");
    sim.add_offering(&offering, "Volume compute", &COMPONENTS);
    for i in 0..n {
        sim.add_resource(&offering, &resource(i), &format!("acct{i:05}"), "Alps", "OK");
    }
    (sim, offering)
}

/// `set_usage` for resources `range` (both components), then `set_user_usages` with
/// `users` usernames on each new component usage.
async fn write_round(
    conn: &mut Conn,
    sim: &WaldurSim,
    resources: impl Iterator<Item = usize>,
    users: usize,
    round: usize,
) {
    let resources: Vec<usize> = resources.collect();
    for &i in &resources {
        let body = json!({
            "resource": resource(i),
            "date": date_of(i, round),
            "usages": COMPONENTS
                .iter()
                .map(|t| json!({"type": t, "amount": format!("{}.{:02}", i + round, i % 100)}))
                .collect::<Vec<_>>(),
        });
        let resp = conn.request("POST", "/api/marketplace-component-usages/set_usage/", Some(&body)).await;
        assert_eq!(resp.status, 201, "set_usage {i}");
    }
    let parents: HashMap<(String, String), String> =
        sim.usages().into_iter().map(|u| ((u.resource_uuid, u.component_type), u.uuid)).collect();
    for &i in &resources {
        for ctype in COMPONENTS {
            let parent = &parents[&(resource(i), ctype.to_owned())];
            let body = json!({
                "usages": (0..users)
                    .map(|u| json!({"username": format!("user{u}"), "usage": format!("{}", u + round)}))
                    .collect::<Vec<_>>(),
            });
            let resp = conn
                .request("POST", &format!("/api/marketplace-component-usages/{parent}/set_user_usages/"), Some(&body))
                .await;
            assert_eq!(resp.status, 201, "set_user_usages {i} {ctype}");
        }
    }
}

/// Waldur's order over the creation-ordered table: `-date`, then type, stably.
fn expected_usages(stored: &[StoredUsage]) -> Vec<String> {
    let mut rows: Vec<&StoredUsage> = stored.iter().collect();
    // Same zone and precision everywhere, so the rendered dates sort as instants do.
    rows.sort_by(|a, b| b.date.cmp(&a.date).then_with(|| a.component_type.cmp(&b.component_type)));
    rows.into_iter().map(|u| u.uuid.clone()).collect()
}

/// The per-user order: the parent's `-date`, then its type, stably over creation order.
fn expected_user_usages(stored: &[StoredUserUsage], parents: &[StoredUsage]) -> Vec<String> {
    let by_uuid: HashMap<&str, &StoredUsage> = parents.iter().map(|p| (p.uuid.as_str(), p)).collect();
    let mut rows: Vec<(&StoredUserUsage, &StoredUsage)> =
        stored.iter().map(|uu| (uu, by_uuid[uu.component_usage_uuid.as_str()])).collect();
    rows.sort_by(|(_, a), (_, b)| b.date.cmp(&a.date).then_with(|| a.component_type.cmp(&b.component_type)));
    rows.into_iter().map(|(uu, _)| uu.uuid.clone()).collect()
}

fn uuids(items: &[Value]) -> Vec<String> {
    let list: Vec<String> = items.iter().map(|v| v["uuid"].as_str().expect("uuid").to_owned()).collect();
    let distinct: HashSet<&String> = list.iter().collect();
    assert_eq!(distinct.len(), list.len(), "duplicates in a listing");
    list
}

/// Lists everything the agent lists and compares it with the stored tables.
async fn check_listings(conn: &mut Conn, sim: &WaldurSim, offering: &str, n: usize) {
    let usages = sim.usages();
    let user_usages = sim.user_usages();

    let listed = conn
        .list_all(&format!(
            "/api/marketplace-component-usages/?offering_uuid={offering}&billing_period=2024-03-01&page_size=100"
        ))
        .await;
    assert_eq!(uuids(&listed), expected_usages(&usages));
    let listed = conn
        .list_all(&format!(
            "/api/marketplace-component-user-usages/?offering_uuid={offering}&component_usage__billing_period=2024-03-01&page_size=100"
        ))
        .await;
    assert_eq!(uuids(&listed), expected_user_usages(&user_usages, &usages));
    for item in &listed {
        assert_eq!(item["billing_period"], "2024-03-01");
        assert_eq!(item["offering_uuid"], offering);
    }

    // Unfiltered and narrower filters agree with the same order.
    let listed = conn.list_all("/api/marketplace-component-usages/?page_size=100").await;
    assert_eq!(uuids(&listed), expected_usages(&usages));
    let listed =
        conn.list_all("/api/marketplace-component-user-usages/?username=user1&type=cpu_hours&page_size=100").await;
    let narrowed: Vec<StoredUserUsage> =
        user_usages.iter().filter(|u| u.username == "user1" && u.component_type == "cpu_hours").cloned().collect();
    assert_eq!(listed.len(), n);
    assert_eq!(uuids(&listed), expected_user_usages(&narrowed, &usages));
    for i in [0, n / 2, n - 1] {
        let r = resource(i);
        let listed = conn
            .list_all(&format!(
                "/api/marketplace-component-user-usages/?resource_uuid={r}&component_usage__billing_period=2024-03-01"
            ))
            .await;
        let own: Vec<StoredUserUsage> = user_usages.iter().filter(|u| u.resource_uuid == r).cloned().collect();
        assert_eq!(uuids(&listed), expected_user_usages(&own, &usages));
        let listed = conn
            .list_all(&format!("/api/marketplace-component-usages/?resource_uuid={r}&billing_period=2024-03-01"))
            .await;
        let own: Vec<StoredUsage> = usages.iter().filter(|u| u.resource_uuid == r).cloned().collect();
        assert_eq!(uuids(&listed), expected_usages(&own));
    }
    let listed = conn
        .list_all(&format!(
            "/api/marketplace-provider-resources/?offering_uuid={offering}&state=OK&state=Erred&page_size=100"
        ))
        .await;
    let expected: Vec<String> = (0..n).map(resource).collect();
    assert_eq!(uuids(&listed), expected, "resources in creation order");
}

#[tokio::test]
async fn thousands_of_usages_list_completely_in_order() {
    let (n, users) = (2000, 5);
    let (sim, offering) = fixture(n).await;
    let mut conn = Conn::open(&sim).await;

    write_round(&mut conn, &sim, 0..n, users, 0).await;
    assert_eq!(sim.usages().len(), n * COMPONENTS.len());
    assert_eq!(sim.user_usages().len(), n * COMPONENTS.len() * users);
    check_listings(&mut conn, &sim, &offering, n).await;

    // A second round on every third resource changes dates, amounts and an extra user:
    // records move in the order, nothing is duplicated.
    write_round(&mut conn, &sim, (0..n).step_by(3), users + 1, 1).await;
    let extra = n.div_ceil(3) * COMPONENTS.len();
    assert_eq!(sim.usages().len(), n * COMPONENTS.len());
    assert_eq!(sim.user_usages().len(), n * COMPONENTS.len() * users + extra);
    let rewritten = sim.usages().iter().filter(|u| u.writes == 2).count();
    assert_eq!(rewritten, extra);
    check_listings(&mut conn, &sim, &offering, n).await;

    // The page past the end is still refused, the last page still answered.
    let resp = conn.request("GET", "/api/marketplace-component-user-usages/?page_size=100&page=last", None).await;
    assert_eq!(resp.status, 200);
    let total = n * COMPONENTS.len() * users + extra;
    assert_eq!(resp.json().as_array().map(Vec::len), Some(total % 100));
    let resp = conn
        .request(
            "GET",
            &format!("/api/marketplace-component-user-usages/?page_size=100&page={}", total / 100 + 2),
            None,
        )
        .await;
    assert_eq!(resp.status, 404);
    assert_eq!(resp.json(), json!({"detail": "Invalid page."}));
}

/// CPU time of this process (client and simulator share it), from `/proc/self/stat`, so
/// that other load on the machine does not count.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat(5), 12 and 13 after the name.
    let ticks: f64 = [11, 12].iter().filter_map(|&i| fields.get(i).and_then(|v| v.parse::<f64>().ok())).sum();
    ticks / 100.0
}

fn env_size(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Manual measurement: times each phase at benchmark scale (no timing is asserted).
#[tokio::test]
#[ignore = "a measurement, run by hand with --ignored --nocapture"]
async fn bench_volume() {
    let n = env_size("WSIM_BENCH_RESOURCES", 10_000);
    let users = env_size("WSIM_BENCH_USERS", 5);
    let (sim, offering) = fixture(n).await;
    let mut conn = Conn::open(&sim).await;

    let (started, cpu) = (Instant::now(), cpu_seconds());
    write_round(&mut conn, &sim, 0..n, users, 0).await;
    let wrote = (started.elapsed(), cpu_seconds() - cpu);
    let counts = sim.requests();

    let (started, cpu) = (Instant::now(), cpu_seconds());
    let usages = conn
        .list_all(&format!(
            "/api/marketplace-component-usages/?offering_uuid={offering}&billing_period=2024-03-01&page_size=100"
        ))
        .await;
    let listed_usages = (started.elapsed(), cpu_seconds() - cpu);
    let (started, cpu) = (Instant::now(), cpu_seconds());
    let user_usages = conn
        .list_all(&format!(
            "/api/marketplace-component-user-usages/?offering_uuid={offering}&component_usage__billing_period=2024-03-01&page_size=100"
        ))
        .await;
    let listed_user_usages = (started.elapsed(), cpu_seconds() - cpu);
    assert_eq!(usages.len(), n * COMPONENTS.len());
    assert_eq!(user_usages.len(), n * COMPONENTS.len() * users);

    // The sequential baseline's per-resource listings, on the first thousand resources.
    let per_resource = n.min(1000);
    let (started, cpu) = (Instant::now(), cpu_seconds());
    for i in 0..per_resource {
        let r = resource(i);
        let listed = conn
            .list_all(&format!("/api/marketplace-component-usages/?resource_uuid={r}&billing_period=2024-03-01"))
            .await;
        assert_eq!(listed.len(), COMPONENTS.len());
        let listed = conn
            .list_all(&format!(
                "/api/marketplace-component-user-usages/?resource_uuid={r}&component_usage__billing_period=2024-03-01&page_size=100"
            ))
            .await;
        assert_eq!(listed.len(), COMPONENTS.len() * users);
    }
    let listed_per_resource = (started.elapsed(), cpu_seconds() - cpu);

    let (started, cpu) = (Instant::now(), cpu_seconds());
    write_round(&mut conn, &sim, 0..n, users, 1).await;
    let rewrote = (started.elapsed(), cpu_seconds() - cpu);

    let line = |what: &str, (wall, cpu): (std::time::Duration, f64), note: String| {
        println!("  {what:<26} wall {:>9.2}s  cpu {cpu:>9.2}s  {note}", wall.as_secs_f64());
    };
    println!("waldur-sim volume: {n} resources, {} component usages, {} user usages", usages.len(), user_usages.len());
    line(
        "first writes",
        wrote,
        format!("({} set_usage + {} set_user_usages)", counts.set_usage, counts.set_user_usages),
    );
    line("list component usages", listed_usages, format!("({} pages of 100)", usages.len().div_ceil(100)));
    line("list user usages", listed_user_usages, format!("({} pages of 100)", user_usages.len().div_ceil(100)));
    line("list per resource", listed_per_resource, format!("({} resources, 2 listings each)", per_resource));
    line("second writes (updates)", rewrote, String::new());
}
