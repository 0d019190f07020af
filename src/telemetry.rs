//! Logs and traces.
//!
//! Logs: `RUST_LOG` filter, `LOG_FORMAT` pretty or json, on stderr. lapin and amq-protocol log
//! every connection loss at ERROR although the daemon rides it out (its own WARN says so, once
//! per outage), so their events count as DEBUG whatever level they carry: they show only when
//! `RUST_LOG` enables debug for them (`RUST_LOG=debug`, `RUST_LOG=info,lapin=debug`).
//!
//! Traces: when `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set,
//! spans are exported over OTLP/HTTP, configured by the standard `OTEL_*` variables
//! (`OTEL_EXPORTER_OTLP_PROTOCOL` `http/protobuf` or `http/json`, `OTEL_SERVICE_NAME`,
//! `OTEL_TRACES_SAMPLER`, `OTEL_BSP_*`, ...). The spans:
//!
//! - one per notification, from consume to emit ([`delivery_span`]), child of the W3C
//!   `traceparent` its producer put in the AMQP headers;
//! - one per HTTP request of the API and the pages ([`http_request`]), child of the request's
//!   `traceparent`; ingest publishes within it and puts its context in the message's headers
//!   ([`current_traceparent`]), so the delivery that follows is its child.
//!
//! Neither a span nor the access log ever carries a query string: tokens and sids live there.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request};
use axum::http::header::HeaderMap;
use axum::middleware::Next;
use axum::response::Response;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::field::Empty;
use tracing::span::{Attributes, Id, Record};
use tracing::subscriber::Interest;
use tracing::{Event, Instrument, Level, Metadata};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::{EnvFilter, FilterExt, LevelFilter, Targets, filter_fn};
use tracing_subscriber::layer::{Context, Filter, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, Registry};

use crate::config::LogFormat;

/// The W3C trace context header, in HTTP and in AMQP message headers.
pub const TRACEPARENT: &str = "traceparent";
const TRACESTATE: &str = "tracestate";
/// Targets of the AMQP client library, whose events count as DEBUG.
const CLIENT_LIBRARY_TARGETS: [&str; 2] = ["lapin", "amq_protocol"];
/// Most room names one delivery span lists (a message may name up to `MAX_RECIPIENTS`).
const SPAN_ROOMS: usize = 50;
/// How long shutdown waits for the last spans to be exported.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);
/// Routes of probes and scrapes, logged at DEBUG: they come every few seconds.
const QUIET_ROUTES: [&str; 3] = ["/healthz", "/readyz", "/metrics"];

/// What [`init`] set up; [`Telemetry::shutdown`] flushes it.
#[must_use = "call shutdown() so the last spans are exported"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports the spans still buffered (bounded by 5 s), then stops the exporter.
    pub async fn shutdown(self) {
        let Some(provider) = self.provider else {
            return;
        };
        // The exporter's client blocks: off the async workers.
        let flushed =
            tokio::task::spawn_blocking(move || provider.shutdown_with_timeout(FLUSH_TIMEOUT))
                .await;
        if let Ok(Err(error)) = flushed {
            tracing::warn!(%error, "could not export the last spans");
        }
    }
}

/// Installs the global subscriber (and the OTLP exporter if configured). Called once, by the
/// binary. `filter` was validated with the configuration.
pub fn init(filter: &str, format: LogFormat) -> Telemetry {
    let library_level = client_library_level(filter);
    let env_filter = EnvFilter::builder().parse_lossy(filter);
    let most_verbose = most_verbose_level(&env_filter, library_level);
    let is_library = filter_fn(|meta: &Metadata<'_>| is_client_library(meta.target()));
    // Our events as RUST_LOG says; the client library's as if they were DEBUG. Spans are for
    // the traces only: a log line carries its own fields, and with no exporter a span costs
    // nothing at all.
    let log_filter = filter_fn(|meta: &Metadata<'_>| meta.is_event()).and(
        is_library
            .clone()
            .not()
            .and(env_filter)
            .or(is_library.and(filter_fn(move |meta| {
                demoted(*meta.level()) <= library_level
            }))),
    );
    let log_filter = WithMaxLevel {
        filter: log_filter,
        max: most_verbose,
    };
    let logs = match format {
        LogFormat::Pretty => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_writer(std::io::stderr)
            .boxed(),
    };
    let (provider, error) = match exporter_configured().then(tracer_provider) {
        None => (None, None),
        Some(Ok(provider)) => (Some(provider), None),
        Some(Err(error)) => (None, Some(error)),
    };
    // Spans are exported whatever RUST_LOG says: the filter is for the log, not the traces.
    let traces = provider.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("notify-bridge"))
            .with_filter(Targets::new().with_target("notify_bridge", Level::INFO))
    });
    Registry::default()
        .with(logs.with_filter(log_filter))
        .with(traces)
        .init();
    if let Some(error) = error {
        tracing::warn!(%error, "OTEL_EXPORTER_OTLP_ENDPOINT is set but spans cannot be exported");
    } else if provider.is_some() {
        tracing::info!("exporting spans over OTLP");
    }
    Telemetry { provider }
}

fn exporter_configured() -> bool {
    [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ]
    .iter()
    .any(|name| std::env::var_os(name).is_some_and(|v| !v.is_empty()))
}

/// `OTEL_SERVICE_NAME` when unset.
pub const DEFAULT_SERVICE_NAME: &str = "notify-bridge";
/// `OTEL_EXPORTER_OTLP_PROTOCOL` when unset ([`opentelemetry_otlp::Protocol::HttpBinary`]).
pub const DEFAULT_OTLP_PROTOCOL: &str = "http/protobuf";

fn tracer_provider() -> Result<SdkTracerProvider, opentelemetry_otlp::ExporterBuildError> {
    use opentelemetry_otlp::WithExportConfig as _;
    // Protocol, endpoint, headers and timeout come from the OTEL_* variables.
    let mut exporter = opentelemetry_otlp::SpanExporter::builder().with_http();
    if std::env::var("OTEL_EXPORTER_OTLP_PROTOCOL").is_err()
        && std::env::var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL").is_err()
    {
        exporter = exporter.with_protocol(opentelemetry_otlp::Protocol::HttpBinary);
    }
    let exporter = exporter.build()?;
    let mut resource = opentelemetry_sdk::Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name(DEFAULT_SERVICE_NAME);
    }
    let resource = resource
        .with_attribute(opentelemetry::KeyValue::new(
            "service.version",
            env!("CARGO_PKG_VERSION"),
        ))
        .build();
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build())
}

fn is_client_library(target: &str) -> bool {
    CLIENT_LIBRARY_TARGETS.iter().any(|lib| {
        target
            .strip_prefix(lib)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with("::"))
    })
}

/// The most verbose level any log line can have: `RUST_LOG`'s, or the client library's when
/// that shows more (its events count as DEBUG at least, so below DEBUG none of them shows).
fn most_verbose_level(env_filter: &EnvFilter, library_level: LevelFilter) -> LevelFilter {
    let library = if library_level >= LevelFilter::DEBUG {
        library_level
    } else {
        LevelFilter::OFF
    };
    env_filter
        .max_level_hint()
        .unwrap_or(LevelFilter::TRACE)
        .max(library)
}

/// A filter with a known most verbose level. tracing-subscriber's combinators lose the hint
/// when a part has none (a `filter_fn`), and without it every disabled `trace!` of every
/// dependency (tungstenite logs each websocket frame through `log`) is evaluated at run time
/// instead of skipped where it is written.
struct WithMaxLevel<F> {
    filter: F,
    max: LevelFilter,
}

impl<S, F: Filter<S>> Filter<S> for WithMaxLevel<F> {
    fn enabled(&self, meta: &Metadata<'_>, cx: &Context<'_, S>) -> bool {
        *meta.level() <= self.max && self.filter.enabled(meta, cx)
    }

    fn callsite_enabled(&self, meta: &'static Metadata<'static>) -> Interest {
        if *meta.level() <= self.max {
            self.filter.callsite_enabled(meta)
        } else {
            Interest::never()
        }
    }

    fn event_enabled(&self, event: &Event<'_>, cx: &Context<'_, S>) -> bool {
        self.filter.event_enabled(event, cx)
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(self.max)
    }

    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, cx: Context<'_, S>) {
        self.filter.on_new_span(attrs, id, cx);
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, cx: Context<'_, S>) {
        self.filter.on_record(id, values, cx);
    }

    fn on_enter(&self, id: &Id, cx: Context<'_, S>) {
        self.filter.on_enter(id, cx);
    }

    fn on_exit(&self, id: &Id, cx: Context<'_, S>) {
        self.filter.on_exit(id, cx);
    }

    fn on_close(&self, id: Id, cx: Context<'_, S>) {
        self.filter.on_close(id, cx);
    }
}

/// The level a client library event is treated as: DEBUG, or TRACE for its trace events.
fn demoted(level: Level) -> Level {
    level.max(Level::DEBUG)
}

/// The most verbose level `filter` enables for the client library: its directives for
/// `lapin` / `amq_protocol` if there are any, else the default level, else ERROR (as
/// `EnvFilter` does without one).
fn client_library_level(filter: &str) -> LevelFilter {
    let mut default = None;
    let mut library: Option<LevelFilter> = None;
    for directive in filter.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        // Span-scoped directives (`target[span]=level`) are not about plain events.
        if directive.contains('[') {
            continue;
        }
        match directive.split_once('=') {
            Some((target, level)) => {
                if is_client_library(target)
                    && let Ok(level) = level.parse::<LevelFilter>()
                {
                    library = Some(library.map_or(level, |l| l.max(level)));
                }
            }
            None => match directive.parse::<LevelFilter>() {
                Ok(level) => default = Some(level),
                // A bare target enables everything of it.
                Err(_) if is_client_library(directive) => library = Some(LevelFilter::TRACE),
                Err(_) => {}
            },
        }
    }
    library.or(default).unwrap_or(LevelFilter::ERROR)
}

/// The span of one notification, from consume to emit: a child of `traceparent` (the W3C
/// header found in the AMQP message or the ingest request) when there is a valid one.
///
/// Record what is known later with [`record_delivery`] and [`record_stream_offset`] (or
/// `span.record(field, value)` for one of the fields declared here), and keep the span
/// entered, or instrument the future, while the notification is emitted.
pub fn delivery_span(traceparent: Option<&str>, routing_key: &str) -> tracing::Span {
    let span = tracing::info_span!(
        "deliver notification",
        otel.kind = "consumer",
        otel.status_code = Empty,
        messaging.system = "rabbitmq",
        messaging.operation.type = "process",
        messaging.rabbitmq.destination.routing_key = routing_key,
        messaging.message.id = Empty,
        notify_bridge.rooms = Empty,
        notify_bridge.room_count = Empty,
        notify_bridge.copies = Empty,
        notify_bridge.duplicate = Empty,
        notify_bridge.stream_offset = Empty,
        notify_bridge.dead_letter_reason = Empty,
    );
    set_remote_parent(&span, traceparent, None);
    span
}

/// Records the rooms, messageId and copies of a delivered notification (`copies`: `None` for
/// one dropped as a duplicate).
pub fn record_delivery(
    span: &tracing::Span,
    message_id: Option<&str>,
    rooms: &[crate::rooms::Room],
    copies: Option<usize>,
) {
    // Without an exporter the span is disabled: build nothing for it.
    if span.is_disabled() {
        return;
    }
    if let Some(id) = message_id {
        span.record("messaging.message.id", id);
    }
    let mut listed: Vec<&str> = rooms.iter().take(SPAN_ROOMS).map(|r| r.as_str()).collect();
    if rooms.len() > SPAN_ROOMS {
        listed.push("...");
    }
    span.record("notify_bridge.rooms", listed.join(","));
    span.record("notify_bridge.room_count", rooms.len());
    match copies {
        Some(copies) => {
            span.record("notify_bridge.copies", copies);
        }
        None => {
            span.record("notify_bridge.copies", 0);
            span.record("notify_bridge.duplicate", true);
        }
    }
}

/// Records the stream offset of the record the notification was read from.
pub fn record_stream_offset(span: &tracing::Span, offset: u64) {
    span.record("notify_bridge.stream_offset", offset);
}

/// Records why a message was dead-lettered instead of delivered.
pub fn record_dead_letter(span: &tracing::Span, reason: &'static str) {
    span.record("notify_bridge.dead_letter_reason", reason);
    span.record("otel.status_code", "ERROR");
}

/// The `traceparent` (and `tracestate`) of AMQP message headers.
pub fn amqp_trace_context(
    headers: Option<&lapin::types::FieldTable>,
) -> (Option<String>, Option<String>) {
    let get = |name: &str| {
        let value = headers?.inner().get(name)?;
        match value {
            lapin::types::AMQPValue::LongString(s) => {
                Some(String::from_utf8_lossy(s.as_bytes()).into_owned())
            }
            lapin::types::AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
            _ => None,
        }
    };
    (get(TRACEPARENT), get(TRACESTATE))
}

/// The W3C `traceparent` of the current span, to put in a message this span publishes.
/// `None` when spans are not exported (or the current span is not sampled).
pub fn current_traceparent() -> Option<String> {
    let context = tracing::Span::current().context();
    let mut carrier: HashMap<String, String> = HashMap::new();
    TraceContextPropagator::new().inject_context(&context, &mut carrier);
    carrier.remove(TRACEPARENT)
}

fn set_remote_parent(span: &tracing::Span, traceparent: Option<&str>, tracestate: Option<&str>) {
    let Some(traceparent) = traceparent else {
        return;
    };
    let mut carrier = HashMap::from([(TRACEPARENT.to_owned(), traceparent.to_owned())]);
    if let Some(state) = tracestate {
        carrier.insert(TRACESTATE.to_owned(), state.to_owned());
    }
    let parent = TraceContextPropagator::new().extract(&carrier);
    // Fails only when no OpenTelemetry layer is installed: then there is nothing to link.
    let _ = span.set_parent(parent);
}

/// Axum middleware: a span per request, child of its `traceparent`, and one access log line
/// (method, route, status, latency). The route is the matched route template, or for pages the
/// path; never the query string.
pub async fn http_request(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|matched| matched.as_str().to_owned())
        .unwrap_or_else(|| request.uri().path().to_owned());
    let span = tracing::info_span!(
        "HTTP request",
        otel.name = format!("{method} {route}"),
        otel.kind = "server",
        otel.status_code = Empty,
        http.request.method = %method,
        http.route = %route,
        http.response.status_code = Empty,
    );
    set_remote_parent(
        &span,
        header(request.headers(), TRACEPARENT),
        header(request.headers(), TRACESTATE),
    );
    let response = next.run(request).instrument(span.clone()).await;
    let status = response.status().as_u16();
    span.record("http.response.status_code", status);
    if response.status().is_server_error() {
        span.record("otel.status_code", "ERROR");
    }
    let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
    let latency_ms = format_args!("{latency_ms:.3}");
    if QUIET_ROUTES.contains(&route.as_str()) {
        tracing::debug!(target: "notify_bridge::access", %method, %route, status, %latency_ms, "request");
    } else {
        tracing::info!(target: "notify_bridge::access", %method, %route, status, %latency_ms, "request");
    }
    response
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_log_line_is_evaluated_above_the_most_verbose_level_the_filter_shows() {
        let level = |filter: &str| {
            most_verbose_level(
                &EnvFilter::builder().parse_lossy(filter),
                client_library_level(filter),
            )
        };
        // What is skipped where it is written (a dependency's `trace!` at RUST_LOG=warn).
        assert_eq!(level("warn"), LevelFilter::WARN);
        assert_eq!(level("info"), LevelFilter::INFO);
        assert_eq!(level("warn,notify_bridge=debug"), LevelFilter::DEBUG);
        // The client library's events count as DEBUG: shown when asked for.
        assert_eq!(level("info,lapin=debug"), LevelFilter::DEBUG);
        assert_eq!(level("warn,lapin=trace"), LevelFilter::TRACE);
    }

    #[test]
    fn the_client_library_level_follows_its_directives_or_the_default() {
        assert_eq!(client_library_level("info"), LevelFilter::INFO);
        assert_eq!(
            client_library_level("warn,notify_bridge=debug"),
            LevelFilter::WARN
        );
        assert_eq!(client_library_level("info,lapin=debug"), LevelFilter::DEBUG);
        assert_eq!(
            client_library_level("debug,lapin=error"),
            LevelFilter::ERROR
        );
        assert_eq!(
            client_library_level("info,amq_protocol=trace"),
            LevelFilter::TRACE
        );
        assert_eq!(client_library_level("info,lapin"), LevelFilter::TRACE);
        assert_eq!(
            client_library_level("notify_bridge=info"),
            LevelFilter::ERROR
        );
    }

    #[test]
    fn client_library_events_count_as_debug() {
        let shown = |event: Level, filter: &str| demoted(event) <= client_library_level(filter);
        assert!(
            !shown(Level::ERROR, "info"),
            "a lapin ERROR is hidden at info"
        );
        assert!(!shown(Level::ERROR, "warn"));
        assert!(shown(Level::ERROR, "debug"));
        assert!(shown(Level::ERROR, "info,lapin=debug"));
        assert!(!shown(Level::TRACE, "debug"));
        assert!(is_client_library("lapin::channel"));
        assert!(is_client_library("amq_protocol"));
        assert!(!is_client_library("lapinx"));
        assert!(!is_client_library("notify_bridge::amqp"));
    }
}
