//! The reference engine's matcher: it does, for every event of its sidecar's stream, what a
//! replicated matching engine does — for `BatchAgreed`, fetch the batch in canonical order,
//! check it against the agreed batch hash (a cut stream is fetched again, never matched),
//! run the reference auction ([`crate::tools::auction`]) and submit the result hash; for
//! `OrdersExcluded`, resubmit its own orders (same id, same content); on a sidecar restart,
//! resubmit every order not known committed — and keeps the tallies the engine reports.
//!
//! Data flows one way: an event becomes an [`Effect`] (after its side effects at the
//! sidecar), the effect is applied to the [`MatcherState`] and, with `--state-file`, appended
//! to the engine's [`Journal`] with the event's cursor. A restarted engine applies the
//! journal's effects to a fresh state and resumes its stream after the last cursor, so its
//! state after a crash is what it would have been without one.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::str::FromStr as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use futures::StreamExt as _;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tonic::transport::Channel;

use crate::proto::sidecar_client::SidecarClient;
use crate::proto::{
    BatchChunk, BatchId, Cursor, GetBatchRequest, Order, SubmitOrdersRequest, SubmitResultRequest, event::Kind,
};
use crate::tools::engine::{BatchTally, Receiver};
use crate::tools::journal::{Entry, Journal};
use crate::tools::sidecar_link::Feed;
use crate::tools::stats::{Checksum, Latency};
use crate::wire::Digest;

/// Times the matcher asks for an agreed batch before it gives up on matching it.
const FETCH_ATTEMPTS: u32 = 3;

/// Every order of a `GetBatch` stream, in stream order; `Err` (saying after how many
/// orders) if the stream ended with an error.
async fn collect_batch(
    mut stream: impl futures::Stream<Item = Result<BatchChunk, tonic::Status>> + Unpin,
) -> Result<Vec<Order>, String> {
    let mut orders = Vec::new();
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(chunk) => orders.extend(chunk.orders),
            Err(s) => return Err(format!("stream failed after {} orders: {s}", orders.len())),
        }
    }
    Ok(orders)
}

/// What matching one agreed batch gave.
struct Matched {
    /// Trades of the reference auction.
    trades: u64,
    /// The result hash to submit (docs/PROTOCOL.md §8).
    result_hash: Digest,
    /// The batch's orders from other origins than `own_origin`, for the tallies.
    peer_orders: Vec<PeerOrder>,
    /// The batch held no order (its hash is the empty set's).
    empty: bool,
}

/// Matches the fetched `orders` of an agreed batch: checks that their batch hash
/// ([`crate::batch_hash::batch_hash`] over their order digests) is the agreed
/// `batch_hash`, runs the reference auction on them (they come in canonical order) and
/// computes the result hash. CPU-bound: a SHA-256 digest and the auction's work per order,
/// a base58 peer id per distinct origin.
///
/// Errors: the orders do not give the agreed batch hash (a short or altered batch).
fn match_batch(orders: Vec<Order>, batch_hash: &Digest, own_origin: &[u8]) -> Result<Matched, String> {
    let hash = crate::batch_hash::batch_hash(orders.iter().map(crate::wire::order_digest));
    if &hash != batch_hash {
        return Err(format!("{} orders that do not hash to the agreed batch hash", orders.len()));
    }
    let trades = crate::tools::auction::run_auction(&orders);
    // A batch has a few origins: each is rendered in base58 once.
    let mut labels: BTreeMap<&[u8], String> = BTreeMap::new();
    let peer_orders = orders
        .iter()
        .filter(|o| o.origin != own_origin)
        .map(|o| PeerOrder {
            origin: labels.entry(&o.origin).or_insert_with(|| crate::tools::engine::origin_label(&o.origin)).clone(),
            id: o.id,
            term: format!("{:032x}", Checksum::term(o)),
        })
        .collect();
    Ok(Matched {
        trades: trades.len() as u64,
        result_hash: crate::tools::auction::result_hash(batch_hash, &trades),
        peer_orders,
        empty: orders.is_empty(),
    })
}

/// One peer order of an agreed batch, as the tallies keep it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct PeerOrder {
    /// Origin peer id (base58).
    origin: String,
    /// The origin engine's id.
    id: u64,
    /// Its [`Checksum::term`], hex.
    term: String,
}

/// What one processed event changed in the tallies.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(super) enum Effect {
    /// A batch agreed and matched here: its hash (hex), seal → agreement µs, orders
    /// repaired into it here, trades matched, the peers' orders in it, and whether it held
    /// no order at all.
    Agreed {
        market: String,
        epoch: u64,
        hash: String,
        agreement_us: u64,
        repaired_orders: u64,
        trades: u64,
        peer_orders: Vec<PeerOrder>,
        #[serde(default)]
        empty: bool,
    },
    /// A batch disputed: not matched.
    Disputed { market: String, epoch: u64 },
    /// A batch's results agreed: settled.
    ResultAgreed { market: String, epoch: u64 },
    /// A batch's results differed or were unconfirmed: halted, not settled.
    Halted { market: String, epoch: u64 },
    /// Own orders committed.
    Committed { ids: Vec<u64> },
    /// Own orders excluded (`excluded` ids) and resubmitted (`resubmitted` of them).
    Excluded { excluded: u64, resubmitted: u64 },
    /// The sidecar came back as a new run: verdicts pending with the old run are gone;
    /// `resubmitted` orders went again.
    SidecarRestarted { resubmitted: u64 },
    /// This engine was restarted on its journal and resubmitted `resubmitted` orders.
    EngineResumed { resubmitted: u64 },
}

/// What the matcher learnt.
#[derive(Default)]
pub(super) struct MatcherState {
    pub(super) batches: BTreeMap<String, BatchTally>,
    pub(super) agreement: Latency,
    /// Agreed batches holding orders without a result verdict yet.
    pub(super) unsettled: HashSet<(String, u64)>,
    /// Agreed batches that held no order. Their verdicts are tallied apart
    /// ([`BatchTally::empty`]): once the engines stop, epochs go on closing empty batches
    /// whose results the stopped engines never submit, so they halt, and an engine must
    /// not wait for them.
    empty: HashSet<(String, u64)>,
    /// Batches agreed or disputed.
    decided: HashSet<(String, u64)>,
    /// Agreed batches: "MARKET#EPOCH" → hash (hex).
    pub(super) agreed_batches: BTreeMap<String, String>,
    /// Disputed batches: "MARKET#EPOCH".
    pub(super) disputed_batches: BTreeSet<String>,
    /// Own orders committed, and their content checksum.
    pub(super) committed: HashSet<u64>,
    pub(super) committed_checksum: Checksum,
    /// `OrdersExcluded` ids received, and orders resubmitted (excluded ones, and those
    /// resubmitted after a restart of the sidecar or of this engine).
    pub(super) excluded: u64,
    pub(super) resubmitted: u64,
    /// Peers' orders in agreed batches (the committed truth), per origin.
    pub(super) received: Receiver,
    /// Last time a batch was decided or an outcome arrived.
    pub(super) last_progress: Option<Instant>,
    /// Times the sidecar restarted under this engine.
    pub(super) sidecar_restarts: u32,
    /// Times this engine resumed from its journal.
    pub(super) engine_restarts: u32,
}

impl MatcherState {
    /// Applies one effect. `own` are this engine's orders (an own order's id is its index).
    pub(super) fn apply(&mut self, effect: &Effect, own: &[Order]) {
        match effect {
            Effect::Agreed { market, epoch, hash, agreement_us, repaired_orders, trades, peer_orders, empty } => {
                self.decided.insert((market.clone(), *epoch));
                self.agreed_batches.insert(format!("{market}#{epoch}"), hash.clone());
                self.agreement.record(*agreement_us);
                let t = self.batches.entry(market.clone()).or_default();
                if *empty {
                    t.empty += 1;
                    self.empty.insert((market.clone(), *epoch));
                    return;
                }
                t.agreed += 1;
                t.trades += trades;
                if *repaired_orders > 0 {
                    t.repaired += 1;
                    t.repaired_orders += repaired_orders;
                }
                self.unsettled.insert((market.clone(), *epoch));
                // A batch has a few origins: each is parsed from base58 once.
                let mut origins: HashMap<&str, Bytes> = HashMap::new();
                for o in peer_orders {
                    let origin = origins
                        .entry(&o.origin)
                        .or_insert_with(|| {
                            libp2p::PeerId::from_str(&o.origin)
                                .map(|p| Bytes::from(p.to_bytes()))
                                .unwrap_or_else(|_| Bytes::from(o.origin.clone().into_bytes()))
                        })
                        .clone();
                    let term = u128::from_str_radix(&o.term, 16).unwrap_or_default();
                    self.received.take_one(&origin, o.id, term, None);
                }
            }
            Effect::Disputed { market, epoch } => {
                self.decided.insert((market.clone(), *epoch));
                self.disputed_batches.insert(format!("{market}#{epoch}"));
                self.batches.entry(market.clone()).or_default().disputed += 1;
            }
            Effect::ResultAgreed { market, epoch } => {
                if self.empty.contains(&(market.clone(), *epoch)) {
                    return;
                }
                self.unsettled.remove(&(market.clone(), *epoch));
                self.batches.entry(market.clone()).or_default().results_agreed += 1;
            }
            Effect::Halted { market, epoch } => {
                let t = self.batches.entry(market.clone()).or_default();
                if self.empty.contains(&(market.clone(), *epoch)) {
                    t.empty_halted += 1;
                    return;
                }
                self.unsettled.remove(&(market.clone(), *epoch));
                t.halted += 1;
            }
            Effect::Committed { ids } => {
                for &id in ids {
                    if self.committed.insert(id)
                        && let Some(o) = own.get(id as usize).filter(|o| o.id == id)
                    {
                        self.committed_checksum.add(o);
                    }
                }
            }
            Effect::Excluded { excluded, resubmitted } => {
                self.excluded += excluded;
                self.resubmitted += resubmitted;
            }
            Effect::SidecarRestarted { resubmitted } => {
                self.unsettled.clear(); // their verdicts went with the old run
                self.sidecar_restarts += 1;
                self.resubmitted += resubmitted;
            }
            Effect::EngineResumed { resubmitted } => {
                self.engine_restarts += 1;
                self.resubmitted += resubmitted;
            }
        }
    }
}

/// The matcher task's inputs.
pub(super) struct Matcher {
    /// The sidecar's events (from [`crate::tools::sidecar_link`]).
    pub(super) feed: mpsc::UnboundedReceiver<Feed>,
    /// For `GetBatch`, `SubmitResult` and resubmissions.
    pub(super) client: SidecarClient<Channel>,
    /// This engine's origin (its sidecar's peer id bytes).
    pub(super) own_origin: Bytes,
    /// This engine's orders, by id.
    pub(super) own: Arc<Vec<Order>>,
    /// Own orders handed to the sidecar so far (ids below it).
    pub(super) handed: Arc<AtomicU64>,
    /// The shared state.
    pub(super) state: Arc<Mutex<MatcherState>>,
    /// Where effects are recorded (a no-op without `--state-file`).
    pub(super) journal: Journal,
    /// Fault drill (`--corrupt-results-every`): a wrong result hash for batches whose
    /// epoch is a multiple of this.
    pub(super) corrupt_results_every: Option<u64>,
}

fn key(id: Option<&BatchId>) -> (String, u64) {
    id.map(|b| (b.market.clone(), b.epoch)).unwrap_or_default()
}

impl Matcher {
    /// Runs until the feed ends. `resumed`: this engine restarted on its journal, so every
    /// order it handed over and does not know committed goes again first.
    pub(super) async fn run(mut self, resumed: bool) {
        if resumed {
            let resubmitted = self.resubmit_uncommitted().await;
            self.record(None, Effect::EngineResumed { resubmitted });
        }
        while let Some(feed) = self.feed.recv().await {
            self.state.lock().expect("matcher state").last_progress = Some(Instant::now());
            let (effect, cursor) = match feed {
                Feed::Restarted(from) => {
                    tracing::warn!(
                        lost_verdicts = self.state.lock().expect("matcher state").unsettled.len(),
                        "sidecar restarted"
                    );
                    (Some(Effect::SidecarRestarted { resubmitted: self.resubmit_uncommitted().await }), Some(from))
                }
                Feed::Event(kind, cursor) => (self.process(kind).await, cursor),
            };
            if let Some(effect) = effect {
                self.record(cursor, effect);
            }
        }
    }

    /// Applies `effect` and journals it with `cursor`.
    fn record(&self, cursor: Option<Cursor>, effect: Effect) {
        self.state.lock().expect("matcher state").apply(&effect, &self.own);
        let cursor = cursor.map(|c| (c.incarnation, c.sequence));
        if let Err(e) = self.journal.append(&Entry::Event { cursor, effect }) {
            tracing::error!(error = %format!("{e:#}"), "journal write failed: a restart would replay this event");
        }
    }

    /// Fetches agreed batch `batch_id` (`GetBatch`) and matches it ([`match_batch`], on a
    /// blocking thread so that this engine's event reader, which timestamps deliveries,
    /// is not held up by matching). A cut stream or orders that do not give the agreed
    /// `batch_hash` are fetched again, up to [`FETCH_ATTEMPTS`] times; `None` (each failure
    /// logged) if no attempt brought the agreed batch.
    async fn fetch_and_match(&mut self, batch_id: Option<&BatchId>, batch_hash: Digest) -> Option<Matched> {
        for attempt in 1..=FETCH_ATTEMPTS {
            let matched = match self.client.get_batch(GetBatchRequest { batch_id: batch_id.cloned() }).await {
                Ok(stream) => match collect_batch(stream.into_inner()).await {
                    Ok(orders) => {
                        let own = self.own_origin.clone();
                        tokio::task::spawn_blocking(move || match_batch(orders, &batch_hash, &own))
                            .await
                            .unwrap_or_else(|e| Err(format!("matching panicked: {e}")))
                    }
                    Err(why) => Err(why),
                },
                Err(s) => Err(format!("GetBatch failed: {s}")),
            };
            match matched {
                Ok(m) => return Some(m),
                Err(why) => {
                    tracing::error!(batch = ?batch_id, attempt, FETCH_ATTEMPTS, "fetching an agreed batch: {why}")
                }
            }
        }
        None
    }

    /// Does what event `kind` asks of an engine; returns its effect on the tallies.
    async fn process(&mut self, kind: Kind) -> Option<Effect> {
        match kind {
            Kind::BatchAgreed(a) => {
                let (market, epoch) = key(a.batch_id.as_ref());
                if self.state.lock().expect("matcher state").decided.contains(&(market.clone(), epoch)) {
                    return None; // replayed by a restarted sidecar: matched already
                }
                let hash = <[u8; 32]>::try_from(a.batch_hash.as_slice()).unwrap_or_default();
                let Some(Matched { trades, mut result_hash, peer_orders, empty }) =
                    self.fetch_and_match(a.batch_id.as_ref(), hash).await
                else {
                    tracing::error!(market, epoch, "batch not fetched: not matched, no result submitted");
                    return None;
                };
                if self.corrupt_results_every.is_some_and(|n| epoch % n == 0) {
                    result_hash[0] ^= 0xff;
                    tracing::warn!(market, epoch, "fault drill: submitting a wrong result hash");
                }
                let req = SubmitResultRequest {
                    batch_id: a.batch_id,
                    result_hash: result_hash.to_vec(),
                    trade_count: trades,
                };
                if let Err(s) = self.client.submit_result(req).await {
                    tracing::error!(market, epoch, status = %s, "SubmitResult failed");
                }
                Some(Effect::Agreed {
                    market,
                    epoch,
                    hash: a.batch_hash.iter().map(|b| format!("{b:02x}")).collect(),
                    agreement_us: a.agreement_us,
                    repaired_orders: a.repaired_orders,
                    trades,
                    peer_orders,
                    empty,
                })
            }
            Kind::OrdersCommitted(c) => Some(Effect::Committed { ids: c.ids }),
            Kind::OrdersExcluded(x) => {
                let (market, epoch) = key(x.batch_id.as_ref());
                let stamp = crate::epoch::unix_now_ns();
                let again: Vec<Order> = x
                    .ids
                    .iter()
                    .filter_map(|&id| self.own_order(id))
                    .map(|o| Order { submitted_at_ns: stamp, ..o.clone() })
                    .collect();
                tracing::info!(
                    market,
                    epoch,
                    orders = again.len(),
                    reason = x.reason,
                    "own orders excluded; resubmitting them"
                );
                let resubmitted = match self.submit_chunked(&again).await {
                    Ok(n) => n,
                    Err(s) => {
                        tracing::error!(market, epoch, status = %s, "resubmitting excluded orders failed");
                        0
                    }
                };
                Some(Effect::Excluded { excluded: x.ids.len() as u64, resubmitted })
            }
            Kind::BatchDisputed(d) => {
                let (market, epoch) = key(d.batch_id.as_ref());
                tracing::warn!(market, epoch, reason = d.reason, "batch disputed: not matched");
                Some(Effect::Disputed { market, epoch })
            }
            Kind::ResultAgreed(r) => {
                let (market, epoch) = key(r.batch_id.as_ref());
                Some(Effect::ResultAgreed { market, epoch })
            }
            Kind::ResultMismatch(r) => {
                let (market, epoch) = key(r.batch_id.as_ref());
                tracing::error!(
                    market,
                    epoch,
                    cause = r.cause().as_str_name(),
                    reason = r.reason,
                    "batch halted, not settled"
                );
                Some(Effect::Halted { market, epoch })
            }
            _ => None,
        }
    }

    /// An own order by id.
    fn own_order(&self, id: u64) -> Option<&Order> {
        self.own.get(id as usize).filter(|o| o.id == id)
    }

    /// Submits `orders` on one `SubmitOrders` stream, 512 per message (a few tens of KiB,
    /// well under the socket's 1 MiB message cap however many there are); returns how many
    /// went.
    ///
    /// Errors: the sidecar's status (the stream stops at the first refused message).
    async fn submit_chunked(&mut self, orders: &[Order]) -> Result<u64, tonic::Status> {
        let chunks: Vec<SubmitOrdersRequest> =
            orders.chunks(512).map(|c| SubmitOrdersRequest { orders: c.to_vec() }).collect();
        self.client.submit_orders(futures::stream::iter(chunks)).await?;
        Ok(orders.len() as u64)
    }

    /// Submits again every order handed to the sidecar and not known committed (same id,
    /// same content: the sidecar answers those it knows with their outcome and takes the
    /// others); returns how many went.
    async fn resubmit_uncommitted(&mut self) -> u64 {
        let again: Vec<Order> = {
            let st = self.state.lock().expect("matcher state");
            let n = self.handed.load(Ordering::Acquire) as usize;
            self.own[..n.min(self.own.len())].iter().filter(|o| !st.committed.contains(&o.id)).cloned().collect()
        };
        match self.submit_chunked(&again).await {
            Ok(n) => {
                tracing::info!(orders = n, "resubmitted the orders not known committed");
                n
            }
            Err(s) => {
                tracing::error!(status = %s, "resubmitting the orders not known committed failed");
                0
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agreed(epoch: u64, empty: bool) -> Effect {
        Effect::Agreed {
            market: "M".into(),
            epoch,
            hash: "ab".into(),
            agreement_us: 10,
            repaired_orders: 0,
            trades: 0,
            peer_orders: Vec::new(),
            empty,
        }
    }

    #[test]
    fn empty_batches_are_not_waited_for_and_their_verdicts_are_tallied_apart() {
        let mut st = MatcherState::default();
        for effect in [agreed(1, false), agreed(2, true), agreed(3, true), agreed(4, false)] {
            st.apply(&effect, &[]);
        }
        assert_eq!(st.unsettled.len(), 2, "only batches holding orders await a verdict");
        assert_eq!(st.agreed_batches.len(), 4, "every agreed batch is listed for hash comparison");
        st.apply(&Effect::ResultAgreed { market: "M".into(), epoch: 1 }, &[]);
        st.apply(&Effect::ResultAgreed { market: "M".into(), epoch: 2 }, &[]);
        st.apply(&Effect::Halted { market: "M".into(), epoch: 3 }, &[]);
        st.apply(&Effect::Halted { market: "M".into(), epoch: 4 }, &[]);
        assert!(st.unsettled.is_empty());
        let t = &st.batches["M"];
        assert_eq!((t.agreed, t.results_agreed, t.halted), (2, 1, 1));
        assert_eq!((t.empty, t.empty_halted), (2, 1));
    }

    #[test]
    fn an_agreed_effect_from_an_older_journal_holds_orders() {
        let line = r#"{"kind":"agreed","market":"M","epoch":7,"hash":"ab","agreement_us":1,"repaired_orders":0,"trades":2,"peer_orders":[]}"#;
        let effect: Effect = serde_json::from_str(line).unwrap();
        assert!(matches!(effect, Effect::Agreed { empty: false, .. }));
    }

    fn order(id: u64) -> Order {
        Order {
            id,
            market: "M".into(),
            origin: vec![7; 38].into(),
            epoch: 3,
            price_ticks: 100 + id,
            quantity_lots: 1,
            ..Order::default()
        }
    }

    fn hash_of(orders: &[Order]) -> Digest {
        crate::batch_hash::batch_hash(orders.iter().map(crate::wire::order_digest))
    }

    #[tokio::test]
    async fn a_fetched_batch_is_matched_only_whole_and_as_agreed() {
        let orders: Vec<Order> = (1..=5).map(order).collect();
        let agreed = hash_of(&orders);
        let chunks = |cut: bool| {
            let mut c = vec![Ok(BatchChunk { orders: orders[..3].to_vec() })];
            c.push(if cut {
                Err(tonic::Status::unavailable("gone"))
            } else {
                Ok(BatchChunk { orders: orders[3..].to_vec() })
            });
            futures::stream::iter(c)
        };

        let whole = collect_batch(chunks(false)).await.unwrap();
        assert_eq!(whole, orders);
        let m = match_batch(whole, &agreed, b"someone else").unwrap();
        let trades = crate::tools::auction::run_auction(&orders);
        assert_eq!(m.trades, trades.len() as u64);
        assert_eq!(m.result_hash, crate::tools::auction::result_hash(&agreed, &trades));
        assert_eq!((m.peer_orders.len(), m.empty), (5, false));
        let own = match_batch(orders.clone(), &agreed, &orders[0].origin).unwrap();
        assert!(own.peer_orders.is_empty(), "its own orders are not peer orders");

        let cut = collect_batch(chunks(true)).await.unwrap_err();
        assert!(cut.starts_with("stream failed after 3 orders"), "{cut}");

        let short = match_batch(orders[..4].to_vec(), &agreed, b"").err().unwrap();
        assert_eq!(short, "4 orders that do not hash to the agreed batch hash");
        let mut altered = orders.clone();
        altered[2].quantity_lots = 2;
        assert!(match_batch(altered, &agreed, b"").is_err(), "same count, other content");

        let empty = collect_batch(futures::stream::iter(Vec::new())).await.unwrap();
        assert!(match_batch(empty, &hash_of(&[]), b"").unwrap().empty, "an empty batch has the empty-set hash");
    }
}
