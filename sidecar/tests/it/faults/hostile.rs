//! A hostile peer for real networks: a bare libp2p swarm (TCP + Noise + Yamux, GossipSub
//! only, signed messages) with an identity of its own, running on a thread inside one of
//! a lab's namespaces, that publishes whatever bytes it is told to.
//!
//! The workspace test crate has the same idea (`openmatch_gossip_tests::RawPeer`), but on
//! the libp2p memory transport, in-process; the sidecars here are real processes on TCP
//! inside network namespaces, and a dev-dependency on that crate would build a second copy
//! of this one. So this is its TCP twin, kept to what the fault suite sends.

use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context as _, bail};
use futures::StreamExt as _;
use libp2p::gossipsub::{self, IdentTopic, MessageAuthenticity, ValidationMode};
use libp2p::identity::Keypair;
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId, Swarm, noise, tcp, yamux};
use tokio::sync::{mpsc, oneshot};

use super::netns::enter;

enum Command {
    Dial(Multiaddr, oneshot::Sender<Result<(), String>>),
    Publish(IdentTopic, Vec<u8>, oneshot::Sender<Result<(), String>>),
    /// Peers known to be subscribed to the topic.
    Subscribed(IdentTopic, oneshot::Sender<Vec<PeerId>>),
}

/// The hostile peer; its swarm stops when this is dropped.
pub(crate) struct HostilePeer {
    /// Its peer id: the author of everything it publishes.
    pub(crate) peer_id: PeerId,
    commands: Option<mpsc::UnboundedSender<Command>>,
    thread: Option<JoinHandle<()>>,
}

fn swarm(key: Keypair) -> anyhow::Result<Swarm<gossipsub::Behaviour>> {
    let config = gossipsub::ConfigBuilder::default()
        .validation_mode(ValidationMode::Strict)
        .message_id_fn(openmatch_gossip_sidecar::gossip_message_id)
        .build()
        .context("gossipsub config")?;
    let behaviour = gossipsub::Behaviour::new(MessageAuthenticity::Signed(key.clone()), config)
        .map_err(|e| anyhow::anyhow!("gossipsub: {e}"))?;
    Ok(libp2p::SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_tcp(tcp::Config::default().nodelay(true), noise::Config::new, yamux::Config::default)?
        .with_behaviour(|_| behaviour)?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build())
}

async fn drive(mut swarm: Swarm<gossipsub::Behaviour>, mut commands: mpsc::UnboundedReceiver<Command>) {
    let mut dials: Vec<(PeerId, oneshot::Sender<Result<(), String>>)> = Vec::new();
    loop {
        tokio::select! {
            cmd = commands.recv() => match cmd {
                None => return,
                Some(Command::Dial(addr, reply)) => {
                    let peer = addr.iter().find_map(|p| match p {
                        libp2p::multiaddr::Protocol::P2p(id) => Some(id),
                        _ => None,
                    });
                    match (peer, swarm.dial(addr.clone())) {
                        (Some(peer), Ok(())) => dials.push((peer, reply)),
                        (None, _) => { let _ = reply.send(Err(format!("{addr} has no /p2p/ suffix"))); }
                        (_, Err(e)) => { let _ = reply.send(Err(e.to_string())); }
                    }
                }
                Some(Command::Publish(topic, data, reply)) => {
                    let _ = reply.send(swarm.behaviour_mut().publish(topic, data).map(drop).map_err(|e| e.to_string()));
                }
                Some(Command::Subscribed(topic, reply)) => {
                    let hash = topic.hash();
                    let peers = swarm.behaviour().all_peers().filter(|(_, t)| t.contains(&&hash)).map(|(p, _)| *p).collect();
                    let _ = reply.send(peers);
                }
            },
            event = swarm.select_next_some() => match event {
                SwarmEvent::ConnectionEstablished { peer_id, .. } => {
                    for (_, reply) in dials.extract_if(.., |(p, _)| *p == peer_id) {
                        let _ = reply.send(Ok(()));
                    }
                }
                SwarmEvent::OutgoingConnectionError { peer_id: Some(peer_id), error, .. } => {
                    for (_, reply) in dials.extract_if(.., |(p, _)| *p == peer_id) {
                        let _ = reply.send(Err(error.to_string()));
                    }
                }
                _ => {}
            },
        }
    }
}

impl HostilePeer {
    /// Starts a hostile peer with a fresh identity inside namespace `ns`.
    pub(crate) fn spawn(ns: &str) -> anyhow::Result<HostilePeer> {
        let key = Keypair::generate_ed25519();
        let peer_id = key.public().to_peer_id();
        let (commands, rx) = mpsc::unbounded_channel();
        let (started_tx, started) = std::sync::mpsc::channel();
        let ns = ns.to_owned();
        let thread = std::thread::Builder::new().name(format!("hostile-{ns}")).spawn(move || {
            // The swarm and its runtime are built after entering the namespace, so every
            // socket they open is there.
            let ready = enter(&ns).and_then(|()| {
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
                let swarm = runtime.block_on(async { swarm(key) })?;
                Ok((runtime, swarm))
            });
            match ready {
                Ok((runtime, swarm)) => {
                    let _ = started_tx.send(Ok(()));
                    runtime.block_on(drive(swarm, rx));
                }
                Err(e) => {
                    let _ = started_tx.send(Err(e));
                }
            }
        })?;
        started.recv().context("the hostile peer's thread died")??;
        Ok(HostilePeer { peer_id, commands: Some(commands), thread: Some(thread) })
    }

    async fn request<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> anyhow::Result<T> {
        let (tx, rx) = oneshot::channel();
        let commands = self.commands.as_ref().expect("running until dropped");
        commands.send(make(tx)).map_err(|_| anyhow::anyhow!("the hostile peer's swarm stopped"))?;
        rx.await.context("the hostile peer's swarm stopped")
    }

    /// Connects to the node at `addr` (with `/p2p/`).
    pub(crate) async fn dial(&self, addr: &str) -> anyhow::Result<()> {
        let addr: Multiaddr = addr.parse().with_context(|| format!("multiaddr {addr}"))?;
        self.request(|tx| Command::Dial(addr.clone(), tx))
            .await?
            .map_err(|e| anyhow::anyhow!("hostile peer could not connect to {addr}: {e}"))
    }

    /// Waits until every peer of `peers` is known to be subscribed to `topic`.
    pub(crate) async fn wait_subscribed(
        &self,
        topic: &IdentTopic,
        peers: &[String],
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let known: Vec<String> = self
                .request(|tx| Command::Subscribed(topic.clone(), tx))
                .await?
                .iter()
                .map(|p| p.to_string())
                .collect();
            if peers.iter().all(|p| known.contains(p)) {
                return Ok(());
            }
            if std::time::Instant::now() > deadline {
                bail!("hostile peer sees only {known:?} of {peers:?} on {topic} after {timeout:?}");
            }
            tokio::time::sleep(super::cluster::POLL).await;
        }
    }

    /// Publishes `data` on `topic` (signed by this peer).
    pub(crate) async fn publish(&self, topic: &IdentTopic, data: Vec<u8>) -> anyhow::Result<()> {
        self.request(|tx| Command::Publish(topic.clone(), data, tx))
            .await?
            .map_err(|e| anyhow::anyhow!("hostile publish on {topic}: {e}"))
    }
}

impl Drop for HostilePeer {
    fn drop(&mut self) {
        // Closing the command channel ends the swarm's loop, and with it the thread.
        drop(self.commands.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
