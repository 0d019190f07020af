//! HTTP routes (contract section 6): config, polling, ingest, health, metrics, static pages.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, MatchedPath, RawQuery, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use serde::Serialize;
use serde_json::json;
use serde_json::value::RawValue;
use tower_http::cors::{AllowOrigin, Any, CorsLayer};
use tower_http::services::ServeDir;
use tower_http::timeout::TimeoutLayer;

use crate::AppState;
use crate::auth::{Principal, bearer_token};
use crate::config::CorsOrigins;
use crate::delivery::DedupeKey;
use crate::envelope::{self, CategoryFrom, Rejection, Source};
use crate::metrics::HttpLabels;
use crate::rooms::Room;

/// API requests that take longer than this are answered 408: nothing here should take long,
/// except ingest, whose broker confirm is bounded at 5 s.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
pub const DEFAULT_LIMIT: usize = 100;
pub const MAX_LIMIT: usize = 1000;

/// An error answer: `{ "error": code, "message": text }`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }
    fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(json!({ "error": self.code, "message": self.message })),
        )
            .into_response()
    }
}

impl From<Rejection> for ApiError {
    fn from(rejection: Rejection) -> Self {
        let status = match rejection {
            Rejection::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            _ => StatusCode::BAD_REQUEST,
        };
        Self::new(status, rejection.code(), rejection.describe())
    }
}

pub fn router(app: Arc<AppState>) -> Router {
    let api = Router::new()
        .route("/api/config", get(config))
        .route("/api/notifications", get(poll).post(ingest))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        // One byte over the limit is enough to tell "too large"; the rest is never read.
        .layer(DefaultBodyLimit::max(
            app.config.limits.max_message_bytes + 1,
        ))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            REQUEST_TIMEOUT,
        ))
        .route_layer(middleware::from_fn_with_state(app.clone(), track))
        // API errors are JSON like every other answer of the API (contract section 6).
        .route("/api/{*rest}", axum::routing::any(api_not_found))
        .method_not_allowed_fallback(method_not_allowed);
    let router = Router::new().merge(api);
    // The pages built into the binary, unless PUBLIC_DIR names a directory to serve instead.
    let router = match &app.config.public_dir {
        Some(dir) => {
            router.fallback_service(ServeDir::new(dir).append_index_html_on_directories(true))
        }
        None => router.fallback(crate::pages::serve),
    };
    router.with_state(app)
}

/// CORS for both the API and Socket.IO's polling transport, from `CORS_ORIGINS`.
pub fn cors(origins: &CorsOrigins) -> Option<CorsLayer> {
    let allow = match origins {
        CorsOrigins::SameOrigin => return None,
        CorsOrigins::Any => AllowOrigin::from(Any),
        CorsOrigins::List(list) => AllowOrigin::list(
            // Each origin was validated as a header value at start.
            list.iter()
                .map(|o| HeaderValue::from_str(o).expect("validated origin")),
        ),
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
            .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
            .max_age(Duration::from_secs(600)),
    )
}

/// Socket.IO keeps each connection's handshake request for the socket's whole life. The URI
/// and header values parsed by hyper are slices of the connection's read buffer (8 to 16 KiB),
/// so keeping them keeps that buffer too, per idle socket; and a browser's headers (cookies,
/// user agent, languages) are another kilobyte or two. The handshake gets an owned copy of its
/// URI (the token may be in its query) and of `Sec-WebSocket-Key` (Engine.IO answers the
/// upgrade with it), and no other header: nothing reads them after this point (CORS has
/// already run). Its extensions (hyper's upgrade handle among them) stay as they are. Requests
/// of an established session (they carry its `sid`: polls, upgrades) are not kept, and pass
/// as is.
pub fn detach_handshake(request: Request) -> Request {
    let is_handshake = request.uri().path().starts_with("/socket.io")
        && !form_urlencoded::parse(request.uri().query().unwrap_or("").as_bytes())
            .any(|(key, _)| key == "sid");
    if !is_handshake {
        return request;
    }
    let (mut parts, body) = request.into_parts();
    if let Ok(uri) = parts.uri.to_string().parse() {
        parts.uri = uri;
    }
    let mut headers = HeaderMap::with_capacity(1);
    if let Some(key) = parts.headers.get(header::SEC_WEBSOCKET_KEY)
        // Bytes that were already a valid header value are one again.
        && let Ok(key) = HeaderValue::from_bytes(key.as_bytes())
    {
        headers.insert(header::SEC_WEBSOCKET_KEY, key);
    }
    parts.headers = headers;
    Request::from_parts(parts, body)
}

async fn track(
    State(app): State<Arc<AppState>>,
    route: MatchedPath,
    request: Request,
    next: Next,
) -> Response {
    let method = request.method().to_string();
    let route = route.as_str().to_owned();
    let response = next.run(request).await;
    let labels = HttpLabels {
        method,
        route,
        status: response.status().as_u16(),
    };
    app.metrics.http_requests.get_or_create(&labels).inc();
    response
}

async fn config(State(app): State<Arc<AppState>>) -> Json<serde_json::Value> {
    Json(json!({
        "ENABLE_RABBITMQ": app.config.enable_rabbitmq,
        "pollIntervalMs": app.config.poll_interval_ms,
        "authRequired": app.auth.required(),
    }))
}

fn authenticate(app: &AppState, headers: &HeaderMap) -> Result<Principal, ApiError> {
    let header = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    app.auth
        .authenticate(bearer_token(header))
        .map_err(|error| {
            tracing::debug!(%error, "request refused");
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "a valid bearer token is required",
            )
        })
}

#[derive(Serialize)]
struct PollResponse<'a> {
    notifications: Vec<&'a RawValue>,
    cursor: String,
    reset: bool,
}

async fn poll(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let principal = authenticate(&app, &headers)?;
    let mut rooms = Vec::new();
    let mut after = None;
    let mut limit = DEFAULT_LIMIT;
    for (key, value) in form_urlencoded::parse(query.as_deref().unwrap_or("").as_bytes()) {
        match &*key {
            "room" => rooms.push(Room::parse(&value).map_err(|_| {
                ApiError::bad_request(
                    "invalid_room",
                    format!("{value:?} is not a valid room name"),
                )
            })?),
            "after" => after = Some(value.into_owned()),
            "limit" => {
                limit = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=MAX_LIMIT).contains(n))
                    .ok_or_else(|| {
                        ApiError::bad_request(
                            "invalid_limit",
                            format!("limit must be 1 to {MAX_LIMIT}"),
                        )
                    })?;
            }
            _ => {}
        }
    }
    if rooms.is_empty() {
        return Err(ApiError::bad_request(
            "missing_room",
            "at least one room parameter is required",
        ));
    }
    if let Some(room) = rooms.iter().find(|room| !principal.can_read(room)) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("not allowed to read {room}"),
        ));
    }
    let page = app.delivery.read(&rooms, after.as_deref(), limit);
    let body = PollResponse {
        notifications: page.items.iter().map(|item| &*item.json).collect(),
        cursor: page.cursor,
        reset: page.reset,
    };
    Ok(Json(body).into_response())
}

async fn ingest(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let principal = authenticate(&app, &headers)?;
    if !principal.can_publish() {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "only the service role may publish",
        ));
    }
    let body = body.map_err(|rejection| match rejection.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::from(Rejection::TooLarge),
        _ => ApiError::bad_request("invalid_body", rejection.body_text()),
    })?;
    let source = Source {
        category: CategoryFrom::Body,
        message_id: None,
        timestamp: None,
    };
    let envelope = envelope::parse(&body, source, app.config.limits.max_message_bytes)?;
    match &app.broker {
        Some(broker) => {
            let routing_key = format!("notification.{}", envelope.category);
            broker.publish(&routing_key, &body).await.map_err(|error| {
                tracing::warn!(%error, "ingest: publish failed");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "broker_unavailable",
                    error.to_string(),
                )
            })?;
        }
        None => {
            let key = envelope
                .message_id
                .as_deref()
                .map_or(DedupeKey::None, DedupeKey::MessageId);
            app.delivery.deliver(&envelope, key);
        }
    }
    Ok((StatusCode::ACCEPTED, Json(json!({ "accepted": true }))).into_response())
}

async fn api_not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such API route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not take that method",
    )
}

async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

async fn readyz(State(app): State<Arc<AppState>>) -> Response {
    match app.readiness.check() {
        Ok(()) => Json(json!({ "status": "ready" })).into_response(),
        Err(reason) => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_ready", reason).into_response()
        }
    }
}

async fn metrics(State(app): State<Arc<AppState>>) -> Response {
    app.delivery.housekeeping_gauges();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        app.metrics.encode(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;

    fn request(uri: &str) -> Request {
        let mut request = Request::builder()
            .uri(uri)
            .header(header::SEC_WEBSOCKET_KEY, "dGhlIHNhbXBsZSBub25jZQ==")
            .header(header::COOKIE, "session=a-long-browser-cookie")
            .header(header::ORIGIN, "https://app.example.com")
            .body(Body::empty())
            .unwrap();
        // Stands in for hyper's upgrade handle, which must survive.
        request.extensions_mut().insert(42u32);
        request
    }

    /// Where a header value's bytes live: a copy lives elsewhere.
    fn address(request: &Request) -> *const u8 {
        request.headers()[header::SEC_WEBSOCKET_KEY]
            .as_bytes()
            .as_ptr()
    }

    #[test]
    fn a_handshake_keeps_owned_copies_of_its_uri_and_key_and_its_extensions_only() {
        let handshake = request("/socket.io/?EIO=4&transport=websocket&token=t");
        let before = address(&handshake);
        let detached = detach_handshake(handshake);
        assert_ne!(address(&detached), before, "the header bytes were copied");
        assert_eq!(
            detached.uri(),
            "/socket.io/?EIO=4&transport=websocket&token=t"
        );
        assert_eq!(
            detached.headers()[header::SEC_WEBSOCKET_KEY],
            "dGhlIHNhbXBsZSBub25jZQ=="
        );
        assert_eq!(
            detached.headers().len(),
            1,
            "cookie and origin are not kept"
        );
        assert_eq!(detached.extensions().get::<u32>(), Some(&42));
    }

    #[test]
    fn requests_of_an_established_session_and_the_api_pass_untouched() {
        for uri in [
            "/socket.io/?EIO=4&transport=polling&sid=abc",
            "/api/notifications?room=cms:x",
        ] {
            let original = request(uri);
            let before = address(&original);
            assert_eq!(address(&detach_handshake(original)), before, "{uri}");
        }
    }
}
