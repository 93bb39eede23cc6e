//! `openmatch-gossip-operator`: reconciles `GossipNetwork` resources
//! (`gossip.openmatch.io/v1alpha1`, defined in the crds crate) into what the sidecars need
//! (DESIGN §7).
//!
//! Modules, one concept each:
//! - [`reconcile`]: one reconcile run (spec → pods → config → ConfigMap + Service →
//!   status, Events) and the error policy;
//! - [`peers`]: which selected pods are bootstrap peers, at which multiaddr;
//! - [`peer_ids`]: learning ready pods' peer ids from their sidecars (zero-touch);
//! - [`children`]: the owned ConfigMap and headless Service (server-side apply bodies);
//! - [`inject`]: sidecar injection into annotated pods (the admission webhook's patch);
//! - [`webhook`]: the admission webhook's HTTPS server;
//! - [`webhook_cert`]: the webhook's serving certificate and TLS configuration;
//! - [`status`]: conditions and their reasons;
//! - [`controller`]: the kube-runtime Controller and what triggers it;
//! - [`leader`]: leader election on a Lease (client-go semantics);
//! - [`metrics`]: the Prometheus metrics (served on `/metrics`);
//! - [`health`]: the replica's phase and what `/healthz` and `/readyz` answer in it;
//! - [`offline`]: `inject` and `render` without a cluster (manifests in, manifests out);
//! - [`cli`], [`app`]: flags, and the process's life (HTTP server, election, signals,
//!   shutdown).
//!
//! Logging and the HTTP server for `/metrics`, `/healthz` and `/readyz` are shared with the
//! sidecar: [`openmatch_gossip_crds::runtime`].

pub mod app;
pub mod children;
pub mod cli;
pub mod controller;
pub mod health;
pub mod inject;
pub mod leader;
pub mod metrics;
pub mod offline;
pub mod peer_ids;
pub mod peers;
pub mod reconcile;
pub mod status;
pub mod webhook;
pub mod webhook_cert;
