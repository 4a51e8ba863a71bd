//! The real Waldur MasterMind (Django, PostgreSQL) on loopback, for tests that check the
//! agent against the server it talks to in production rather than the simulator.
//!
//! `tests/real-waldur/setup` builds it once per source tarball (slow: a venv and about
//! seven minutes of migrations, kept in a cache); [`RealWaldur::start`] runs
//! `tests/real-waldur/serve` in a temp dir, which copies the migrated database, starts
//! PostgreSQL and `waldur runserver` on free ports and prints `READY URL`. Dropping the
//! [`RealWaldur`] stops both (SIGTERM, and serve also stops when its stdin closes, so a
//! test that dies leaves nothing behind). [`RealWaldur::seed`] creates users, offerings,
//! resources and offering users through the ORM (`tests/real-waldur/seed`); the read-back
//! helpers go through Waldur's HTTP API with the staff token of the last seed.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpStream;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Mutex;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::Value;

/// How long `serve` may take to answer READY (copy, PostgreSQL, Django start-up) on a
/// busy 2-core machine.
const START_TIMEOUT: Duration = Duration::from_secs(300);
/// How long one HTTP request to the test Waldur may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
/// Waldur's largest page.
pub const MAX_PAGE_SIZE: usize = 300;

/// `tests/real-waldur/` in the repository.
pub fn scripts_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../real-waldur")
}

/// A running test Waldur.
pub struct RealWaldur {
    child: Child,
    stdin: Option<ChildStdin>,
    dir: tempfile::TempDir,
    api_url: String,
    db_port: u16,
    staff_token: Mutex<Option<String>>,
}

/// One HTTP answer.
#[derive(Debug, Clone)]
pub struct HttpAnswer {
    pub status: u16,
    /// Header names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpAnswer {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers.iter().find(|(k, _)| *k == name).map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Result<Value> {
        serde_json::from_slice(&self.body)
            .with_context(|| format!("HTTP {} answer is not JSON: {}", self.status, self.text()))
    }
}

impl RealWaldur {
    /// Starts `tests/real-waldur/serve` in a new temp dir and waits for READY. Fails with
    /// what to do when `tests/real-waldur/setup` has not been run.
    pub fn start() -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let state = dir.path().join("state");
        let stderr_path = dir.path().join("serve.stderr");
        let serve = scripts_dir().join("serve");
        let mut child = Command::new(&serve)
            .arg(&state)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr_path)?)
            // Its own process group, so a kill on drop reaches nothing else.
            .process_group(0)
            .spawn()
            .with_context(|| format!("cannot start {}", serve.display()))?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().context("no stdout")?;
        let (lines, ready) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if lines.send(line).is_err() {
                    break;
                }
            }
        });
        let mut waldur = Self { child, stdin, dir, api_url: String::new(), db_port: 0, staff_token: Mutex::new(None) };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            match ready.recv_timeout(Duration::from_millis(200)) {
                Ok(line) => {
                    if let Some(rest) = line.strip_prefix("READY ") {
                        let mut words = rest.split_whitespace();
                        waldur.api_url = words.next().context("READY without a URL")?.to_owned();
                        waldur.db_port =
                            words.find_map(|w| w.strip_prefix("db_port=")).and_then(|p| p.parse().ok()).unwrap_or(0);
                        return Ok(waldur);
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = waldur.child.wait()?;
                    bail!(
                        "tests/real-waldur/serve exited ({status}) before READY{}:\n{}",
                        if status.code() == Some(2) {
                            " (run tests/real-waldur/setup once; tests/run-all does)"
                        } else {
                            ""
                        },
                        waldur.log()
                    );
                }
            }
            if let Some(status) = waldur.child.try_wait()? {
                bail!("tests/real-waldur/serve exited ({status}) before READY:\n{}", waldur.log());
            }
            if Instant::now() > deadline {
                bail!("tests/real-waldur/serve was not READY within {START_TIMEOUT:?}:\n{}", waldur.log());
            }
        }
    }

    /// `http://127.0.0.1:PORT/api/`.
    pub fn api_url(&self) -> &str {
        &self.api_url
    }

    /// The port of its PostgreSQL (database `waldur`, user `waldur`, no password).
    pub fn db_port(&self) -> u16 {
        self.db_port
    }

    /// The folder serve runs in (data directory, logs, `env`).
    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// serve's stderr and the ends of the PostgreSQL and Waldur logs.
    pub fn log(&self) -> String {
        let tail = |path: PathBuf| {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            format!("--- {}\n{}\n", path.display(), lines[lines.len().saturating_sub(60)..].join("\n"))
        };
        let state = self.state_dir();
        [self.dir.path().join("serve.stderr"), state.join("waldur.log"), state.join("postgres.log")]
            .into_iter()
            .map(tail)
            .collect()
    }

    /// Runs `tests/real-waldur/seed` with `spec` (see seed.py) and returns its answer;
    /// keeps the staff token for the read-back helpers.
    pub fn seed(&self, spec: &Value) -> Result<Value> {
        let seed = scripts_dir().join("seed");
        let mut child = Command::new(&seed)
            .arg(self.state_dir())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {}", seed.display()))?;
        child.stdin.take().context("no stdin")?.write_all(spec.to_string().as_bytes())?;
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!("tests/real-waldur/seed failed ({}):\n{}", out.status, String::from_utf8_lossy(&out.stderr));
        }
        let answer: Value = serde_json::from_slice(&out.stdout)
            .with_context(|| format!("seed printed no JSON: {}", String::from_utf8_lossy(&out.stdout)))?;
        if let Some(token) = answer.pointer("/staff/token").and_then(Value::as_str) {
            *self.staff_token.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(token.to_owned());
        }
        Ok(answer)
    }

    /// The staff token of the last seed.
    pub fn staff_token(&self) -> Result<String> {
        self.staff_token
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
            .context("no staff token yet: seed first")
    }

    /// `METHOD path` (relative to `/api/`, query included) with `Token token`, and a JSON
    /// body if given.
    pub fn request(&self, method: &str, token: &str, path: &str, body: Option<&Value>) -> Result<HttpAnswer> {
        let url = if path.starts_with("http") { path.to_owned() } else { format!("{}{}", self.api_url, path) };
        http_request(method, &url, Some(token), body)
    }

    pub fn get(&self, token: &str, path: &str) -> Result<HttpAnswer> {
        self.request("GET", token, path, None)
    }

    pub fn post(&self, token: &str, path: &str, body: &Value) -> Result<HttpAnswer> {
        self.request("POST", token, path, Some(body))
    }

    /// Every row of a listing (`path` with its query, without paging), pages of
    /// [`MAX_PAGE_SIZE`], as `token` sees it.
    pub fn list_as(&self, token: &str, path: &str) -> Result<Vec<Value>> {
        let separator = if path.contains('?') { '&' } else { '?' };
        let mut rows = Vec::new();
        for page in 1.. {
            let answer = self.get(token, &format!("{path}{separator}page={page}&page_size={MAX_PAGE_SIZE}"))?;
            if answer.status != 200 {
                bail!("GET {path} page {page}: HTTP {}: {}", answer.status, answer.text());
            }
            let Value::Array(items) = answer.json()? else { bail!("GET {path}: not a list: {}", answer.text()) };
            let count = items.len();
            rows.extend(items);
            let total = answer.header("x-result-count").and_then(|v| v.trim().parse::<usize>().ok());
            let done = match total {
                Some(total) => rows.len() >= total,
                None => count < MAX_PAGE_SIZE,
            };
            if done || count == 0 {
                break;
            }
        }
        Ok(rows)
    }

    /// [`RealWaldur::list_as`] with the staff token.
    pub fn list(&self, path: &str) -> Result<Vec<Value>> {
        self.list_as(&self.staff_token()?, path)
    }

    /// The component usages of an offering in one billing period (`YYYY-MM-01`).
    pub fn component_usages(&self, offering_uuid: &str, billing_period: &str) -> Result<Vec<Value>> {
        self.list(&format!(
            "marketplace-component-usages/?offering_uuid={offering_uuid}&billing_period={billing_period}"
        ))
    }

    /// The per-user usages of an offering in one billing period (`YYYY-MM-01`): rows with
    /// `username`, `usage`, `user` (an offering-user URL or null) and `component_usage`.
    pub fn component_user_usages(&self, offering_uuid: &str, billing_period: &str) -> Result<Vec<Value>> {
        self.list(&format!(
            "marketplace-component-user-usages/?offering_uuid={offering_uuid}&component_usage__billing_period={billing_period}"
        ))
    }
}

impl Drop for RealWaldur {
    fn drop(&mut self) {
        // SIGTERM and end of stdin both make serve stop PostgreSQL and Waldur; a serve
        // that does not end in time is killed, and its servers die with it.
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).stderr(Stdio::null()).status();
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ =
            Command::new("kill").args(["-KILL", "--", &format!("-{}", self.child.id())]).stderr(Stdio::null()).status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The current billing period, `YYYY-MM-01`, in UTC (Waldur's TIME_ZONE here).
pub fn current_billing_period() -> String {
    let now = jiff::Timestamp::now().to_zoned(jiff::tz::TimeZone::UTC);
    format!("{:04}-{:02}-01", now.year(), now.month())
}

/// One HTTP/1.1 request over plain TCP (the test Waldur listens on loopback only).
pub fn http_request(method: &str, url: &str, token: Option<&str>, body: Option<&Value>) -> Result<HttpAnswer> {
    let rest = url.strip_prefix("http://").with_context(|| format!("not an http:// URL: {url}"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let mut stream = TcpStream::connect(authority).with_context(|| format!("cannot connect to {authority}"))?;
    stream.set_read_timeout(Some(REQUEST_TIMEOUT))?;
    stream.set_write_timeout(Some(REQUEST_TIMEOUT))?;
    let payload = body.map(Value::to_string).unwrap_or_default();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {authority}\r\nAccept: application/json\r\nConnection: close\r\nContent-Length: {}\r\n",
        payload.len()
    );
    if body.is_some() {
        head.push_str("Content-Type: application/json\r\n");
    }
    if let Some(token) = token {
        head.push_str(&format!("Authorization: Token {token}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    stream.write_all(payload.as_bytes())?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).with_context(|| format!("reading the answer to {method} {url}"))?;
    parse_answer(&raw).with_context(|| format!("{method} {url}"))
}

fn parse_answer(raw: &[u8]) -> Result<HttpAnswer> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").context("no end of headers")?;
    let head = String::from_utf8_lossy(&raw[..end]);
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad status line {status_line:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let mut body = raw[end + 4..].to_vec();
    if headers.iter().any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked")) {
        body = dechunk(&body)?;
    }
    Ok(HttpAnswer { status, headers, body })
}

fn dechunk(mut data: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = data.windows(2).position(|w| w == b"\r\n").context("bad chunk")?;
        let size_text = String::from_utf8_lossy(&data[..line_end]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        out.extend_from_slice(data.get(..size).context("short chunk")?);
        data = data.get(size + 2..).unwrap_or_default();
    }
}
