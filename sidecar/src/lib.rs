//! openmatch-gossip sidecar: a libp2p gossip node beside each matching-engine replica.
//!
//! ## Where an order goes (the product)
//! 1. **Enters** from the engine over the Unix socket: [`api`] checks it and hands it to
//!    the node's handle ([`node::NodeHandle`]).
//! 2. **Is stamped and sent**: `node::publish` gives it its origin and epoch, adds it to
//!    its batch and publishes it in packs; `wire` encodes it, `topics` names the GossipSub
//!    topic, the swarm is `node::behaviour` (TCP + Noise + Yamux).
//! 3. **Crosses the network** and **is checked** at each peer: `node::inbound` hands each
//!    message to `validation` (`ratelimit` token bucket, `wire` decode under the size cap,
//!    order schema, `dedup` seen-cache), then delivers new orders to that peer's engine.
//! 4. **Is decided**: `consensus` (a pure state machine over `epoch`s, `batch_hash` and
//!    the `repair` protocol) seals, compares, repairs and agrees batches and results;
//!    `node::decide` carries out its actions, `reputation` penalises peers in the minority.
//!    `bundle` signs each published pack as its origin's bundle, so that any holder can
//!    prove a repaired order to another member.
//!
//! Around them: [`config`] and [`reload`] (settings and hot reload), [`metrics`],
//! [`identity`], [`server`] (start and stop a whole sidecar in order) and the generated
//! [`proto`] types. Internals are private; what the binary, the tools and the tests need is
//! re-exported here.
//!
//! ## The tools
//! [`tools`] holds what is not the sidecar but exercises it: the reference engine, the
//! market-data replay, the reference auction, the main job (`cluster`), the benchmark and
//! its stack floor (`relay`). They are a module folder rather than a crate of their own
//! because the one `openmatch-gossip` binary (and its container image) carries both the
//! node and the tools, and a separate crate would need the binary to move out of this
//! package; they reach the product only through its crate-visible API.

pub mod api;
mod batch_hash;
mod bundle;
pub mod config;
mod consensus;
pub mod decode_limits;
mod dedup;
mod epoch;
#[doc(hidden)]
pub mod fuzzing;
pub mod identity;
pub mod metrics;
pub mod node;
mod outbox;
pub mod proto;
mod ratelimit;
pub mod reload;
mod repair;
mod reputation;
pub mod server;
pub mod tools;
mod topics;
mod validation;
mod wire;

pub use batch_hash::batch_hash;
pub use bundle::{sign_orders, signed_message};
pub use epoch::unix_now_ns;
pub use topics::{Topic, TopicKind};
pub use wire::{
    Digest, canonical_encoding, content_digest, encode as encode_envelope, encode_orders, gossip_message_id,
    message_id, order_digest,
};

/// Software version reported in `PeerStatus` and node status.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
