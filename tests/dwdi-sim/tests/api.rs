//! The simulator over real HTTP, driven by a minimal raw HTTP/1.1 client.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use dwdi_sim::{DwdiData, DwdiOptions, DwdiSim};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

// ---------------------------------------------------------------------------------------
// A tiny HTTP/1.1 client: one request per connection.
// ---------------------------------------------------------------------------------------

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// The client side of the connection, to compare with the peers the simulator saw.
    local: SocketAddr,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    fn detail(&self) -> String {
        self.json()["detail"].as_str().unwrap_or_default().to_owned()
    }
}

/// Sends one request to `url` (`http://host:port/target`) and reads the whole answer.
async fn send(method: &str, url: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
    let rest = url.strip_prefix("http://").expect("http URL");
    let (authority, target) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let mut stream = TcpStream::connect(authority).await.expect("connect");
    let local = stream.local_addr().expect("local addr");
    let mut request = format!(
        "{method} {target} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    stream.write_all(body).await.expect("write body");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.expect("read");

    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("end of headers");
    let head = String::from_utf8(raw[..split].to_vec()).expect("utf-8 head");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().expect("status line");
    let status = status_line.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("status");
    let headers: Vec<(String, String)> =
        lines.filter_map(|l| l.split_once(':')).map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned())).collect();
    let mut body = raw[split + 4..].to_vec();
    let chunked =
        headers.iter().any(|(n, v)| n.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked"));
    if chunked {
        body = dechunk(&body);
    }
    Reply { status, headers, body, local }
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line_end = data.windows(2).position(|w| w == b"\r\n").expect("chunk size");
        let size_text = std::str::from_utf8(&data[..line_end]).expect("chunk size text");
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16).expect("hex chunk size");
        if size == 0 {
            return out;
        }
        let start = line_end + 2;
        out.extend_from_slice(&data[start..start + size]);
        data = &data[start + size + 2..];
    }
}

const FORM: (&str, &str) = ("Content-Type", "application/x-www-form-urlencoded");

async fn token_request(sim: &DwdiSim, form: &str) -> Reply {
    send("POST", &sim.token_url(), &[FORM], form.as_bytes()).await
}

/// A valid token with the default credentials.
async fn token(sim: &DwdiSim) -> String {
    let reply = token_request(
        sim,
        "grant_type=client_credentials&client_id=dwdi-client&client_secret=dwdi-secret&scope=openid",
    )
    .await;
    assert_eq!(reply.status, 200);
    reply.json()["access_token"].as_str().expect("token").to_owned()
}

/// `GET {api_url}{target}` with the bearer token (none if empty).
async fn get(sim: &DwdiSim, target: &str, token: &str) -> Reply {
    let auth = format!("Bearer {token}");
    let headers: Vec<(&str, &str)> = if token.is_empty() { vec![] } else { vec![("Authorization", auth.as_str())] };
    send("GET", &format!("{}{target}", sim.api_url()), &headers, b"").await
}

async fn start(data: DwdiData) -> DwdiSim {
    DwdiSim::start(data, DwdiOptions::default()).await.expect("start")
}

fn basic(id: &str, secret: &str) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let plain = format!("{id}:{secret}");
    let mut out = String::new();
    for chunk in plain.as_bytes().chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    format!("Basic {out}")
}

fn small_data() -> DwdiData {
    let mut data = DwdiData::new();
    data.add_compute("alps", "acct-a", "alice", "2024-01-03", 1.5, 432.0, 6.0);
    data.add_compute("alps", "acct-a", "bob", "2024-01-03", 2.0, 576.0, 8.0);
    data.add_compute("alps", "acct-a", "alice", "2024-01-04", 0.25, 72.0, 1.0);
    data.add_compute("eiger", "acct-a", "alice", "2024-01-05", 3.0, 384.0, 0.0);
    data.add_compute("alps", "acct-b", "carol", "2024-02-10", 4.0, 1152.0, 16.0);
    data.add_compute("alps", "x,y", "dave", "2024-01-10", 7.0, 2016.0, 28.0);
    data
}

// ---------------------------------------------------------------------------------------
// Tokens
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn token_is_issued_for_form_credentials() {
    let sim = start(DwdiData::new()).await;
    let reply =
        token_request(&sim, "grant_type=client_credentials&client_id=dwdi-client&client_secret=dwdi-secret").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("cache-control"), Some("no-store"));
    let body = reply.json();
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 300);
    assert_eq!(body["scope"], "openid");
    let first = body["access_token"].as_str().expect("token").to_owned();
    assert!(first.len() > 20);

    let reply = token_request(
        &sim,
        "grant_type=client_credentials&client_id=dwdi-client&client_secret=dwdi-secret&scope=openid+profile",
    )
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["scope"], "openid profile");
    assert_ne!(reply.json()["access_token"].as_str(), Some(first.as_str()));

    let stats = sim.stats();
    assert_eq!((stats.token_requests, stats.tokens_issued, stats.token_rejected), (2, 2, 0));
    sim.shutdown().await;
}

#[tokio::test]
async fn token_requests_are_rejected_like_an_oidc_server() {
    let sim = start(DwdiData::new()).await;
    let cases: &[(&str, u16, &str)] = &[
        ("grant_type=client_credentials&client_id=dwdi-client&client_secret=wrong", 401, "invalid_client"),
        ("grant_type=client_credentials&client_id=other&client_secret=dwdi-secret", 401, "invalid_client"),
        ("grant_type=password&client_id=dwdi-client&client_secret=dwdi-secret", 400, "unsupported_grant_type"),
        ("client_id=dwdi-client&client_secret=dwdi-secret", 400, "invalid_request"),
        ("grant_type=client_credentials&client_id=dwdi-client", 400, "invalid_request"),
        ("grant_type=client_credentials&client_secret=dwdi-secret", 400, "invalid_request"),
        ("", 400, "invalid_request"),
        (
            "grant_type=client_credentials&grant_type=client_credentials&client_id=dwdi-client&client_secret=dwdi-secret",
            400,
            "invalid_request",
        ),
        (
            "grant_type=client_credentials&client_id=dwdi-client&client_secret=dwdi-secret&scope=profile",
            400,
            "invalid_scope",
        ),
    ];
    for (form, status, error) in cases {
        let reply = token_request(&sim, form).await;
        assert_eq!(reply.status, *status, "{form}");
        assert_eq!(reply.json()["error"], *error, "{form}");
    }
    let wrong = token_request(&sim, "grant_type=client_credentials&client_id=dwdi-client&client_secret=wrong").await;
    assert_eq!(wrong.json()["error_description"], "Invalid client credentials");

    // Not a form, not a POST.
    let json = send(
        "POST",
        &sim.token_url(),
        &[("Content-Type", "application/json")],
        br#"{"grant_type":"client_credentials"}"#,
    )
    .await;
    assert_eq!((json.status, json.json()["error"].as_str()), (400, Some("invalid_request")));
    let get = send("GET", &sim.token_url(), &[], b"").await;
    assert_eq!(get.status, 405);

    let stats = sim.stats();
    assert_eq!(stats.tokens_issued, 0);
    assert_eq!(stats.token_rejected, stats.token_requests);
    assert_eq!(stats.token_requests, cases.len() as u64 + 3);
    sim.shutdown().await;
}

#[tokio::test]
async fn token_accepts_http_basic_client_authentication() {
    let options =
        DwdiOptions { client_id: "agent".into(), client_secret: "s3:cr/t+&".into(), ..DwdiOptions::default() };
    let sim = DwdiSim::start(DwdiData::new(), options).await.expect("start");
    // RFC 6749 §2.3.1: id and secret are form-encoded before base64.
    let good = basic("agent", "s3%3Acr%2Ft%2B%26");
    let reply =
        send("POST", &sim.token_url(), &[FORM, ("Authorization", &good)], b"grant_type=client_credentials").await;
    assert_eq!(reply.status, 200, "{}", String::from_utf8_lossy(&reply.body));
    let token = reply.json()["access_token"].as_str().expect("token").to_owned();
    assert_eq!(
        get(&sim, "/storage/usage-day?exact-date=2024-01-01&filesystem=f&data_type=d&paths=/p", &token).await.status,
        200
    );

    // The same secret in the form works too (form decoding applies).
    let form = "grant_type=client_credentials&client_id=agent&client_secret=s3%3Acr%2Ft%2B%26";
    assert_eq!(token_request(&sim, form).await.status, 200);

    let bad = basic("agent", "nope");
    let reply =
        send("POST", &sim.token_url(), &[FORM, ("Authorization", &bad)], b"grant_type=client_credentials").await;
    assert_eq!(reply.status, 401);
    assert_eq!(reply.json()["error"], "invalid_client");
    assert!(reply.header("www-authenticate").is_some_and(|v| v.starts_with("Basic")));

    // Two authentication methods at once.
    let reply = send(
        "POST",
        &sim.token_url(),
        &[FORM, ("Authorization", &good)],
        b"grant_type=client_credentials&client_secret=x",
    )
    .await;
    assert_eq!((reply.status, reply.json()["error"].as_str()), (400, Some("invalid_request")));
    // Garbage in the header.
    let reply =
        send("POST", &sim.token_url(), &[FORM, ("Authorization", "Basic !!!")], b"grant_type=client_credentials").await;
    assert_eq!((reply.status, reply.json()["error"].as_str()), (400, Some("invalid_request")));
    sim.shutdown().await;
}

#[tokio::test]
async fn expires_in_can_be_omitted() {
    let options = DwdiOptions { include_expires_in: false, ..DwdiOptions::default() };
    let sim = DwdiSim::start(DwdiData::new(), options).await.expect("start");
    let reply =
        token_request(&sim, "grant_type=client_credentials&client_id=dwdi-client&client_secret=dwdi-secret").await;
    assert_eq!(reply.status, 200);
    assert!(reply.json().get("expires_in").is_none());
    sim.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// Bearer authentication
// ---------------------------------------------------------------------------------------

const ONE_ACCOUNT: &str = "/compute/usage-month/account?from=2024-01&to=2024-01&account=acct-a";

#[tokio::test]
async fn api_requires_a_known_bearer_token() {
    let sim = start(small_data()).await;
    let none = get(&sim, ONE_ACCOUNT, "").await;
    assert_eq!(none.status, 401);
    assert_eq!(none.header("www-authenticate"), Some("Bearer"));
    assert!(!none.detail().is_empty());
    assert_eq!(get(&sim, ONE_ACCOUNT, "made-up").await.status, 401);
    let basic_auth = send(
        "GET",
        &format!("{}{ONE_ACCOUNT}", sim.api_url()),
        &[("Authorization", &basic("dwdi-client", "dwdi-secret"))],
        b"",
    )
    .await;
    assert_eq!(basic_auth.status, 401);

    let token = token(&sim).await;
    assert_eq!(get(&sim, ONE_ACCOUNT, &token).await.status, 200);
    let lower =
        send("GET", &format!("{}{ONE_ACCOUNT}", sim.api_url()), &[("Authorization", &format!("bearer {token}"))], b"")
            .await;
    assert_eq!(lower.status, 200, "the scheme is case-insensitive");

    let stats = sim.stats();
    assert_eq!(stats.api_unauthorized, 3);
    assert_eq!(stats.api_requests, 5);
    assert_eq!(stats.api_count("/compute/usage-month/account"), 5);
    sim.shutdown().await;
}

#[tokio::test]
async fn tokens_are_jwts_in_shape_and_introspection_follows_their_life() {
    use base64::Engine as _;
    let sim = start(small_data()).await;
    let first = token(&sim).await;
    let second = token(&sim).await;
    assert_ne!(first, second);
    let parts: Vec<&str> = first.split('.').collect();
    assert_eq!(parts.len(), 3, "{first}");
    let decode = |part: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(part).expect("base64url");
    let header: Value = serde_json::from_slice(&decode(parts[0])).expect("header JSON");
    assert_eq!(header["typ"], "JWT");
    let claims: Value = serde_json::from_slice(&decode(parts[1])).expect("claims JSON");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs();
    let exp = claims["exp"].as_u64().expect("exp");
    assert!(exp > now && exp <= now + 301, "exp {exp}, now {now}");
    assert_eq!(claims["azp"], "dwdi-client");
    assert_eq!(claims["preferred_username"], "service-account-dwdi-client");
    assert!(!decode(parts[2]).is_empty());
    // Introspection: active while valid, never for a token it did not issue.
    assert_eq!(sim.state().introspect(&first).as_deref(), Some("service-account-dwdi-client"));
    assert_eq!(sim.state().introspect("header.claims.signature"), None);
    sim.expire_all_tokens();
    assert_eq!(sim.state().introspect(&first), None);
    assert_eq!(sim.state().introspect(&second), None);
    sim.shutdown().await;
}

#[tokio::test]
async fn expired_tokens_are_rejected() {
    let sim = start(small_data()).await;
    let old = token(&sim).await;
    assert_eq!(get(&sim, ONE_ACCOUNT, &old).await.status, 200);
    sim.expire_all_tokens();
    let reply = get(&sim, ONE_ACCOUNT, &old).await;
    assert_eq!(reply.status, 401);
    assert_eq!(reply.detail(), "Token expired");
    let new = token(&sim).await;
    assert_eq!(get(&sim, ONE_ACCOUNT, &new).await.status, 200);
    sim.shutdown().await;

    let options = DwdiOptions { token_lifetime: Duration::from_millis(300), ..DwdiOptions::default() };
    let sim = DwdiSim::start(small_data(), options).await.expect("start");
    let reply =
        token_request(&sim, "grant_type=client_credentials&client_id=dwdi-client&client_secret=dwdi-secret").await;
    assert_eq!(reply.json()["expires_in"], 0);
    let short = reply.json()["access_token"].as_str().expect("token").to_owned();
    assert_eq!(get(&sim, ONE_ACCOUNT, &short).await.status, 200);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(get(&sim, ONE_ACCOUNT, &short).await.status, 401);
    sim.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// Compute
// ---------------------------------------------------------------------------------------

fn entries(reply: &Reply) -> Vec<Value> {
    assert_eq!(reply.status, 200, "{}", String::from_utf8_lossy(&reply.body));
    reply.json()["compute"].as_array().expect("compute array").clone()
}

fn pairs(entries: &[Value]) -> Vec<(String, String)> {
    entries
        .iter()
        .map(|e| (e["account"].as_str().unwrap_or("").to_owned(), e["cluster"].as_str().unwrap_or("").to_owned()))
        .collect()
}

fn pair(account: &str, cluster: &str) -> (String, String) {
    (account.to_owned(), cluster.to_owned())
}

#[tokio::test]
async fn repeated_keys_are_honoured_and_commas_are_literal() {
    let sim = start(small_data()).await;
    let token = token(&sim).await;

    let both =
        get(&sim, "/compute/usage-month/account?from=2024-01&to=2024-02&account=acct-a&account=acct-b", &token).await;
    assert_eq!(pairs(&entries(&both)), [pair("acct-a", "alps"), pair("acct-a", "eiger"), pair("acct-b", "alps")]);

    // A comma-joined list is one (unknown) account name, raw or percent-encoded.
    for joined in ["acct-a,acct-b", "acct-a%2Cacct-b"] {
        let reply =
            get(&sim, &format!("/compute/usage-month/account?from=2024-01&to=2024-02&account={joined}"), &token).await;
        assert!(entries(&reply).is_empty(), "{joined} must not be split");
    }
    // …and an account whose name really contains a comma is found.
    let comma = get(&sim, "/compute/usage-month/account?from=2024-01&to=2024-01&account=x%2Cy", &token).await;
    assert_eq!(pairs(&entries(&comma)), [pair("x,y", "alps")]);

    // Accounts without data in the range are absent.
    let absent =
        get(&sim, "/compute/usage-month/account?from=2024-01&to=2024-01&account=acct-b&account=nobody", &token).await;
    assert!(entries(&absent).is_empty());

    // The simulator saw the query exactly as sent.
    let urls = sim.stats().recent_urls();
    assert!(urls.contains(&"/api/v1/compute/usage-month/account?from=2024-01&to=2024-01&account=x%2Cy".to_owned()));
    sim.shutdown().await;
}

#[tokio::test]
async fn compute_rows_are_per_user_and_day_and_totals_are_their_sums() {
    let sim = start(small_data()).await;
    let token = token(&sim).await;
    let reply = get(&sim, "/compute/usage-month/account?from=2024-01&to=2024-01&account=acct-a", &token).await;
    let body = entries(&reply);
    let alps = &body[0];
    assert_eq!(alps["cluster"], "alps");
    let users = alps["users"].as_array().expect("users");
    let names: Vec<&str> = users.iter().map(|u| u["username"].as_str().unwrap_or("")).collect();
    assert_eq!(names, ["alice", "bob", "alice"], "one row per (user, day)");
    assert_eq!(users[0]["nodeHours"], 1.5);
    assert_eq!(users[0]["cpuHours"], 432.0);
    assert_eq!(users[0]["gpuHours"], 6.0);
    assert_eq!(alps["totalNodeHours"], 3.75);
    assert_eq!(alps["totalCpuHours"], 1080.0);
    assert_eq!(alps["totalGpuHours"], 15.0);
    assert_eq!(body[1]["cluster"], "eiger");
    assert_eq!(body[1]["totalNodeHours"], 3.0);
    sim.shutdown().await;
}

#[tokio::test]
async fn generated_answers_sum_up() {
    let months = [(2024, 1), (2024, 2)];
    let data = DwdiData::generated(4, 3, &months);
    let accounts = data.accounts();
    assert_eq!(accounts.len(), 4);
    let expected: Vec<_> = accounts.iter().map(|a| data.compute_usage(a, None, "2024-01-01", "2024-01-31")).collect();
    let sim = start(data).await;
    let token = token(&sim).await;

    let query: String = accounts.iter().map(|a| format!("&account={a}")).collect();
    let reply = get(&sim, &format!("/compute/usage-month/account?from=2024-01&to=2024-01{query}"), &token).await;
    let body = entries(&reply);
    // Even accounts run on both clusters, odd ones on alps only.
    assert_eq!(
        pairs(&body),
        [
            pair("project_000", "alps"),
            pair("project_000", "eiger"),
            pair("project_001", "alps"),
            pair("project_002", "alps"),
            pair("project_002", "eiger"),
            pair("project_003", "alps"),
        ]
    );
    for entry in &body {
        let users = entry["users"].as_array().expect("users");
        for (field, total) in
            [("nodeHours", "totalNodeHours"), ("cpuHours", "totalCpuHours"), ("gpuHours", "totalGpuHours")]
        {
            let sum: f64 = users.iter().map(|u| u[field].as_f64().expect("number")).sum();
            let want = entry[total].as_f64().expect("total");
            // Only JSON number parsing may differ in the last bit.
            assert!((sum - want).abs() <= want.abs() * 1e-12, "{total} of {}: {sum} vs {want}", entry["account"]);
        }
        let mut names: Vec<&str> = users.iter().map(|u| u["username"].as_str().unwrap_or("")).collect();
        let rows = names.len();
        names.sort_unstable();
        names.dedup();
        assert!(names.len() <= 3 && rows > 10 * names.len(), "users repeat once per day");
    }
    // What a client must compute: per account, the sum over clusters and rows.
    for (account, want) in accounts.iter().zip(&expected) {
        let node: f64 = body
            .iter()
            .filter(|e| e["account"] == account.as_str())
            .flat_map(|e| e["users"].as_array().expect("users").iter())
            .map(|u| u["nodeHours"].as_f64().expect("number"))
            .sum();
        assert!((node - want.node_hours).abs() < 1e-6, "{account}: {node} vs {}", want.node_hours);
        assert!(want.node_hours > 0.0 && want.gpu_hours > 0.0);
    }

    // Two months give more than one; the day endpoint gives one day.
    let two = get(&sim, "/compute/usage-month/account?from=2024-01&to=2024-02&account=project_001", &token).await;
    let jan = get(&sim, "/compute/usage-month/account?from=2024-01&to=2024-01&account=project_001", &token).await;
    let total = |r: &Reply| entries(r)[0]["totalNodeHours"].as_f64().expect("total");
    assert!(total(&two) > total(&jan));
    let day = get(&sim, "/compute/usage-day/account?from=2024-02-29&to=2024-02-29&account=project_001", &token).await;
    let rows = entries(&day)[0]["users"].as_array().expect("users").len();
    assert!((1..=3).contains(&rows));
    let none = get(&sim, "/compute/usage-month/account?from=2023-12&to=2023-12&account=project_001", &token).await;
    assert!(entries(&none).is_empty());
    sim.shutdown().await;
}

#[tokio::test]
async fn cluster_filter_and_day_ranges() {
    let sim = start(small_data()).await;
    let token = token(&sim).await;
    let base = "/compute/usage-month/account?from=2024-01&to=2024-02&account=acct-a&account=acct-b";
    let eiger = get(&sim, &format!("{base}&cluster=eiger"), &token).await;
    assert_eq!(pairs(&entries(&eiger)), [pair("acct-a", "eiger")]);
    let both = get(&sim, &format!("{base}&cluster=eiger&cluster=alps"), &token).await;
    assert_eq!(entries(&both).len(), 3);
    let unknown = get(&sim, &format!("{base}&cluster=ALPS"), &token).await;
    assert!(entries(&unknown).is_empty(), "cluster names are exact");

    let day = get(&sim, "/compute/usage-day/account?from=2024-01-04&to=2024-01-05&account=acct-a", &token).await;
    let body = entries(&day);
    assert_eq!(pairs(&body), [pair("acct-a", "alps"), pair("acct-a", "eiger")]);
    assert_eq!(body[0]["totalNodeHours"], 0.25);
    // The bare reachability path answers like the account form when given parameters.
    let bare = get(&sim, "/compute/usage-day?from=2024-01-04&to=2024-01-04&account=acct-a", &token).await;
    assert_eq!(entries(&bare).len(), 1);
    sim.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// Storage
// ---------------------------------------------------------------------------------------

fn storage_data() -> DwdiData {
    let mut data = DwdiData::new();
    data.add_storage("lustre", "projects", Some("cscs"), "/store/p1", "2024-01-05", 100, 10);
    data.add_storage("lustre", "projects", Some("cscs"), "/store/p1", "2024-01-20", 50, 5);
    data.add_storage("lustre", "projects", Some("cscs"), "/store/p1", "2024-02-01", 999, 99);
    data.add_storage("lustre", "projects", Some("other"), "/store/p1", "2024-01-25", 7, 7);
    data.add_storage("lustre", "scratch", Some("cscs"), "/store/p1", "2024-01-28", 1, 1);
    data.add_storage("lustre", "projects", Some("cscs"), "/store/p2", "2024-01-02", 2000, 20);
    data
}

fn rows(reply: &Reply) -> Vec<Value> {
    assert_eq!(reply.status, 200, "{}", String::from_utf8_lossy(&reply.body));
    reply.json()["storage"].as_array().expect("storage array").clone()
}

#[tokio::test]
async fn storage_month_answers_the_latest_snapshot_per_path() {
    let sim = start(storage_data()).await;
    let token = token(&sim).await;
    let q = "/storage/usage-month?exact-month=2024-01&filesystem=lustre&data_type=projects";
    let reply = get(&sim, &format!("{q}&tenant=cscs&paths=/store/p1&paths=/store/p2&paths=/store/none"), &token).await;
    let body = rows(&reply);
    assert_eq!(body.len(), 2, "paths without data are absent");
    assert_eq!(body[0]["path"], "/store/p1");
    assert_eq!(body[0]["filesystem"], "lustre");
    assert_eq!(body[0]["dataType"], "projects");
    assert_eq!((body[0]["spaceUsed"].as_u64(), body[0]["inodesUsed"].as_u64()), (Some(50), Some(5)));
    assert_eq!(body[1]["spaceUsed"], 2000);

    // Without a tenant, any tenant's latest snapshot counts.
    let any = rows(&get(&sim, &format!("{q}&paths=/store/p1"), &token).await);
    assert_eq!(any[0]["spaceUsed"], 7);
    let feb = rows(
        &get(
            &sim,
            "/storage/usage-month?exact-month=2024-02&filesystem=lustre&data_type=projects&paths=/store/p1",
            &token,
        )
        .await,
    );
    assert_eq!(feb[0]["spaceUsed"], 999);
    let comma = rows(&get(&sim, &format!("{q}&paths=/store/p1,/store/p2"), &token).await);
    assert!(comma.is_empty(), "paths are repeated keys, not comma lists");
    let other_fs = rows(
        &get(
            &sim,
            "/storage/usage-month?exact-month=2024-01&filesystem=gpfs&data_type=projects&paths=/store/p1",
            &token,
        )
        .await,
    );
    assert!(other_fs.is_empty());
    sim.shutdown().await;
}

#[tokio::test]
async fn storage_day_answers_the_snapshot_of_that_date() {
    let sim = start(storage_data()).await;
    let token = token(&sim).await;
    let q = "/storage/usage-day?filesystem=lustre&data_type=projects&tenant=cscs&paths=/store/p1";
    assert_eq!(rows(&get(&sim, &format!("{q}&exact-date=2024-01-05"), &token).await)[0]["spaceUsed"], 100);
    assert_eq!(rows(&get(&sim, &format!("{q}&exact-date=2024-01-20"), &token).await)[0]["inodesUsed"], 5);
    assert!(rows(&get(&sim, &format!("{q}&exact-date=2024-01-06"), &token).await).is_empty());
    sim.shutdown().await;
}

#[tokio::test]
async fn generated_storage_matches_its_oracle() {
    let data = DwdiData::generated(2, 1, &[(2024, 3)]);
    let paths = data.storage_paths();
    assert_eq!(paths, ["/store/projects/project_000", "/store/projects/project_001"]);
    let want = data
        .storage_snapshot("lustre", "projects", Some("cscs"), &paths[1], "2024-03-01", "2024-03-31")
        .expect("snapshot");
    let sim = start(data).await;
    let token = token(&sim).await;
    let q = format!(
        "/storage/usage-month?exact-month=2024-03&filesystem=lustre&data_type=projects&tenant=cscs&paths={}&paths={}",
        paths[0], paths[1]
    );
    let body = rows(&get(&sim, &q, &token).await);
    assert_eq!(body.len(), 2);
    assert_eq!((body[1]["spaceUsed"].as_u64(), body[1]["inodesUsed"].as_u64()), (Some(want.0), Some(want.1)));
    sim.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// Inference
// ---------------------------------------------------------------------------------------

const COST: &str = "/inference/resource/cost";

fn inference_data() -> DwdiData {
    let mut data = DwdiData::new();
    data.add_inference_cost("r1", 2024, 1, 12.5);
    data.add_inference_cost("r1", 2024, 2, 7.25);
    data.add_inference_cost("r2", 2024, 1, 0.5);
    data.add_inference_cost("r3", 2024, 3, 1.0);
    data
}

/// (`waldurResourceUuid`, `totalCost`) of each row; every cost must be a JSON number.
fn costs(reply: &Reply) -> Vec<(String, f64)> {
    assert_eq!(reply.status, 200, "{}", String::from_utf8_lossy(&reply.body));
    let body = reply.json();
    let rows = body["inference"].as_array().expect("inference array");
    rows.iter()
        .map(|row| {
            assert_eq!(row.as_object().map(|o| o.len()), Some(2), "only the two fields: {row}");
            let id = row["waldurResourceUuid"].as_str().expect("id string").to_owned();
            (id, row["totalCost"].as_f64().expect("cost number"))
        })
        .collect()
}

fn cost(id: &str, value: f64) -> (String, f64) {
    (id.to_owned(), value)
}

#[tokio::test]
async fn inference_answers_one_summed_row_per_requested_resource() {
    let data = inference_data();
    let want_r1 = data.inference_cost("r1", (2024, 1), (2024, 2));
    let sim = start(data).await;
    let token = token(&sim).await;

    let jan = get(&sim, &format!("{COST}?from=2024-01&to=2024-01&resource_uuid=r2&resource_uuid=r1"), &token).await;
    assert_eq!(costs(&jan), [cost("r2", 0.5), cost("r1", 12.5)], "in request order");
    // A range sums its months; a resource without a cost in it has no row.
    let range = format!("{COST}?from=2024-01&to=2024-02&resource_uuid=r1&resource_uuid=r3&resource_uuid=nobody");
    assert_eq!(costs(&get(&sim, &range, &token).await), [cost("r1", 19.75)]);
    assert_eq!(want_r1, Some(19.75));
    let march = get(&sim, &format!("{COST}?from=2024-03&to=2024-03&resource_uuid=r1"), &token).await;
    assert!(costs(&march).is_empty());
    // An id asked twice is answered once; a comma-joined list is one unknown id.
    let twice = get(&sim, &format!("{COST}?from=2024-01&to=2024-01&resource_uuid=r1&resource_uuid=r1"), &token).await;
    assert_eq!(costs(&twice), [cost("r1", 12.5)]);
    let comma = get(&sim, &format!("{COST}?from=2024-01&to=2024-01&resource_uuid=r1%2Cr2"), &token).await;
    assert!(costs(&comma).is_empty());

    // Served below the API prefix, like every other endpoint.
    let stats = sim.stats();
    assert_eq!(stats.api_count(COST), 5);
    assert!(stats.recent_urls().contains(&format!("/api/v1{COST}?from=2024-03&to=2024-03&resource_uuid=r1")));
    sim.shutdown().await;
}

#[tokio::test]
async fn generated_inference_matches_its_oracle() {
    let data = DwdiData::generated(6, 1, &[(2024, 1), (2024, 2)]);
    let ids = data.inference_resources();
    assert_eq!(ids.first().map(String::as_str), Some(dwdi_sim::generated_inference_resource(0).as_str()));
    let want: Vec<(String, f64)> =
        ids.iter().filter_map(|id| data.inference_cost(id, (2024, 1), (2024, 2)).map(|c| (id.clone(), c))).collect();
    let sim = start(data).await;
    let token = token(&sim).await;
    let query: String = ids.iter().map(|id| format!("&resource_uuid={id}")).collect();
    let reply = get(&sim, &format!("{COST}?from=2024-01&to=2024-02{query}"), &token).await;
    assert_eq!(costs(&reply), want);
    assert!(!want.is_empty());
    sim.shutdown().await;
}

#[tokio::test]
async fn inference_needs_a_bearer_token_and_get() {
    let sim = start(inference_data()).await;
    let usage = format!("{COST}?from=2024-01&to=2024-01&resource_uuid=r1");
    for target in [usage.as_str(), "/inference/resource/cost?exact-date=2024-01-04"] {
        let none = get(&sim, target, "").await;
        assert_eq!(none.status, 401, "{target}");
        assert_eq!(none.header("www-authenticate"), Some("Bearer"));
        assert_eq!(none.detail(), "Not authenticated");
        assert_eq!(get(&sim, target, "stale").await.status, 401, "{target}");
    }
    let token = token(&sim).await;
    let auth = format!("Bearer {token}");
    let post = send("POST", &format!("{}{usage}", sim.api_url()), &[("Authorization", &auth)], b"").await;
    assert_eq!((post.status, post.header("allow")), (405, Some("GET")));
    assert_eq!(sim.stats().api_unauthorized, 4);
    sim.shutdown().await;
}

#[tokio::test]
async fn inference_reachability_check_answers_no_rows() {
    let sim = start(inference_data()).await;
    let token = token(&sim).await;
    // What the upstream Python client's ping sends: today, no resource.
    let reply = get(&sim, &format!("{COST}?exact-date=2024-01-04"), &token).await;
    assert_eq!(reply.status, 200, "{}", reply.detail());
    assert_eq!(reply.json(), serde_json::json!({ "inference": [] }));
    sim.shutdown().await;
}

#[tokio::test]
async fn inference_bad_parameters_are_400_naming_the_parameter() {
    let sim = start(inference_data()).await;
    let token = token(&sim).await;
    let cases: &[(&str, &str)] = &[
        ("", "from, to, resource_uuid"),
        ("?to=2024-01&resource_uuid=r1", "from"),
        ("?from=2024-01&resource_uuid=r1", "to"),
        ("?from=2024-01&to=2024-01", "resource_uuid"),
        ("?from=2024-1&to=2024-01&resource_uuid=r1", "from"),
        ("?from=2024-01&to=2024-13&resource_uuid=r1", "to"),
        ("?from=2024-01-01&to=2024-01&resource_uuid=r1", "from"),
        ("?from=2024-03&to=2024-01&resource_uuid=r1", "from"),
        ("?from=2024-01&from=2024-01&to=2024-01&resource_uuid=r1", "from"),
        ("?from=2024-01&to=2024-01&to=2024-01&resource_uuid=r1", "to"),
        ("?from=2024-01&to=2024-01&resource_uuid=", "resource_uuid"),
        ("?from=2024-01&to=2024-01&resource_uuid=r1&resource_uuid=", "resource_uuid"),
        ("?from=&to=2024-01&resource_uuid=r1", "from"),
        ("?from=2024-01&to=2024-01&resource_uuids=r1", "resource_uuids"),
        ("?from=2024-01&to=2024-01&resource_uuid=r1&cluster=alps", "cluster"),
        ("?exact-date=2024-01", "exact-date"),
        ("?exact-date=2024-02-30", "exact-date"),
        ("?exact-date=", "exact-date"),
        ("?exact-date=2024-01-01&exact-date=2024-01-02", "exact-date"),
        ("?exact-date=2024-01-01&resource_uuid=r1", "resource_uuid"),
        ("?exact-date=2024-01-01&from=2024-01&to=2024-01", "from, to"),
    ];
    for (query, param) in cases {
        let target = format!("{COST}{query}");
        let reply = get(&sim, &target, &token).await;
        assert_eq!(reply.status, 400, "{target}");
        assert!(reply.detail().contains(param), "{target}: {}", reply.detail());
    }
    assert_eq!(sim.stats().api_bad_requests, cases.len() as u64);
    sim.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// Validation, routing
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn bad_parameters_are_400_naming_the_parameter() {
    let sim = start(small_data()).await;
    let token = token(&sim).await;
    let cases: &[(&str, &str)] = &[
        ("/compute/usage-month/account?to=2024-01&account=a", "from"),
        ("/compute/usage-month/account?from=2024-01&account=a", "to"),
        ("/compute/usage-month/account?from=2024-01&to=2024-01", "account"),
        ("/compute/usage-month/account?from=2024-1&to=2024-01&account=a", "from"),
        ("/compute/usage-month/account?from=2024-01&to=2024-01-31&account=a", "to"),
        ("/compute/usage-month/account?from=2024-03&to=2024-01&account=a", "from"),
        ("/compute/usage-month/account?from=2024-01&from=2024-02&to=2024-03&account=a", "from"),
        ("/compute/usage-month/account?from=2024-01&to=2024-01&account=", "account"),
        ("/compute/usage-month/account?from=2024-01&to=2024-01&accounts=a", "accounts"),
        ("/compute/usage-month/account?from=2024-01&to=2024-01&account=a&clusters=alps", "clusters"),
        ("/compute/usage-day/account?from=2024-01&to=2024-01-02&account=a", "from"),
        ("/compute/usage-day/account?from=2024-02-30&to=2024-03-01&account=a", "from"),
        ("/compute/usage-day/account?from=2024-01-02&to=2024-01-01&account=a", "from"),
        ("/storage/usage-month?filesystem=f&data_type=d&paths=/p", "exact-month"),
        ("/storage/usage-month?exact-month=2024-01&data_type=d&paths=/p", "filesystem"),
        ("/storage/usage-month?exact-month=2024-01&filesystem=f&paths=/p", "data_type"),
        ("/storage/usage-month?exact-month=2024-01&filesystem=f&data_type=d", "paths"),
        ("/storage/usage-month?exact-month=2024-01-01&filesystem=f&data_type=d&paths=/p", "exact-month"),
        ("/storage/usage-month?exact-month=2024-01&filesystem=f&data_type=d&paths=/p&tenant=a&tenant=b", "tenant"),
        ("/storage/usage-day?exact-date=2024-01&filesystem=f&data_type=d&paths=/p", "exact-date"),
        ("/storage/usage-day?exact-month=2024-01&filesystem=f&data_type=d&paths=/p", "exact-month"),
    ];
    for (target, param) in cases {
        let reply = get(&sim, target, &token).await;
        assert_eq!(reply.status, 400, "{target}");
        assert!(reply.detail().contains(param), "{target}: {}", reply.detail());
    }
    assert_eq!(sim.stats().api_bad_requests, cases.len() as u64);
    sim.shutdown().await;
}

#[tokio::test]
async fn reachability_checks_answer_200_when_authorised_and_401_when_not() {
    let sim = start(small_data()).await;
    let token = token(&sim).await;
    // What the upstream Python client's ping and ping_storage send.
    for target in ["/compute/usage-day?from=2024-01-04&to=2024-01-04", "/storage/usage-day?exact-date=2024-01-04"] {
        let reply = get(&sim, target, &token).await;
        assert_eq!(reply.status, 200, "{target}: {}", reply.detail());
        assert_eq!(get(&sim, target, "").await.status, 401, "{target}");
        assert_eq!(get(&sim, target, "stale").await.status, 401, "{target}");
    }
    // Without their parameters, or with others, they are checked like any request.
    for (target, param) in [
        ("/compute/usage-day", "from, to"),
        ("/storage/usage-day", "exact-date"),
        ("/storage/usage-day?exact-date=2024-01-04&paths=/p", "filesystem, data_type"),
        ("/compute/usage-day?from=2024-01&to=2024-01", "date YYYY-MM-DD"),
        ("/compute/usage-day/account?from=2024-01-04&to=2024-01-04", "account"),
    ] {
        let reply = get(&sim, target, &token).await;
        assert_eq!(reply.status, 400, "{target}");
        assert!(reply.detail().contains(param), "{target}: {}", reply.detail());
    }
    sim.shutdown().await;
}

#[tokio::test]
async fn unknown_paths_methods_and_long_targets() {
    let sim = start(DwdiData::new()).await;
    let token = token(&sim).await;
    assert_eq!(get(&sim, "/compute/usage-week/account", &token).await.status, 404);
    assert_eq!(get(&sim, "/compute/usage-month/account/", &token).await.status, 404);
    assert_eq!(get(&sim, "", &token).await.status, 404);
    let auth = format!("Bearer {token}");
    let post = send("POST", &format!("{}{ONE_ACCOUNT}", sim.api_url()), &[("Authorization", &auth)], b"").await;
    assert_eq!(post.status, 405);
    assert_eq!(post.header("allow"), Some("GET"));

    let many: String = (0..1000).map(|i| format!("&account=project_{i:04}")).collect();
    let long = get(&sim, &format!("/compute/usage-month/account?from=2024-01&to=2024-01{many}"), &token).await;
    assert_eq!(long.status, 414);
    let fits: String = (0..300).map(|i| format!("&account=project_{i:04}")).collect();
    assert_eq!(
        get(&sim, &format!("/compute/usage-month/account?from=2024-01&to=2024-01{fits}"), &token).await.status,
        200
    );
    sim.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// Fault injection, latency, data replacement, peers, shutdown
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn fail_next_injects_failures_then_recovers() {
    let sim = start(small_data()).await;
    let token = token(&sim).await;
    sim.fail_next(2, 503);
    sim.respond_next(1, 200, "application/json", "{\"compute\": [tru");
    let first = get(&sim, ONE_ACCOUNT, &token).await;
    assert_eq!(first.status, 503);
    assert_eq!(first.detail(), "injected failure");
    // Injection comes before authentication.
    assert_eq!(get(&sim, ONE_ACCOUNT, "").await.status, 503);
    let garbage = get(&sim, ONE_ACCOUNT, &token).await;
    assert_eq!((garbage.status, garbage.body.as_slice()), (200, &b"{\"compute\": [tru"[..]));
    assert_eq!(get(&sim, ONE_ACCOUNT, &token).await.status, 200);

    sim.fail_next_token(1, 500);
    let form = "grant_type=client_credentials&client_id=dwdi-client&client_secret=dwdi-secret";
    assert_eq!(token_request(&sim, form).await.status, 500);
    assert_eq!(token_request(&sim, form).await.status, 200);
    assert_eq!(sim.stats().injected_failures, 4);
    sim.shutdown().await;
}

#[tokio::test]
async fn latency_applies_to_every_request() {
    let options = DwdiOptions { latency: Duration::from_millis(150), ..DwdiOptions::default() };
    let sim = DwdiSim::start(small_data(), options).await.expect("start");
    let started = Instant::now();
    let token = token(&sim).await;
    assert!(started.elapsed() >= Duration::from_millis(150));
    let started = Instant::now();
    assert_eq!(get(&sim, ONE_ACCOUNT, &token).await.status, 200);
    assert!(started.elapsed() >= Duration::from_millis(150));
    sim.set_latency(Duration::ZERO);
    sim.shutdown().await;
}

#[tokio::test]
async fn set_data_replaces_what_is_served() {
    let sim = start(small_data()).await;
    let token = token(&sim).await;
    assert_eq!(entries(&get(&sim, ONE_ACCOUNT, &token).await).len(), 2);
    let mut data = DwdiData::new();
    data.add_compute("alps", "acct-a", "zoe", "2024-01-31", 9.0, 0.0, 0.0);
    data.add_compute("alps", "acct-a", "zoe", "2024-01-31", 1.0, 0.0, 0.0);
    sim.set_data(data);
    let body = entries(&get(&sim, ONE_ACCOUNT, &token).await);
    assert_eq!(body.len(), 1);
    assert_eq!(body[0]["users"].as_array().map(Vec::len), Some(1), "same key accumulates into one row");
    assert_eq!(body[0]["totalNodeHours"], 10.0);
    sim.shutdown().await;
}

#[tokio::test]
async fn peers_and_request_targets_are_recorded() {
    let sim = start(small_data()).await;
    let token = token(&sim).await;
    let reply = get(&sim, ONE_ACCOUNT, &token).await;
    let stats = sim.stats();
    assert!(stats.peers.contains(&reply.local), "{:?} not in {:?}", reply.local, stats.peers);
    assert_eq!(stats.peers.len(), 2, "one per connection");
    assert_eq!(stats.peer_ips().len(), 1);
    let last = stats.recent.last().expect("recorded");
    assert_eq!(last.uri, format!("/api/v1{ONE_ACCOUNT}"));
    assert_eq!((last.method.as_str(), last.status, last.peer), ("GET", 200, Some(reply.local)));
    assert_eq!(stats.requests_by_path.get(dwdi_sim::TOKEN_PATH), Some(&1));
    sim.reset_stats();
    assert!(sim.stats().recent.is_empty());
    sim.shutdown().await;
}

#[tokio::test]
async fn shutdown_releases_the_port() {
    let sim = start(DwdiData::new()).await;
    let addr = sim.addr();
    sim.shutdown().await;
    assert!(TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn connections_open_at_once_are_counted() {
    let sim = start(small_data()).await;
    let addr = sim.addr();
    // Three connections held open together, then closed.
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(TcpStream::connect(addr).await.expect("connect"));
    }
    // The server counts a connection once it has accepted it: one request on a fourth
    // connection is answered only after the three were accepted (one accept loop).
    let token = token(&sim).await;
    let stats = sim.stats();
    assert_eq!(stats.max_open_connections, 4, "{stats:?}");
    assert!(stats.open_connections >= 3, "{stats:?}");
    drop(held);
    drop(get(&sim, ONE_ACCOUNT, &token).await);
    let deadline = Instant::now() + Duration::from_secs(10);
    while sim.stats().open_connections > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(sim.stats().open_connections, 0, "closed connections are no longer counted");
    sim.reset_stats();
    assert_eq!(sim.stats().max_open_connections, 0, "a reset counts from those still open");
    sim.shutdown().await;
}
