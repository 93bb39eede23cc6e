//! `openmatch-gossip relay`: the benchmark's **stack floor**, not a sidecar to deploy.
//!
//! It runs exactly the sidecar's transport stack — the same libp2p swarm
//! ([`crate::node::build_swarm`]: TCP + Noise + Yamux, GossipSub with strict signing and
//! `validate_messages`, Kademlia, Identify, Ping, request-response, peer scoring) and the
//! same engine gRPC API on the same Unix socket ([`crate::api::bind_socket`]) — and none
//! of the application between them: no field checks, no rate limit, no order digests, no
//! seen-cache, no batches, no outbox, no flow control. A submitted chunk is published at
//! once, one signed GossipSub message per market (at most `publish.maxOrdersPerMessage`
//! orders each, encoded by [`crate::wire::encode_orders`] as on the real wire, but without
//! the origin's bundle signature, an application cost the sidecar pays); a received
//! message is decoded by [`crate::wire::Gossip::decode`], origin and market restored, and
//! its orders go to every subscriber. Received messages are reported to GossipSub as *ignored*, so they are not
//! forwarded: in the benchmark's full mesh every node hears each message once, straight
//! from its author (flood publishing), and the floor pays for no duplicate copies.
//!
//! What the relay's latency measures is therefore the cost of the mandated stack itself
//! on the machine — gRPC over the socket twice, one signed GossipSub hop, protobuf —
//! which no implementation of the sidecar's logic can go below (docs/BENCHMARKS.md).
//! Without forwarding it only works where every node is connected to every author, and
//! a failed publish loses its orders (logged and counted in the exit summary): that is
//! why it is a measuring device and not a product.

use std::collections::HashMap;
use std::future::Future;

use futures::StreamExt as _;
use libp2p::gossipsub::{self, MessageAcceptance, TopicHash};
use libp2p::identity::Keypair;
use libp2p::swarm::SwarmEvent;
use prometheus_client::registry::Registry;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::{UnboundedReceiverStream, UnixListenerStream};
use tonic::{Request, Response, Status, Streaming};

use crate::config::NodeSettings;
use crate::node::{BehaviourEvent, build_swarm};
use crate::proto::sidecar_server::{Sidecar, SidecarServer};
use crate::proto::{
    BatchChunk, Event, GetBatchRequest, GetStatusRequest, NodeStatus, Order, OrdersReceived, SealBatchRequest,
    SealBatchResponse, SubmitOrderRequest, SubmitOrderResponse, SubmitOrdersRequest, SubmitOrdersResponse,
    SubmitResultRequest, SubmitResultResponse, SubscribeRequest, TopicMesh, event::Kind,
};
use crate::topics::Topic;
use crate::wire;

/// What the API hands the relay's swarm loop.
enum Command {
    Publish(Vec<Order>),
    Subscribe(mpsc::UnboundedSender<Result<Event, Status>>),
    Status(oneshot::Sender<NodeStatus>),
}

/// The relay's engine API: SubmitOrders, SubmitOrder, Subscribe and GetStatus as the
/// sidecar answers them (minus every check); the consensus calls are UNIMPLEMENTED.
struct RelayApi {
    tx: mpsc::UnboundedSender<Command>,
}

fn stopped<T>(_: T) -> Status {
    Status::unavailable("the relay is stopping")
}

fn no_consensus() -> Status {
    Status::unimplemented("the relay baseline has no batches or consensus")
}

#[tonic::async_trait]
impl Sidecar for RelayApi {
    async fn submit_order(&self, req: Request<SubmitOrderRequest>) -> Result<Response<SubmitOrderResponse>, Status> {
        let order = req.into_inner().order.ok_or_else(|| Status::invalid_argument("order: required"))?;
        self.tx.send(Command::Publish(vec![order])).map_err(stopped)?;
        Ok(Response::new(SubmitOrderResponse::default()))
    }

    async fn submit_orders(
        &self,
        req: Request<Streaming<SubmitOrdersRequest>>,
    ) -> Result<Response<SubmitOrdersResponse>, Status> {
        let mut stream = req.into_inner();
        let mut accepted = 0;
        while let Some(chunk) = stream.message().await? {
            accepted += chunk.orders.len() as u64;
            self.tx.send(Command::Publish(chunk.orders)).map_err(stopped)?;
        }
        Ok(Response::new(SubmitOrdersResponse { accepted }))
    }

    type SubscribeStream = UnboundedReceiverStream<Result<Event, Status>>;

    async fn subscribe(&self, _: Request<SubscribeRequest>) -> Result<Response<Self::SubscribeStream>, Status> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.tx.send(Command::Subscribe(tx)).map_err(stopped)?;
        Ok(Response::new(UnboundedReceiverStream::new(rx)))
    }

    async fn get_status(&self, _: Request<GetStatusRequest>) -> Result<Response<NodeStatus>, Status> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Command::Status(reply)).map_err(stopped)?;
        Ok(Response::new(rx.await.map_err(stopped)?))
    }

    type GetBatchStream = futures::stream::Empty<Result<BatchChunk, Status>>;

    async fn get_batch(&self, _: Request<GetBatchRequest>) -> Result<Response<Self::GetBatchStream>, Status> {
        Err(no_consensus())
    }

    async fn submit_result(&self, _: Request<SubmitResultRequest>) -> Result<Response<SubmitResultResponse>, Status> {
        Err(no_consensus())
    }

    async fn seal_batch(&self, _: Request<SealBatchRequest>) -> Result<Response<SealBatchResponse>, Status> {
        Err(no_consensus())
    }
}

/// What a relay did, logged when it stops.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelayTally {
    /// GossipSub messages published.
    pub published: u64,
    /// Publishes that failed (their orders are lost: the relay has no outbox).
    pub failed_publishes: u64,
    /// Peers' orders handed to subscribers (counted once per order, not per subscriber).
    pub delivered: u64,
}

/// Runs the relay with `settings` (the same configuration a sidecar takes) until
/// `shutdown` resolves, then removes the socket. Errors: the socket or a listen address
/// cannot be bound, the swarm cannot be built.
pub async fn run(
    settings: NodeSettings,
    key: Keypair,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<RelayTally> {
    let me = key.public().to_peer_id();
    let network = settings.config.network.clone();
    let max_orders = settings.config.publish.max_orders_per_message as usize;
    let mut swarm = build_swarm(key, &settings, &mut Registry::default())?;
    let mut market_of: HashMap<TopicHash, String> = HashMap::new();
    for m in &settings.config.markets {
        let topic = Topic::orders(m).ident(&network);
        swarm.behaviour_mut().gossipsub.subscribe(&topic)?;
        market_of.insert(topic.hash(), m.clone());
    }
    for addr in &settings.listen_addrs {
        swarm.listen_on(addr.clone())?;
    }
    let listener = crate::api::bind_socket(&settings.socket).await?;
    let (tx, mut commands) = mpsc::unbounded_channel();
    let api = SidecarServer::new(RelayApi { tx })
        .max_decoding_message_size(settings.config.limits.max_message_bytes as usize);
    let server = tokio::spawn(
        tonic::transport::Server::builder().add_service(api).serve_with_incoming(UnixListenerStream::new(listener)),
    );
    tracing::warn!(peer_id = %me, socket = %settings.socket.display(), "relay started: the benchmark's stack floor, with no validation, dedup or consensus; not for production");

    let mut subscribers: Vec<mpsc::UnboundedSender<Result<Event, Status>>> = Vec::new();
    let mut tally = RelayTally::default();
    let mut redial = tokio::time::interval(std::time::Duration::from_secs(1));
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = redial.tick() => {
                for p in &settings.bootstrap_peers {
                    if p.peer_id != me && !swarm.is_connected(&p.peer_id) {
                        let _ = swarm.dial(p.addr.clone());
                    }
                }
            }
            Some(cmd) = commands.recv() => match cmd {
                Command::Publish(orders) => {
                    let mut by_market: HashMap<String, Vec<Order>> = HashMap::new();
                    for o in orders {
                        by_market.entry(o.market.clone()).or_default().push(o);
                    }
                    for (market, orders) in by_market {
                        for pack in orders.chunks(max_orders.max(1)) {
                            match swarm.behaviour_mut().gossipsub.publish(Topic::orders(&market).ident(&network), wire::encode_orders(pack, &[])) {
                                Ok(_) => tally.published += 1,
                                Err(e) => {
                                    tally.failed_publishes += 1;
                                    tracing::error!(market, orders = pack.len(), error = %e, "publish failed; the relay drops these orders");
                                }
                            }
                        }
                    }
                }
                Command::Subscribe(sub) => subscribers.push(sub),
                Command::Status(reply) => {
                    let gs = &swarm.behaviour().gossipsub;
                    let topics = market_of
                        .iter()
                        .map(|(hash, m)| TopicMesh {
                            topic: Topic::orders(m).name(&network),
                            mesh_peers: gs.mesh_peers(hash).map(|p| p.to_string()).collect(),
                            subscribed_peers: gs.all_peers().filter(|(_, topics)| topics.contains(&hash)).count() as u32,
                        })
                        .collect();
                    let _ = reply.send(NodeStatus {
                        peer_id: me.to_string(),
                        network: network.clone(),
                        markets: settings.config.markets.clone(),
                        connected_peers: swarm.connected_peers().map(|p| p.to_string()).collect(),
                        topics,
                        version: crate::VERSION.to_owned(),
                        health: "healthy".to_owned(),
                        ..Default::default()
                    });
                }
            },
            event = swarm.select_next_some() => {
                if let SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(gossipsub::Event::Message { propagation_source, message_id, message })) = event {
                    tally.delivered += deliver(&message, &network, &mut subscribers);
                    swarm.behaviour_mut().gossipsub.report_message_validation_result(&message_id, &propagation_source, MessageAcceptance::Ignore);
                }
            }
        }
    }
    server.abort();
    let _ = std::fs::remove_file(&settings.socket);
    tracing::info!(?tally, "relay stopped");
    Ok(tally)
}

/// Decodes `message` (an `OrderGossip` on an orders topic of `network`) with its origin
/// and market restored ([`wire::Gossip::decode`], without a size cap) and sends the orders
/// to every subscriber; returns how many orders that was (0 for anything else).
fn deliver(
    message: &gossipsub::Message,
    network: &str,
    subscribers: &mut Vec<mpsc::UnboundedSender<Result<Event, Status>>>,
) -> u64 {
    let Some(topic) = Topic::parse(network, message.topic.as_str()) else { return 0 };
    let Ok(wire::Gossip::Orders { orders, .. }) =
        wire::Gossip::decode(&topic, message.source.as_ref(), &message.data, usize::MAX)
    else {
        return 0;
    };
    let n = orders.len() as u64;
    subscribers.retain(|s| !s.is_closed());
    if let Some((last, rest)) = subscribers.split_last() {
        for s in rest {
            let _ =
                s.send(Ok(Event { kind: Some(Kind::Orders(OrdersReceived { orders: orders.clone() })), cursor: None }));
        }
        let _ = last.send(Ok(Event { kind: Some(Kind::Orders(OrdersReceived { orders })), cursor: None }));
    }
    n
}
