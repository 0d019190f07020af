//! `DEMO=true` / `--demo`: a feed of realistic EV-charging events through the normal delivery
//! path, so the pages move on a first run without a broker or a producer.

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use rand::seq::IndexedRandom;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::envelope::{self, CategoryFrom, Source};
use crate::state::AppState;

const CUSTOMERS: [u32; 5] = [101, 102, 103, 104, 105];
const STATIONS: [&str; 4] = [
    "ST-Amsterdam-01",
    "ST-Utrecht-02",
    "ST-Rotterdam-03",
    "ST-Eindhoven-04",
];
const TICK: Duration = Duration::from_millis(1500);

/// A charging session in progress.
struct Session {
    id: String,
    customer: u32,
    station: &'static str,
    kwh: f64,
}

/// Feeds events until `stop`: through the broker with RabbitMQ on (so they reach the stream
/// and every instance), straight to the fan-out without.
pub async fn run(app: Arc<AppState>, stop: CancellationToken) {
    tracing::info!("demo feed on: emitting sample EV-charging events every {TICK:?}");
    let mut sessions: Vec<Session> = Vec::new();
    let mut next_session = 1u32;
    let mut tick = tokio::time::interval(TICK);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        for (category, body) in next_events(&mut sessions, &mut next_session) {
            let key = format!("notification.{category}");
            let source = Source {
                category: CategoryFrom::RoutingKey(&key),
                message_id: None,
                timestamp: None,
            };
            let body = body.to_string();
            // The demo only builds bodies the parser accepts.
            match envelope::parse(body.as_bytes(), source, &app.parse_limits()) {
                Ok(envelope) => {
                    if let Err(error) = crate::state::submit(&app, envelope, body.as_bytes()).await
                    {
                        tracing::debug!(%error, "demo event not published");
                    }
                }
                Err(rejection) => tracing::error!(%rejection, "demo event rejected"),
            }
        }
    }
}

fn next_events(
    sessions: &mut Vec<Session>,
    next_session: &mut u32,
) -> Vec<(&'static str, serde_json::Value)> {
    let mut rng = rand::rng();
    let mut events = Vec::new();
    for session in sessions.iter_mut() {
        session.kwh = ((session.kwh + rng.random_range(0.2..1.1)) * 100.0).round() / 100.0;
        events.push((
            "session",
            json!({
                "type": "charging.progress",
                "recipients": [session.customer],
                "data": { "sessionId": session.id, "customerId": session.customer, "stationId": session.station, "kwh": session.kwh },
            }),
        ));
    }
    // With nothing going on yet, start a session at once so a first look shows movement.
    let roll: f64 = if sessions.is_empty() && *next_session == 1 {
        0.0
    } else {
        rng.random()
    };
    if roll < 0.35 && sessions.len() < 4 {
        let customer = *CUSTOMERS.choose(&mut rng).expect("non-empty");
        let station = *STATIONS.choose(&mut rng).expect("non-empty");
        let session = Session {
            id: format!("s-{next_session}"),
            customer,
            station,
            kwh: 0.0,
        };
        *next_session += 1;
        events.push((
            "session",
            json!({
                "type": "charging.started",
                "recipients": [customer],
                "data": { "sessionId": session.id, "customerId": customer, "stationId": station, "kwh": 0 },
            }),
        ));
        sessions.push(session);
    } else if roll < 0.55 && !sessions.is_empty() {
        let session = sessions.remove(rng.random_range(0..sessions.len()));
        events.push((
            "session",
            json!({
                "type": "charging.stopped",
                "recipients": [session.customer],
                "data": { "sessionId": session.id, "customerId": session.customer, "stationId": session.station, "kwh": session.kwh },
            }),
        ));
    } else if roll < 0.65 {
        let station = *STATIONS.choose(&mut rng).expect("non-empty");
        let online = rng.random_bool(0.5);
        events.push((
            "station",
            json!({
                "type": if online { "station.online" } else { "station.offline" },
                "data": { "stationId": station },
            }),
        ));
    } else if roll < 0.72 {
        let station = *STATIONS.choose(&mut rng).expect("non-empty");
        events.push((
            "charger",
            json!({
                "type": "charger.faulted",
                "data": { "stationId": station, "chargerId": format!("{station}-C{}", rng.random_range(1..5)), "error": "GroundFailure" },
            }),
        ));
    } else if roll < 0.76 {
        let customer = *CUSTOMERS.choose(&mut rng).expect("non-empty");
        events.push((
            "customer",
            json!({
                "type": "customer.updated",
                "recipients": [customer],
                "data": { "customerId": customer, "change": "payment_method" },
            }),
        ));
    }
    events
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_demo_event_is_accepted_by_the_parser() {
        let mut sessions = Vec::new();
        let mut next = 1;
        for _ in 0..500 {
            for (category, body) in next_events(&mut sessions, &mut next) {
                let key = format!("notification.{category}");
                let source = Source {
                    category: CategoryFrom::RoutingKey(&key),
                    message_id: None,
                    timestamp: None,
                };
                let limits = envelope::Limits {
                    max_bytes: 131_072,
                    max_rooms: 1000,
                };
                envelope::parse(body.to_string().as_bytes(), source, &limits)
                    .expect("demo body parses");
            }
            assert!(sessions.len() <= 4);
        }
    }
}
