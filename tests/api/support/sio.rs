//! A minimal Socket.IO v5 client over the Engine.IO v4 websocket transport: enough to connect
//! with a token, emit with acks, answer pings and collect `notification` events. Compatibility
//! with the official JavaScript client is proven separately (`node_compat`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;

use super::WAIT;

pub enum TokenVia {
    Auth,
    Query,
}

/// Pending acks; each is answered with its payload and how many notifications had arrived
/// before it, so tests can check what came before an ack.
type Acks = Arc<Mutex<HashMap<u64, oneshot::Sender<(Value, usize)>>>>;

pub struct SioClient {
    out: mpsc::UnboundedSender<Message>,
    notifications: mpsc::UnboundedReceiver<Value>,
    /// Every other server event, as `(name, argument)`.
    events: mpsc::UnboundedReceiver<(String, Value)>,
    acks: Acks,
    next_ack: AtomicU64,
}

impl SioClient {
    /// Connects; `Err` carries the `connect_error` message (or the transport error).
    pub async fn connect(
        addr: SocketAddr,
        token: Option<&str>,
        via: TokenVia,
    ) -> Result<SioClient, String> {
        let mut url = format!("ws://{addr}/socket.io/?EIO=4&transport=websocket");
        if let (Some(token), TokenVia::Query) = (token, &via) {
            url.push_str(&format!("&token={token}"));
        }
        let (mut ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(&url))
            .await
            .map_err(|_| "websocket connect timed out".to_string())?
            .map_err(|e| e.to_string())?;
        let open = next_text(&mut ws).await?;
        assert!(
            open.starts_with('0'),
            "expected the Engine.IO open packet, got {open}"
        );
        let connect = match (token, via) {
            (Some(token), TokenVia::Auth) => format!("40{}", json!({ "token": token })),
            _ => "40".to_string(),
        };
        ws.send(Message::text(connect))
            .await
            .map_err(|e| e.to_string())?;
        let reply = next_text(&mut ws).await?;
        if let Some(error) = reply.strip_prefix("44") {
            let error: Value = serde_json::from_str(error).map_err(|e| e.to_string())?;
            return Err(error["message"].as_str().unwrap_or_default().to_string());
        }
        assert!(reply.starts_with("40"), "expected CONNECT, got {reply}");

        let (mut sink, mut stream) = ws.split();
        let (out, mut out_rx) = mpsc::unbounded_channel::<Message>();
        let (notify_tx, notifications) = mpsc::unbounded_channel();
        let (events_tx, events) = mpsc::unbounded_channel();
        let acks: Acks = Arc::default();
        tokio::spawn(async move {
            while let Some(message) = out_rx.recv().await {
                if sink.send(message).await.is_err() {
                    return;
                }
            }
        });
        let pong = out.clone();
        let reader_acks = acks.clone();
        tokio::spawn(async move {
            let mut received = 0;
            while let Some(Ok(message)) = stream.next().await {
                let Ok(text) = message.to_text() else {
                    continue;
                };
                if text == "2" {
                    let _ = pong.send(Message::text("3"));
                } else if let Some(event) = text.strip_prefix("42") {
                    let event: Value = serde_json::from_str(event).expect("event JSON");
                    if event[0] == "notification" {
                        received += 1;
                        let _ = notify_tx.send(event[1].clone());
                    } else if let Some(name) = event[0].as_str() {
                        let _ = events_tx.send((name.to_owned(), event[1].clone()));
                    }
                } else if let Some(ack) = text.strip_prefix("43") {
                    let split = ack.find('[').expect("ack payload");
                    let id: u64 = ack[..split].parse().expect("ack id");
                    let payload: Value = serde_json::from_str(&ack[split..]).expect("ack JSON");
                    if let Some(waiter) = reader_acks.lock().unwrap().remove(&id) {
                        let _ = waiter.send((payload[0].clone(), received));
                    }
                } else if text.starts_with("41") {
                    return;
                }
            }
        });
        Ok(SioClient {
            out,
            notifications,
            events,
            acks,
            next_ack: AtomicU64::new(1),
        })
    }

    /// Emits `event` with `arg` and waits (bounded) for the acknowledgement.
    pub async fn emit_with_ack(&self, event: &str, arg: Value) -> Value {
        self.emit_with_ack_counted(event, arg).await.0
    }

    /// Like [`Self::emit_with_ack`], also returning how many notifications this socket had
    /// received (in all) when the ack arrived.
    pub async fn emit_with_ack_counted(&self, event: &str, arg: Value) -> (Value, usize) {
        self.emit_with_ack_within(event, arg, WAIT).await
    }

    /// Like [`Self::emit_with_ack_counted`], waiting at most `wait` for the acknowledgement.
    pub async fn emit_with_ack_within(
        &self,
        event: &str,
        arg: Value,
        wait: Duration,
    ) -> (Value, usize) {
        let id = self.next_ack.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.acks.lock().unwrap().insert(id, tx);
        self.out
            .send(Message::text(format!("42{id}{}", json!([event, arg]))))
            .expect("socket open");
        tokio::time::timeout(wait, rx)
            .await
            .expect("ack within the wait")
            .expect("ack")
    }

    /// Emits `event` with `arg`, asking for no acknowledgement.
    pub fn emit_no_ack(&self, event: &str, arg: Value) {
        self.out
            .send(Message::text(format!("42{}", json!([event, arg]))))
            .expect("socket open");
    }

    /// Closes the connection (a websocket close frame), as a client that goes away does.
    pub fn close(self) {
        let _ = self.out.send(Message::Close(None));
    }

    pub async fn join(&self, room: &str) -> Value {
        self.emit_with_ack("join-room", json!(room)).await
    }

    /// Joins with a cursor: returns the ack and how many notifications had arrived before it.
    pub async fn join_after(&self, room: &str, after: &str) -> (Value, usize) {
        self.emit_with_ack_counted("join-room", json!({ "room": room, "after": after }))
            .await
    }

    pub async fn leave(&self, room: &str) -> Value {
        self.emit_with_ack("leave-room", json!(room)).await
    }

    /// The argument of the next server event named `name` (others are passed over), waiting at
    /// most [`WAIT`].
    pub async fn next_event(&mut self, name: &str) -> Value {
        tokio::time::timeout(WAIT, async {
            loop {
                let (event, arg) = self.events.recv().await.expect("socket still open");
                if event == name {
                    return arg;
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("a {name} event within the wait"))
    }

    /// The next notification, waiting at most [`WAIT`].
    pub async fn next(&mut self) -> Value {
        tokio::time::timeout(WAIT, self.notifications.recv())
            .await
            .expect("a notification within the wait")
            .expect("socket still open")
    }

    /// The next notification, waiting at most `within` (for waits that may take longer than
    /// [`WAIT`], such as a failover).
    pub async fn next_within(&mut self, within: Duration) -> Value {
        tokio::time::timeout(within, self.notifications.recv())
            .await
            .unwrap_or_else(|_| panic!("a notification within {within:?}"))
            .expect("socket still open")
    }

    /// Notifications until one of type `kind` arrives; returns those before it.
    pub async fn until_type(&mut self, kind: &str) -> Vec<Value> {
        let mut before = Vec::new();
        loop {
            let n = self.next().await;
            if n["type"] == kind {
                return before;
            }
            before.push(n);
        }
    }

    /// What has already arrived, without waiting.
    pub fn drain(&mut self) -> Vec<Value> {
        let mut out = Vec::new();
        while let Ok(n) = self.notifications.try_recv() {
            out.push(n);
        }
        out
    }

    /// Everything that arrives until the server closes this socket (which must happen within
    /// `within`).
    pub async fn until_closed(&mut self, within: Duration) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + within;
        let mut out = Vec::new();
        loop {
            match tokio::time::timeout_at(deadline, self.notifications.recv()).await {
                Ok(None) => return out,
                Ok(Some(n)) => out.push(n),
                Err(_) => panic!("the server did not close the socket within {within:?}"),
            }
        }
    }
}

type RawSocket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A raw websocket through the Socket.IO handshake (Engine.IO open, then CONNECT with auth off):
/// the open packet's JSON and the socket, from then on driven by the test alone.
async fn raw_connected_socket(addr: SocketAddr) -> (Value, RawSocket) {
    let url = format!("ws://{addr}/socket.io/?EIO=4&transport=websocket");
    let (mut ws, _) = tokio_tungstenite::connect_async(&url)
        .await
        .expect("ws connect");
    let open = next_text(&mut ws).await.unwrap();
    let open: Value = serde_json::from_str(open.strip_prefix('0').expect("open packet")).unwrap();
    ws.send(Message::text("40")).await.unwrap();
    assert!(next_text(&mut ws).await.unwrap().starts_with("40"));
    (open, ws)
}

/// A socket that joins `room` and then never reads again, like a client whose network or event
/// loop has stalled. Holding the returned stream keeps the TCP connection open.
pub async fn stalled_socket(addr: SocketAddr, room: &str) -> RawSocket {
    let (_, mut ws) = raw_connected_socket(addr).await;
    ws.send(Message::text(format!("421{}", json!(["join-room", room]))))
        .await
        .unwrap();
    loop {
        let packet = next_text(&mut ws).await.unwrap();
        if packet.starts_with("431") {
            assert!(packet.contains("\"ok\":true"), "{packet}");
            return ws;
        }
    }
}

/// A socket that never answers a ping: the Engine.IO open packet's JSON, and what the server
/// sends it until the connection ends.
pub async fn silent_socket(addr: SocketAddr) -> (Value, impl futures_util::Stream<Item = Message>) {
    let (open, ws) = raw_connected_socket(addr).await;
    (
        open,
        ws.take_while(|m| std::future::ready(m.is_ok()))
            .map(Result::unwrap),
    )
}

/// The next text packet, answering pings on the way.
async fn next_text<S>(ws: &mut S) -> Result<String, String>
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>>
        + futures_util::Sink<Message>
        + Unpin,
{
    loop {
        match tokio::time::timeout(WAIT, ws.next()).await {
            Err(_) => return Err("timed out waiting for a packet".into()),
            Ok(None) => return Err("connection closed".into()),
            Ok(Some(Err(e))) => return Err(e.to_string()),
            Ok(Some(Ok(Message::Text(text)))) if text.as_str() == "2" => {
                ws.send(Message::text("3"))
                    .await
                    .map_err(|_| "send failed".to_string())?;
            }
            Ok(Some(Ok(Message::Text(text)))) => return Ok(text.to_string()),
            Ok(Some(Ok(_))) => continue,
        }
    }
}
