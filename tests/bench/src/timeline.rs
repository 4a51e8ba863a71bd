//! Where a run's time goes: a pass-through TCP proxy in front of the Waldur simulator
//! that notes when each HTTP request starts (its first bytes from the client) and ends
//! (the first bytes of its answer), and an analysis of that timeline against the
//! writes' floor.
//!
//! The host's client sends one request at a time per connection and reads the whole
//! answer before the next (no pipelining), so on each connection a request is the
//! first client bytes after an answer began.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use anyhow::Result;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

/// One request as seen on the wire.
#[derive(Debug, Clone)]
pub struct Event {
    pub start: Instant,
    pub end: Instant,
    pub method: String,
    /// The path with UUIDs replaced by `{uuid}` and without the query.
    pub route: String,
}

impl Event {
    pub fn is_write(&self) -> bool {
        self.method == "POST"
    }

    fn seconds(&self) -> f64 {
        self.end.saturating_duration_since(self.start).as_secs_f64()
    }
}

type Log = Arc<Mutex<Vec<Event>>>;

/// The recording proxy; dropping it leaves the listener task running until the
/// process ends (benchmarks only).
pub struct Recorder {
    addr: SocketAddr,
    log: Log,
}

impl Recorder {
    /// Listens on a free loopback port and forwards every connection to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let log = Log::default();
        let shared = Arc::clone(&log);
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let log = Arc::clone(&shared);
                tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(upstream).await {
                        relay(client, server, log).await;
                    }
                });
            }
        });
        Ok(Self { addr, log })
    }

    /// The API root through the proxy, for `waldur_api_url`.
    pub fn url(&self) -> String {
        format!("http://{}/api/", self.addr)
    }

    /// The requests recorded since the last call.
    pub fn take(&self) -> Vec<Event> {
        std::mem::take(&mut *self.log.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// Copies both ways, noting each request's start and its answer's first bytes.
async fn relay(client: TcpStream, server: TcpStream, log: Log) {
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let pending: Arc<Mutex<Option<(Instant, String, String)>>> = Arc::default();
    let asked = Arc::clone(&pending);
    let upstream = async move {
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            let n = match client_read.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            {
                let mut pending = asked.lock().unwrap_or_else(PoisonError::into_inner);
                if pending.is_none()
                    && let Some((method, route)) = request_line(&buffer[..n])
                {
                    *pending = Some((Instant::now(), method, route));
                }
            }
            if server_write.write_all(&buffer[..n]).await.is_err() {
                break;
            }
        }
        let _ = server_write.shutdown().await;
    };
    let downstream = async move {
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            let n = match server_read.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let answered = pending.lock().unwrap_or_else(PoisonError::into_inner).take();
            if let Some((start, method, route)) = answered {
                let event = Event { start, end: Instant::now(), method, route };
                log.lock().unwrap_or_else(PoisonError::into_inner).push(event);
            }
            if client_write.write_all(&buffer[..n]).await.is_err() {
                break;
            }
        }
        let _ = client_write.shutdown().await;
    };
    tokio::join!(upstream, downstream);
}

/// `("GET", "/api/marketplace-component-usages/")` from the start of a request.
fn request_line(bytes: &[u8]) -> Option<(String, String)> {
    let line = bytes.split(|b| *b == b'\r').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split(' ');
    let method = parts.next()?;
    if !matches!(method, "GET" | "POST" | "PUT" | "PATCH" | "DELETE") {
        return None;
    }
    let path = parts.next()?.split('?').next()?;
    let route: Vec<&str> = path
        .split('/')
        .map(|segment| {
            let hex = segment.chars().filter(|c| *c != '-').collect::<String>();
            if hex.len() == 32 && hex.chars().all(|c| c.is_ascii_hexdigit()) { "{uuid}" } else { segment }
        })
        .collect();
    Some((method.to_owned(), route.join("/")))
}

/// A run's timeline cut into what the floor counts and what it does not.
#[derive(Debug, Clone)]
pub struct Breakdown {
    pub wall: f64,
    /// From the start of the run to the first write request.
    pub head: f64,
    /// The writes at full concurrency, each as long as it actually took.
    pub writes_at_full_concurrency: f64,
    /// Between the first and the last write: write slots left empty, in seconds of the
    /// whole pool (∫ (concurrency − writes in flight) dt ÷ concurrency).
    pub idle_slots: f64,
    /// Of the write span, the time with no write in flight at all.
    pub write_pauses: f64,
    /// From the end of the last write to the end of the run.
    pub tail: f64,
    pub writes: usize,
    /// Median time of one write, and of one read, as the proxy saw them.
    pub median_write_ms: f64,
    pub median_read_ms: f64,
    /// Per route: requests, median ms, and the time (union) with at least one in
    /// flight while no write was: what the pauses and the head and tail waited on.
    pub routes: BTreeMap<String, (usize, f64, f64)>,
    /// Time with no Waldur request in flight at all (component calls, CPU).
    pub no_waldur: f64,
    /// The longest of those stretches: (from s, to s, the request that ended before,
    /// the one that started after).
    pub silences: Vec<(f64, f64, String, String)>,
    /// Requests in flight on average in each twentieth of the run, per route.
    pub profile: BTreeMap<String, Vec<f64>>,
}

/// Analyses the requests of one run that started at `start` and ended at `end`.
pub fn breakdown(events: &[Event], start: Instant, end: Instant, concurrency: usize) -> Breakdown {
    let at = |t: Instant| t.saturating_duration_since(start).as_secs_f64();
    let wall = at(end);
    let writes: Vec<&Event> = events.iter().filter(|e| e.is_write()).collect();
    let first_write = writes.iter().map(|e| at(e.start)).fold(f64::INFINITY, f64::min);
    let last_write = writes.iter().map(|e| at(e.end)).fold(0.0, f64::max);
    let (head, tail) = if writes.is_empty() { (wall, 0.0) } else { (first_write, (wall - last_write).max(0.0)) };
    let concurrency = concurrency.max(1) as f64;
    let written = writes.iter().map(|e| e.seconds()).fold(0.0, |sum, s| sum + s);
    // Sweep over write starts and ends: time at each number of writes in flight.
    let mut edges: Vec<(f64, i32)> = writes.iter().flat_map(|e| [(at(e.start), 1), (at(e.end), -1)]).collect();
    edges.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let (mut idle, mut pauses, mut in_flight, mut last) = (0.0, 0.0, 0i32, first_write);
    for (t, delta) in &edges {
        let span = t - last;
        if span > 0.0 {
            idle += (concurrency - f64::from(in_flight)).max(0.0) * span / concurrency;
            if in_flight == 0 {
                pauses += span;
            }
        }
        in_flight += delta;
        last = *t;
    }
    // Intervals with no write in flight: the head, the pauses, the tail.
    let mut no_write: Vec<(f64, f64)> = Vec::new();
    let mut cursor = 0.0;
    let mut depth = 0;
    for (t, delta) in &edges {
        if depth == 0 && *delta > 0 && *t > cursor {
            no_write.push((cursor, *t));
        }
        depth += delta;
        if depth == 0 {
            cursor = *t;
        }
    }
    if cursor < wall {
        no_write.push((cursor, wall));
    }
    let mut routes: BTreeMap<String, Vec<&Event>> = BTreeMap::new();
    for event in events {
        routes.entry(format!("{} {}", event.method, event.route)).or_default().push(event);
    }
    let routes = routes
        .into_iter()
        .map(|(route, list)| {
            let mut ms: Vec<f64> = list.iter().map(|e| e.seconds() * 1000.0).collect();
            let median = crate::median(&mut ms);
            let intervals: Vec<(f64, f64)> = list.iter().map(|e| (at(e.start), at(e.end))).collect();
            let waited = overlap(&union(intervals), &no_write);
            (route, (list.len(), median, waited))
        })
        .collect();
    let all = union(events.iter().map(|e| (at(e.start), at(e.end))).collect());
    let busy: f64 = all.iter().map(|(a, b)| b.min(wall) - a.max(0.0)).filter(|d| *d > 0.0).sum();
    let named = |e: &Event| format!("{} {}", e.method, e.route);
    let mut gaps: Vec<(f64, f64)> = std::iter::once(0.0)
        .chain(all.iter().map(|(_, b)| *b))
        .zip(all.iter().map(|(a, _)| *a).chain(std::iter::once(wall)))
        .filter(|(a, b)| b - a > 0.0)
        .collect();
    gaps.sort_by(|x, y| (y.1 - y.0).total_cmp(&(x.1 - x.0)));
    let silences = gaps
        .into_iter()
        .take(8)
        .map(|(from, to)| {
            let before = events.iter().filter(|e| at(e.end) <= from + 1e-9).max_by(|x, y| x.end.cmp(&y.end));
            let after = events.iter().filter(|e| at(e.start) >= to - 1e-9).min_by(|x, y| x.start.cmp(&y.start));
            (from, to, before.map_or_else(|| "start".to_owned(), named), after.map_or_else(|| "end".to_owned(), named))
        })
        .collect();
    let slice = wall / 20.0;
    let mut profile: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for event in events {
        let row = profile.entry(named(event)).or_insert_with(|| vec![0.0; 20]);
        for (i, share) in row.iter_mut().enumerate() {
            let (lo, hi) = (slice * i as f64, slice * (i + 1) as f64);
            if slice > 0.0 {
                *share += (at(event.end).min(hi) - at(event.start).max(lo)).max(0.0) / slice;
            }
        }
    }
    let mut write_ms: Vec<f64> = writes.iter().map(|e| e.seconds() * 1000.0).collect();
    let mut read_ms: Vec<f64> = events.iter().filter(|e| !e.is_write()).map(|e| e.seconds() * 1000.0).collect();
    Breakdown {
        wall,
        head,
        writes_at_full_concurrency: written / concurrency,
        idle_slots: idle,
        write_pauses: pauses,
        tail,
        writes: writes.len(),
        median_write_ms: crate::median(&mut write_ms),
        median_read_ms: crate::median(&mut read_ms),
        routes,
        no_waldur: (wall - busy).max(0.0),
        silences,
        profile,
    }
}

impl Breakdown {
    /// The breakdown as Markdown lines.
    pub fn markdown(&self, title: &str) -> String {
        let mut out = if self.writes == 0 {
            format!(
                "{title}: wall {:.3} s, no write; reads median {:.2} ms. No Waldur request in flight for {:.3} s.\n\n",
                self.wall, self.median_read_ms, self.no_waldur
            )
        } else {
            self.with_writes(title)
        };
        out.push_str("Requests in flight on average, each twentieth of the run:\n\n");
        for (route, shares) in &self.profile {
            let shares: Vec<String> = shares.iter().map(|w| format!("{w:4.1}")).collect();
            out.push_str(&format!("    {} {route}\n", shares.join(" ")));
        }
        out.push('\n');
        out.push_str("Longest stretches with no Waldur request in flight:\n\n");
        for (from, to, before, after) in &self.silences {
            out.push_str(&format!(
                "- {:.3}–{:.3} s ({:.1} ms), after `{before}`, before `{after}`\n",
                from,
                to,
                (to - from) * 1000.0
            ));
        }
        out.push('\n');
        out.push_str("| route | requests | median ms | s in flight while no write was |\n|---|---:|---:|---:|\n");
        for (route, (count, median, waited)) in &self.routes {
            out.push_str(&format!("| `{route}` | {count} | {median:.2} | {waited:.3} |\n"));
        }
        out
    }

    fn with_writes(&self, title: &str) -> String {
        format!(
            "{title}: wall {:.3} s = head {:.3} s (before the first write) + writes at full concurrency {:.3} s ({} writes, median {:.2} ms each; reads median {:.2} ms) + idle write slots {:.3} s (of which {:.3} s with no write in flight) + tail {:.3} s (after the last write). No Waldur request in flight for {:.3} s.\n\n",
            self.wall,
            self.head,
            self.writes_at_full_concurrency,
            self.writes,
            self.median_write_ms,
            self.median_read_ms,
            self.idle_slots,
            self.write_pauses,
            self.tail,
            self.no_waldur,
        )
    }
}

/// Sorted, merged intervals.
fn union(mut intervals: Vec<(f64, f64)>) -> Vec<(f64, f64)> {
    intervals.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut merged: Vec<(f64, f64)> = Vec::new();
    for (a, b) in intervals {
        match merged.last_mut() {
            Some(last) if a <= last.1 => last.1 = last.1.max(b),
            _ => merged.push((a, b)),
        }
    }
    merged
}

/// Total length of the intersection of two sorted, merged interval lists.
fn overlap(a: &[(f64, f64)], b: &[(f64, f64)]) -> f64 {
    let (mut i, mut j, mut total) = (0, 0, 0.0);
    while i < a.len() && j < b.len() {
        let lo = a[i].0.max(b[j].0);
        let hi = a[i].1.min(b[j].1);
        if hi > lo {
            total += hi - lo;
        }
        if a[i].1 < b[j].1 {
            i += 1;
        } else {
            j += 1;
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn routes_hide_uuids_and_queries() {
        let line = b"POST /api/marketplace-component-usages/0123456789abcdef0123456789abcdef/set_user_usages/ HTTP/1.1\r\nHost: x\r\n\r\n";
        assert_eq!(
            request_line(line),
            Some(("POST".to_owned(), "/api/marketplace-component-usages/{uuid}/set_user_usages/".to_owned()))
        );
        assert_eq!(
            request_line(b"GET /api/marketplace-component-usages/?page=2 HTTP/1.1\r\n"),
            Some(("GET".to_owned(), "/api/marketplace-component-usages/".to_owned()))
        );
        assert_eq!(request_line(b"{\"usages\": []}"), None);
    }

    #[test]
    fn a_run_splits_into_head_writes_idle_slots_and_tail() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let event =
            |a, b, method: &str| Event { start: ms(a), end: ms(b), method: method.to_owned(), route: "/r/".into() };
        // A read 0–10, two writes 10–20 in parallel, a read 20–30, one write 30–40, end 50.
        let events = [
            event(0, 10, "GET"),
            event(10, 20, "POST"),
            event(10, 20, "POST"),
            event(20, 30, "GET"),
            event(30, 40, "POST"),
        ];
        let b = breakdown(&events, t0, ms(50), 2);
        let close = |a: f64, b: f64| (a - b).abs() < 1e-6;
        assert!(close(b.head, 0.010) && close(b.tail, 0.010), "{b:?}");
        assert!(close(b.writes_at_full_concurrency, 0.015), "{b:?}");
        // 20–30: both slots idle (0.010); 30–40: one of two (0.005).
        assert!(close(b.idle_slots, 0.015) && close(b.write_pauses, 0.010), "{b:?}");
        assert!(close(b.head + b.writes_at_full_concurrency + b.idle_slots + b.tail, b.wall), "{b:?}");
        assert!(close(b.routes["GET /r/"].2, 0.020), "{b:?}");
        assert!(close(b.no_waldur, 0.010), "{b:?}");
    }
}
