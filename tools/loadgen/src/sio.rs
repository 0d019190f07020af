//! A minimal Socket.IO v5 / Engine.IO v4 client over the websocket transport only: enough to
//! authenticate, join one room and read `notification` events on thousands of connections.
//!
//! Packets are Engine.IO type + Socket.IO type + payload in one text frame:
//! `0{..}` open, `2`/`3` ping/pong, `40{..}` connect, `44{..}` connect error,
//! `421[..]` event with ack id 1, `431[..]` its ack, `42[..]` event.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long one handshake step (open, connect, join ack) may take.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);

/// Where the daemon's Socket.IO endpoint is.
#[derive(Clone)]
pub struct Endpoint {
    url: String,
}

impl Endpoint {
    /// From the daemon's base URL, e.g. `http://127.0.0.1:3000`.
    pub fn from_base(base: &str) -> Result<Self, String> {
        let host = base
            .strip_prefix("http://")
            .ok_or_else(|| format!("--url must be http://HOST:PORT (got {base:?})"))?
            .trim_end_matches('/');
        Ok(Self {
            url: format!("ws://{host}/socket.io/?EIO=4&transport=websocket"),
        })
    }
}

/// Opens a socket, authenticates with `token` (if any) and joins `room`.
pub async fn connect_and_join(
    endpoint: &Endpoint,
    token: Option<&str>,
    room: &str,
) -> Result<Ws, String> {
    let mut ws = connect(endpoint, token).await?;
    let ack = join(&mut ws, &format!("\"{room}\""), |_| {}).await?;
    if ack.contains("\"ok\":true") {
        Ok(ws)
    } else {
        Err(format!("join refused: {ack:.80}"))
    }
}

/// Opens a socket, authenticates and joins `room` with the cursor `after`: the replay comes
/// before the join's ack, each event handed to `on_event`. Returns the socket and the ack.
pub async fn connect_and_replay(
    endpoint: &Endpoint,
    token: Option<&str>,
    room: &str,
    after: &str,
    on_event: impl FnMut(&str),
) -> Result<(Ws, String), String> {
    let mut ws = connect(endpoint, token).await?;
    // Room names and cursors hold nothing to escape in JSON.
    let request = format!("{{\"room\":\"{room}\",\"after\":\"{after}\"}}");
    let ack = join(&mut ws, &request, on_event).await?;
    Ok((ws, ack))
}

/// Opens a socket and authenticates with `token` (if any).
async fn connect(endpoint: &Endpoint, token: Option<&str>) -> Result<Ws, String> {
    // Small buffers: the frames are a few hundred bytes, and 10,000 connections at the default
    // 128 KiB each would make the load generator the memory hog of the machine.
    let config = WebSocketConfig::default()
        .read_buffer_size(8 * 1024)
        .write_buffer_size(0);
    let (mut ws, _) =
        tokio_tungstenite::connect_async_with_config(endpoint.url.as_str(), Some(config), true)
            .await
            .map_err(|e| format!("websocket: {e}"))?;

    let open = next_packet(&mut ws).await?;
    if !open.starts_with('0') {
        return Err(format!(
            "expected the Engine.IO open packet, got {open:.60}"
        ));
    }
    // A JWT is base64url and dots: nothing to escape in JSON.
    let hello = match token {
        Some(token) => format!("40{{\"token\":\"{token}\"}}"),
        None => "40".to_owned(),
    };
    send(&mut ws, hello).await?;
    let reply = next_packet(&mut ws).await?;
    if let Some(error) = reply.strip_prefix("44") {
        return Err(format!("connect refused: {error:.80}"));
    }
    if !reply.starts_with("40") {
        return Err(format!("expected CONNECT, got {reply:.60}"));
    }
    Ok(ws)
}

/// Sends `join-room` with `request` (a room name as a JSON string, or a JSON object) and reads
/// up to its ack, handing each event before it (a replay) to `on_event`. Returns the ack.
async fn join(
    ws: &mut Ws,
    request: &str,
    mut on_event: impl FnMut(&str),
) -> Result<String, String> {
    send(ws, format!("421[\"join-room\",{request}]")).await?;
    loop {
        let packet = next_packet(ws).await?;
        if let Some(ack) = packet.strip_prefix("431") {
            return Ok(ack.to_owned());
        }
        if let Some(event) = packet.strip_prefix("42") {
            on_event(event);
        }
    }
}

/// Reads until `stop` turns true, answering pings and handing each event payload (the JSON
/// array after `42`) to `on_event`. Returns why it ended early, if it did.
pub async fn pump(
    ws: &mut Ws,
    stop: &mut watch::Receiver<bool>,
    mut on_event: impl FnMut(&str),
) -> Option<String> {
    loop {
        tokio::select! {
            // The guard `wait_for` returns is not Send: drop it inside the branch's future.
            _ = async { drop(stop.wait_for(|stop| *stop).await) } => {
                close(ws).await;
                return None;
            }
            message = ws.next() => match message {
                Some(Ok(Message::Text(text))) => {
                    let text = text.as_str();
                    if text == "2" {
                        if let Err(error) = ws.send(Message::text("3")).await {
                            return Some(format!("pong: {error}"));
                        }
                    } else if let Some(event) = text.strip_prefix("42") {
                        on_event(event);
                    } else if text.starts_with("41") || text == "1" {
                        return Some("disconnected by the server".into());
                    }
                }
                Some(Ok(Message::Close(_))) | None => return Some("connection closed by the server".into()),
                Some(Err(error)) => return Some(error.to_string()),
                Some(Ok(_)) => {}
            }
        }
    }
}

/// Sends a close frame and waits (briefly) for the server to finish, so that the server closes
/// the TCP connection first and the TIME_WAIT state (and port) is not ours.
async fn close(ws: &mut Ws) {
    let _ = ws.close(None).await;
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while ws.next().await.is_some() {}
    })
    .await;
}

async fn send(ws: &mut Ws, text: String) -> Result<(), String> {
    ws.send(Message::text(text))
        .await
        .map_err(|e| format!("send: {e}"))
}

/// The next handshake packet, answering pings on the way: the server pings right after the
/// open packet, possibly before its CONNECT reply.
async fn next_packet(ws: &mut Ws) -> Result<String, String> {
    loop {
        let message = tokio::time::timeout(STEP_TIMEOUT, ws.next())
            .await
            .map_err(|_| format!("no packet within {STEP_TIMEOUT:?}"))?;
        match message {
            Some(Ok(Message::Text(text))) if text.as_str() == "2" => send(ws, "3".into()).await?,
            Some(Ok(Message::Text(text))) => return Ok(text.as_str().to_owned()),
            Some(Ok(Message::Close(_))) | None => {
                return Err("connection closed during the handshake".into());
            }
            Some(Err(error)) => return Err(error.to_string()),
            Some(Ok(_)) => {}
        }
    }
}
