//! The HTTP surface: routing, token authentication, DRF-style validation and the handlers.
//!
//! One fallback handler serves every path so that the simulator, not a router, decides
//! what an unknown path, a missing trailing slash or a wrong method answers, and so that
//! each request is counted under its route template. Order of checks follows Django and
//! DRF: unknown path (404, no authentication; Django's HTML page in Waldur 7, which also
//! lacks the bulk `set_user_usages`) → authentication (401) → method (405) →
//! body parsing (400/415) → field validation (400 with every field error) → object
//! validation (400, first failure) → write.

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State as AxumState};
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderName, Method, StatusCode, header};
use serde_json::{Map, Value, json};

use crate::decimal::{format_cents, parse_amount};
use crate::pagination::{last_value, paginate, window};
use crate::state::{
    OFFERING_USER_STATES, Offering, OfferingUser, RESOURCE_STATES, Resource, State, USAGE_WRITABLE_STATES, UsageRecord,
    UserUsageRecord, fnv1a, normalize_uuid, uuid_from_bits,
};
use crate::time::{Date, Timestamp};
use crate::{Shared, WaldurVersion};

/// Waldur's refusal of a non-staff backfill, word for word: the Python site agent
/// recognises it by the phrase "backfilling past billing periods".
pub(crate) const BACKFILL_REFUSED: &str = "Service providers can only specify date for \
    limit-based or prepaid billing components when backfilling past billing periods.";
const FUTURE_REFUSED: &str = "Cannot submit usage for future dates.";
const REQUIRED: &str = "This field is required.";
const NOT_NULL: &str = "This field may not be null.";
/// Largest request body read.
const MAX_BODY: usize = 8 << 20;
/// Django's `page_not_found` without a `404.html` template, byte for byte (the leading
/// newline included): what a URL no route matches answers when DRF is not involved.
const DJANGO_NOT_FOUND: &str = "\n<!doctype html>\n<html lang=\"en\">\n<head>\n  <title>Not Found</title>\n\
    </head>\n<body>\n  <h1>Not Found</h1><p>The requested resource was not found on this server.</p>\n\
    </body>\n</html>\n";

type Errors = Map<String, Value>;

/// A response body.
enum Content {
    Json(Value),
    Html(&'static str),
}

/// A response under construction.
struct Reply {
    status: StatusCode,
    body: Option<Content>,
    headers: Vec<(HeaderName, String)>,
}

impl Reply {
    fn json(status: StatusCode, body: Value) -> Reply {
        Reply { status, body: Some(Content::Json(body)), headers: Vec::new() }
    }

    fn detail(status: StatusCode, message: &str) -> Reply {
        Reply::json(status, json!({ "detail": message }))
    }

    fn not_found() -> Reply {
        Reply::detail(StatusCode::NOT_FOUND, "Not found.")
    }

    /// A path no route of `version` matches.
    fn no_route(version: WaldurVersion) -> Reply {
        if version.json_not_found() {
            Reply::not_found()
        } else {
            Reply { status: StatusCode::NOT_FOUND, body: Some(Content::Html(DJANGO_NOT_FOUND)), headers: Vec::new() }
        }
    }

    /// DRF's `Response(status=201)`: no body and no content type.
    fn created() -> Reply {
        Reply { status: StatusCode::CREATED, body: None, headers: Vec::new() }
    }

    fn invalid(errors: Errors) -> Reply {
        Reply::json(StatusCode::BAD_REQUEST, Value::Object(errors))
    }

    fn field_error(field: &str, message: &str) -> Reply {
        Reply::json(StatusCode::BAD_REQUEST, json!({ field: [message] }))
    }

    fn with_header(mut self, name: HeaderName, value: String) -> Reply {
        self.headers.push((name, value));
        self
    }
}

impl IntoResponse for Reply {
    fn into_response(self) -> Response {
        let mut builder = Response::builder().status(self.status);
        for (name, value) in self.headers {
            builder = builder.header(name, value);
        }
        let built = match self.body {
            Some(Content::Json(body)) => {
                builder.header(header::CONTENT_TYPE, "application/json").body(Body::from(body.to_string()))
            }
            Some(Content::Html(page)) => builder.header(header::CONTENT_TYPE, "text/html").body(Body::from(page)),
            None => builder.body(Body::empty()),
        };
        built.unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
    }
}

/// The endpoints the simulator serves.
enum Route {
    Me,
    Offering(String),
    Resources,
    Resource(String),
    Usages,
    Usage(String),
    SetUsage,
    SetUserUsage(String),
    SetUserUsages(String),
    OfferingUsers,
    OfferingUser(String),
    UserUsages,
}

impl Route {
    /// Matches `/api/.../` paths; the trailing slash is required, as in Waldur's router.
    fn recognise(path: &str) -> Option<Route> {
        let rest = path.strip_prefix("/api/")?.strip_suffix('/')?;
        let segments: Vec<&str> = rest.split('/').collect();
        if segments.iter().any(|s| s.is_empty()) {
            return None;
        }
        let id = |s: &&str| (*s).to_owned();
        Some(match segments.as_slice() {
            ["users", "me"] => Route::Me,
            ["marketplace-provider-offerings", uuid] => Route::Offering(id(uuid)),
            ["marketplace-provider-resources"] => Route::Resources,
            ["marketplace-provider-resources", uuid] => Route::Resource(id(uuid)),
            ["marketplace-component-usages"] => Route::Usages,
            ["marketplace-component-usages", "set_usage"] => Route::SetUsage,
            ["marketplace-component-usages", uuid] => Route::Usage(id(uuid)),
            ["marketplace-component-usages", uuid, "set_user_usage"] => Route::SetUserUsage(id(uuid)),
            ["marketplace-component-usages", uuid, "set_user_usages"] => Route::SetUserUsages(id(uuid)),
            ["marketplace-offering-users"] => Route::OfferingUsers,
            ["marketplace-offering-users", uuid] => Route::OfferingUser(id(uuid)),
            ["marketplace-component-user-usages"] => Route::UserUsages,
            _ => return None,
        })
    }

    /// Whether `version` has the endpoint (Waldur 7 has no bulk `set_user_usages`).
    fn served_in(&self, version: WaldurVersion) -> bool {
        !matches!(self, Route::SetUserUsages(_)) || version.bulk_user_usages()
    }

    fn method(&self) -> Method {
        match self {
            Route::SetUsage | Route::SetUserUsage(_) | Route::SetUserUsages(_) => Method::POST,
            _ => Method::GET,
        }
    }

    fn template(&self) -> &'static str {
        match self {
            Route::Me => "/api/users/me/",
            Route::Offering(_) => "/api/marketplace-provider-offerings/{uuid}/",
            Route::Resources => "/api/marketplace-provider-resources/",
            Route::Resource(_) => "/api/marketplace-provider-resources/{uuid}/",
            Route::Usages => "/api/marketplace-component-usages/",
            Route::Usage(_) => "/api/marketplace-component-usages/{uuid}/",
            Route::SetUsage => "/api/marketplace-component-usages/set_usage/",
            Route::SetUserUsage(_) => "/api/marketplace-component-usages/{uuid}/set_user_usage/",
            Route::SetUserUsages(_) => "/api/marketplace-component-usages/{uuid}/set_user_usages/",
            Route::OfferingUsers => "/api/marketplace-offering-users/",
            Route::OfferingUser(_) => "/api/marketplace-offering-users/{uuid}/",
            Route::UserUsages => "/api/marketplace-component-user-usages/",
        }
    }
}

/// The authenticated user.
struct Caller {
    uuid: String,
    username: String,
    is_staff: bool,
}

/// Per-request facts the handlers need.
struct Ctx {
    /// `http://host:port` as the client addressed us; hyperlinks are built from it.
    origin: String,
    path: String,
    query: Vec<(String, String)>,
    offset: i64,
    max_page_size: usize,
    result_count: bool,
    version: WaldurVersion,
}

impl Ctx {
    fn link(&self, collection: &str, uuid: &str) -> String {
        format!("{}/api/{collection}/{uuid}/", self.origin)
    }

    /// Values of repeated `field=` parameters: Waldur's field selection.
    fn fields(&self) -> Vec<&str> {
        self.query.iter().filter(|(k, _)| k == "field").map(|(_, v)| v.as_str()).collect()
    }
}

/// Serves every request.
pub(crate) async fn handle(AxumState(shared): AxumState<Arc<Shared>>, request: Request) -> Response {
    let started = std::time::Instant::now();
    let latency = shared.options.latency;
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let (parts, body) = request.into_parts();
    let path = parts.uri.path().to_owned();
    let version = shared.options.version;
    let recognised = Route::recognise(&path);
    // An endpoint the version lacks is still counted under its template.
    let key = match &recognised {
        Some(r) => format!("{} {}", parts.method, r.template()),
        None => format!("{} {}", parts.method, path),
    };
    let route = recognised.filter(|r| r.served_in(version));
    tracing::debug!(target: "waldur_sim", "{} {}", parts.method, parts.uri);

    let admitted = {
        let mut state = shared.lock();
        let failure = state.take_failure().or_else(|| state.take_route_failure(&key));
        state.counters.record(&parts.method, key);
        if let Some(status) = failure {
            Err(Reply::detail(status, "Simulated failure."))
        } else if let Some(route) = route {
            authenticate(&parts.headers, &state).map(|caller| (route, caller))
        } else {
            Err(Reply::no_route(version))
        }
    };
    let (route, caller) = match admitted {
        Ok(ok) => ok,
        Err(reply) => return reply.into_response(),
    };
    if parts.method != route.method() {
        let allow = route.method().to_string();
        return Reply::detail(StatusCode::METHOD_NOT_ALLOWED, &format!("Method \"{}\" not allowed.", parts.method))
            .with_header(header::ALLOW, allow)
            .into_response();
    }

    let ctx = Ctx {
        origin: parts
            .headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(|h| format!("http://{h}"))
            .unwrap_or_else(|| shared.origin.clone()),
        path,
        query: form_urlencoded::parse(parts.uri.query().unwrap_or("").as_bytes()).into_owned().collect(),
        offset: shared.offset_secs(),
        max_page_size: shared.options.max_page_size,
        result_count: shared.options.result_count,
        version,
    };

    let data = if route.method() == Method::POST {
        let bytes = match axum::body::to_bytes(body, MAX_BODY).await {
            Ok(bytes) => bytes,
            Err(e) => {
                return Reply::detail(StatusCode::BAD_REQUEST, &format!("Could not read body: {e}")).into_response();
            }
        };
        match parse_body(&parts.headers, &bytes) {
            Ok(data) => data,
            Err(reply) => return reply.into_response(),
        }
    } else {
        Value::Null
    };

    let is_write = route.method() == Method::POST;
    // The state is held while the reply is made, not while it is serialised and sent:
    // a page of 300 rows would otherwise hold every write up for that long.
    let reply = {
        let mut state = shared.lock();
        let state = &mut *state;
        let reply = match route {
            Route::Me => detail(&ctx, me_json(&ctx, &caller)),
            Route::Offering(uuid) => match lookup(&uuid, |u| state.offering(u)) {
                Some(offering) => detail(&ctx, offering_json(&ctx, offering)),
                None => Reply::not_found(),
            },
            Route::Resources => list_resources(state, &ctx),
            Route::Resource(uuid) => match lookup(&uuid, |u| state.resource(u)) {
                Some(resource) => detail(&ctx, resource_json(&ctx, state, resource)),
                None => Reply::not_found(),
            },
            Route::Usages => list_usages(state, &ctx),
            Route::Usage(uuid) => match lookup(&uuid, |u| state.usage(u)) {
                Some(usage) => detail(&ctx, usage_json(&ctx, state, usage)),
                None => Reply::not_found(),
            },
            Route::OfferingUsers => list_offering_users(state, &ctx),
            Route::OfferingUser(uuid) => match lookup(&uuid, |u| state.offering_user(u)) {
                Some(user) => detail(&ctx, offering_user_json(&ctx, state, user)),
                None => Reply::not_found(),
            },
            Route::UserUsages => list_user_usages(state, &ctx),
            Route::SetUsage => set_usage(state, &ctx, &caller, &data),
            Route::SetUserUsage(uuid) => set_user_usages(state, &ctx, &caller, &uuid, &data, false),
            Route::SetUserUsages(uuid) => set_user_usages(state, &ctx, &caller, &uuid, &data, true),
        };
        if is_write {
            state.counters.write_time += started.elapsed();
            state.counters.timed_writes += 1;
        }
        reply
    };
    reply.into_response()
}

/// Finds an object by a UUID in any form Django accepts.
fn lookup<'a, T>(raw: &str, find: impl FnOnce(&str) -> Option<&'a T>) -> Option<&'a T> {
    normalize_uuid(raw).and_then(|u| find(&u))
}

/// DRF's `TokenAuthentication`, then Waldur's "authenticated users only".
fn authenticate(headers: &HeaderMap, state: &State) -> Result<Caller, Reply> {
    let unauthorized = |message: &str| {
        Reply::detail(StatusCode::UNAUTHORIZED, message).with_header(header::WWW_AUTHENTICATE, "Token".to_owned())
    };
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Err(unauthorized("Authentication credentials were not provided."));
    };
    let Ok(value) = value.to_str() else {
        return Err(unauthorized("Invalid token header. Token string should not contain invalid characters."));
    };
    let words: Vec<&str> = value.split_whitespace().collect();
    match words.as_slice() {
        [keyword, rest @ ..] if keyword.eq_ignore_ascii_case("bearer") && state.introspect.is_some() => match rest {
            [] => Err(unauthorized("Invalid token. No credentials provided.")),
            [token] => oidc_caller(token, state).map_err(&unauthorized),
            _ => Err(unauthorized("Invalid token. Token string should not contain spaces.")),
        },
        [keyword, ..] if !keyword.eq_ignore_ascii_case("token") => {
            Err(unauthorized("Authentication credentials were not provided."))
        }
        [] => Err(unauthorized("Authentication credentials were not provided.")),
        [_] => Err(unauthorized("Invalid token header. No credentials provided.")),
        [_, token] => match state.tokens.get(*token) {
            Some(account) => Ok(Caller {
                uuid: account.uuid.clone(),
                username: account.username.clone(),
                is_staff: account.is_staff,
            }),
            None => Err(unauthorized("Invalid token.")),
        },
        _ => Err(unauthorized("Invalid token header. Token string should not contain spaces.")),
    }
}

/// MasterMind's `OIDCAuthentication`: the JWT's claims read unverified (its `exp`
/// checked), then the provider's introspection names the user.
fn oidc_caller(token: &str, state: &State) -> Result<Caller, &'static str> {
    use base64::Engine as _;
    let parts: Vec<&str> = token.split('.').collect();
    let claims = match parts.as_slice() {
        [_, claims, _] => base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(claims.trim_end_matches('='))
            .ok()
            .and_then(|bytes| serde_json::from_slice::<Value>(&bytes).ok())
            .filter(Value::is_object),
        _ => None,
    }
    .ok_or("Invalid JWT token.")?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    if claims.get("exp").and_then(Value::as_u64).is_some_and(|exp| exp <= now) {
        return Err("Token has expired.");
    }
    let introspect = state.introspect.as_ref().ok_or("Introspection configuration is incomplete.")?;
    let username = introspect(token).ok_or("Token is inactive or invalid.")?;
    let known = state.tokens.values().find(|account| account.username == username);
    Ok(match known {
        Some(account) => {
            Caller { uuid: account.uuid.clone(), username: account.username.clone(), is_staff: account.is_staff }
        }
        None => Caller { uuid: crate::uuid_from(&format!("user {username}")), username, is_staff: false },
    })
}

/// DRF's parser choice: JSON is parsed; no content type (or no body) is empty data;
/// anything else is 415 (the simulator does not take form posts).
fn parse_body(headers: &HeaderMap, bytes: &[u8]) -> Result<Value, Reply> {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").trim().to_owned();
    let media = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    if media.is_empty() || bytes.is_empty() {
        return Ok(Value::Object(Map::new()));
    }
    if media != "application/json" {
        return Err(Reply::detail(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            &format!("Unsupported media type \"{content_type}\" in request."),
        ));
    }
    serde_json::from_slice(bytes)
        .map_err(|e| Reply::detail(StatusCode::BAD_REQUEST, &format!("JSON parse error - {e}")))
}

/// Python's name for a JSON value's type, as DRF messages show it.
fn py_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "NoneType",
        Value::Bool(_) => "bool",
        Value::Number(n) if n.is_f64() => "float",
        Value::Number(_) => "int",
        Value::String(_) => "str",
        Value::Array(_) => "list",
        Value::Object(_) => "dict",
    }
}

fn add_error(errors: &mut Errors, field: &str, message: &str) {
    let entry = errors.entry(field.to_owned()).or_insert_with(|| json!([]));
    if let Value::Array(list) = entry {
        list.push(Value::String(message.to_owned()));
    }
}

fn not_a_dict(value: &Value) -> String {
    format!("Invalid data. Expected a dictionary, but got {}.", py_type(value))
}

/// DRF `CharField` (whitespace trimmed). `Ok(None)` when absent and optional.
fn char_field(
    obj: &Map<String, Value>,
    key: &str,
    required: bool,
    allow_blank: bool,
    max_length: Option<usize>,
) -> Result<Option<String>, String> {
    let text = match obj.get(key) {
        None if required => return Err(REQUIRED.into()),
        None => return Ok(None),
        Some(Value::Null) => return Err(NOT_NULL.into()),
        Some(Value::String(s)) => s.trim().to_owned(),
        Some(Value::Number(n)) => n.to_string(),
        Some(_) => return Err("Not a valid string.".into()),
    };
    if text.is_empty() && !allow_blank {
        return Err("This field may not be blank.".into());
    }
    if let Some(max) = max_length
        && text.chars().count() > max
    {
        return Err(format!("Ensure this field has no more than {max} characters."));
    }
    Ok(Some(text))
}

/// DRF `DateTimeField(required=False)`.
fn datetime_field(obj: &Map<String, Value>, key: &str, offset: i64) -> Result<Option<Timestamp>, String> {
    match obj.get(key) {
        None => Ok(None),
        Some(Value::Null) => Err(NOT_NULL.into()),
        Some(Value::String(s)) => Timestamp::parse(s, offset).map(Some).ok_or_else(|| {
            "Datetime has wrong format. Use one of these formats instead: \
             YYYY-MM-DDThh:mm[:ss[.uuuuuu]][+HH:MM|-HH:MM|Z]."
                .to_owned()
        }),
        Some(_) => Err("Datetime has wrong format. Use one of these formats instead: \
                        YYYY-MM-DDThh:mm[:ss[.uuuuuu]][+HH:MM|-HH:MM|Z]."
            .to_owned()),
    }
}

/// The `date` of a usage write; Waldur 7's serializers have no such field, so there the
/// key is ignored and the write is "now".
fn date_field(obj: &Map<String, Value>, ctx: &Ctx) -> Result<Option<Timestamp>, String> {
    if ctx.version.dated_usage() { datetime_field(obj, "date", ctx.offset) } else { Ok(None) }
}

/// DRF `SlugRelatedField(slug_field="uuid")` input: the normalised UUID of an object that
/// `exists` says is there.
fn related_by_uuid(value: &Value, exists: impl Fn(&str) -> bool) -> Result<String, String> {
    match value {
        Value::Null => Err(NOT_NULL.into()),
        Value::String(s) => match normalize_uuid(s) {
            None => Err(format!("\u{201c}{s}\u{201d} is not a valid UUID.")),
            Some(uuid) if exists(&uuid) => Ok(uuid),
            Some(_) => Err(format!("Object with uuid={s} does not exist.")),
        },
        Value::Number(n) => Err(format!("Object with uuid={n} does not exist.")),
        _ => Err("Invalid value.".into()),
    }
}

/// DRF `HyperlinkedRelatedField` to `marketplace-offering-user-detail`: the offering
/// user's UUID. The host part of the URL is ignored, as DRF ignores it.
fn offering_user_link(state: &State, ctx: &Ctx, value: &Value) -> Result<String, String> {
    let text = match value {
        Value::Null => return Err(NOT_NULL.into()),
        Value::String(s) if s.is_empty() => return Err(NOT_NULL.into()),
        Value::String(s) => s,
        other => {
            return Err(format!("Incorrect type. Expected URL string, received {}.", py_type(other)));
        }
    };
    let path = match text.split_once("://") {
        Some((_, rest)) => rest.find('/').map_or("/", |at| &rest[at..]),
        None => text.as_str(),
    };
    let path = path.split(['?', '#']).next().unwrap_or("");
    match Route::recognise(path).filter(|r| r.served_in(ctx.version)) {
        Some(Route::OfferingUser(raw)) => normalize_uuid(&raw)
            .filter(|uuid| state.offering_user(uuid).is_some())
            .ok_or_else(|| "Invalid hyperlink - Object does not exist.".to_owned()),
        Some(_) => Err("Invalid hyperlink - Incorrect URL match.".into()),
        None => Err("Invalid hyperlink - No URL match.".into()),
    }
}

// ---------------------------------------------------------------------------------------
// Representations

fn detail(ctx: &Ctx, value: Value) -> Reply {
    Reply::json(StatusCode::OK, select_fields(value, &ctx.fields()))
}

/// Waldur's `?field=a&field=b`: keep only those keys.
fn select_fields(value: Value, fields: &[&str]) -> Value {
    match value {
        Value::Object(map) if !fields.is_empty() => {
            Value::Object(map.into_iter().filter(|(k, _)| fields.contains(&k.as_str())).collect())
        }
        other => other,
    }
}

fn me_json(ctx: &Ctx, caller: &Caller) -> Value {
    let me = json!({
        "url": ctx.link("users", &caller.uuid),
        "uuid": caller.uuid,
        "username": caller.username,
        "full_name": caller.username,
        "is_staff": caller.is_staff,
        "is_support": false,
        "is_active": true,
    });
    // Waldur 7's `UserSerializer.get_fields` deletes these for a caller neither staff nor
    // support.
    without(me, !caller.is_staff && !ctx.version.staff_fields_for_all(), &["is_staff", "is_active", "is_support"])
}

/// `value` without `keys` when `drop` holds: fields one Waldur version has and another
/// lacks.
fn without(mut value: Value, drop: bool, keys: &[&str]) -> Value {
    if drop && let Value::Object(map) = &mut value {
        for key in keys {
            map.remove(*key);
        }
    }
    value
}

fn component_uuid(offering: &Offering, component_type: &str) -> String {
    let seed = format!("{}/{component_type}", offering.uuid);
    uuid_from_bits(fnv1a(seed.as_bytes(), 0xcbf2_9ce4_8422_2325), fnv1a(seed.as_bytes(), 0x8422_2325_cbf2_9ce4))
}

fn offering_json(ctx: &Ctx, offering: &Offering) -> Value {
    let components: Vec<Value> = offering
        .components
        .iter()
        .map(|c| {
            json!({
                "uuid": component_uuid(offering, &c.component_type),
                "offering_uuid": offering.uuid,
                "billing_type": c.billing_type,
                "type": c.component_type,
                "name": c.name,
                "description": "",
                "measured_unit": c.measured_unit,
                "unit_factor": 1,
                "limit_period": null,
                "limit_amount": null,
                "is_builtin": false,
                "is_prepaid": false,
            })
        })
        .collect();
    json!({
        "url": ctx.link("marketplace-provider-offerings", &offering.uuid),
        "uuid": offering.uuid,
        "name": offering.name,
        "state": "Active",
        "components": components,
    })
}

fn resource_json(ctx: &Ctx, state: &State, resource: &Resource) -> Value {
    let offering_name = state.offering(&resource.offering_uuid).map(|o| o.name.clone());
    let value = json!({
        "url": ctx.link("marketplace-provider-resources", &resource.uuid),
        "uuid": resource.uuid,
        "name": resource.name,
        "backend_id": resource.backend_id,
        "state": resource.state,
        "offering": ctx.link("marketplace-provider-offerings", &resource.offering_uuid),
        "offering_uuid": resource.offering_uuid,
        "offering_name": offering_name,
        "offering_backend_id": resource.offering_backend_id,
    });
    without(value, !ctx.version.resource_offering_backend_id(), &["offering_backend_id"])
}

fn component_of<'a>(
    state: &'a State,
    offering_uuid: &str,
    component_type: &str,
) -> Option<&'a crate::OfferingComponent> {
    state.offering(offering_uuid)?.components.iter().find(|c| c.component_type == component_type)
}

fn usage_json(ctx: &Ctx, state: &State, usage: &UsageRecord) -> Value {
    let component = component_of(state, &usage.offering_uuid, &usage.component_type);
    json!({
        "uuid": usage.uuid,
        "created": usage.created.format(ctx.offset),
        "description": usage.description,
        "type": &*usage.component_type,
        "name": component.map(|c| c.name.clone()),
        "measured_unit": component.map(|c| c.measured_unit.clone()),
        "usage": format_cents(usage.cents),
        "date": usage.date.format(ctx.offset),
        "recurring": false,
        "resource_name": state.resource(&usage.resource_uuid).map(|r| r.name.clone()),
        "resource_uuid": usage.resource_uuid,
        "offering_name": state.offering(&usage.offering_uuid).map(|o| o.name.clone()),
        "offering_uuid": usage.offering_uuid,
        "billing_period": usage.billing_period.to_string(),
        "modified_by": null,
    })
}

fn user_usage_json(ctx: &Ctx, state: &State, user_usage: &UserUsageRecord) -> Value {
    let parent = &state.usages()[user_usage.parent];
    let component = component_of(state, &parent.offering_uuid, &parent.component_type);
    json!({
        "uuid": user_usage.uuid,
        "user": user_usage.user.as_ref().map(|u| ctx.link("marketplace-offering-users", u)),
        "username": user_usage.username,
        "component_usage": ctx.link("marketplace-component-usages", &parent.uuid),
        "usage": format_cents(user_usage.cents),
        "measured_unit": component.map(|c| c.measured_unit.clone()),
        "description": "",
        "created": user_usage.created.format(ctx.offset),
        "modified": user_usage.modified.format(ctx.offset),
        "backend_id": "",
        "resource_name": state.resource(&parent.resource_uuid).map(|r| r.name.clone()),
        "resource_uuid": parent.resource_uuid,
        "offering_name": state.offering(&parent.offering_uuid).map(|o| o.name.clone()),
        "offering_uuid": parent.offering_uuid,
        "component_type": &*parent.component_type,
        "date": parent.date.format(ctx.offset),
        "billing_period": parent.billing_period.to_string(),
    })
}

fn offering_user_json(ctx: &Ctx, state: &State, user: &OfferingUser) -> Value {
    let value = json!({
        "url": ctx.link("marketplace-offering-users", &user.uuid),
        "uuid": user.uuid,
        "username": user.username,
        "offering": ctx.link("marketplace-provider-offerings", &user.offering_uuid),
        "offering_uuid": user.offering_uuid,
        "offering_name": state.offering(&user.offering_uuid).map(|o| o.name.clone()),
        "state": user.state,
    });
    without(value, !ctx.version.offering_user_state(), &["state"])
}

// ---------------------------------------------------------------------------------------
// Listings

/// django-filter over the query string: collects every invalid value as a field error.
struct Filters<'a> {
    query: &'a [(String, String)],
    errors: Errors,
}

impl<'a> Filters<'a> {
    fn new(query: &'a [(String, String)]) -> Filters<'a> {
        Filters { query, errors: Errors::new() }
    }

    fn values(&self, key: &str) -> Vec<&'a str> {
        self.query.iter().filter(|(k, _)| k == key).map(|(_, v)| v.as_str()).filter(|v| !v.is_empty()).collect()
    }

    /// The last value, like a single-valued filter reads it; empty means "no filter".
    fn last(&self, key: &str) -> Option<&'a str> {
        last_value(self.query, key).filter(|v| !v.is_empty())
    }

    /// A `UUIDFilter` that accepts repeated values (any of them matches).
    fn uuids(&mut self, key: &str) -> Option<Vec<String>> {
        let values = self.values(key);
        if values.is_empty() {
            return None;
        }
        let mut out = Vec::new();
        for value in values {
            match normalize_uuid(value) {
                Some(uuid) => out.push(uuid),
                None => add_error(&mut self.errors, key, "Enter a valid UUID."),
            }
        }
        Some(out)
    }

    /// A single-valued `UUIDFilter`.
    fn uuid(&mut self, key: &str) -> Option<String> {
        let value = self.last(key)?;
        let uuid = normalize_uuid(value);
        if uuid.is_none() {
            add_error(&mut self.errors, key, "Enter a valid UUID.");
        }
        uuid
    }

    fn date(&mut self, key: &str) -> Option<Date> {
        let value = self.last(key)?;
        let date = Date::parse(value);
        if date.is_none() {
            add_error(&mut self.errors, key, "Enter a valid date.");
        }
        date
    }

    fn number(&mut self, key: &str) -> Option<i64> {
        let value = self.last(key)?;
        let number = value.trim().parse::<i64>().ok();
        if number.is_none() {
            add_error(&mut self.errors, key, "Enter a number.");
        }
        number
    }

    /// A `MultipleChoiceFilter`: repeated keys, each value one of `choices`.
    fn choices(&mut self, key: &str, choices: &[&str]) -> Option<Vec<String>> {
        let values = self.values(key);
        if values.is_empty() {
            return None;
        }
        for value in &values {
            if !choices.contains(value) {
                add_error(
                    &mut self.errors,
                    key,
                    &format!("Select a valid choice. {value} is not one of the available choices."),
                );
            }
        }
        Some(values.into_iter().map(str::to_owned).collect())
    }

    fn finish(self) -> Result<(), Reply> {
        if self.errors.is_empty() { Ok(()) } else { Err(Reply::invalid(self.errors)) }
    }
}

fn matches<T: PartialEq>(filter: &Option<T>, value: &T) -> bool {
    filter.as_ref().is_none_or(|f| f == value)
}

fn matches_any(filter: &Option<Vec<String>>, value: &str) -> bool {
    filter.as_ref().is_none_or(|list| list.iter().any(|f| f == value))
}

/// Paginates `rows` and renders only the requested page.
fn list_reply<T>(ctx: &Ctx, rows: Vec<T>, render: impl Fn(T) -> Value) -> Reply {
    match paginate(rows, &ctx.origin, &ctx.path, &ctx.query, ctx.max_page_size) {
        Err(()) => invalid_page(),
        Ok(page) => page_reply(ctx, page.link, page.total, page.items, render),
    }
}

fn invalid_page() -> Reply {
    Reply::detail(StatusCode::NOT_FOUND, "Invalid page.")
}

/// One rendered page with its `Link` and `X-Result-Count` headers.
fn page_reply<T>(ctx: &Ctx, link: String, total: usize, items: Vec<T>, render: impl Fn(T) -> Value) -> Reply {
    let fields = ctx.fields();
    let items = items.into_iter().map(|row| select_fields(render(row), &fields)).collect();
    let reply = Reply::json(StatusCode::OK, Value::Array(items)).with_header(header::LINK, link);
    if ctx.result_count {
        reply.with_header(HeaderName::from_static("x-result-count"), total.to_string())
    } else {
        reply
    }
}

/// Paginates an indexed listing and renders only the requested page. `rows` are the
/// candidates in Waldur's order; `keep` applies every filter; `exact` says the candidates
/// are exactly the matching rows, so the page is a slice of them.
fn list_indexed(
    ctx: &Ctx,
    rows: &[usize],
    exact: bool,
    keep: impl Fn(usize) -> bool,
    render: impl Fn(usize) -> Value,
) -> Reply {
    let filtered: Vec<usize>;
    let rows = if exact {
        rows
    } else {
        filtered = rows.iter().copied().filter(|&r| keep(r)).collect();
        &filtered
    };
    match window(rows.len(), &ctx.origin, &ctx.path, &ctx.query, ctx.max_page_size) {
        Err(()) => invalid_page(),
        Ok(w) => {
            let page = rows.iter().copied().skip(w.start).take(w.page_size).collect();
            page_reply(ctx, w.link, w.total, page, render)
        }
    }
}

fn list_resources(state: &State, ctx: &Ctx) -> Reply {
    let mut f = Filters::new(&ctx.query);
    let offering = f.uuids("offering_uuid");
    let states = f.choices("state", RESOURCE_STATES);
    let backend_id = f.last("backend_id").map(str::to_owned);
    let name = f.last("name").map(str::to_owned);
    if let Err(reply) = f.finish() {
        return reply;
    }
    let rows: Vec<&Resource> = state
        .resources_of(offering.as_deref())
        .into_iter()
        .filter(|r| matches_any(&states, &r.state))
        .filter(|r| matches(&backend_id, &r.backend_id))
        .filter(|r| name.as_ref().is_none_or(|n| r.name.to_lowercase().contains(&n.to_lowercase())))
        .collect();
    list_reply(ctx, rows, |r| resource_json(ctx, state, r))
}

/// Waldur orders component usages by `("-date", "component__type")`; the index keeps
/// that order (ties in creation order, as the stable sort of the table did).
fn list_usages(state: &mut State, ctx: &Ctx) -> Reply {
    let mut f = Filters::new(&ctx.query);
    let resource = f.uuid("resource_uuid");
    let offering = f.uuid("offering_uuid");
    let period = f.date("billing_period");
    let year = f.number("billing_period_year");
    let month = f.number("billing_period_month");
    let ctype = f.last("type").map(str::to_owned);
    if let Err(reply) = f.finish() {
        return reply;
    }
    let rows: Arc<[usize]> = match &resource {
        // A resource has a few usages: sort just those.
        Some(r) => {
            let usages = state.usages();
            let mut rows = state.usage_rows_of_resource(r).to_vec();
            rows.sort_by_cached_key(|&row| usages[row].order_key(row));
            rows.into()
        }
        None => state.usages_in_order(offering.as_deref(), period, ctype.as_deref()),
    };
    let state = &*state;
    let usages = state.usages();
    let exact = resource.is_none() && year.is_none() && month.is_none();
    let keep = |row: usize| {
        let u = &usages[row];
        matches(&resource, &u.resource_uuid)
            && matches(&offering, &u.offering_uuid)
            && matches(&period, &u.billing_period)
            && matches(&year, &i64::from(u.billing_period.year))
            && matches(&month, &i64::from(u.billing_period.month))
            && ctype.as_deref().is_none_or(|t| t == &*u.component_type)
    };
    list_indexed(ctx, &rows, exact, keep, |row| usage_json(ctx, state, &usages[row]))
}

/// Waldur orders per-user usages by `("-component_usage__date",
/// "component_usage__component__type")`; the index keeps that order (ties in creation
/// order).
fn list_user_usages(state: &mut State, ctx: &Ctx) -> Reply {
    let mut f = Filters::new(&ctx.query);
    let resource = f.uuid("resource_uuid");
    let offering = f.uuid("offering_uuid");
    // The real filter key has a double underscore (a Django lookup through the relation).
    let period = f.date("component_usage__billing_period");
    let year = f.number("billing_period_year");
    let month = f.number("billing_period_month");
    let ctype = f.last("type").map(str::to_owned);
    let username = f.last("username").map(str::to_owned);
    if let Err(reply) = f.finish() {
        return reply;
    }
    let rows: Arc<[usize]> = match &resource {
        // A resource has a few usages with a few users each: sort just those.
        Some(r) => {
            let (usages, user_usages) = (state.usages(), state.user_usages());
            let mut rows: Vec<usize> = state
                .usage_rows_of_resource(r)
                .iter()
                .flat_map(|&parent| usages[parent].user_usages.iter().copied())
                .collect();
            rows.sort_by_cached_key(|&row| usages[user_usages[row].parent].order_key(row));
            rows.into()
        }
        None => state.user_usages_in_order(offering.as_deref(), period, ctype.as_deref()),
    };
    let state = &*state;
    let (usages, user_usages) = (state.usages(), state.user_usages());
    let exact = resource.is_none() && year.is_none() && month.is_none() && username.is_none();
    let keep = |row: usize| {
        let uu = &user_usages[row];
        let p = &usages[uu.parent];
        matches(&resource, &p.resource_uuid)
            && matches(&offering, &p.offering_uuid)
            && matches(&period, &p.billing_period)
            && matches(&year, &i64::from(p.billing_period.year))
            && matches(&month, &i64::from(p.billing_period.month))
            && ctype.as_deref().is_none_or(|t| t == &*p.component_type)
            && matches(&username, &uu.username)
    };
    list_indexed(ctx, &rows, exact, keep, |row| user_usage_json(ctx, state, &user_usages[row]))
}

fn list_offering_users(state: &State, ctx: &Ctx) -> Reply {
    let mut f = Filters::new(&ctx.query);
    let offering = f.uuids("offering_uuid");
    // Waldur 7 has no such filter: the key is ignored like any unknown one.
    let states = if ctx.version.offering_user_state() { f.choices("state", OFFERING_USER_STATES) } else { None };
    if let Err(reply) = f.finish() {
        return reply;
    }
    let rows: Vec<&OfferingUser> =
        state.offering_users_of(offering.as_deref()).into_iter().filter(|u| matches_any(&states, &u.state)).collect();
    list_reply(ctx, rows, |u| offering_user_json(ctx, state, u))
}

// ---------------------------------------------------------------------------------------
// Writes

/// The configured failure for writes touching `resource_uuid`, if any.
fn rejection(state: &State, resource_uuid: &str) -> Option<Reply> {
    state.rejections.get(resource_uuid).map(|r| Reply::json(r.status, r.body.clone()))
}

/// Waldur's date rules for usage writes: never a future month; a past month only for
/// staff when the component is usage-billed.
fn check_period(
    state: &State,
    ctx: &Ctx,
    caller: &Caller,
    period: Date,
    billing_type: &str,
) -> Result<(), &'static str> {
    let current = state.current_period(ctx.offset);
    if period > current {
        return Err(FUTURE_REFUSED);
    }
    if period < current && !caller.is_staff && billing_type == "usage" {
        return Err(BACKFILL_REFUSED);
    }
    Ok(())
}

struct UsageItem {
    component_type: String,
    cents: i128,
    description: String,
}

/// `POST /api/marketplace-component-usages/set_usage/`.
fn set_usage(state: &mut State, ctx: &Ctx, caller: &Caller, data: &Value) -> Reply {
    let Some(obj) = data.as_object() else {
        return Reply::field_error("non_field_errors", &not_a_dict(data));
    };
    if let Some(reply) =
        obj.get("resource").and_then(Value::as_str).and_then(normalize_uuid).and_then(|uuid| rejection(state, &uuid))
    {
        return reply;
    }

    let mut errors = Errors::new();
    let mut items = Vec::new();
    match obj.get("usages") {
        None => add_error(&mut errors, "usages", REQUIRED),
        Some(Value::Null) => add_error(&mut errors, "usages", NOT_NULL),
        Some(Value::Array(list)) => {
            let mut per_item = Vec::new();
            for item in list {
                let mut e = Errors::new();
                match item.as_object() {
                    None => add_error(&mut e, "non_field_errors", &not_a_dict(item)),
                    Some(o) => {
                        let ctype = char_field(o, "type", true, false, None)
                            .map_err(|m| add_error(&mut e, "type", &m))
                            .ok()
                            .flatten();
                        let cents = match o.get("amount") {
                            None => {
                                add_error(&mut e, "amount", REQUIRED);
                                None
                            }
                            Some(v) => parse_amount(v, false).map_err(|m| add_error(&mut e, "amount", &m)).ok(),
                        };
                        let description = char_field(o, "description", false, true, None)
                            .map_err(|m| add_error(&mut e, "description", &m))
                            .ok()
                            .flatten();
                        if let (Some(component_type), Some(cents), true) = (ctype, cents, e.is_empty()) {
                            items.push(UsageItem {
                                component_type,
                                cents,
                                description: description.unwrap_or_default(),
                            });
                        }
                    }
                }
                per_item.push(Value::Object(e));
            }
            if per_item.iter().any(|e| e.as_object().is_some_and(|m| !m.is_empty())) {
                errors.insert("usages".into(), Value::Array(per_item));
            }
        }
        Some(other) => {
            errors.insert(
                "usages".into(),
                json!({ "non_field_errors": [
                    format!("Expected a list of items but got type \"{}\".", py_type(other))
                ] }),
            );
        }
    }
    let resource = match obj.get("resource") {
        None => None,
        Some(v) => {
            related_by_uuid(v, |u| state.resource(u).is_some()).map_err(|m| add_error(&mut errors, "resource", &m)).ok()
        }
    };
    if let Some(v) = obj.get("plan_period") {
        // Plan periods are not modelled: none exists.
        if let Err(m) = related_by_uuid(v, |_| false) {
            add_error(&mut errors, "plan_period", &m);
        }
    }
    let date = date_field(obj, ctx).map_err(|m| add_error(&mut errors, "date", &m)).ok().flatten();
    if !errors.is_empty() {
        return Reply::invalid(errors);
    }

    let Some(resource) = resource.and_then(|u| state.resource(&u)) else {
        return Reply::field_error("non_field_errors", "Either plan_period or resource should be provided.");
    };
    if !USAGE_WRITABLE_STATES.contains(&resource.state.as_str()) {
        return Reply::field_error("resource", "Resource is not in valid state.");
    }
    let (resource_uuid, offering_uuid) = (resource.uuid.clone(), resource.offering_uuid.clone());
    let billing_type_of = |t: &str| {
        component_of(state, &offering_uuid, t).map(|c| c.billing_type.clone()).filter(|b| b == "usage" || b == "limit")
    };
    let invalid: BTreeSet<&str> = items
        .iter()
        .filter(|i| billing_type_of(&i.component_type).is_none())
        .map(|i| i.component_type.as_str())
        .collect();
    if !invalid.is_empty() {
        let names: Vec<&str> = invalid.into_iter().collect();
        return Reply::field_error("non_field_errors", &format!("These components are invalid: {}.", names.join(", ")));
    }

    let now = state.now(ctx.offset);
    let date = date.unwrap_or(now);
    let period = date.local_date(ctx.offset).month_start();
    let billing_type = if items.iter().any(|i| billing_type_of(&i.component_type).as_deref() == Some("usage")) {
        "usage"
    } else {
        "limit"
    };
    if let Err(message) = check_period(state, ctx, caller, period, billing_type) {
        return Reply::field_error("date", message);
    }

    for item in items {
        state.upsert_usage(
            &resource_uuid,
            &offering_uuid,
            &item.component_type,
            period,
            item.cents,
            date,
            &item.description,
            now,
        );
    }
    Reply::created()
}

struct UserUsageItem {
    username: String,
    cents: i128,
    user: Option<String>,
    date: Option<Timestamp>,
}

/// Validates one `ComponentUserUsageCreateSerializer` body.
fn user_usage_item(state: &State, ctx: &Ctx, value: &Value) -> Result<UserUsageItem, Errors> {
    let mut e = Errors::new();
    let Some(o) = value.as_object() else {
        add_error(&mut e, "non_field_errors", &not_a_dict(value));
        return Err(e);
    };
    let username =
        char_field(o, "username", true, false, Some(100)).map_err(|m| add_error(&mut e, "username", &m)).ok().flatten();
    // The model default: a missing usage is zero.
    let cents = match o.get("usage") {
        None => Some(0),
        Some(v) => parse_amount(v, false).map_err(|m| add_error(&mut e, "usage", &m)).ok(),
    };
    let user = match o.get("user") {
        None => None,
        Some(v) => offering_user_link(state, ctx, v).map_err(|m| add_error(&mut e, "user", &m)).ok(),
    };
    let date = date_field(o, ctx).map_err(|m| add_error(&mut e, "date", &m)).ok().flatten();
    match (username, cents) {
        (Some(username), Some(cents)) if e.is_empty() => Ok(UserUsageItem { username, cents, user, date }),
        _ => Err(e),
    }
}

/// `POST /api/marketplace-component-usages/{uuid}/set_user_usage(s)/`.
fn set_user_usages(state: &mut State, ctx: &Ctx, caller: &Caller, raw_uuid: &str, data: &Value, bulk: bool) -> Reply {
    let Some(parent_row) = normalize_uuid(raw_uuid).and_then(|u| state.usage_row(&u)) else {
        return Reply::not_found();
    };
    let parent = &state.usages()[parent_row];
    let resource_uuid = parent.resource_uuid.clone();
    let billing_type = component_of(state, &parent.offering_uuid, &parent.component_type)
        .map_or_else(|| "usage".to_owned(), |c| c.billing_type.clone());
    if let Some(reply) = rejection(state, &resource_uuid) {
        return reply;
    }
    let Some(obj) = data.as_object() else {
        return Reply::field_error("non_field_errors", &not_a_dict(data));
    };

    // Field validation: every item, every error.
    let raw_items: Vec<&Value> = if bulk {
        match obj.get("usages") {
            None => return Reply::field_error("usages", REQUIRED),
            Some(Value::Null) => return Reply::field_error("usages", NOT_NULL),
            Some(Value::Array(list)) => list.iter().collect(),
            Some(other) => {
                return Reply::invalid(Errors::from_iter([(
                    "usages".to_owned(),
                    json!({ "non_field_errors": [
                        format!("Expected a list of items but got type \"{}\".", py_type(other))
                    ] }),
                )]));
            }
        }
    } else {
        vec![data]
    };
    let results: Vec<Result<UserUsageItem, Errors>> =
        raw_items.iter().map(|v| user_usage_item(state, ctx, v)).collect();
    let report = |results: Vec<Result<(), Errors>>| -> Reply {
        if bulk {
            let list = results.into_iter().map(|r| Value::Object(r.err().unwrap_or_default())).collect();
            Reply::invalid(Errors::from_iter([("usages".to_owned(), Value::Array(list))]))
        } else {
            Reply::invalid(results.into_iter().find_map(Result::err).unwrap_or_default())
        }
    };
    if results.iter().any(Result::is_err) {
        return report(results.into_iter().map(|r| r.map(|_| ())).collect());
    }
    let items: Vec<UserUsageItem> = results.into_iter().filter_map(Result::ok).collect();

    // The date rules, per item.
    let checks: Vec<Result<(), Errors>> = items
        .iter()
        .map(|item| match item.date {
            None => Ok(()),
            Some(date) => {
                let period = date.local_date(ctx.offset).month_start();
                check_period(state, ctx, caller, period, &billing_type)
                    .map_err(|m| Errors::from_iter([("date".to_owned(), json!([m]))]))
            }
        })
        .collect();
    if checks.iter().any(Result::is_err) {
        return report(checks);
    }

    let now = state.now(ctx.offset);
    for item in items {
        let target = match item.date {
            None => parent_row,
            Some(date) => {
                let period = date.local_date(ctx.offset).month_start();
                state.usage_for_period(parent_row, period, date, now)
            }
        };
        // Waldur 7 updates only `usage` of an existing row; its `user` link stays.
        let relink = ctx.version.relinks_user_usage() || state.user_usage_row(target, &item.username).is_none();
        state.upsert_user_usage(target, &item.username, item.cents, item.user.filter(|_| relink), now);
    }
    Reply::created()
}
