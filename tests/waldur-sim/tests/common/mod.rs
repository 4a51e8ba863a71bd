//! What the HTTP tests share: a minimal HTTP/1.1 client over real sockets, so nothing
//! between a test and the server hides a wire-level detail, and a small fixture.

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use waldur_sim::{WaldurOptions, WaldurSim, uuid_from};

pub(crate) const TOKEN: &str = "agent-token";
pub(crate) const STAFF: &str = "staff-token";

pub(crate) struct Resp {
    pub(crate) status: u16,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: Vec<u8>,
}

impl Resp {
    pub(crate) fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }

    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The URL of `rel` in the `Link` header.
    pub(crate) fn link(&self, rel: &str) -> Option<String> {
        let header = self.header("link")?;
        header.split(", ").find_map(|part| {
            let (url, param) = part.split_once("; ")?;
            (param == format!("rel=\"{rel}\"")).then(|| url.trim_start_matches('<').trim_end_matches('>').to_owned())
        })
    }
}

/// One request on a fresh connection; `url` is absolute (`http://host:port/path?query`).
pub(crate) async fn raw(method: &str, url: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
    let rest = url.strip_prefix("http://").expect("http URL");
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let mut stream = TcpStream::connect(host).await.expect("connect");
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await.expect("write head");
    stream.write_all(body).await.expect("write body");
    let mut received = Vec::new();
    stream.read_to_end(&mut received).await.expect("read");
    parse_response(&received)
}

fn parse_response(bytes: &[u8]) -> Resp {
    let split = bytes.windows(4).position(|w| w == b"\r\n\r\n").expect("end of headers");
    let head = String::from_utf8_lossy(&bytes[..split]).to_string();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().expect("status line");
    let status: u16 = status_line.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("status code");
    let headers: Vec<(String, String)> =
        lines.filter_map(|l| l.split_once(": ").map(|(k, v)| (k.to_owned(), v.to_owned()))).collect();
    let mut body = bytes[split + 4..].to_vec();
    let chunked = headers.iter().any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    if chunked {
        let mut out = Vec::new();
        let mut rest = &body[..];
        loop {
            let line_end = rest.windows(2).position(|w| w == b"\r\n").expect("chunk size");
            let size = usize::from_str_radix(std::str::from_utf8(&rest[..line_end]).expect("utf8").trim(), 16)
                .expect("hex size");
            rest = &rest[line_end + 2..];
            if size == 0 {
                break;
            }
            out.extend_from_slice(&rest[..size]);
            rest = &rest[size + 2..];
        }
        body = out;
    }
    Resp { status, headers, body }
}

pub(crate) async fn get(url: &str, token: &str) -> Resp {
    let auth = format!("Token {token}");
    raw("GET", url, &[("Authorization", &auth)], b"").await
}

pub(crate) async fn post(url: &str, token: &str, body: &Value) -> Resp {
    let auth = format!("Token {token}");
    raw("POST", url, &[("Authorization", &auth), ("Content-Type", "application/json")], body.to_string().as_bytes())
        .await
}

/// A simulator with an agent token, a staff token, one offering (node_hours, cpu_hours)
/// and two OK resources, pinned to 2024-03-15.
pub(crate) struct Fixture {
    pub(crate) sim: WaldurSim,
    pub(crate) offering: String,
    pub(crate) res1: String,
    pub(crate) res2: String,
}

impl Fixture {
    pub(crate) async fn new() -> Fixture {
        Fixture::with(WaldurOptions::default()).await
    }

    pub(crate) async fn with(options: WaldurOptions) -> Fixture {
        let sim = WaldurSim::start(options).await.expect("start");
        sim.add_token(TOKEN, "agent", false);
        sim.add_token(STAFF, "admin", true);
        sim.set_today(2024, 3, 15);
        let offering = uuid_from("offering");
        sim.add_offering(&offering, "Alps compute", &["node_hours", "cpu_hours"]);
        let res1 = uuid_from("res1");
        let res2 = uuid_from("res2");
        sim.add_resource(&offering, &res1, "account1", "Alps", "OK");
        sim.add_resource(&offering, &res2, "account2", "Alps", "OK");
        Fixture { sim, offering, res1, res2 }
    }

    pub(crate) fn url(&self, tail: &str) -> String {
        format!("{}{tail}", self.sim.url())
    }

    pub(crate) async fn set_usage(&self, token: &str, body: Value) -> Resp {
        post(&self.url("marketplace-component-usages/set_usage/"), token, &body).await
    }
}
