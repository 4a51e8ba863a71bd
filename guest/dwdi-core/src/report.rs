//! HTTP answers → a usage report in Waldur's units.

use crate::metric::{Backend, Metric};
use crate::model::{Amount, BackendError, HttpAnswer, ResourceUsage, UsageReport, UserUsage};
use crate::parse::{self, Usage};
use crate::plan::{Plan, Request};

/// How much of an error body goes into a message: enough for a server's error text,
/// not enough to flood a log with an HTML page.
const MESSAGE_CHARS: usize = 200;

/// Turns the answers to `plan.requests()` (same order) into a report: one entry per
/// requested resource, in request order. Any failed answer fails the whole report, so
/// the host never submits a mix of fresh and missing numbers for one offering.
pub fn assemble(plan: &Plan, answers: &[HttpAnswer]) -> Result<UsageReport, BackendError> {
    if answers.len() != plan.requests.len() {
        return Err(BackendError::Transport(format!("{} answers for {} requests", answers.len(), plan.requests.len())));
    }
    // Statuses first: a refused token explains more than a parse error elsewhere.
    for (request, answer) in plan.requests.iter().zip(answers) {
        check_status(request, answer)?;
    }
    let mut metrics: Vec<Metric> = Vec::new();
    for c in &plan.components {
        if !metrics.contains(&c.metric) {
            metrics.push(c.metric);
        }
    }
    let mut found: Vec<Vec<Option<Usage>>> = Vec::with_capacity(answers.len());
    for (request, answer) in plan.requests.iter().zip(answers) {
        let parsed = match plan.backend {
            Backend::Compute => parse::compute(&answer.body, request.keys(), &metrics),
            Backend::Storage => parse::storage(&answer.body, request.keys(), &metrics),
            Backend::Inference => parse::inference(&answer.body, request.keys(), &metrics),
        };
        found.push(parsed.map_err(|e| in_answer_of(request, e))?);
    }

    let resources = plan
        .slots
        .iter()
        .map(|slot| {
            let usage = slot.source.and_then(|(r, k)| found[r][k].as_ref());
            resource_usage(plan, &slot.backend_id, usage)
        })
        .collect();
    Ok(UsageReport { resources, upstream_requests: u32::try_from(plan.requests.len()).unwrap_or(u32::MAX) })
}

/// Ping succeeds only on a success (2xx), as every other request: a 404 at a mistyped
/// API URL or a 400 for a query DWDI no longer takes is as broken as a 500. The body is
/// not read: a day without usage is a fine answer.
pub fn check_ping(request: &Request, answer: &HttpAnswer) -> Result<(), BackendError> {
    check_status(request, answer)
}

/// 2xx passes; 401/403 is a credentials problem; anything else is reported with the
/// start of the body.
pub(crate) fn check_status(request: &Request, answer: &HttpAnswer) -> Result<(), BackendError> {
    match answer.status {
        200..=299 => Ok(()),
        401 | 403 => Err(unauthorized(request, answer)),
        _ => Err(upstream_status(request, answer)),
    }
}

fn unauthorized(request: &Request, answer: &HttpAnswer) -> BackendError {
    let mut message = format!("DWDI refused the credentials (HTTP {}) at {}", answer.status, request.endpoint());
    let body = body_start(&answer.body);
    if !body.is_empty() {
        message.push_str(": ");
        message.push_str(&body);
    }
    BackendError::Unauthorized(message)
}

fn upstream_status(request: &Request, answer: &HttpAnswer) -> BackendError {
    BackendError::UpstreamStatus {
        endpoint: request.endpoint().to_owned(),
        status: answer.status,
        message: body_start(&answer.body),
    }
}

/// The first [`MESSAGE_CHARS`] characters of a body, whitespace runs folded so a
/// multi-line page stays one log line.
pub(crate) fn body_start(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let mut out = String::new();
    let mut taken = 0;
    for word in text.split_whitespace() {
        let sep = usize::from(!out.is_empty());
        let room = MESSAGE_CHARS.saturating_sub(taken + sep);
        if room == 0 {
            out.push('…');
            return out;
        }
        if sep == 1 {
            out.push(' ');
        }
        let count = word.chars().count();
        if count > room {
            out.extend(word.chars().take(room));
            out.push('…');
            return out;
        }
        out.push_str(word);
        taken += sep + count;
    }
    out
}

/// Prefixes a parse error with the endpoint, so the operator knows which call it was.
fn in_answer_of(request: &Request, error: BackendError) -> BackendError {
    match error {
        BackendError::BadResponse(m) => BackendError::BadResponse(format!("{}: {m}", request.endpoint())),
        other => other,
    }
}

fn resource_usage(plan: &Plan, backend_id: &str, usage: Option<&Usage>) -> ResourceUsage {
    let amounts = |values: &parse::Values, per_user: bool| {
        plan.components
            .iter()
            .filter(|c| !per_user || c.metric.user_field().is_some())
            .map(|c| Amount { component: c.name.clone(), value: values[c.metric.index()] * c.factor })
            .collect::<Vec<_>>()
    };
    let Some(usage) = usage else {
        return ResourceUsage {
            backend_id: backend_id.to_owned(),
            found: false,
            totals: amounts(&[0.0; Metric::ALL.len()], false),
            users: Vec::new(),
        };
    };
    let mut users: Vec<UserUsage> = usage
        .users
        .iter()
        .map(|(name, values)| UserUsage { username: name.clone(), amounts: amounts(values, true) })
        .collect();
    users.sort_by(|a, b| a.username.cmp(&b.username));
    ResourceUsage { backend_id: backend_id.to_owned(), found: true, totals: amounts(&usage.totals, false), users }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_start_is_short_and_single_line() {
        assert_eq!(body_start(b"  {\"detail\":\n  \"bad\tquery\"}\n"), "{\"detail\": \"bad query\"}");
        assert_eq!(body_start(b""), "");
        let long = "word ".repeat(100);
        let start = body_start(long.as_bytes());
        assert!(start.chars().count() <= MESSAGE_CHARS + 1);
        assert!(start.ends_with("word…"), "{start}");
        let one = "x".repeat(500);
        assert_eq!(body_start(one.as_bytes()).chars().count(), MESSAGE_CHARS + 1);
        assert_eq!(body_start(&[0xff, b'a']), "\u{fffd}a");
        let exact = "y".repeat(MESSAGE_CHARS);
        assert_eq!(body_start(exact.as_bytes()), exact);
    }
}
