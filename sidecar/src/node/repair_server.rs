//! Serving the repair protocol ([`crate::repair`]) with a bound on the streams one peer may
//! hold open: at most [`MAX_INBOUND_STREAMS_PER_PEER`] (16) over all its connections, each for at
//! most [`STREAM_TIMEOUT`] from opening to the answer written.
//!
//! libp2p request-response would read every inbound stream a connection opens, up to one
//! stream budget per connection shared with this node's own requests
//! (`max_concurrent_streams`, default 100), and a peer may open many connections. Each
//! stream being read holds up to a request's 1 MiB, and each answered one up to a
//! response's 64 MiB until the peer reads it. So the node asks with request-response
//! (outbound only) and serves with this behaviour, whose handler sees the peer before it
//! reads a byte: a stream past the peer's bound is reset unread and reported as
//! [`Inbound::Refused`] (`repair_requests_refused_total{reason="concurrent_streams"}`).
//! Honest members never reach it: each keeps at most half as many requests outstanding per
//! peer (`repair_io::MAX_OUTSTANDING_PER_PEER`). The wire is unchanged: any request-response
//! client of the protocol is served.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::io;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::channel::oneshot;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{AsyncWriteExt as _, FutureExt as _, StreamExt as _};
use libp2p::PeerId;
use libp2p::core::transport::PortUse;
use libp2p::core::upgrade::{DeniedUpgrade, ReadyUpgrade};
use libp2p::core::{Endpoint, Multiaddr};
use libp2p::swarm::handler::{ConnectionEvent, FullyNegotiatedInbound};
use libp2p::swarm::{
    ConnectionDenied, ConnectionHandler, ConnectionHandlerEvent, ConnectionId, FromSwarm, NetworkBehaviour, Stream,
    StreamProtocol, SubstreamProtocol, THandler, THandlerInEvent, THandlerOutEvent, ToSwarm,
};
use tokio::time::Instant;

use crate::proto::{RepairRequest, RepairResponse};
use crate::repair::{self, MAX_INBOUND_STREAMS_PER_PEER};

/// How long an inbound repair stream may stay open, from its opening to the answer
/// written: 10 s, the request timeout of this node's own requests.
const STREAM_TIMEOUT: Duration = Duration::from_secs(10);

/// What a connection's handler reports about one inbound stream.
#[derive(Debug)]
pub(crate) enum Inbound {
    /// A request read and decoded. Answer it on `reply`; dropping `reply` closes the stream
    /// unanswered.
    Request { request: RepairRequest, reply: oneshot::Sender<RepairResponse> },
    /// A stream refused before its request was served. `reason` is the
    /// `repair_requests_refused_total` label: `concurrent_streams` (past the peer's bound),
    /// `malformed` (a frame over its cap, of the wrong shape or not protobuf) or `timeout`.
    Refused { reason: &'static str, detail: String },
    /// A stream that failed on its own (reset, closed mid-frame): not the peer's fault.
    Failed { detail: String },
}

/// An [`Inbound`] event with the peer it came from.
#[derive(Debug)]
pub(crate) struct ServerEvent {
    pub peer: PeerId,
    pub inbound: Inbound,
}

/// Open inbound repair streams per peer, shared by the peer's connections.
type OpenStreams = Arc<Mutex<HashMap<PeerId, usize>>>;

/// One open inbound stream of a peer, counted in [`OpenStreams`] for as long as it lives.
struct Slot {
    open: OpenStreams,
    peer: PeerId,
}

impl Slot {
    /// Counts a new stream of `peer`, or `None` when it already has `max` open.
    fn take(open: &OpenStreams, peer: PeerId, max: usize) -> Option<Slot> {
        let mut table = open.lock().expect("repair stream table poisoned");
        let n = table.entry(peer).or_default();
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(Slot { open: open.clone(), peer })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut table = self.open.lock().expect("repair stream table poisoned");
        if let Entry::Occupied(mut e) = table.entry(self.peer) {
            *e.get_mut() -= 1;
            if *e.get() == 0 {
                e.remove();
            }
        }
    }
}

/// The repair server behaviour: one [`Handler`] per connection, all counting streams in one
/// table.
pub(crate) struct RepairServer {
    open: OpenStreams,
    max_per_peer: usize,
    events: VecDeque<ServerEvent>,
}

impl RepairServer {
    /// A server allowing each peer [`MAX_INBOUND_STREAMS_PER_PEER`] open streams.
    pub(crate) fn new() -> Self {
        RepairServer {
            open: OpenStreams::default(),
            max_per_peer: MAX_INBOUND_STREAMS_PER_PEER,
            events: VecDeque::new(),
        }
    }

    fn handler(&self, peer: PeerId) -> Handler {
        Handler {
            peer,
            open: self.open.clone(),
            max_per_peer: self.max_per_peer,
            reading: FuturesUnordered::new(),
            answering: FuturesUnordered::new(),
            events: VecDeque::new(),
        }
    }
}

impl NetworkBehaviour for RepairServer {
    type ConnectionHandler = Handler;
    type ToSwarm = ServerEvent;

    fn handle_established_inbound_connection(
        &mut self,
        _: ConnectionId,
        peer: PeerId,
        _: &Multiaddr,
        _: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(self.handler(peer))
    }

    fn handle_established_outbound_connection(
        &mut self,
        _: ConnectionId,
        peer: PeerId,
        _: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(self.handler(peer))
    }

    fn on_swarm_event(&mut self, _: FromSwarm) {}

    fn on_connection_handler_event(&mut self, peer: PeerId, _: ConnectionId, inbound: THandlerOutEvent<Self>) {
        self.events.push_back(ServerEvent { peer, inbound });
    }

    fn poll(&mut self, _: &mut Context<'_>) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        match self.events.pop_front() {
            Some(event) => Poll::Ready(ToSwarm::GenerateEvent(event)),
            None => Poll::Pending,
        }
    }
}

/// A request read from a stream, with the stream to answer on, its deadline and its slot.
type Read = (RepairRequest, Stream, Instant, Slot);

/// One connection's side of the server: reads each inbound stream's request, reports it,
/// and writes the node's answer.
pub(crate) struct Handler {
    peer: PeerId,
    open: OpenStreams,
    max_per_peer: usize,
    reading: FuturesUnordered<BoxFuture<'static, Result<Read, Inbound>>>,
    answering: FuturesUnordered<BoxFuture<'static, ()>>,
    events: VecDeque<Inbound>,
}

/// Reads `stream`'s request before `deadline`.
async fn read(mut stream: Stream, deadline: Instant, slot: Slot) -> Result<Read, Inbound> {
    match tokio::time::timeout_at(deadline, repair::read_request(&mut stream)).await {
        Ok(Ok(request)) => Ok((request, stream, deadline, slot)),
        Ok(Err(e)) if e.kind() == io::ErrorKind::InvalidData => {
            Err(Inbound::Refused { reason: "malformed", detail: e.to_string() })
        }
        Ok(Err(e)) => Err(Inbound::Failed { detail: e.to_string() }),
        Err(_) => Err(Inbound::Refused {
            reason: "timeout",
            detail: format!("no whole request within {} s", STREAM_TIMEOUT.as_secs()),
        }),
    }
}

/// Writes the node's answer to `stream` before `deadline` (or closes it unanswered if the
/// node dropped the reply), then frees the slot.
async fn answer(
    peer: PeerId,
    mut stream: Stream,
    deadline: Instant,
    slot: Slot,
    reply: oneshot::Receiver<RepairResponse>,
) {
    let written = tokio::time::timeout_at(deadline, async {
        match reply.await {
            Ok(response) => repair::write_response(&mut stream, &response).await,
            Err(_) => stream.close().await,
        }
    })
    .await;
    match written {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "repair answer not delivered"),
        Err(_) => tracing::debug!(%peer, "repair answer not read within the stream's deadline"),
    }
    drop(slot);
}

impl ConnectionHandler for Handler {
    type FromBehaviour = Infallible;
    type ToBehaviour = Inbound;
    type InboundProtocol = ReadyUpgrade<StreamProtocol>;
    type OutboundProtocol = DeniedUpgrade;
    type InboundOpenInfo = ();
    type OutboundOpenInfo = ();

    fn listen_protocol(&self) -> SubstreamProtocol<Self::InboundProtocol> {
        SubstreamProtocol::new(ReadyUpgrade::new(repair::PROTOCOL), ())
    }

    fn connection_keep_alive(&self) -> bool {
        !self.reading.is_empty() || !self.answering.is_empty()
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<ConnectionHandlerEvent<DeniedUpgrade, (), Inbound>> {
        while let Poll::Ready(Some(())) = self.answering.poll_next_unpin(cx) {}
        if let Some(event) = self.events.pop_front() {
            return Poll::Ready(ConnectionHandlerEvent::NotifyBehaviour(event));
        }
        if let Poll::Ready(Some(read)) = self.reading.poll_next_unpin(cx) {
            let event = match read {
                Ok((request, stream, deadline, slot)) => {
                    let (reply, answered) = oneshot::channel();
                    self.answering.push(answer(self.peer, stream, deadline, slot, answered).boxed());
                    // Have the new answer polled (registering for the node's reply) soon.
                    cx.waker().wake_by_ref();
                    Inbound::Request { request, reply }
                }
                Err(refused) => refused,
            };
            return Poll::Ready(ConnectionHandlerEvent::NotifyBehaviour(event));
        }
        Poll::Pending
    }

    fn on_behaviour_event(&mut self, event: Infallible) {
        match event {}
    }

    fn on_connection_event(&mut self, event: ConnectionEvent<Self::InboundProtocol, Self::OutboundProtocol>) {
        if let ConnectionEvent::FullyNegotiatedInbound(FullyNegotiatedInbound { protocol: stream, .. }) = event {
            match Slot::take(&self.open, self.peer, self.max_per_peer) {
                Some(slot) => {
                    let deadline = Instant::now() + STREAM_TIMEOUT;
                    self.reading.push(read(stream, deadline, slot).boxed());
                }
                // Dropping the stream resets it: the peer's request fails at once.
                None => self.events.push_back(Inbound::Refused {
                    reason: "concurrent_streams",
                    detail: format!("{} repair streams of this peer already open", self.max_per_peer),
                }),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_bound_a_peer_and_free_on_drop() {
        let open = OpenStreams::default();
        let (a, b) = (PeerId::random(), PeerId::random());
        let held: Vec<Slot> = (0..3).map(|_| Slot::take(&open, a, 3).expect("under the bound")).collect();
        assert!(Slot::take(&open, a, 3).is_none(), "a fourth stream of the same peer");
        let other = Slot::take(&open, b, 3).expect("another peer has its own bound");
        drop(held);
        assert!(!open.lock().unwrap().contains_key(&a), "a peer with no open stream leaves no entry");
        assert!(Slot::take(&open, a, 3).is_some());
        drop(other);
    }
}
