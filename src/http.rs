//! HTTP routes (contract section 6): config, polling, ingest, health, metrics, static pages;
//! the [`guard`] every request passes first; and [`serve`], the connection loop.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, MatchedPath, RawQuery, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::{Service, ServiceExt};
use tower_http::cors::{AllowOrigin, Any, CorsLayer};
use tower_http::services::ServeDir;
use tower_http::timeout::TimeoutLayer;

use crate::auth::{Principal, bearer_token};
use crate::config::CorsOrigins;
use crate::envelope::{self, CategoryFrom, Rejection, Source};
use crate::metrics::HttpLabels;
use crate::rooms::Room;
use crate::state::AppState;

/// API requests that take longer than this are answered 408: nothing here should take long,
/// except ingest, whose broker confirm is bounded at 5 s.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// A client that has not sent a whole request head within this long is disconnected (a
/// slowloris client sends a header byte now and then to hold a connection forever).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Headers that a proxy adds: a dev-mode daemon (auth off) that sees one is being reached
/// through a proxy, so possibly from the internet (contract section 1).
const PROXY_HEADERS: [&str; 4] = ["x-forwarded-for", "forwarded", "x-real-ip", "via"];
/// What the pages may load and who may frame them: only this origin, websockets back to it,
/// and no framing at all (clickjacking).
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; connect-src 'self' ws: wss:; \
    img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";
pub const DEFAULT_LIMIT: usize = 100;
pub const MAX_LIMIT: usize = 1000;

/// Every error the API answers (contract section 6), mapped to its status, code and plain
/// message in [`ApiError::parts`]. Causes with internal detail (the broker's address, the
/// client library's words) are logged where they happen, never carried here.
#[derive(Debug)]
pub enum ApiError {
    /// No token, or one that does not verify.
    Unauthorized,
    /// A room this caller may not read.
    RoomForbidden(Room),
    /// Publishing needs the `service` role.
    PublishForbidden,
    /// Dev mode (auth off) reached through a proxy.
    ProxiedDevMode,
    /// A Socket.IO handshake from an origin that is not allowed.
    OriginNotAllowed,
    /// Too many handshakes awaiting their Socket.IO CONNECT.
    ServerFull,
    InvalidRoom(String),
    MissingRoom,
    InvalidLimit,
    TooManyRooms(usize),
    UnsupportedMediaType,
    /// The body could not be read.
    InvalidBody(String),
    /// The body was read and refused by the parser.
    Rejected(Rejection),
    BrokerUnavailable,
    NotFound,
    MethodNotAllowed,
    NotReady(String),
}

impl ApiError {
    fn parts(&self) -> (StatusCode, &'static str, String) {
        use ApiError::*;
        match self {
            Unauthorized => (
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "a valid bearer token is required".into(),
            ),
            RoomForbidden(room) => (
                StatusCode::FORBIDDEN,
                "forbidden",
                format!("not allowed to read {room}"),
            ),
            PublishForbidden => (
                StatusCode::FORBIDDEN,
                "forbidden",
                "only the service role may publish".into(),
            ),
            ProxiedDevMode => (
                StatusCode::FORBIDDEN,
                "forbidden",
                "authentication is off (JWT_SECRET unset on a loopback HOST): requests through \
                 a proxy are refused; set JWT_SECRET"
                    .into(),
            ),
            OriginNotAllowed => (
                StatusCode::FORBIDDEN,
                "forbidden",
                "this origin may not open a Socket.IO connection (CORS_ORIGINS)".into(),
            ),
            ServerFull => (
                StatusCode::SERVICE_UNAVAILABLE,
                "server_full",
                "too many connections are being opened; retry later".into(),
            ),
            InvalidRoom(name) => (
                StatusCode::BAD_REQUEST,
                "invalid_room",
                format!("{name:?} is not a valid room name"),
            ),
            MissingRoom => (
                StatusCode::BAD_REQUEST,
                "missing_room",
                "at least one room parameter is required".into(),
            ),
            InvalidLimit => (
                StatusCode::BAD_REQUEST,
                "invalid_limit",
                format!("limit must be 1 to {MAX_LIMIT}"),
            ),
            TooManyRooms(max) => (
                StatusCode::BAD_REQUEST,
                "too_many_rooms",
                format!("at most {max} rooms per request (MAX_ROOMS_PER_SOCKET)"),
            ),
            UnsupportedMediaType => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "the body must be sent as Content-Type: application/json".into(),
            ),
            InvalidBody(why) => (StatusCode::BAD_REQUEST, "invalid_body", why.clone()),
            Rejected(Rejection::TooLarge) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                Rejection::TooLarge.code(),
                Rejection::TooLarge.describe().into(),
            ),
            Rejected(rejection) => (
                StatusCode::BAD_REQUEST,
                rejection.code(),
                rejection.describe().into(),
            ),
            BrokerUnavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "broker_unavailable",
                "the message broker did not confirm the notification; retry later".into(),
            ),
            NotFound => (
                StatusCode::NOT_FOUND,
                "not_found",
                "no such API route".into(),
            ),
            MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this route does not take that method".into(),
            ),
            NotReady(reason) => (StatusCode::SERVICE_UNAVAILABLE, "not_ready", reason.clone()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code, message) = self.parts();
        (status, Json(json!({ "error": code, "message": message }))).into_response()
    }
}

impl From<Rejection> for ApiError {
    fn from(rejection: Rejection) -> Self {
        ApiError::Rejected(rejection)
    }
}

pub fn router(app: Arc<AppState>) -> Router {
    let api = Router::new()
        .route("/api/config", get(config))
        .route("/api/notifications", get(poll).post(ingest))
        .route("/api/stats", get(stats))
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
    if !is_handshake(&request) {
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

/// A request that opens an Engine.IO session: `/socket.io` without a `sid` (polling or
/// websocket). Requests of an established session carry its `sid`.
fn is_handshake(request: &Request) -> bool {
    request.uri().path().starts_with("/socket.io")
        && !form_urlencoded::parse(request.uri().query().unwrap_or("").as_bytes())
            .any(|(key, _)| key == "sid")
}

/// In front of everything, Socket.IO included: refuses proxied requests in dev mode, foreign
/// `Origin`s and handshakes over `MAX_PENDING_CONNECTIONS`, and adds the browser security
/// headers to every answer.
pub async fn guard(State(app): State<Arc<AppState>>, mut request: Request, next: Next) -> Response {
    let mut response = match admit(&app, &mut request) {
        Ok(()) => next.run(request).await,
        Err(refusal) => refusal.into_response(),
    };
    let headers = response.headers_mut();
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    response
}

fn admit(app: &AppState, request: &mut Request) -> Result<(), ApiError> {
    if app.config.auth.is_dev_mode()
        && let Some(name) = PROXY_HEADERS
            .into_iter()
            .find(|name| request.headers().contains_key(*name))
    {
        tracing::warn!(
            header = name,
            path = request.uri().path(),
            "dev mode (auth off): refused a request that came through a proxy"
        );
        return Err(ApiError::ProxiedDevMode);
    }
    if !is_handshake(request) {
        return Ok(());
    }
    if let Some(origin) = request.headers().get(header::ORIGIN)
        && !origin_allowed(&app.config.cors, origin, request)
    {
        tracing::debug!(?origin, "Socket.IO handshake refused: origin not allowed");
        return Err(ApiError::OriginNotAllowed);
    }
    let Some(pending) = app.connections.begin_handshake() else {
        tracing::warn!(
            limit = app.config.limits.max_pending_connections,
            "Socket.IO handshake refused: MAX_PENDING_CONNECTIONS sessions await CONNECT"
        );
        return Err(ApiError::ServerFull);
    };
    request.extensions_mut().insert(pending);
    Ok(())
}

/// The same origin (the `Origin`'s host and port are the request's `Host`), or one that
/// `CORS_ORIGINS` allows. Websockets are outside CORS, so this is their only origin check.
fn origin_allowed(cors: &CorsOrigins, origin: &HeaderValue, request: &Request) -> bool {
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    let origin = origin.trim_end_matches('/');
    let listed = match cors {
        CorsOrigins::Any => return true,
        CorsOrigins::SameOrigin => false,
        CorsOrigins::List(list) => list.iter().any(|o| o.eq_ignore_ascii_case(origin)),
    };
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| request.uri().authority().map(|a| a.as_str()));
    let same = match (origin.split_once("://"), host) {
        (Some((_scheme, authority)), Some(host)) => authority.eq_ignore_ascii_case(host),
        _ => false,
    };
    listed || same
}

/// Serves `service` on `listener` until `stop` is cancelled, then waits for open connections
/// to finish. Like `axum::serve` (HTTP/1.1, websocket upgrades, graceful shutdown), plus
/// TCP_NODELAY and a timer, so that hyper enforces [`HEADER_READ_TIMEOUT`]: without a timer it
/// silently has no header timeout at all.
pub async fn serve<S>(listener: TcpListener, service: S, stop: CancellationToken)
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    // Every connection task holds a receiver; once all are gone, every connection has ended.
    let (open_tx, open_rx) = tokio::sync::watch::channel(());
    loop {
        let tcp = tokio::select! {
            // Stop accepting; open connections are finished below.
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((tcp, _peer)) => tcp,
                Err(error) => {
                    // Out of file descriptors and the like: wait instead of spinning (as axum).
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            },
        };
        // Notifications are small writes that must leave at once: without TCP_NODELAY,
        // Nagle's algorithm holds them back waiting for the previous write's ACK (a 10 ms p99
        // measured).
        if let Err(error) = tcp.set_nodelay(true) {
            tracing::debug!(%error, "could not set TCP_NODELAY");
        }
        let service = service
            .clone()
            .map_request(|request: axum::http::Request<Incoming>| request.map(Body::new));
        let connection = builder
            .serve_connection(TokioIo::new(tcp), TowerToHyperService::new(service))
            .with_upgrades();
        let stop = stop.clone();
        let open = open_rx.clone();
        tokio::spawn(async move {
            let mut connection = std::pin::pin!(connection);
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(error) = result {
                        tracing::trace!(%error, "connection ended with an error");
                    }
                }
                // Finish the request in flight, then close (keep-alive connections at once).
                _ = stop.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
            drop(open);
        });
    }
    drop(listener);
    drop(open_rx);
    open_tx.closed().await;
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
            ApiError::Unauthorized
        })
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
            "room" => {
                // Every room is read under the history lock: as many as a socket may join.
                if rooms.len() == app.config.limits.max_rooms_per_socket {
                    return Err(ApiError::TooManyRooms(
                        app.config.limits.max_rooms_per_socket,
                    ));
                }
                rooms.push(
                    Room::parse(&value).map_err(|_| ApiError::InvalidRoom(value.to_string()))?,
                )
            }
            "after" => after = Some(value.into_owned()),
            "limit" => {
                limit = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=MAX_LIMIT).contains(n))
                    .ok_or(ApiError::InvalidLimit)?;
            }
            _ => {}
        }
    }
    if rooms.is_empty() {
        return Err(ApiError::MissingRoom);
    }
    if let Some(room) = rooms.iter().find(|room| !principal.can_read(room)) {
        return Err(ApiError::RoomForbidden(room.clone()));
    }
    let page = app.fanout.read(&rooms, after.as_deref(), limit).await;
    let body = page.to_json();
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

/// `GET /api/stats` (contract v3 sections 6, 7): for those who may read the CMS dashboard.
async fn stats(State(app): State<Arc<AppState>>, headers: HeaderMap) -> Result<Response, ApiError> {
    let principal = authenticate(&app, &headers)?;
    let dashboard = Room::parse(crate::stats::DASHBOARD_ROOM).expect("a valid room name");
    if !principal.can_read(&dashboard) {
        return Err(ApiError::RoomForbidden(dashboard));
    }
    let body = app.stats.snapshot(jiff::Timestamp::now()).to_string();
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

async fn ingest(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let principal = authenticate(&app, &headers)?;
    if !principal.can_publish() {
        return Err(ApiError::PublishForbidden);
    }
    if !is_json(&headers) {
        return Err(ApiError::UnsupportedMediaType);
    }
    let body = body.map_err(|rejection| match rejection.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::from(Rejection::TooLarge),
        _ => ApiError::InvalidBody(rejection.body_text()),
    })?;
    let source = Source {
        category: CategoryFrom::Body,
        message_id: None,
        timestamp: None,
    };
    let envelope = envelope::parse(&body, source, &app.parse_limits())?;
    crate::state::submit(&app, envelope, &body)
        .await
        .map_err(|error| {
            // The broker's address and the client library's words stay in the log.
            tracing::warn!(%error, "ingest: publish failed");
            ApiError::BrokerUnavailable
        })?;
    Ok((StatusCode::ACCEPTED, Json(json!({ "accepted": true }))).into_response())
}

/// `application/json`, with or without parameters (`; charset=utf-8`). A browser can send a
/// cross-origin `text/plain` POST without a preflight; it cannot send this one.
fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|media| media.trim().eq_ignore_ascii_case("application/json"))
}

async fn api_not_found() -> ApiError {
    ApiError::NotFound
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

async fn readyz(State(app): State<Arc<AppState>>) -> Response {
    match app.readiness.check() {
        Ok(broker) => Json(json!({ "status": "ready", "broker": broker.as_str() })).into_response(),
        Err(reason) => ApiError::NotReady(reason).into_response(),
    }
}

async fn metrics(State(app): State<Arc<AppState>>) -> Response {
    app.fanout.refresh_gauges();
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
    fn json_content_types() {
        for (value, ok) in [
            ("application/json", true),
            ("Application/JSON; charset=utf-8", true),
            ("text/plain", false),
            ("application/x-www-form-urlencoded", false),
            ("application/jsonp", false),
        ] {
            let mut headers = HeaderMap::new();
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(value));
            assert_eq!(is_json(&headers), ok, "{value}");
        }
        assert!(!is_json(&HeaderMap::new()));
    }

    #[test]
    fn handshake_origins() {
        let handshake = |origin: &str| {
            let request = Request::builder()
                .uri("/socket.io/?EIO=4&transport=polling")
                .header(header::HOST, "bridge.example.com:3000")
                .header(header::ORIGIN, origin)
                .body(Body::empty())
                .unwrap();
            let origin = request.headers()[header::ORIGIN].clone();
            (request, origin)
        };
        let list = CorsOrigins::List(vec!["https://app.example.com".into()]);
        for (cors, origin, allowed) in [
            (
                &CorsOrigins::SameOrigin,
                "http://bridge.example.com:3000",
                true,
            ),
            (
                &CorsOrigins::SameOrigin,
                "https://BRIDGE.example.com:3000",
                true,
            ),
            (&CorsOrigins::SameOrigin, "https://evil.example", false),
            (&CorsOrigins::SameOrigin, "null", false),
            (&list, "https://app.example.com", true),
            (&list, "https://app.example.com.evil.example", false),
            (&CorsOrigins::Any, "https://evil.example", true),
        ] {
            let (request, value) = handshake(origin);
            assert_eq!(
                origin_allowed(cors, &value, &request),
                allowed,
                "{cors:?} {origin}"
            );
        }
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
