//! The tools: what exercises the sidecar without being part of it. The reference engine
//! ([`engine`]) replays real Binance order flow ([`marketdata`]) through a sidecar and
//! matches agreed batches with the reference auction ([`auction`]); the main job
//! ([`cluster`]) runs several of each on loopback; [`bench`] compares it with a plain-TCP
//! baseline and with [`relay`], the stack floor; [`simulate`] runs 25 to 100 real nodes
//! in one process over the memory transport; [`stats`] holds their latency and
//! checksum bookkeeping; `sidecar_link` is the engine's resilient connection to its
//! sidecar, `matcher` its matching and tallies, `journal` what it remembers across its own
//! crash (`--state-file`). See the crate docs for why they live in this crate.

pub mod auction;
pub mod bench;
pub mod cluster;
pub mod engine;
mod journal;
pub mod marketdata;
mod matcher;
pub mod relay;
mod sidecar_link;
pub mod simulate;
pub mod stats;
