//! What the fan-out needs from Socket.IO, as a seam: [`Sockets`]. [`Io`] is the real one, a
//! thin wrapper of socketioxide's `SocketIo` and `SocketRef`; the fan-out is generic over it,
//! so its promises (a join's replay never overlaps live delivery, order per socket, a stalled
//! socket costs nothing more) are unit-tested against in-memory sockets.

use std::fmt;

use serde_json::value::RawValue;
use socketioxide::extract::SocketRef;
use socketioxide::{SendError, SocketError, SocketIo};

use crate::rooms::Room;

/// The Socket.IO event every notification is emitted as.
pub const EVENT: &str = "notification";

/// What became of one emit to one socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Emitted {
    /// In the socket's queue.
    Queued,
    /// The queue is full: the socket has stopped reading.
    Full,
    /// The socket is gone (closed between lookup and emit).
    Closed,
}

/// This instance's sockets, as the fan-out sees them. Called under the ledger lock, so
/// nothing here waits.
pub trait Sockets: Send + Sync + 'static {
    /// A handle to one socket; cloning it is cheap.
    type Socket: Clone + Send + Sync;
    /// What tells two handles of one socket apart from others, and names it in logs.
    type Id: Copy + Ord + fmt::Display;

    fn id(&self, socket: &Self::Socket) -> Self::Id;
    /// Queues a notification's payload for `socket` (the [`EVENT`] event).
    fn emit(&self, socket: &Self::Socket, payload: &RawValue) -> Emitted;
    /// Queues one payload for each of `sockets`; those whose queue is full are added to
    /// `full` (closed ones are leaving anyway).
    fn emit_each(
        &self,
        sockets: &[Self::Socket],
        payload: &RawValue,
        full: &mut Vec<Self::Socket>,
    ) {
        for socket in sockets {
            if self.emit(socket, payload) == Emitted::Full {
                full.push(socket.clone());
            }
        }
    }
    /// The sockets in `room`.
    fn in_room(&self, room: &Room) -> Vec<Self::Socket>;
    /// The sockets in none of `rooms` (a broadcast's other copies).
    fn outside(&self, rooms: &[Room]) -> Vec<Self::Socket>;
    fn join(&self, socket: &Self::Socket, room: &Room);
    fn is_in(&self, socket: &Self::Socket, room: &Room) -> bool;
    fn leave_all(&self, socket: &Self::Socket);
    /// Room left in `socket`'s queue: free packet slots, and free bytes.
    fn queue_room(&self, socket: &Self::Socket) -> (usize, usize);
    fn connected(&self, socket: &Self::Socket) -> bool;
    /// Closes `socket`'s connection as one that stopped reading (its client reconnects and
    /// replays what it missed).
    fn close_stalled(&self, socket: &Self::Socket);
}

fn emitted(result: Result<(), SendError>) -> Emitted {
    match result {
        Ok(()) => Emitted::Queued,
        Err(SendError::Socket(SocketError::InternalChannelFull)) => Emitted::Full,
        Err(_) => Emitted::Closed,
    }
}

/// The sockets of socketioxide's default namespace.
#[derive(Clone)]
pub struct Io(pub SocketIo);

impl Sockets for Io {
    type Socket = SocketRef;
    type Id = socketioxide::socket::Sid;

    fn id(&self, socket: &SocketRef) -> Self::Id {
        socket.id
    }

    fn emit(&self, socket: &SocketRef, payload: &RawValue) -> Emitted {
        emitted(socket.emit(EVENT, payload))
    }

    /// Encodes the packet once and shares it: a room of many sockets (a CMS dashboard) costs
    /// one serialization, not one per socket.
    fn emit_each(&self, sockets: &[SocketRef], payload: &RawValue, full: &mut Vec<SocketRef>) {
        let Some(first) = sockets.first() else {
            return;
        };
        // A raw JSON value always encodes; were it not to, every emit would fail the same way
        // and count as closed, as `emit` does.
        let Ok(encoded) = first.encode_event(EVENT, payload) else {
            return;
        };
        for socket in sockets {
            if emitted(socket.emit_encoded(&encoded)) == Emitted::Full {
                full.push(socket.clone());
            }
        }
    }

    fn in_room(&self, room: &Room) -> Vec<SocketRef> {
        self.0.to(room.as_str().to_owned()).sockets()
    }

    fn outside(&self, rooms: &[Room]) -> Vec<SocketRef> {
        let except: Vec<String> = rooms.iter().map(|r| r.as_str().to_owned()).collect();
        self.0.except(except).sockets()
    }

    fn join(&self, socket: &SocketRef, room: &Room) {
        socket.join(room.as_str().to_owned());
    }

    fn is_in(&self, socket: &SocketRef, room: &Room) -> bool {
        socket.rooms().iter().any(|r| r == room.as_str())
    }

    fn leave_all(&self, socket: &SocketRef) {
        socket.leave_all();
    }

    fn queue_room(&self, socket: &SocketRef) -> (usize, usize) {
        socket.queue_room()
    }

    fn connected(&self, socket: &SocketRef) -> bool {
        socket.connected()
    }

    fn close_stalled(&self, socket: &SocketRef) {
        // The patched engineioxide closes a socket whose queue overflowed by itself; asking
        // again is harmless (one wake-up of its closing task).
        socket.close_overflowed();
    }
}
