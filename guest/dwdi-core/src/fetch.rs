//! Sends a plan's requests through `wasi:http/outgoing-handler` (components only).
//!
//! This is the only code that touches the network, and it is deliberately small: it
//! never adds credentials (the host attaches the bearer token after checking the
//! destination against its allow-list), never retries and sets no timeouts (the host
//! owns both). Requests run concurrently, at most [`MAX_IN_FLIGHT`] at a time, on one
//! `wasi:io/poll` loop that waits for response heads and body bytes alike, so a large
//! body never holds up the others.

use wasi::http::outgoing_handler;
use wasi::http::types::{
    ErrorCode, Fields, FutureIncomingResponse, IncomingBody, IncomingResponse, Method, OutgoingRequest,
    Scheme as WasiScheme, http_error_code,
};
use wasi::io::poll::{Pollable, poll};
use wasi::io::streams::{InputStream, StreamError};

use crate::model::{BackendError, HttpAnswer, UsageReport, bad, invalid};
use crate::plan::{Plan, Request};
use crate::report::{assemble, check_ping};
use crate::url::{Scheme, split_url};

/// Requests sent at once: enough to hide latency, few enough not to flood DWDI.
pub const MAX_IN_FLIGHT: usize = 8;

/// The largest successful answer accepted; the largest expected (5,000 accounts × 20
/// users in one request) is a few MiB.
pub const MAX_BODY_BYTES: usize = 64 << 20;

/// Of a failed answer only the start is shown, so only that much is read.
const ERROR_BODY_BYTES: usize = 4096;

/// Bytes asked for per stream read; the host may return fewer.
const READ_CHUNK: u64 = 256 << 10;

/// Fetches the plan's answers and assembles the report.
pub fn usage_report(plan: &Plan) -> Result<UsageReport, BackendError> {
    assemble(plan, &fetch_all(plan.requests())?)
}

/// Sends the reachability request and judges its answer.
pub fn ping(request: &Request) -> Result<(), BackendError> {
    let answers = fetch_all(std::slice::from_ref(request))?;
    match answers.first() {
        Some(answer) => check_ping(request, answer),
        None => Err(BackendError::Transport("no answer to the ping request".to_owned())),
    }
}

/// GETs every request with `accept: application/json` and returns the answers in
/// request order. The first request that gets no answer fails the whole call; the
/// requests still in flight are dropped, which cancels them.
pub fn fetch_all(requests: &[Request]) -> Result<Vec<HttpAnswer>, BackendError> {
    let mut answers: Vec<Option<HttpAnswer>> = vec![None; requests.len()];
    let mut flying: Vec<InFlight> = Vec::with_capacity(MAX_IN_FLIGHT.min(requests.len()));
    let mut next = 0;
    loop {
        while flying.len() < MAX_IN_FLIGHT && next < requests.len() {
            flying.push(InFlight { index: next, stage: send(&requests[next])? });
            next += 1;
        }
        if flying.is_empty() {
            break;
        }
        let mut ready: Vec<usize> = {
            let pollables: Vec<&Pollable> = flying.iter().map(|f| f.stage.pollable()).collect();
            poll(&pollables).into_iter().map(|i| i as usize).collect()
        };
        ready.sort_unstable();
        ready.dedup();
        // Highest first: `swap_remove` then only moves entries already handled.
        for i in ready.into_iter().rev() {
            let InFlight { index, stage } = flying.swap_remove(i);
            match advance(stage, &requests[index])? {
                Progress::Waiting(stage) => flying.push(InFlight { index, stage }),
                Progress::Done(answer) => answers[index] = Some(answer),
            }
        }
    }
    answers
        .into_iter()
        .zip(requests)
        .map(|(answer, request)| {
            answer.ok_or_else(|| BackendError::Transport(format!("no answer from {}", request.endpoint())))
        })
        .collect()
}

/// One request between sending and its last body byte.
struct InFlight {
    index: usize,
    stage: Stage,
}

enum Stage {
    Head(Head),
    Body(Body),
}

// Field order is drop order, and it matters: a WASI child resource (a pollable, a
// stream) must be dropped before its parent, or the host traps ("resource has
// children"). So these stay whole structs and are never destructured: the bindings
// of a destructuring pattern drop in the opposite order.

struct Head {
    pollable: Pollable,
    future: FutureIncomingResponse,
}

struct Body {
    pollable: Pollable,
    stream: InputStream,
    _body: IncomingBody,
    _response: IncomingResponse,
    status: u16,
    /// Stop reading here: [`MAX_BODY_BYTES`] for a success, less for an error.
    limit: usize,
    bytes: Vec<u8>,
}

impl Stage {
    fn pollable(&self) -> &Pollable {
        match self {
            Stage::Head(head) => &head.pollable,
            Stage::Body(body) => &body.pollable,
        }
    }
}

enum Progress {
    Waiting(Stage),
    Done(HttpAnswer),
}

fn send(request: &Request) -> Result<Stage, BackendError> {
    let url = request.url();
    let parts = split_url(url).ok_or_else(|| invalid(format!("not an http(s) URL: {}", request.endpoint())))?;
    let headers = Fields::from_list(&[("accept".to_owned(), b"application/json".to_vec())])
        .map_err(|e| BackendError::Transport(format!("the host refused the accept header: {e:?}")))?;
    let outgoing = OutgoingRequest::new(headers);
    let scheme = match parts.scheme {
        Scheme::Http => WasiScheme::Http,
        Scheme::Https => WasiScheme::Https,
    };
    let refused = || invalid(format!("the host cannot send to this URL: {}", request.endpoint()));
    outgoing.set_method(&Method::Get).map_err(|()| refused())?;
    outgoing.set_scheme(Some(&scheme)).map_err(|()| refused())?;
    outgoing.set_authority(Some(parts.authority)).map_err(|()| refused())?;
    outgoing.set_path_with_query(Some(parts.path_with_query)).map_err(|()| refused())?;
    let future = outgoing_handler::handle(outgoing, None).map_err(|code| transport(&code, request.endpoint()))?;
    Ok(Stage::Head(Head { pollable: future.subscribe(), future }))
}

fn advance(stage: Stage, request: &Request) -> Result<Progress, BackendError> {
    match stage {
        Stage::Head(head) => {
            let response = match head.future.get() {
                // Woken without a result: keep waiting.
                None => return Ok(Progress::Waiting(Stage::Head(head))),
                Some(Err(())) => return Err(taken_twice("response", request)),
                Some(Ok(Err(code))) => return Err(transport(&code, request.endpoint())),
                Some(Ok(Ok(response))) => response,
            };
            drop(head);
            let status = response.status();
            let limit = if (200..300).contains(&status) { MAX_BODY_BYTES } else { ERROR_BODY_BYTES };
            let hint = content_length(&response).unwrap_or(0).min(limit);
            let body = response.consume().map_err(|()| taken_twice("body", request))?;
            let stream = body.stream().map_err(|()| taken_twice("body stream", request))?;
            let body = Body {
                pollable: stream.subscribe(),
                stream,
                _body: body,
                _response: response,
                status,
                limit,
                bytes: Vec::with_capacity(hint),
            };
            // Bytes often arrive with the head; read them before waiting again.
            read(body, request)
        }
        Stage::Body(body) => read(body, request),
    }
}

/// Reads what is available without blocking; done at end of stream or at the limit.
fn read(mut body: Body, request: &Request) -> Result<Progress, BackendError> {
    loop {
        match body.stream.read(READ_CHUNK) {
            Ok(chunk) if chunk.is_empty() => return Ok(Progress::Waiting(Stage::Body(body))),
            Ok(chunk) => {
                if body.bytes.len() + chunk.len() > body.limit {
                    if body.limit == MAX_BODY_BYTES {
                        return Err(bad(format!(
                            "the answer of {} is larger than {} MiB",
                            request.endpoint(),
                            MAX_BODY_BYTES >> 20
                        )));
                    }
                    // An error body is only quoted: its start is enough.
                    let room = body.limit - body.bytes.len();
                    body.bytes.extend_from_slice(&chunk[..room]);
                    return Ok(Progress::Done(finish(body)));
                }
                body.bytes.extend_from_slice(&chunk);
            }
            Err(StreamError::Closed) => return Ok(Progress::Done(finish(body))),
            Err(StreamError::LastOperationFailed(error)) => {
                let message = match http_error_code(&error) {
                    Some(code) => return Err(transport(&code, request.endpoint())),
                    None => error.to_debug_string(),
                };
                return Err(BackendError::Transport(format!(
                    "reading the answer of {} failed: {message}",
                    request.endpoint()
                )));
            }
        }
    }
}

fn finish(mut body: Body) -> HttpAnswer {
    HttpAnswer { status: body.status, body: std::mem::take(&mut body.bytes) }
}

/// A WASI resource handed out twice: a bug in this module or the host, not bad input.
fn taken_twice(what: &str, request: &Request) -> BackendError {
    BackendError::Transport(format!("the {what} of {} was taken twice", request.endpoint()))
}

/// The `content-length` header, to size the buffer once.
fn content_length(response: &IncomingResponse) -> Option<usize> {
    let headers = response.headers();
    let values = headers.get("content-length");
    let value = values.first()?;
    std::str::from_utf8(value).ok()?.trim().parse().ok()
}

/// A `wasi:http` error code as an operator-readable transport error.
fn transport(code: &ErrorCode, endpoint: &str) -> BackendError {
    let what = match code {
        ErrorCode::HttpRequestDenied => "request denied by the host's egress policy".to_owned(),
        ErrorCode::DnsTimeout => "DNS lookup timed out".to_owned(),
        ErrorCode::DnsError(p) => format!("DNS lookup failed ({})", p.rcode.as_deref().unwrap_or("no response code")),
        ErrorCode::DestinationNotFound => "host not found".to_owned(),
        ErrorCode::DestinationUnavailable => "destination unavailable".to_owned(),
        ErrorCode::DestinationIpProhibited => "destination IP address prohibited".to_owned(),
        ErrorCode::DestinationIpUnroutable => "destination IP address unroutable".to_owned(),
        ErrorCode::ConnectionRefused => "connection refused".to_owned(),
        ErrorCode::ConnectionTerminated => "connection closed early".to_owned(),
        ErrorCode::ConnectionTimeout => "connection timed out".to_owned(),
        ErrorCode::ConnectionReadTimeout => "timed out reading the answer".to_owned(),
        ErrorCode::ConnectionWriteTimeout => "timed out sending the request".to_owned(),
        ErrorCode::ConnectionLimitReached => "connection limit reached".to_owned(),
        ErrorCode::HttpResponseTimeout => "timed out waiting for the answer".to_owned(),
        ErrorCode::TlsProtocolError => "TLS handshake failed".to_owned(),
        ErrorCode::TlsCertificateError => "TLS certificate rejected".to_owned(),
        ErrorCode::TlsAlertReceived(p) => {
            format!("TLS alert from the server ({})", p.alert_message.as_deref().unwrap_or("no message"))
        }
        ErrorCode::HttpRequestUriTooLong => "URL too long for the host".to_owned(),
        ErrorCode::HttpResponseIncomplete => "answer ended early".to_owned(),
        ErrorCode::HttpProtocolError => "HTTP protocol error".to_owned(),
        ErrorCode::ConfigurationError => "the host's HTTP configuration is wrong".to_owned(),
        ErrorCode::InternalError(Some(m)) => format!("host error: {m}"),
        other => format!("{other:?}"),
    };
    BackendError::Transport(format!("{what}: {endpoint}"))
}
