//! Prometheus metrics: counters, gauges and latency histograms kept in memory and
//! served in the text exposition format.
//!
//! One process-wide registry, because what is counted happens in every module (egress,
//! the Waldur client, the report cycle, the plugin watcher) and threading a handle
//! through all of them would buy nothing. Labels carry offering names, backend types,
//! endpoints (paths without queries) and statuses — never a secret, a token or a URL
//! query.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use anyhow::{Context as _, Result};

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: &[f64] = &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

type Labels = Vec<(&'static str, String)>;

#[derive(Default)]
struct Histogram {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

#[derive(Default)]
struct Families {
    help: BTreeMap<&'static str, (&'static str, &'static str)>,
    counters: BTreeMap<(&'static str, Labels), f64>,
    gauges: BTreeMap<(&'static str, Labels), f64>,
    histograms: BTreeMap<(&'static str, Labels), Histogram>,
}

/// The registry.
pub struct Metrics {
    families: Mutex<Families>,
}

/// The process-wide registry.
pub fn global() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(|| Metrics { families: Mutex::new(Families::default()) })
}

fn labels(pairs: &[(&'static str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| (*k, (*v).to_owned())).collect()
}

impl Metrics {
    fn with<R>(&self, f: impl FnOnce(&mut Families) -> R) -> R {
        let mut families = match self.families.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        f(&mut families)
    }

    /// Adds `by` to a counter.
    pub fn add(&self, name: &'static str, help: &'static str, pairs: &[(&'static str, &str)], by: f64) {
        self.with(|f| {
            f.help.insert(name, ("counter", help));
            *f.counters.entry((name, labels(pairs))).or_default() += by;
        });
    }

    /// Adds one to a counter.
    pub fn inc(&self, name: &'static str, help: &'static str, pairs: &[(&'static str, &str)]) {
        self.add(name, help, pairs, 1.0);
    }

    /// Sets a gauge.
    pub fn set(&self, name: &'static str, help: &'static str, pairs: &[(&'static str, &str)], value: f64) {
        self.with(|f| {
            f.help.insert(name, ("gauge", help));
            f.gauges.insert((name, labels(pairs)), value);
        });
    }

    /// Removes every gauge of `name` whose labels include `pair` (a replaced plugin).
    pub fn clear_gauges(&self, name: &'static str, pair: (&'static str, &str)) {
        self.with(|f| {
            f.gauges.retain(|(n, l), _| !(*n == name && l.iter().any(|(k, v)| *k == pair.0 && v == pair.1)));
        });
    }

    /// Records one latency observation.
    pub fn observe(&self, name: &'static str, help: &'static str, pairs: &[(&'static str, &str)], elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        self.with(|f| {
            f.help.insert(name, ("histogram", help));
            let histogram = f.histograms.entry((name, labels(pairs))).or_default();
            if histogram.counts.is_empty() {
                histogram.counts = vec![0; BUCKETS.len()];
            }
            for (slot, bound) in histogram.counts.iter_mut().zip(BUCKETS) {
                if seconds <= *bound {
                    *slot += 1;
                }
            }
            histogram.sum += seconds;
            histogram.count += 1;
        });
    }

    /// Everything, in the Prometheus text format.
    pub fn render(&self) -> String {
        self.with(|f| {
            let mut out = String::new();
            for (name, (kind, help)) in &f.help {
                let _ = writeln!(out, "# HELP {name} {help}");
                let _ = writeln!(out, "# TYPE {name} {kind}");
                match *kind {
                    "counter" => {
                        for ((n, l), v) in f.counters.iter().filter(|((n, _), _)| n == name) {
                            let _ = writeln!(out, "{n}{} {v}", render_labels(l, None));
                        }
                    }
                    "gauge" => {
                        for ((n, l), v) in f.gauges.iter().filter(|((n, _), _)| n == name) {
                            let _ = writeln!(out, "{n}{} {v}", render_labels(l, None));
                        }
                    }
                    _ => {
                        for ((n, l), h) in f.histograms.iter().filter(|((n, _), _)| n == name) {
                            for (bound, count) in BUCKETS.iter().zip(&h.counts) {
                                let _ =
                                    writeln!(out, "{n}_bucket{} {count}", render_labels(l, Some(&bound.to_string())));
                            }
                            let _ = writeln!(out, "{n}_bucket{} {}", render_labels(l, Some("+Inf")), h.count);
                            let _ = writeln!(out, "{n}_sum{} {}", render_labels(l, None), h.sum);
                            let _ = writeln!(out, "{n}_count{} {}", render_labels(l, None), h.count);
                        }
                    }
                }
            }
            out
        })
    }
}

fn render_labels(labels: &Labels, le: Option<&str>) -> String {
    let mut parts: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{}\"", escape(v))).collect();
    if let Some(le) = le {
        parts.push(format!("le=\"{le}\""));
    }
    if parts.is_empty() { String::new() } else { format!("{{{}}}", parts.join(",")) }
}

fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Serves `GET /metrics` on `addr` until the process ends; returns the bound address.
pub async fn serve(addr: SocketAddr) -> Result<SocketAddr> {
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;

    let listener =
        tokio::net::TcpListener::bind(addr).await.with_context(|| format!("metrics: cannot listen on {addr}"))?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            tokio::spawn(async move {
                let service = service_fn(|request: hyper::Request<hyper::body::Incoming>| async move {
                    let (status, body) = if request.uri().path() == "/metrics" {
                        (200, global().render())
                    } else {
                        (404, "not found: try /metrics\n".to_owned())
                    };
                    hyper::Response::builder()
                        .status(status)
                        .header("content-type", "text/plain; version=0.0.4")
                        .body(http_body_util::Full::new(bytes::Bytes::from(body)))
                });
                let _ =
                    hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
            });
        }
    });
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_text_format() {
        let metrics = Metrics { families: Mutex::new(Families::default()) };
        metrics.inc("t_requests_total", "Requests.", &[("endpoint", "/a"), ("status", "200")]);
        metrics.inc("t_requests_total", "Requests.", &[("endpoint", "/a"), ("status", "200")]);
        metrics.set("t_version", "Version.", &[("v", "1\"2")], 1.0);
        metrics.observe("t_latency_seconds", "Latency.", &[("endpoint", "/a")], Duration::from_millis(30));
        let text = metrics.render();
        assert!(
            text.contains("# TYPE t_requests_total counter\nt_requests_total{endpoint=\"/a\",status=\"200\"} 2\n"),
            "{text}"
        );
        assert!(text.contains("t_version{v=\"1\\\"2\"} 1"), "{text}");
        assert!(text.contains("t_latency_seconds_bucket{endpoint=\"/a\",le=\"0.025\"} 0"), "{text}");
        assert!(text.contains("t_latency_seconds_bucket{endpoint=\"/a\",le=\"0.05\"} 1"), "{text}");
        assert!(text.contains("t_latency_seconds_count{endpoint=\"/a\"} 1"), "{text}");
    }
}
