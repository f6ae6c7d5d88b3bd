//! One client connection: who it is, which subprotocol it speaks, and the bounded queue of
//! frames waiting for its socket.
//!
//! Delivery never waits. A frame that does not fit in a connection's queue means that
//! subscriber has stalled; the hub then closes that one connection (reliable connections
//! only lose their socket and may recover), and every other subscriber carries on.

use std::collections::{HashSet, VecDeque};
use std::sync::Mutex;

use axum::extract::ws::{Message, Utf8Bytes};
use tokio::sync::{mpsc, oneshot};

use crate::message::Envelope;

/// Close code telling a reliable client its session is gone and recovery is pointless.
pub const CLOSE_UNRECOVERABLE: u16 = 1008;
/// Close code for a subscriber whose outbound queue overflowed.
pub const CLOSE_TOO_SLOW: u16 = 1013;
/// Close code for a connection closed on purpose (REST close operations).
pub const CLOSE_NORMAL: u16 = 1000;
/// Close code for connections ended because the emulator stops.
pub const CLOSE_GOING_AWAY: u16 = 1001;

/// How many recent client `ackId`s are remembered to spot duplicates.
const REMEMBERED_ACK_IDS: usize = 10_000;

/// The subprotocol a connection negotiated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Protocol {
    /// No subprotocol: raw frames in both directions.
    Simple(SimpleMode),
    /// `json.webpubsub.azure.v1`.
    Json,
    /// `json.reliable.webpubsub.azure.v1`.
    ReliableJson,
}

impl Protocol {
    pub const JSON: &'static str = "json.webpubsub.azure.v1";
    pub const RELIABLE_JSON: &'static str = "json.reliable.webpubsub.azure.v1";

    pub fn name(&self) -> &'static str {
        match self {
            Protocol::Simple(_) => "none",
            Protocol::Json => Self::JSON,
            Protocol::ReliableJson => Self::RELIABLE_JSON,
        }
    }

    /// Whether the client understands JSON system messages such as `disconnected`.
    pub fn is_json(&self) -> bool {
        !matches!(self, Protocol::Simple(_))
    }
}

/// What a simple client's own frames mean (`webpubsub_mode`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SimpleMode {
    /// Frames are events for an upstream handler (the default).
    SendEvent,
    /// Frames are published to this group.
    SendToGroup(String),
}

/// Why a socket is being closed, passed to the task that writes to it.
#[derive(Debug, Clone)]
pub struct CloseReason {
    pub code: u16,
    pub reason: String,
}

/// What became of one delivery attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Queued for the socket (or, for a detached reliable session, kept for replay).
    Queued,
    /// The connection is already closed.
    Closed,
    /// The queue was full: the subscriber is stalled and must be disconnected.
    Stalled,
    /// A reliable session's replay buffer is full: the session cannot continue.
    BufferFull,
}

/// The receiving half of a socket's attachment, owned by the task writing to the socket.
#[derive(Debug)]
pub struct SocketReceiver {
    pub frames: mpsc::Receiver<Message>,
    pub close: oneshot::Receiver<CloseReason>,
}

#[derive(Debug)]
struct Socket {
    frames: mpsc::Sender<Message>,
    close: Option<oneshot::Sender<CloseReason>>,
    /// Distinguishes this socket from the next one after a reconnect.
    generation: u64,
}

impl Socket {
    fn close(&mut self, reason: CloseReason) {
        if let Some(close) = self.close.take() {
            let _ = close.send(reason);
        }
    }
}

#[derive(Debug, Default)]
struct Link {
    socket: Option<Socket>,
    generation: u64,
    closed: bool,
    /// Reliable only: sequence id of the next message.
    next_sequence: u64,
    /// Reliable only: messages sent but not yet acknowledged, oldest first.
    unacked: VecDeque<(u64, Utf8Bytes)>,
    unacked_bytes: usize,
}

/// Limits that shape a connection's buffers.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub queue: usize,
    pub buffer_messages: usize,
    pub buffer_bytes: usize,
}

/// A client connection as the hub sees it. Shared between the hub's indexes and the task
/// serving its socket.
#[derive(Debug)]
pub struct Connection {
    pub id: String,
    pub hub: String,
    pub user_id: Option<String>,
    pub protocol: Protocol,
    /// Secret a reliable client presents to recover this connection.
    reconnection_token: String,
    limits: Limits,
    link: Mutex<Link>,
    ack_ids: Mutex<(HashSet<u64>, VecDeque<u64>)>,
}

impl Connection {
    pub fn new(hub: &str, user_id: Option<String>, protocol: Protocol, limits: Limits) -> Self {
        Connection {
            id: crate::random_id(16),
            hub: hub.to_owned(),
            user_id,
            protocol,
            reconnection_token: crate::random_id(32),
            limits,
            link: Mutex::new(Link {
                next_sequence: 1,
                ..Link::default()
            }),
            ack_ids: Mutex::new((HashSet::new(), VecDeque::new())),
        }
    }

    fn link(&self) -> std::sync::MutexGuard<'_, Link> {
        // A poisoned lock only means another delivery panicked midway; the link's state is
        // still consistent enough to keep serving.
        self.link
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn reconnection_token(&self) -> &str {
        &self.reconnection_token
    }

    /// Whether `token` recovers this connection. Compared in constant time.
    pub fn accepts_reconnection_token(&self, token: &str) -> bool {
        let expected = self.reconnection_token.as_bytes();
        let given = token.as_bytes();
        expected.len() == given.len()
            && expected
                .iter()
                .zip(given)
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }

    /// Attaches a new socket, replacing any previous one, and for a reliable session queues
    /// every unacknowledged message again. Returns the receiving half for the socket's
    /// writer and the socket's generation, or `None` when the connection is closed.
    pub fn attach(&self, greeting: Option<Message>) -> Option<(SocketReceiver, u64)> {
        let mut link = self.link();
        if link.closed {
            return None;
        }

        // The replay must fit in the queue alongside the greeting.
        let capacity = self.limits.queue.max(link.unacked.len() + 1);
        let (frames_tx, frames_rx) = mpsc::channel(capacity);
        let (close_tx, close_rx) = oneshot::channel();

        if let Some(mut old) = link.socket.take() {
            old.close(CloseReason {
                code: CLOSE_NORMAL,
                reason: "replaced by a new connection".into(),
            });
        }
        if let Some(greeting) = greeting {
            let _ = frames_tx.try_send(greeting);
        }
        for (_, frame) in &link.unacked {
            let _ = frames_tx.try_send(Message::Text(frame.clone()));
        }

        link.generation += 1;
        let generation = link.generation;
        link.socket = Some(Socket {
            frames: frames_tx,
            close: Some(close_tx),
            generation,
        });
        Some((
            SocketReceiver {
                frames: frames_rx,
                close: close_rx,
            },
            generation,
        ))
    }

    /// Forgets the socket of `generation` after it ended. Returns true when the connection
    /// now has no socket (a reliable session waiting for its client).
    pub fn detach(&self, generation: u64) -> bool {
        let mut link = self.link();
        if link
            .socket
            .as_ref()
            .is_some_and(|s| s.generation == generation)
        {
            link.socket = None;
        }
        link.socket.is_none() && !link.closed
    }

    /// Whether the connection still has no socket since `generation` was detached, meaning
    /// its client never came back.
    pub fn still_detached_since(&self, generation: u64) -> bool {
        let link = self.link();
        !link.closed && link.socket.is_none() && link.generation == generation
    }

    /// Whether a socket is attached right now.
    pub fn is_attached(&self) -> bool {
        self.link().socket.is_some()
    }

    /// The socket generation attached now, if any.
    pub fn generation(&self) -> Option<u64> {
        self.link().socket.as_ref().map(|s| s.generation)
    }

    pub fn is_closed(&self) -> bool {
        self.link().closed
    }

    /// Hands one message to this connection without waiting.
    pub fn deliver(&self, envelope: &Envelope) -> Delivery {
        let mut link = self.link();
        if link.closed {
            return Delivery::Closed;
        }

        let frame = match self.protocol {
            Protocol::Simple(_) => envelope.simple_frame(),
            Protocol::Json => envelope.json_frame(),
            Protocol::ReliableJson => {
                let sequence = link.next_sequence;
                link.next_sequence += 1;
                let text = Utf8Bytes::from(envelope.reliable_frame(sequence));
                link.unacked_bytes += text.len();
                link.unacked.push_back((sequence, text.clone()));
                if link.unacked.len() > self.limits.buffer_messages
                    || link.unacked_bytes > self.limits.buffer_bytes
                {
                    return Delivery::BufferFull;
                }
                Message::Text(text)
            }
        };

        self.push(&mut link, frame)
    }

    /// Queues a frame of this connection's own, such as an ack or a system message.
    pub fn send_frame(&self, frame: Message) -> Delivery {
        let mut link = self.link();
        if link.closed {
            return Delivery::Closed;
        }
        self.push(&mut link, frame)
    }

    fn push(&self, link: &mut Link, frame: Message) -> Delivery {
        let Some(socket) = link.socket.as_mut() else {
            // A detached reliable session keeps the message in its replay buffer.
            return Delivery::Queued;
        };
        match socket.frames.try_send(frame) {
            Ok(()) => Delivery::Queued,
            Err(mpsc::error::TrySendError::Closed(_)) => Delivery::Queued,
            Err(mpsc::error::TrySendError::Full(_)) => {
                if self.protocol == Protocol::ReliableJson {
                    // Drop only the socket: the message is in the replay buffer, and the
                    // client gets it again when it reconnects.
                    socket.close(CloseReason {
                        code: CLOSE_TOO_SLOW,
                        reason: "subscriber too slow: outbound queue full; reconnect to resume"
                            .into(),
                    });
                    link.socket = None;
                    Delivery::Queued
                } else {
                    Delivery::Stalled
                }
            }
        }
    }

    /// Drops every buffered message up to `sequence_id`, the client's cumulative ack.
    pub fn acknowledge(&self, sequence_id: u64) {
        let mut link = self.link();
        while link
            .unacked
            .front()
            .is_some_and(|(seq, _)| *seq <= sequence_id)
        {
            if let Some((_, frame)) = link.unacked.pop_front() {
                link.unacked_bytes -= frame.len();
            }
        }
    }

    /// Records a client `ackId`; false when it was seen before.
    pub fn remember_ack_id(&self, ack_id: u64) -> bool {
        let mut guard = self.ack_ids.lock().unwrap_or_else(|p| p.into_inner());
        let (seen, order) = &mut *guard;
        if !seen.insert(ack_id) {
            return false;
        }
        order.push_back(ack_id);
        if order.len() > REMEMBERED_ACK_IDS {
            if let Some(oldest) = order.pop_front() {
                seen.remove(&oldest);
            }
        }
        true
    }

    /// Marks the connection closed and tells its socket why. Idempotent.
    pub fn close(&self, reason: CloseReason) {
        let mut link = self.link();
        link.closed = true;
        link.unacked.clear();
        link.unacked_bytes = 0;
        if let Some(mut socket) = link.socket.take() {
            socket.close(reason);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{DataType, Origin, Payload};

    fn envelope(text: &'static str) -> Envelope {
        Envelope::new(
            Origin::Server,
            Payload::new(DataType::Text, bytes::Bytes::from_static(text.as_bytes())).unwrap(),
        )
    }

    fn limits(queue: usize) -> Limits {
        Limits {
            queue,
            buffer_messages: 3,
            buffer_bytes: 1 << 20,
        }
    }

    #[test]
    fn a_full_queue_reports_a_stalled_subscriber() {
        let conn = Connection::new("hub", None, Protocol::Json, limits(2));
        let (_rx, _) = conn.attach(None).unwrap();
        assert_eq!(conn.deliver(&envelope("1")), Delivery::Queued);
        assert_eq!(conn.deliver(&envelope("2")), Delivery::Queued);
        assert_eq!(conn.deliver(&envelope("3")), Delivery::Stalled);
    }

    #[test]
    fn reliable_sessions_replay_unacknowledged_messages() {
        let conn = Connection::new("hub", None, Protocol::ReliableJson, limits(8));
        let (rx, generation) = conn.attach(None).unwrap();
        conn.deliver(&envelope("a"));
        conn.deliver(&envelope("b"));
        drop(rx);
        assert!(conn.detach(generation));
        conn.deliver(&envelope("c"));
        conn.acknowledge(1);

        let (mut rx, _) = conn.attach(None).unwrap();
        let mut replayed = Vec::new();
        while let Ok(Message::Text(text)) = rx.frames.try_recv() {
            let frame: serde_json::Value = serde_json::from_str(&text).unwrap();
            replayed.push((frame["sequenceId"].as_u64().unwrap(), frame["data"].clone()));
        }
        assert_eq!(replayed, [(2, "b".into()), (3, "c".into())]);
        assert_eq!(conn.deliver(&envelope("d")), Delivery::Queued);
        assert_eq!(conn.deliver(&envelope("e")), Delivery::BufferFull);
    }

    #[test]
    fn ack_ids_are_remembered() {
        let conn = Connection::new("hub", None, Protocol::Json, limits(2));
        assert!(conn.remember_ack_id(1));
        assert!(!conn.remember_ack_id(1));
        assert!(conn.remember_ack_id(2));
    }

    #[test]
    fn reconnection_tokens_must_match_exactly() {
        let conn = Connection::new("hub", None, Protocol::ReliableJson, limits(2));
        let token = conn.reconnection_token().to_owned();
        assert!(conn.accepts_reconnection_token(&token));
        assert!(!conn.accepts_reconnection_token(&token[1..]));
        assert!(!conn.accepts_reconnection_token(""));
    }
}
