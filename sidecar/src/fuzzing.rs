//! Entry points for the fuzz targets (`sidecar/fuzz/`), the decoder-bound replay test and
//! the tests' hostile peers (the repair codec, [`RepairCodec`]):
//! each runs one of the node's input paths on arbitrary bytes, as a hostile peer, engine
//! or operator could present them, with the node's default limits. Not a stable API.
//!
//! Every function must return (an error is fine) for any input, without panicking and
//! without allocating more than its input's bounds allow ([`crate::decode_limits`]).

use std::collections::BTreeSet;
use std::sync::Arc;

use libp2p::PeerId;
use libp2p::request_response::Codec as _;
use openmatch_gossip_crds::SidecarConfig;
use prometheus_client::registry::Registry;
use prost::Message as _;

use crate::epoch::EpochClock;
use crate::metrics::Metrics;
use crate::proto::Order;
use crate::repair::PROTOCOL;
pub use crate::repair::{MAX_INBOUND_STREAMS_PER_PEER, PROTOCOL as REPAIR_PROTOCOL, RepairCodec};
use crate::topics::{Topic, TopicKind};
use crate::validation::{Admission, Validator, ValidatorLimits};

/// The market the fuzzing validator trades.
pub const MARKET: &str = "BTC-USDT";
/// Its network.
pub const NETWORK: &str = "fuzz";

/// The gossip validator of a node trading [`MARKET`] with the default limits.
pub struct GossipValidator {
    validator: Validator,
    markets: BTreeSet<String>,
    epochs: EpochClock,
}

impl Default for GossipValidator {
    fn default() -> Self {
        let config = SidecarConfig::default();
        let limits = ValidatorLimits {
            max_message_bytes: config.limits.max_message_bytes as usize,
            max_freeze_proof_bytes: config.limits.max_freeze_proof_bytes as usize,
            rate_limit: config.limits.rate_limit,
            consensus_rate_limit: crate::ratelimit::consensus_budget(&config, 1),
            dedup_capacity: config.limits.dedup_capacity as usize,
        };
        let metrics = Arc::new(Metrics::register(&mut Registry::default()));
        GossipValidator {
            validator: Validator::new(NETWORK, limits, metrics),
            markets: BTreeSet::from([MARKET.to_owned()]),
            epochs: EpochClock::new(&config.consensus),
        }
    }
}

impl GossipValidator {
    /// Validates `data` as forwarded and signed by `author` on the topic of `kind` (0
    /// orders, 1 batches, 2 results, 3 control; any other value: a foreign topic) at
    /// `now_ms` (Unix ms); returns the verdict, for display.
    pub fn validate(&mut self, kind: u8, author: &PeerId, data: &[u8], now_ms: u64) -> String {
        let kind = match kind {
            0 => TopicKind::Orders,
            1 => TopicKind::Batches,
            2 => TopicKind::Results,
            3 => TopicKind::Control,
            _ => return format!("{:?}", self.validate_on("not-a-topic", author, data, now_ms)),
        };
        let market = if kind == TopicKind::Control { String::new() } else { MARKET.to_owned() };
        let topic = Topic { kind, market }.ident(NETWORK).to_string();
        format!("{:?}", self.validate_on(&topic, author, data, now_ms))
    }

    fn validate_on(&mut self, topic: &str, author: &PeerId, data: &[u8], now_ms: u64) -> crate::validation::Verdict {
        let admit = Admission { markets: &self.markets, epochs: &self.epochs, now_ms };
        self.validator.validate(author, Some(author), topic, data, &admit)
    }
}

/// Unix ms of the fuzzing clock's start: inside epoch 1,800,000,000 of the default 1 s
/// epochs, the epoch the seeds use.
pub const START_MS: u64 = 1_800_000_000_500;

/// Peers a [`ConsensusFeed`] hears from: 4, with keys `[1; 32]` … `[4; 32]`.
pub const FEED_PEERS: u8 = 4;

/// Steps a [`ConsensusFeed`] runs from one input, at most.
const MAX_STEPS: usize = 256;

/// What a node does with each message a peer may send, after decoding: a node trading
/// [`MARKET`] with [`FEED_PEERS`] peers (5 members), fed a sequence of steps as its event
/// loop would feed them. The gossip validator admits each message first, as on the node;
/// accepted orders, seals and results go into the batch state machine
/// (`crate::consensus`), repair answers through the same proof checks as the node's
/// (`crate::bundle::verify_orders`), and time advances only by steps, so a run is
/// reproducible.
pub struct ConsensusFeed {
    validator: GossipValidator,
    consensus: crate::consensus::Consensus,
    peers: Vec<PeerId>,
    live: std::collections::HashSet<PeerId>,
    me: PeerId,
    start: std::time::Instant,
    elapsed_ms: u64,
}

impl Default for ConsensusFeed {
    fn default() -> Self {
        let peers: Vec<PeerId> = (1..=FEED_PEERS)
            .map(|i| libp2p::identity::Keypair::ed25519_from_bytes([i; 32]).expect("32 bytes").public().to_peer_id())
            .collect();
        ConsensusFeed {
            validator: GossipValidator::default(),
            consensus: crate::consensus::Consensus::new(SidecarConfig::default().consensus),
            live: peers.iter().copied().collect(),
            peers,
            me: libp2p::identity::Keypair::ed25519_from_bytes([9; 32]).expect("32 bytes").public().to_peer_id(),
            start: std::time::Instant::now(),
            elapsed_ms: 0,
        }
    }
}

impl ConsensusFeed {
    /// Runs `input` as steps `[op, peer, len (u16, little-endian), body (len bytes)]` (a
    /// short last step takes what is left), at most 256; returns how many ran. `peer`
    /// picks one of the peers (modulo [`FEED_PEERS`]); `op` modulo 6 is:
    ///
    /// - 0: a gossip message from the peer: `body[0]` picks the topic kind as in
    ///   [`GossipValidator::validate`], the rest is the message;
    /// - 1: a repair answer from the peer: `body` is a `RepairResponse` (no length prefix);
    /// - 2: an order the node's own engine submits: `body` is an `Order`;
    /// - 3: the node seals an epoch: `body[0] % 4` epochs after the first (default 0);
    /// - 4: time passes, `body[0]` × 8 ms + 1 ms, and the node ticks;
    /// - 5: the engine submits a result for the epoch picked as in 3, hash `body[1..33]`.
    pub fn run(&mut self, input: &[u8]) -> usize {
        let mut rest = input;
        let mut steps = 0;
        while steps < MAX_STEPS && rest.len() >= 4 {
            let (op, peer) = (rest[0], self.peers[(rest[1] % FEED_PEERS) as usize]);
            let len = u16::from_le_bytes([rest[2], rest[3]]) as usize;
            let body = &rest[4..(4 + len).min(rest.len())];
            rest = &rest[4 + body.len()..];
            self.step(op % 6, peer, body);
            steps += 1;
        }
        steps
    }

    fn now(&self) -> (std::time::Instant, u64) {
        (self.start + std::time::Duration::from_millis(self.elapsed_ms), START_MS + self.elapsed_ms)
    }

    fn batch(body: &[u8]) -> crate::wire::BatchKey {
        let epoch = START_MS / 1000 + body.first().map_or(0, |b| u64::from(b % 4));
        crate::wire::BatchKey { market: MARKET.to_owned(), epoch }
    }

    fn step(&mut self, op: u8, peer: PeerId, body: &[u8]) {
        use crate::validation::{Payload, Verdict};
        let (now, now_ms) = self.now();
        match op {
            0 => {
                let Some((&kind, message)) = body.split_first() else { return };
                let kind = match kind % 4 {
                    0 => TopicKind::Orders,
                    1 => TopicKind::Batches,
                    2 => TopicKind::Results,
                    _ => TopicKind::Control,
                };
                let market = if kind == TopicKind::Control { String::new() } else { MARKET.to_owned() };
                let topic = Topic { kind, market }.ident(NETWORK).to_string();
                match self.validator.validate_on(&topic, &peer, message, now_ms) {
                    Verdict::Accept(Payload::Orders { orders, digests, proof, .. }) => {
                        for (o, d) in orders.iter().zip(digests) {
                            let _ = self.consensus.add_order(o, d, Some(proof.clone()));
                        }
                    }
                    Verdict::Accept(Payload::Seal(seal)) => {
                        let _ = self.consensus.on_peer_seal(peer, &seal);
                    }
                    Verdict::Accept(Payload::Result(result)) => self.consensus.on_peer_result(peer, &result),
                    _ => {}
                }
            }
            1 => {
                use crate::proto::repair_response::Kind;
                if crate::decode_limits::check(body, crate::decode_limits::REPAIR_RESPONSE).is_err() {
                    return;
                }
                let Ok(response) = crate::proto::RepairResponse::decode(body) else { return };
                match response.kind {
                    Some(Kind::Digests(set)) => {
                        let _ = self.consensus.on_digest_set(peer, &set, now);
                    }
                    Some(Kind::Orders(answer)) => {
                        let batch = Self::batch(&[]);
                        let checked = answer
                            .orders
                            .into_iter()
                            .filter(|o| o.market == batch.market && o.epoch == batch.epoch)
                            .map(|o| (crate::wire::order_digest(&o), o))
                            .collect();
                        let verified = crate::bundle::verify_orders(NETWORK, MARKET, checked, &answer.proofs);
                        let _ = self.consensus.on_fetched(&batch, verified.accepted);
                    }
                    _ => {}
                }
            }
            2 => {
                let Ok(mut order) = Order::decode(body) else { return };
                order.origin = self.me.to_bytes().into();
                let cap = SidecarConfig::default().limits.max_freeze_proof_bytes as usize;
                if order.market == MARKET && crate::wire::check_order_fields(&order, cap).is_ok() {
                    let _ = self.consensus.add_order(&order, crate::wire::order_digest(&order), None);
                }
            }
            3 => {
                let batch = Self::batch(body);
                self.consensus.open(&batch);
                let _ = self.consensus.seal(&batch, now);
            }
            4 => {
                self.elapsed_ms += u64::from(body.first().copied().unwrap_or(0)) * 8 + 1;
                let (now, _) = self.now();
                let membership = crate::consensus::Membership { members: 1 + self.peers.len(), live: &self.live };
                let _ = self.consensus.tick(now, &membership);
            }
            _ => {
                let mut hash = [0u8; 32];
                let given = body.get(1..).unwrap_or_default();
                hash[..given.len().min(32)].copy_from_slice(&given[..given.len().min(32)]);
                let _ = self.consensus.submit_result(&Self::batch(body), hash, 1, now);
            }
        }
    }
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    futures::executor::block_on(f)
}

/// Reads `frame` (length prefix and body) as a repair request, as a node serving repairs
/// does; returns the decoded request's debug form.
///
/// Errors: the codec's (`InvalidData` for an oversized or misshapen frame).
pub fn read_repair_request(frame: &[u8]) -> std::io::Result<String> {
    let mut io = futures::io::Cursor::new(frame);
    block_on(RepairCodec.read_request(&PROTOCOL, &mut io)).map(|r| format!("{r:?}"))
}

/// Reads `frame` as a repair response, as a node that asked does.
///
/// Errors: the codec's.
pub fn read_repair_response(frame: &[u8]) -> std::io::Result<String> {
    let mut io = futures::io::Cursor::new(frame);
    block_on(RepairCodec.read_response(&PROTOCOL, &mut io)).map(|r| format!("{r:?}"))
}

/// Loads `text` as a configuration file the way start-up and hot reload do: parse, then
/// validate.
///
/// Errors: the message naming the field.
pub fn load_config(text: &str) -> Result<(), String> {
    let config = SidecarConfig::from_yaml(text).map_err(|e| e.to_string())?;
    crate::config::NodeSettings::new(config, "s".into(), "k".into(), ([127, 0, 0, 1], 0).into())
        .map(|_| ())
        .map_err(|e| format!("{e:#}"))
}

/// Runs the socket API's checks on an order (protobuf `data`) as an engine submits it:
/// decode, field checks with the default freeze-proof cap, then its digest.
///
/// Errors: why the order would be refused.
pub fn check_engine_order(data: &[u8]) -> Result<[u8; 32], String> {
    let order = Order::decode(data).map_err(|e| e.to_string())?;
    let cap = SidecarConfig::default().limits.max_freeze_proof_bytes as usize;
    crate::wire::check_order_fields(&order, cap).map_err(|e| e.to_string())?;
    Ok(crate::wire::order_digest(&order))
}

/// Seed inputs for each fuzz target, written by the project's own encoders: `(target,
/// input)` pairs in the targets' input formats (see `sidecar/fuzz/fuzz_targets/`).
pub fn seed_corpus() -> Vec<(&'static str, Vec<u8>)> {
    use crate::proto::{
        BatchId, BatchSealed, BundleProof, DigestSet, FetchOrders, GossipEnvelope, OrderKind, OriginDigest, PeerStatus,
        ProvenOrders, RepairRequest, RepairResponse, Side, TradeResult, gossip_envelope::Body, repair_request,
        repair_response,
    };
    let key = libp2p::identity::Keypair::ed25519_from_bytes([7; 32]).expect("32 bytes");
    let author = key.public().to_peer_id();
    let epoch = 1_800_000_000;
    let batch = BatchId { market: MARKET.into(), epoch };
    let order = |id: u64| Order {
        id,
        market: MARKET.into(),
        side: Side::Buy as i32,
        kind: OrderKind::Limit as i32,
        price_ticks: 6_000_000 + id,
        quantity_lots: 1 + id,
        epoch,
        ..Default::default()
    };
    let orders: Vec<Order> = (0..3).map(order).collect();
    let envelope = |body| GossipEnvelope { version: 1, body: Some(body), origin_signature: vec![] }.encode_to_vec();
    let tagged = |tag: u8, bytes: Vec<u8>| [vec![tag], bytes].concat();
    let frame = |tag: u8, bytes: Vec<u8>| [vec![tag], (bytes.len() as u32).to_be_bytes().to_vec(), bytes].concat();
    let stored: Vec<Order> = orders.iter().map(|o| Order { origin: author.to_bytes().into(), ..o.clone() }).collect();
    let digests: Vec<crate::wire::Digest> = stored.iter().map(crate::wire::order_digest).collect();
    let signature = crate::bundle::sign_orders(&key, NETWORK, MARKET, &stored).expect("signing");
    vec![
        ("gossip_validator", tagged(0, crate::wire::encode_orders(&orders, &signature))),
        (
            "gossip_validator",
            tagged(
                1,
                envelope(Body::BatchSealed(BatchSealed {
                    batch_id: Some(batch.clone()),
                    batch_hash: vec![1; 32],
                    order_count: 3,
                    revision: 0,
                })),
            ),
        ),
        (
            "gossip_validator",
            tagged(
                2,
                envelope(Body::TradeResult(TradeResult {
                    batch_id: Some(batch.clone()),
                    result_hash: vec![2; 32],
                    trade_count: 1,
                })),
            ),
        ),
        (
            "gossip_validator",
            tagged(
                3,
                envelope(Body::PeerStatus(PeerStatus {
                    node_id: author.to_bytes(),
                    epoch_id: epoch,
                    markets: vec![MARKET.into()],
                    version: "0.1.0".into(),
                    instance: 9,
                    started_at_ms: 1,
                    ..Default::default()
                })),
            ),
        ),
        (
            "repair_codec",
            frame(
                0,
                RepairRequest {
                    kind: Some(repair_request::Kind::Fetch(FetchOrders {
                        batch_id: Some(batch.clone()),
                        digests: digests.iter().map(|d| d.to_vec()).collect(),
                    })),
                }
                .encode_to_vec(),
            ),
        ),
        (
            "repair_codec",
            frame(0, RepairRequest { kind: Some(repair_request::Kind::Digests(batch.clone())) }.encode_to_vec()),
        ),
        (
            "repair_codec",
            frame(
                1,
                RepairResponse {
                    kind: Some(repair_response::Kind::Digests(DigestSet {
                        batch_id: Some(batch.clone()),
                        entries: digests
                            .iter()
                            .map(|d| OriginDigest { digest: d.to_vec(), origin: author.to_bytes() })
                            .collect(),
                        ..Default::default()
                    })),
                }
                .encode_to_vec(),
            ),
        ),
        (
            "repair_codec",
            frame(
                1,
                RepairResponse {
                    kind: Some(repair_response::Kind::Orders(ProvenOrders {
                        orders: stored.clone(),
                        proofs: vec![BundleProof { signature, digests: digests.concat() }],
                    })),
                }
                .encode_to_vec(),
            ),
        ),
        ("config_loader", SidecarConfig::default().to_yaml().into_bytes()),
        (
            "config_loader",
            format!("network: {NETWORK}\nmarkets: [{MARKET}]\nconsensus: {{epochMs: 500, graceMs: 100}}\n")
                .into_bytes(),
        ),
        ("engine_order", Order { epoch: 0, ..order(1) }.encode_to_vec()),
        ("consensus_feed", feed_seed(&orders)),
    ]
}

/// A [`ConsensusFeed`] input that takes a batch of the node's own `orders` through
/// agreement to a settled result: the orders, the node's seal, every peer's matching seal,
/// a tick, the node's result, every peer's matching result, a tick.
fn feed_seed(orders: &[Order]) -> Vec<u8> {
    use crate::consensus::{Action, Consensus};
    use crate::wire::BatchResult;
    let step = |op: u8, peer: u8, body: &[u8]| {
        [vec![op, peer], (body.len() as u16).to_le_bytes().to_vec(), body.to_vec()].concat()
    };
    let me = ConsensusFeed::default().me;
    let batch = ConsensusFeed::batch(&[]);
    let mut reference = Consensus::new(SidecarConfig::default().consensus);
    let mut input = Vec::new();
    for o in orders {
        let own = Order { origin: me.to_bytes().into(), ..o.clone() };
        let _ = reference.add_order(&own, crate::wire::order_digest(&own), None);
        input.extend(step(2, 0, &o.encode_to_vec()));
    }
    let Some(Action::PublishSeal(seal)) = reference.seal(&batch, std::time::Instant::now()).pop() else {
        unreachable!("a collecting batch seals")
    };
    input.extend(step(3, 0, &[0]));
    for peer in 0..FEED_PEERS {
        input.extend(step(0, peer, &[[1].as_slice(), &crate::wire::encode_seal(&seal)].concat()));
    }
    input.extend(step(4, 0, &[0]));
    let hash = [5u8; 32];
    input.extend(step(5, 0, &[[0].as_slice(), &hash].concat()));
    let result = BatchResult { batch, hash, trades: 1 };
    for peer in 0..FEED_PEERS {
        input.extend(step(0, peer, &[[2].as_slice(), &crate::wire::encode_result(&result)].concat()));
    }
    input.extend(step(4, 0, &[0]));
    input
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every seed is an input its target accepts as valid, so fuzzing starts from the real
    /// formats, not from noise.
    #[test]
    fn the_seeds_are_valid_inputs() {
        let mut validator = GossipValidator::default();
        let author = libp2p::identity::Keypair::ed25519_from_bytes([7; 32]).unwrap().public().to_peer_id();
        for (target, input) in seed_corpus() {
            match target {
                "gossip_validator" => {
                    let verdict = validator.validate(input[0], &author, &input[1..], 1_800_000_000_500);
                    assert!(verdict.starts_with("Accept"), "{verdict}");
                }
                "repair_codec" if input[0] == 0 => assert!(read_repair_request(&input[1..]).is_ok()),
                "repair_codec" => assert!(read_repair_response(&input[1..]).is_ok()),
                "config_loader" => assert_eq!(load_config(std::str::from_utf8(&input).unwrap()), Ok(())),
                "engine_order" => assert!(check_engine_order(&input).is_ok()),
                "consensus_feed" => {
                    let mut feed = ConsensusFeed::default();
                    assert_eq!(feed.run(&input), 15);
                    let phase = feed.consensus.phase(&ConsensusFeed::batch(&[]));
                    assert_eq!(phase, Some(crate::consensus::BatchPhase::Settled), "the seed reaches a settled result");
                }
                other => panic!("unknown target {other}"),
            }
        }
    }
}
