//! The reference engine's link to its sidecar over the Unix socket: one `SubmitOrders`
//! stream for its orders and one `Subscribe` stream for its events, both of which survive
//! the sidecar going away (docs/PROTOCOL.md §Cursors, §Sidecar restart).
//!
//! - **Events**: every event's cursor is kept. When the stream ends, the link reconnects
//!   (retrying every 100 ms) and resubscribes: after the cursor if the sidecar is the same
//!   run (same incarnation), else from the new run's first event (`{incarnation, 0}`, which
//!   replays the batches the restarted sidecar recovered), telling the matcher
//!   [`Feed::Restarted`] so that it resubmits the orders not yet committed. An engine that
//!   restarted itself connects with the cursor of the last event it processed, and the
//!   same rules apply.
//! - **Orders**: chunks go to one long `SubmitOrders` stream; when it breaks the link
//!   reconnects and sends the chunk that failed, and the rest, on a new stream. Chunks lost
//!   with a dead sidecar are resubmitted on [`Feed::Restarted`] (resubmission is
//!   idempotent).

use std::path::{Path, PathBuf};
use std::str::FromStr as _;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::StreamExt as _;
use tokio::sync::mpsc;
use tonic::transport::Channel;

use crate::proto::sidecar_client::SidecarClient;
use crate::proto::{Cursor, GetStatusRequest, Order, SubmitOrdersRequest, SubscribeRequest, event::Kind};

/// How long the first connection may take (the sidecar may still be starting).
const FIRST_CONNECT: Duration = Duration::from_secs(30);
/// Pause between reconnection attempts.
const RETRY: Duration = Duration::from_millis(100);

/// What the event stream hands the engine's matcher.
#[derive(Debug)]
pub(super) enum Feed {
    /// A batch decision, result verdict or order outcome, with its cursor.
    Event(Kind, Option<Cursor>),
    /// The sidecar is a new run, whose events start after this cursor (`{incarnation,
    /// 0}`): outcomes of orders given to the previous run may be lost.
    Restarted(Cursor),
}

/// What the order stream did, once the engine closed it.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Handed {
    /// Orders the last stream's sidecar accepted.
    pub(super) accepted: u64,
    /// Streams that broke (the sidecar went away) and were replaced.
    pub(super) broken: u32,
}

/// The engine's two streams, set up.
pub(super) struct SidecarLink {
    /// The sidecar's peer id: the origin of this engine's orders.
    pub(super) origin: libp2p::PeerId,
    /// Chunks of orders to submit.
    pub(super) out: mpsc::Sender<Vec<Order>>,
    /// Peers' orders as they arrive (early delivery).
    pub(super) inbound: mpsc::Receiver<Vec<Order>>,
    /// One `()` per peer joined or left.
    pub(super) peer_events: mpsc::UnboundedReceiver<()>,
    /// Everything else, for the matcher.
    pub(super) feed: mpsc::UnboundedReceiver<Feed>,
    /// A client for `GetBatch`, `SubmitResult` and resubmissions (its channel reconnects).
    pub(super) client: SidecarClient<Channel>,
    /// Resolves once `out` is closed and the last stream answered.
    pub(super) done: tokio::task::JoinHandle<anyhow::Result<Handed>>,
}

/// Connects, retrying until `deadline`.
async fn connect_until(socket: &Path, deadline: Option<Instant>) -> anyhow::Result<SidecarClient<Channel>> {
    loop {
        match crate::api::connect(socket).await {
            Ok(c) => return Ok(c),
            Err(e) if deadline.is_none_or(|d| Instant::now() < d) => {
                tracing::debug!(error = %format!("{e:#}"), "sidecar not reachable yet");
                tokio::time::sleep(RETRY).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Connects to the sidecar at `socket` and opens both streams: the event stream live, or,
/// for an engine that restarted, after `resume` (the last event it processed).
pub(super) async fn connect(socket: &Path, resume: Option<Cursor>) -> anyhow::Result<SidecarLink> {
    let mut client = connect_until(socket, Some(Instant::now() + FIRST_CONNECT)).await?;
    let status = client.get_status(GetStatusRequest {}).await?.into_inner();
    let origin = libp2p::PeerId::from_str(&status.peer_id).context("sidecar reported a bad peer id")?;
    let (in_tx, inbound) = mpsc::channel(1024);
    let (pe_tx, peer_events) = mpsc::unbounded_channel();
    let (feed_tx, feed) = mpsc::unbounded_channel();
    let mut reader = EventReader {
        socket: socket.to_owned(),
        incarnation: resume.map_or(status.incarnation, |c| c.incarnation),
        cursor: resume,
    };
    let events = match resume {
        None => client.subscribe(SubscribeRequest { markets: vec![], resume_after: None }).await?.into_inner(),
        Some(c) => {
            tracing::info!(
                incarnation = format!("{:016x}", c.incarnation),
                sequence = c.sequence,
                "resuming the event stream"
            );
            reader.resubscribe(&feed_tx).await.context("resubscribing")?
        }
    };
    tokio::spawn(reader.run(events, in_tx, pe_tx, feed_tx));
    let (out, rx) = mpsc::channel::<Vec<Order>>(8);
    let done = tokio::spawn(submit_all(socket.to_owned(), client.clone(), rx));
    Ok(SidecarLink { origin, out, inbound, peer_events, feed, client, done })
}

struct EventReader {
    socket: PathBuf,
    incarnation: u64,
    cursor: Option<Cursor>,
}

impl EventReader {
    /// Forwards events until the engine stops listening, resubscribing whenever the stream
    /// ends.
    async fn run(
        mut self,
        mut events: tonic::Streaming<crate::proto::Event>,
        orders: mpsc::Sender<Vec<Order>>,
        peers: mpsc::UnboundedSender<()>,
        feed: mpsc::UnboundedSender<Feed>,
    ) {
        loop {
            while let Some(ev) = events.next().await {
                let ev = match ev {
                    Ok(ev) => ev,
                    Err(s) => {
                        tracing::warn!(status = %s, "event stream ended; resubscribing");
                        break;
                    }
                };
                // The engine may stop counting early deliveries (or peer events) before it
                // stops listening to the matcher's feed, and the other way round: it is gone
                // only once both are closed.
                match ev.kind {
                    Some(Kind::Orders(o)) => {
                        let _ = orders.send(o.orders).await;
                    }
                    Some(Kind::PeerJoined(_) | Kind::PeerLeft(_)) => {
                        let _ = peers.send(());
                    }
                    Some(k) => {
                        let _ = feed.send(Feed::Event(k, ev.cursor));
                    }
                    None => {}
                }
                if orders.is_closed() && feed.is_closed() {
                    return;
                }
                self.cursor = ev.cursor.or(self.cursor);
            }
            match self.resubscribe(&feed).await {
                Some(stream) => events = stream,
                None => return,
            }
        }
    }

    /// Reconnects and resubscribes from where the engine is; `None` once the engine is
    /// gone.
    async fn resubscribe(
        &mut self,
        feed: &mpsc::UnboundedSender<Feed>,
    ) -> Option<tonic::Streaming<crate::proto::Event>> {
        loop {
            if feed.is_closed() {
                return None;
            }
            let Ok(mut client) = connect_until(&self.socket, None).await else { continue };
            let Ok(status) = client.get_status(GetStatusRequest {}).await else {
                tokio::time::sleep(RETRY).await;
                continue;
            };
            let status = status.into_inner();
            let restarted = status.incarnation != self.incarnation;
            let resume = if restarted {
                Cursor { incarnation: status.incarnation, sequence: 0 }
            } else {
                self.cursor.unwrap_or(Cursor { incarnation: status.incarnation, sequence: 0 })
            };
            let request = SubscribeRequest { markets: vec![], resume_after: Some(resume) };
            let stream = match client.subscribe(request).await {
                Ok(s) => s.into_inner(),
                Err(s) if s.code() == tonic::Code::OutOfRange => {
                    // Events were dropped from the log: continue live and treat it as a
                    // restart (resubmitting is idempotent).
                    tracing::warn!(status = %s, "cannot resume; continuing live and resubmitting uncommitted orders");
                    let live = SubscribeRequest { markets: vec![], resume_after: None };
                    match client.subscribe(live).await {
                        Ok(s) => {
                            self.incarnation = status.incarnation;
                            let from = Cursor { incarnation: status.incarnation, sequence: 0 };
                            let _ = feed.send(Feed::Restarted(from));
                            return Some(s.into_inner());
                        }
                        Err(_) => continue,
                    }
                }
                Err(s) => {
                    tracing::debug!(status = %s, "resubscribing failed; retrying");
                    tokio::time::sleep(RETRY).await;
                    continue;
                }
            };
            if restarted {
                tracing::warn!(
                    old = format!("{:016x}", self.incarnation),
                    new = format!("{:016x}", status.incarnation),
                    "the sidecar restarted; replaying its run from the start and resubmitting uncommitted orders"
                );
                self.incarnation = status.incarnation;
                let _ = feed.send(Feed::Restarted(resume));
            }
            return Some(stream);
        }
    }
}

/// Streams the engine's chunks to the sidecar, replacing a broken stream with a new one.
async fn submit_all(
    socket: PathBuf,
    first: SidecarClient<Channel>,
    mut chunks: mpsc::Receiver<Vec<Order>>,
) -> anyhow::Result<Handed> {
    let mut handed = Handed::default();
    let mut client = first;
    let mut carry: Option<Vec<Order>> = None;
    loop {
        let (tx, rx) = mpsc::channel::<Vec<Order>>(8);
        let mut c = client.clone();
        let call = tokio::spawn(async move {
            let stream = tokio_stream::wrappers::ReceiverStream::new(rx).map(|orders| SubmitOrdersRequest { orders });
            c.submit_orders(stream).await
        });
        let mut broke = false;
        if let Some(chunk) = carry.take()
            && let Err(e) = tx.send(chunk).await
        {
            carry = Some(e.0);
            broke = true;
        }
        while !broke {
            match chunks.recv().await {
                Some(chunk) => {
                    if let Err(e) = tx.send(chunk).await {
                        carry = Some(e.0);
                        broke = true;
                    }
                }
                None => break,
            }
        }
        drop(tx);
        match call.await.context("submit task")? {
            Ok(resp) if !broke => {
                handed.accepted = resp.into_inner().accepted;
                return Ok(handed);
            }
            Ok(_) => {}
            // The sidecar went away (or is going): a new stream, maybe to its next run.
            Err(s) if matches!(s.code(), tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled) => {
                tracing::warn!(status = %s, "the order stream broke; reconnecting");
            }
            // A refusal (a bad order, a reused id) is the engine's bug: no retry.
            Err(s) => return Err(s).context("SubmitOrders"),
        }
        handed.broken += 1;
        client = connect_until(&socket, None).await?;
    }
}
