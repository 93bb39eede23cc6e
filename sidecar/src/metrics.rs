//! Prometheus metrics (prometheus-client): every metric the sidecar exports and its labels.
//!
//! One registry holds this crate's metrics, prefixed `openmatch_gossip_`, libp2p's own
//! (GossipSub, Identify, Kademlia, Ping, swarm), prefixed `libp2p_`, and the process
//! metrics (`process_*`); it is served on `/metrics` by the shared HTTP server
//! (`openmatch_gossip_crds::runtime`).
//!
//! Every series whose labels are known exists from start-up at 0: those without a market,
//! and each configured market's ([`Metrics::add_market`], again for the markets a reload
//! adds), so that dashboards and ratios see a 0 rather than no data.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::topics::TopicKind;

/// Upper bounds of the latency histograms, seconds: 100 µs to 60 s, about three per
/// decade and finer between 0.5 and 50 ms, where propagation (targets 1–2 ms p99) and
/// batch agreement (tens of ms) fall.
const LATENCY_BUCKETS: [f64; 26] = [
    0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.004, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05,
    0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// `subscribers_dropped_total` reasons: `backlog` (its own queue), `memory_bound` (the
/// node's bound, slowest subscriber first).
pub(crate) const SUBSCRIBER_DROP_REASONS: [&str; 2] = ["backlog", "memory_bound"];

/// `queue_memory_bytes` queues.
pub(crate) const MEMORY_QUEUES: [&str; 2] = ["subscribers", "outbox"];

/// `send_queue_failures_total` queues: GossipSub's `priority` (publish, control) and
/// `non_priority` (forward) send queues.
pub(crate) const SEND_QUEUES: [&str; 2] = ["priority", "non_priority"];

/// `repair_requests_refused_total` reasons (see the metric).
pub(crate) const REPAIR_REFUSAL_REASONS: [&str; 4] = ["rate_limited", "concurrent_streams", "timeout", "malformed"];

/// `repair_requests_sent_total` kinds: `digests` (a pull or an adoption's digest set),
/// `fetch` (orders an adopted batch lacks), `decided` (a restarted member's recovery),
/// `instances` (the duplicate-identity check).
pub(crate) const REPAIR_REQUEST_KINDS: [&str; 4] = ["digests", "fetch", "decided", "instances"];

/// `repair_orders_refused_total` reasons: `not_asked`, `invalid`, and the proof refusals
/// of [`crate::bundle`] (`no_proof`, `bad_signature`).
pub(crate) const REPAIRED_ORDER_REFUSALS: [&str; 4] = ["not_asked", "invalid", "no_proof", "bad_signature"];

/// `order_outcomes_total` outcomes.
pub(crate) const ORDER_OUTCOMES: [&str; 2] = ["committed", "excluded"];

/// `publish_retries_total` reasons: `no_peers`, `queues_full`, `publish_error`.
pub(crate) const PUBLISH_DEFERRALS: [&str; 3] = ["no_peers", "queues_full", "publish_error"];

/// Labels: topic kind (`orders`, `batches`, `results`, `control`) and market (empty for
/// control).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindMarket {
    /// Topic kind.
    pub kind: &'static str,
    /// Market name.
    pub market: String,
}

/// Labels: topic kind, market and a short reason.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindMarketReason {
    /// Topic kind.
    pub kind: &'static str,
    /// Market name.
    pub market: String,
    /// Why, e.g. `oversized`, `malformed`, `forged_origin`.
    pub reason: &'static str,
}

/// Label: market.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MarketLabel {
    /// Market name.
    pub market: String,
}

/// Labels: market and reason.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MarketReason {
    /// Market name.
    pub market: String,
    /// Why.
    pub reason: &'static str,
}

/// Labels of socket API requests: gRPC method and status code name.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodCode {
    /// gRPC method, e.g. `SubmitOrder`.
    pub method: String,
    /// gRPC status code, e.g. `OK`, `InvalidArgument`.
    pub code: String,
}

/// Label: a queue: for send failures, which GossipSub send queue failed (`priority`:
/// publish, control; `non_priority`: forward); for queue memory, `subscribers` or `outbox`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueueLabel {
    /// Queue or failure kind.
    pub queue: &'static str,
}

/// Every metric the sidecar exports.
pub struct Metrics {
    /// `openmatch_gossip_messages_published_total`: gossip messages this node published.
    pub messages_published: Family<KindMarket, Counter>,
    /// `openmatch_gossip_messages_received_total`: gossip messages received for validation.
    pub messages_received: Family<KindMarket, Counter>,
    /// `openmatch_gossip_messages_rejected_total`: refused by validation (GossipSub penalty).
    pub messages_rejected: Family<KindMarketReason, Counter>,
    /// `openmatch_gossip_messages_rate_limited_total`: ignored because the forwarding peer
    /// was over its token bucket.
    pub messages_rate_limited: Family<KindMarket, Counter>,
    /// `openmatch_gossip_messages_duplicate_total`: messages that passed GossipSub's own
    /// duplicate filter (another message id) but whose orders were all seen already,
    /// e.g. a peer's repeated publish of the same orders. Copies of one message never get
    /// here: GossipSub drops them by message id first; they are
    /// `libp2p_gossipsub_topic_msg_recv_counts_unfiltered_total` less
    /// `libp2p_gossipsub_topic_msg_recv_counts_total`.
    pub messages_duplicate: Family<KindMarket, Counter>,
    /// `openmatch_gossip_messages_stale_total`: messages ignored because their epoch is
    /// older than the epoch window (their batch is decided).
    pub messages_stale: Family<KindMarket, Counter>,
    /// `openmatch_gossip_orders_submitted_total`: orders accepted from the local engine.
    pub orders_submitted: Family<MarketLabel, Counter>,
    /// `openmatch_gossip_orders_published_total`: local orders published to gossip.
    pub orders_published: Family<MarketLabel, Counter>,
    /// `openmatch_gossip_orders_delivered_total`: peers' orders (from gossip or repair)
    /// handed to at least one engine subscription, each order once: live, or replayed to
    /// a subscription resuming from a cursor (orders that arrive while no engine is
    /// subscribed are kept in the event log and counted when one gets them).
    pub orders_delivered: Family<MarketLabel, Counter>,
    /// `openmatch_gossip_orders_duplicate_total`: peers' orders dropped by the SHA-256
    /// seen-cache, inside messages that were new to GossipSub (see `messages_duplicate`).
    pub orders_duplicate: Family<MarketLabel, Counter>,
    /// `openmatch_gossip_publish_retries_total`: publish attempts deferred (orders kept in
    /// the outbox), by reason `no_peers` or `queues_full`; `publish_error` counts packs
    /// dropped (signing or size failures, which a retry cannot fix).
    pub publish_retries: Family<MarketReason, Counter>,
    /// `openmatch_gossip_send_queue_failures_total`: messages GossipSub could not queue or
    /// send in time to a slow peer (reported by its `SlowPeer` event).
    pub send_queue_failures: Family<QueueLabel, Counter>,
    /// `openmatch_gossip_orders_per_message`: packing of published `OrderGossip`.
    pub orders_per_message: Histogram,
    /// `openmatch_gossip_propagation_latency_seconds`: engine submit at the origin → receipt
    /// here (both wall clocks; on one host exact, across hosts includes clock skew).
    pub propagation_latency: Histogram,
    /// `openmatch_gossip_outbox_orders`: orders accepted but not yet published.
    pub outbox_orders: Gauge,
    /// `openmatch_gossip_peers`: connected peers.
    pub peers: Gauge,
    /// `openmatch_gossip_live_peers`: peers whose `PeerStatus` is within the liveness window.
    pub live_peers: Gauge,
    /// `openmatch_gossip_mesh_peers`: GossipSub mesh peers per topic.
    pub mesh_peers: Family<KindMarket, Gauge>,
    /// `openmatch_gossip_subscribers`: open engine event subscriptions.
    pub subscribers: Gauge,
    /// `openmatch_gossip_subscribers_dropped_total`: subscriptions ended with
    /// RESOURCE_EXHAUSTED, by reason: `backlog` (one subscriber more than
    /// `--subscriber-buffer` orders behind) or `memory_bound` (the furthest-behind
    /// subscriber, cut because the subscribers' queues together passed their share of
    /// `--queue-memory-bytes`).
    pub subscribers_dropped: Family<ReasonLabel, Counter>,
    /// `openmatch_gossip_queue_memory_bytes`: encoded bytes queued, by `queue`:
    /// `subscribers` (events not yet read by engines) or `outbox` (orders not yet
    /// published).
    pub queue_memory: Family<QueueLabel, Gauge>,
    /// `openmatch_gossip_queue_memory_bound_bytes`: `--queue-memory-bytes`, the bound on
    /// both queues together (half each).
    pub queue_memory_bound: Gauge,
    /// `openmatch_gossip_api_requests_total`: socket API calls by method and status code.
    pub api_requests: Family<MethodCode, Counter>,
    /// `openmatch_gossip_batches_total`: batch outcomes by market: `sealed` (every
    /// revision), `agreed`, `repaired`, `disputed`, `result_agreed`, `halted` (a result
    /// differed), `unconfirmed` (halted: too few results in time, none differing).
    pub batches: Family<MarketOutcome, Counter>,
    /// `openmatch_gossip_batch_mismatches_total`: batches whose seal at this node lost to
    /// a quorum-certified hash (the node adopted it), counted once per batch when it is
    /// agreed; the repair requests that took are in `repair_requests_sent_total`.
    pub batch_mismatches: Family<MarketLabel, Counter>,
    /// `openmatch_gossip_result_mismatches_total`: batches halted because a member's result
    /// hash differed from this node's (a determinism violation), per market.
    pub result_mismatches: Family<MarketLabel, Counter>,
    /// `openmatch_gossip_results_outvoted_total`: batches whose result here differed from a
    /// strict majority of the members' results: this node's engine disagrees with the
    /// quorum (health `degraded` for 60 s), per market.
    pub results_outvoted: Family<MarketLabel, Counter>,
    /// `openmatch_gossip_repaired_orders_total`: orders fetched by repair.
    pub repaired_orders: Family<MarketLabel, Counter>,
    /// `openmatch_gossip_repair_orders_refused_total`: orders in a repair answer
    /// (`FetchOrders`) or a recovered agreed batch (`DecidedBatch`) that were refused, by
    /// reason: `not_asked` (a digest not asked for, or another batch's order), `invalid`
    /// (fields fail the schema), `no_proof` (no bundle proof of the answer lists it),
    /// `bad_signature` (its proof does not verify under its origin's key). The responder
    /// is penalised (`bad_repair`).
    pub repair_orders_refused: Family<MarketReason, Counter>,
    /// `openmatch_gossip_repair_requests_refused_total`: peers' repair requests left
    /// unserved, by reason: `rate_limited` (answered with an error: the peer is over its
    /// repair bucket, `REPAIR_REQUESTS_PER_S` sustained and `REPAIR_REQUEST_BURST` at
    /// once), `concurrent_streams` (reset unread: the peer already has
    /// `MAX_INBOUND_STREAMS_PER_PEER` open), `timeout` (no whole request within 10 s of
    /// opening), `malformed` (over its cap, misshapen, not protobuf).
    pub repair_requests_refused: Family<ReasonLabel, Counter>,
    /// `openmatch_gossip_repair_requests_sent_total`: repair requests this node sent, by
    /// kind (`digests`, `fetch`, `decided`, `instances`).
    pub repair_requests_sent: Family<KindLabel, Counter>,
    /// `openmatch_gossip_late_orders_total`: orders that reached this node after it had
    /// sealed their batch, by `source`: `peer`, a peer's order on gossip (held back, not
    /// delivered then: it reaches the engine only if the agreed batch holds it, fetched by
    /// repair and counted in `repaired_orders`; else its origin's engine learns it was
    /// excluded), or `own`, this node's engine's submission for a sealed epoch (refused,
    /// never acknowledged). Not a loss: no acknowledged order is lost without its origin's
    /// engine being told (`order_outcomes_total{outcome="excluded"}`).
    pub late_orders: Family<MarketSource, Counter>,
    /// `openmatch_gossip_order_outcomes_total`: this node's own orders by fate, outcome
    /// `committed` (in the agreed batch) or `excluded` (not in it, or the batch disputed).
    pub order_outcomes: Family<MarketOutcome, Counter>,
    /// `openmatch_gossip_batch_agreement_latency_seconds`: first seal → agreement.
    pub agreement_latency: Histogram,
    /// `openmatch_gossip_peer_penalties_total`: reputation penalties by reason.
    pub penalties: Family<ReasonLabel, Counter>,
    /// `openmatch_gossip_duplicate_identity`: 1 while another process is known to run with
    /// this node's identity key.
    pub duplicate_identity: Gauge,
    /// `openmatch_gossip_banned_peers`: peers banned now.
    pub banned_peers: Gauge,
    /// `openmatch_gossip_peer_reputation_min`: the lowest peer reputation (0 = all clean).
    pub reputation_min: Gauge<f64, std::sync::atomic::AtomicU64>,
    /// `openmatch_gossip_health`: 0 healthy, 1 degraded, 2 isolated.
    pub health: Gauge,
    /// `openmatch_gossip_config_reloads_total`: configuration reloads by result
    /// (`applied`, `rejected`).
    pub config_reloads: Family<ResultLabel, Counter>,
}

/// Label: result of an operation.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    /// `applied` or `rejected`.
    pub result: &'static str,
}

/// What happened to a batch; [`BatchOutcome::as_str`] is the `outcome` label of
/// `openmatch_gossip_batches_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BatchOutcome {
    /// Sealed (every revision).
    Sealed,
    /// Agreed.
    Agreed,
    /// Agreed after at least one repair.
    Repaired,
    /// Disputed: no hash can reach a quorum any more.
    Disputed,
    /// Every result matched.
    ResultAgreed,
    /// Halted: a member's result differed (a determinism violation).
    Halted,
    /// Halted: too few results arrived to confirm it, none differing.
    Unconfirmed,
}

impl BatchOutcome {
    /// Every outcome, for creating their series at 0.
    pub(crate) const ALL: [BatchOutcome; 7] = [
        BatchOutcome::Sealed,
        BatchOutcome::Agreed,
        BatchOutcome::Repaired,
        BatchOutcome::Disputed,
        BatchOutcome::ResultAgreed,
        BatchOutcome::Halted,
        BatchOutcome::Unconfirmed,
    ];

    /// `sealed`, `agreed`, `repaired`, `disputed`, `result_agreed`, `halted`, `unconfirmed`.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            BatchOutcome::Sealed => "sealed",
            BatchOutcome::Agreed => "agreed",
            BatchOutcome::Repaired => "repaired",
            BatchOutcome::Disputed => "disputed",
            BatchOutcome::ResultAgreed => "result_agreed",
            BatchOutcome::Halted => "halted",
            BatchOutcome::Unconfirmed => "unconfirmed",
        }
    }
}

/// Labels: market and batch outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MarketOutcome {
    /// Market name.
    pub market: String,
    /// Outcome.
    pub outcome: &'static str,
}

/// Label: reason.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// Why.
    pub reason: &'static str,
}

/// Labels: market and where an order came from (`peer` or `own`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MarketSource {
    /// Market name.
    pub market: String,
    /// `peer` (gossip) or `own` (this node's engine).
    pub source: &'static str,
}

/// Label: kind (of a repair request).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    /// What kind.
    pub kind: &'static str,
}

impl Metrics {
    /// Registers every metric under `openmatch_gossip_` in `registry`, with
    /// `openmatch_gossip_build_info{version}` and, at the root, the process metrics
    /// (`process_*`). The series without a market exist from here on, at 0; each market's
    /// come with [`Metrics::add_market`].
    pub fn register(registry: &mut Registry) -> Self {
        openmatch_gossip_crds::runtime::register_process_metrics(registry);
        let r = registry.sub_registry_with_prefix("openmatch_gossip");
        openmatch_gossip_crds::runtime::register_build_info(r, env!("CARGO_PKG_VERSION"));
        let m = Metrics {
            messages_published: Family::default(),
            messages_received: Family::default(),
            messages_rejected: Family::default(),
            messages_rate_limited: Family::default(),
            messages_duplicate: Family::default(),
            messages_stale: Family::default(),
            orders_submitted: Family::default(),
            orders_published: Family::default(),
            orders_delivered: Family::default(),
            orders_duplicate: Family::default(),
            publish_retries: Family::default(),
            send_queue_failures: Family::default(),
            orders_per_message: Histogram::new(exponential_buckets(1.0, 2.0, 14)),
            propagation_latency: Histogram::new(LATENCY_BUCKETS),
            outbox_orders: Gauge::default(),
            peers: Gauge::default(),
            live_peers: Gauge::default(),
            mesh_peers: Family::default(),
            subscribers: Gauge::default(),
            subscribers_dropped: Family::default(),
            queue_memory: Family::default(),
            queue_memory_bound: Gauge::default(),
            api_requests: Family::default(),
            batches: Family::default(),
            batch_mismatches: Family::default(),
            result_mismatches: Family::default(),
            results_outvoted: Family::default(),
            repaired_orders: Family::default(),
            repair_orders_refused: Family::default(),
            repair_requests_refused: Family::default(),
            repair_requests_sent: Family::default(),
            late_orders: Family::default(),
            order_outcomes: Family::default(),
            agreement_latency: Histogram::new(LATENCY_BUCKETS),
            penalties: Family::default(),
            banned_peers: Gauge::default(),
            duplicate_identity: Gauge::default(),
            reputation_min: Gauge::default(),
            health: Gauge::default(),
            config_reloads: Family::default(),
        };
        r.register("messages_published", "Gossip messages published", m.messages_published.clone());
        r.register("messages_received", "Gossip messages received for validation", m.messages_received.clone());
        r.register("messages_rejected", "Gossip messages rejected by validation", m.messages_rejected.clone());
        r.register(
            "messages_rate_limited",
            "Gossip messages ignored: peer over its token bucket",
            m.messages_rate_limited.clone(),
        );
        r.register(
            "messages_duplicate",
            "Gossip messages whose orders were all already seen",
            m.messages_duplicate.clone(),
        );
        r.register(
            "messages_stale",
            "Gossip messages ignored: their epoch is older than the epoch window",
            m.messages_stale.clone(),
        );
        r.register("orders_submitted", "Orders accepted from the local engine", m.orders_submitted.clone());
        r.register("orders_published", "Local orders published to gossip", m.orders_published.clone());
        r.register("orders_delivered", "Peers' orders delivered to the local engine", m.orders_delivered.clone());
        r.register("orders_duplicate", "Peers' orders dropped by the seen-cache", m.orders_duplicate.clone());
        r.register("publish_retries", "Publishes deferred with orders kept in the outbox", m.publish_retries.clone());
        r.register(
            "send_queue_failures",
            "Messages GossipSub failed to send to a slow peer",
            m.send_queue_failures.clone(),
        );
        r.register("orders_per_message", "Orders packed per published OrderGossip", m.orders_per_message.clone());
        r.register_with_unit(
            "propagation_latency",
            "Engine submit at the origin to receipt at this node",
            prometheus_client::registry::Unit::Seconds,
            m.propagation_latency.clone(),
        );
        r.register("outbox_orders", "Orders accepted but not yet published", m.outbox_orders.clone());
        r.register("peers", "Connected peers", m.peers.clone());
        r.register("live_peers", "Peers with a PeerStatus inside the liveness window", m.live_peers.clone());
        r.register("mesh_peers", "GossipSub mesh peers per topic", m.mesh_peers.clone());
        r.register("subscribers", "Open engine event subscriptions", m.subscribers.clone());
        r.register(
            "subscribers_dropped",
            "Subscriptions ended with RESOURCE_EXHAUSTED, by reason",
            m.subscribers_dropped.clone(),
        );
        r.register(
            "queue_memory_bytes",
            "Encoded bytes queued for subscribers and in the outbox",
            m.queue_memory.clone(),
        );
        r.register(
            "queue_memory_bound_bytes",
            "Bound on the bytes queued for subscribers and in the outbox together",
            m.queue_memory_bound.clone(),
        );
        r.register("api_requests", "Socket API requests by method and gRPC status", m.api_requests.clone());
        r.register("batches", "Batch outcomes by market", m.batches.clone());
        r.register(
            "batch_mismatches",
            "Batches whose seal here lost to a quorum-certified hash (adopted), once per batch",
            m.batch_mismatches.clone(),
        );
        r.register(
            "result_mismatches",
            "Batches halted because a member's trade result differed from this node's",
            m.result_mismatches.clone(),
        );
        r.register(
            "results_outvoted",
            "Batches whose trade result here differed from a strict majority of the members' results",
            m.results_outvoted.clone(),
        );
        r.register("repaired_orders", "Orders fetched by batch repair", m.repaired_orders.clone());
        r.register(
            "repair_requests_refused",
            "Peers' repair requests refused unserved, by reason",
            m.repair_requests_refused.clone(),
        );
        r.register("repair_requests_sent", "Repair requests this node sent, by kind", m.repair_requests_sent.clone());
        r.register(
            "repair_orders_refused",
            "Orders refused from a repair or recovery answer, by reason",
            m.repair_orders_refused.clone(),
        );
        r.register(
            "late_orders",
            "Orders that arrived after this node sealed their batch, by source: held back (peer) or refused (own)",
            m.late_orders.clone(),
        );
        r.register("order_outcomes", "Own orders by fate: committed or excluded", m.order_outcomes.clone());
        r.register_with_unit(
            "batch_agreement_latency",
            "First seal of a batch to its agreement",
            prometheus_client::registry::Unit::Seconds,
            m.agreement_latency.clone(),
        );
        r.register("peer_penalties", "Peer reputation penalties by reason", m.penalties.clone());
        r.register("banned_peers", "Peers banned now", m.banned_peers.clone());
        r.register(
            "duplicate_identity",
            "1 while another process is known to run with this node's identity key",
            m.duplicate_identity.clone(),
        );
        r.register("peer_reputation_min", "Lowest peer reputation score (0 = all clean)", m.reputation_min.clone());
        r.register("health", "Node health: 0 healthy, 1 degraded, 2 isolated", m.health.clone());
        r.register("config_reloads", "Configuration reloads by result", m.config_reloads.clone());
        m.zero_fixed_series();
        m
    }

    /// Creates at 0 every series whose labels do not name a market.
    fn zero_fixed_series(&self) {
        let control = || String::new();
        for family in [&self.messages_published, &self.messages_received, &self.messages_rate_limited] {
            let _ = family.get_or_create(&KindMarket { kind: TopicKind::Control.as_str(), market: control() });
        }
        for reason in crate::validation::RejectReason::ALL {
            let l = KindMarketReason { kind: TopicKind::Control.as_str(), market: control(), reason: reason.as_str() };
            let _ = self.messages_rejected.get_or_create(&l);
        }
        for reason in SUBSCRIBER_DROP_REASONS {
            let _ = self.subscribers_dropped.get_or_create(&ReasonLabel { reason });
        }
        for queue in MEMORY_QUEUES {
            let _ = self.queue_memory.get_or_create(&QueueLabel { queue });
        }
        for queue in SEND_QUEUES {
            let _ = self.send_queue_failures.get_or_create(&QueueLabel { queue });
        }
        for reason in REPAIR_REFUSAL_REASONS {
            let _ = self.repair_requests_refused.get_or_create(&ReasonLabel { reason });
        }
        for kind in REPAIR_REQUEST_KINDS {
            let _ = self.repair_requests_sent.get_or_create(&KindLabel { kind });
        }
        for offence in crate::reputation::Offence::ALL {
            let _ = self.penalties.get_or_create(&ReasonLabel { reason: offence.as_str() });
        }
        for result in ["applied", "rejected"] {
            let _ = self.config_reloads.get_or_create(&ResultLabel { result });
        }
    }

    /// Creates at 0 every series of `market` (its topics' message counts and rejection
    /// reasons, its orders, batches by outcome, mismatches, repairs, and its orders'
    /// outcomes). Called for each configured market at start-up and for each market a
    /// reload adds; a no-op for series that exist.
    pub(crate) fn add_market(&self, market: &str) {
        let m = || market.to_owned();
        for kind in [TopicKind::Orders, TopicKind::Batches, TopicKind::Results] {
            let l = KindMarket { kind: kind.as_str(), market: m() };
            for family in [
                &self.messages_published,
                &self.messages_received,
                &self.messages_rate_limited,
                &self.messages_duplicate,
                &self.messages_stale,
            ] {
                let _ = family.get_or_create(&l);
            }
            for reason in crate::validation::RejectReason::ALL {
                let l = KindMarketReason { kind: kind.as_str(), market: m(), reason: reason.as_str() };
                let _ = self.messages_rejected.get_or_create(&l);
            }
        }
        for family in [
            &self.orders_submitted,
            &self.orders_published,
            &self.orders_delivered,
            &self.orders_duplicate,
            &self.batch_mismatches,
            &self.result_mismatches,
            &self.results_outvoted,
            &self.repaired_orders,
        ] {
            let _ = family.get_or_create(&MarketLabel { market: m() });
        }
        for reason in PUBLISH_DEFERRALS {
            let _ = self.publish_retries.get_or_create(&MarketReason { market: m(), reason });
        }
        for reason in REPAIRED_ORDER_REFUSALS {
            let _ = self.repair_orders_refused.get_or_create(&MarketReason { market: m(), reason });
        }
        for outcome in BatchOutcome::ALL {
            let _ = self.batches.get_or_create(&MarketOutcome { market: m(), outcome: outcome.as_str() });
        }
        for source in ["peer", "own"] {
            let _ = self.late_orders.get_or_create(&MarketSource { market: m(), source });
        }
        for outcome in ORDER_OUTCOMES {
            let _ = self.order_outcomes.get_or_create(&MarketOutcome { market: m(), outcome });
        }
    }
}

impl Metrics {
    /// Counts one `outcome` of a batch of `market`.
    pub(crate) fn count_batch(&self, market: &str, outcome: BatchOutcome) {
        self.batches.get_or_create(&MarketOutcome { market: market.to_owned(), outcome: outcome.as_str() }).inc();
    }
}
