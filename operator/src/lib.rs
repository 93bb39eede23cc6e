//! `openmatch-gossip-operator`: reconciles `GossipNetwork` resources
//! (`gossip.openmatch.io/v1alpha1`, defined in the crds crate) into what the sidecars need
//! (DESIGN §7).
//!
//! Modules, one concept each:
//! - [`reconcile`]: one reconcile run (spec → pods → config → ConfigMap + Service →
//!   status, Events) and the error policy;
//! - [`peers`]: which selected pods are bootstrap peers, at which multiaddr;
//! - [`children`]: the owned ConfigMap and headless Service (server-side apply bodies);
//! - [`status`]: conditions and their reasons;
//! - [`controller`]: the kube-runtime Controller and what triggers it;
//! - [`leader`]: leader election on a Lease (client-go semantics);
//! - [`metrics`], [`http`]: Prometheus metrics, `/metrics`, `/healthz`, `/readyz`;
//! - [`cli`], [`logging`], [`app`]: flags, logs, and the process's life (signals, shutdown).

pub mod app;
pub mod children;
pub mod cli;
pub mod controller;
pub mod http;
pub mod leader;
pub mod logging;
pub mod metrics;
pub mod peers;
pub mod reconcile;
pub mod status;
