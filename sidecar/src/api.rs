//! The engine-facing API: gRPC (tonic) over a Unix domain socket, plus the standard
//! `grpc.health.v1.Health` service.
//!
//! Requests are checked before they reach the node: unknown market → FAILED_PRECONDITION;
//! a malformed order, or `origin`/`epoch` filled in → INVALID_ARGUMENT naming the field (and
//! the order's index in a stream); a request above `limits.maxMessageBytes` →
//! RESOURCE_EXHAUSTED. The node then refuses an id it accepted for a different order
//! (ALREADY_EXISTS, naming the id); an order resubmitted unchanged is accepted again with
//! its first receipt and not gossiped twice. Every call is counted by method and final status code in
//! `openmatch_gossip_api_requests_total`; a bad request never affects other clients.

use std::collections::BTreeSet;
use std::io::ErrorKind;
use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::task::{Context, Poll};

use anyhow::{Context as _, bail};
use futures::future::BoxFuture;
use hyper_util::rt::TokioIo;
use tokio::net::{UnixListener, UnixStream};
use tokio_stream::wrappers::UnixListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint, Uri};
use tonic::{Request, Response, Status, Streaming};

use crate::consensus::BatchError;
use crate::metrics::{MethodCode, Metrics};
use crate::node::{DuplicateId, EventStream, NodeGone, NodeHandle, ResumeError};
use crate::proto::sidecar_client::SidecarClient;
use crate::proto::sidecar_server::{Sidecar, SidecarServer};
use crate::proto::{
    BatchChunk, GetBatchRequest, GetStatusRequest, NodeStatus, Order, SealBatchRequest, SealBatchResponse,
    SubmitOrderRequest, SubmitOrderResponse, SubmitOrdersRequest, SubmitOrdersResponse, SubmitResultRequest,
    SubmitResultResponse, SubscribeRequest,
};

use crate::wire::{self, BatchKey};

/// Orders per `BatchChunk` of a `GetBatch` stream.
const BATCH_CHUNK_ORDERS: usize = 4096;

/// `orders` split into `BatchChunk`s of [`BATCH_CHUNK_ORDERS`] orders, in order, each order
/// moved (not copied) into its chunk; an empty batch is an empty stream.
fn batch_chunks(orders: Vec<Order>) -> Vec<Result<BatchChunk, Status>> {
    let mut orders = orders.into_iter();
    std::iter::from_fn(|| {
        let chunk: Vec<Order> = orders.by_ref().take(BATCH_CHUNK_ORDERS).collect();
        (!chunk.is_empty()).then_some(Ok(BatchChunk { orders: chunk }))
    })
    .collect()
}

/// How the node's errors reach the engine (the gRPC status codes of README's API table).
impl From<BatchError> for Status {
    fn from(e: BatchError) -> Self {
        let code = match e {
            BatchError::Unknown(_) => tonic::Code::NotFound,
            // A market this node does not trade is FAILED_PRECONDITION in every RPC.
            BatchError::UnknownMarket(_)
            | BatchError::NotServed { .. }
            | BatchError::NotAgreed { .. }
            | BatchError::ClockSealing => tonic::Code::FailedPrecondition,
        };
        Status::new(code, e.to_string())
    }
}

/// A cursor the event log cannot continue from: OUT_OF_RANGE (events dropped or from
/// another run), INVALID_ARGUMENT (ahead of the last event).
impl From<ResumeError> for Status {
    fn from(e: ResumeError) -> Self {
        let code = match e {
            ResumeError::OtherIncarnation { .. } | ResumeError::Evicted { .. } | ResumeError::TooFarBehind { .. } => {
                tonic::Code::OutOfRange
            }
            ResumeError::Ahead { .. } => tonic::Code::InvalidArgument,
        };
        Status::new(code, e.to_string())
    }
}

impl From<NodeGone> for Status {
    fn from(_: NodeGone) -> Self {
        Status::unavailable("the sidecar is shutting down")
    }
}

/// The conventional code for what tonic reports at the transport level: an oversized
/// message (OUT_OF_RANGE, "…too large…") is RESOURCE_EXHAUSTED, an undecodable one
/// (INTERNAL, "failed to decode…") is INVALID_ARGUMENT; every other code stands (the
/// service's own OUT_OF_RANGE for a cursor it cannot resume from included). Used for calls that fail before
/// the service sees them ([`StatusCounter`]) and for stream errors mid-call.
fn conventional_code(code: tonic::Code, message: &str) -> tonic::Code {
    match code {
        tonic::Code::OutOfRange if message.contains("too large") => tonic::Code::ResourceExhausted,
        tonic::Code::Internal if message.contains("decode") => tonic::Code::InvalidArgument,
        c => c,
    }
}

fn batch_key(id: Option<crate::proto::BatchId>) -> Result<BatchKey, Status> {
    id.map(|id| BatchKey::from_proto(&id)).ok_or_else(|| Status::invalid_argument("batch_id: required"))
}

/// Socket file mode: owner and group (the engine container's group) may connect.
const SOCKET_MODE: u32 = 0o660;

/// The gRPC service implementation.
struct EngineApi {
    node: NodeHandle,
    /// Cancelled when the sidecar starts shutting down: open `SubmitOrders` streams then
    /// end at once (UNAVAILABLE, with the count accepted) instead of holding the drain.
    stopping: CancellationToken,
}

impl EngineApi {
    /// Checks one engine order; errors name `index` (its position in a stream) if given.
    /// `markets` is the node's market set, taken once per request (a reload may change it).
    fn check(&self, o: &Order, markets: &BTreeSet<String>, index: Option<u64>) -> Result<(), Status> {
        self.check_fields(o, markets).map_err(|s| match index {
            Some(i) => Status::new(s.code(), format!("order #{i}: {}", s.message())),
            None => s,
        })
    }

    fn check_fields(&self, o: &Order, markets: &BTreeSet<String>) -> Result<(), Status> {
        if !markets.contains(&o.market) {
            let known: Vec<&str> = markets.iter().map(String::as_str).collect();
            return Err(Status::failed_precondition(format!(
                "market {:?} is not traded by this node (markets: {})",
                o.market,
                known.join(", ")
            )));
        }
        if !o.origin.is_empty() {
            return Err(Status::invalid_argument("origin: set by the sidecar; leave it empty"));
        }
        if o.epoch != 0 {
            return Err(Status::invalid_argument("epoch: set by the sidecar; leave it 0"));
        }
        wire::check_order_fields(o, self.node.info().max_freeze_proof_bytes)
            .map_err(|e| Status::invalid_argument(e.to_string()))
    }
}

impl EngineApi {
    /// Whether `orders` (one request) fit the outbox at all, in orders and in bytes
    /// ([`crate::outbox::charge`]); a request that does not would wait for ever.
    ///
    /// Errors: RESOURCE_EXHAUSTED naming the capacity passed.
    fn fits_outbox(&self, orders: &[Order]) -> Result<(), Status> {
        let info = self.node.info();
        if orders.len() > info.outbox_capacity {
            return Err(Status::resource_exhausted(format!(
                "{} orders in one request exceed the outbox capacity of {}; send smaller chunks",
                orders.len(),
                info.outbox_capacity
            )));
        }
        let bytes: usize = orders.iter().map(crate::outbox::charge).sum();
        if bytes > info.outbox_bytes {
            return Err(Status::resource_exhausted(format!(
                "{} orders in one request take {bytes} bytes of outbox memory, over its share of --queue-memory-bytes ({}); send smaller chunks",
                orders.len(),
                info.outbox_bytes
            )));
        }
        Ok(())
    }

    /// Submits a chunk of a `SubmitOrders` stream of which `accepted` orders went before.
    /// Errors: ALREADY_EXISTS for a reused id (with the orders accepted before it counted),
    /// UNAVAILABLE when shutting down.
    async fn submit_chunk(&self, orders: Vec<Order>, accepted: u64) -> Result<(), Status> {
        match self.node.submit(orders, false).await? {
            Ok(_) => Ok(()),
            Err(e) => Err(with_accepted(duplicate_id(e, Some(accepted)), accepted + e.index as u64)),
        }
    }
}

/// ALREADY_EXISTS for a reused id, naming it (and in a stream, the order's index, where
/// `before` orders of the stream preceded the submission).
fn duplicate_id(e: DuplicateId, before: Option<u64>) -> Status {
    match before {
        Some(n) => Status::already_exists(format!("order #{}: {e}", n + e.index as u64)),
        None => Status::already_exists(e.to_string()),
    }
}

#[tonic::async_trait]
impl Sidecar for EngineApi {
    async fn submit_order(&self, req: Request<SubmitOrderRequest>) -> Result<Response<SubmitOrderResponse>, Status> {
        let order = req.into_inner().order.ok_or_else(|| Status::invalid_argument("order: required"))?;
        self.check(&order, &self.node.markets(), None)?;
        let receipts = self.node.submit(vec![order], true).await?.map_err(|e| duplicate_id(e, None))?;
        let r = receipts.first().ok_or_else(|| {
            Status::failed_precondition("the order's epoch is already sealed at this node; submit it again")
        })?;
        Ok(Response::new(SubmitOrderResponse { digest: r.digest.to_vec(), epoch: r.epoch }))
    }

    async fn submit_orders(
        &self,
        req: Request<Streaming<SubmitOrdersRequest>>,
    ) -> Result<Response<SubmitOrdersResponse>, Status> {
        let mut stream = req.into_inner();
        let mut accepted: u64 = 0;
        loop {
            let next = tokio::select! {
                biased;
                _ = self.stopping.cancelled() => {
                    let s = Status::unavailable("the sidecar is shutting down; submit the rest to its next run");
                    return Err(with_accepted(s, accepted));
                }
                next = stream.message() => next,
            };
            let chunk = match next {
                Ok(Some(c)) => c,
                Ok(None) => break,
                Err(s) => return Err(with_accepted(s, accepted)),
            };
            if let Err(s) = self.fits_outbox(&chunk.orders) {
                return Err(with_accepted(s, accepted));
            }
            let markets = self.node.markets();
            for (i, o) in chunk.orders.iter().enumerate() {
                if let Err(s) = self.check(o, &markets, Some(accepted + i as u64)) {
                    // Orders before the bad one in this chunk still stand.
                    let good = chunk.orders[..i].to_vec();
                    let n = good.len() as u64;
                    if n > 0 {
                        self.submit_chunk(good, accepted).await?;
                    }
                    return Err(with_accepted(s, accepted + n));
                }
            }
            let n = chunk.orders.len() as u64;
            if n > 0 {
                self.submit_chunk(chunk.orders, accepted).await?;
            }
            accepted += n;
        }
        Ok(Response::new(SubmitOrdersResponse { accepted }))
    }

    type SubscribeStream = EventStream;

    async fn subscribe(&self, req: Request<SubscribeRequest>) -> Result<Response<EventStream>, Status> {
        let SubscribeRequest { markets, resume_after } = req.into_inner();
        let traded = self.node.markets();
        if let Some(m) = markets.iter().find(|m| !traded.contains(*m)) {
            return Err(Status::failed_precondition(format!("market {m:?} is not traded by this node")));
        }
        Ok(Response::new(self.node.subscribe(markets, resume_after).await??))
    }

    async fn get_status(&self, _: Request<GetStatusRequest>) -> Result<Response<NodeStatus>, Status> {
        Ok(Response::new(self.node.status().await?))
    }

    type GetBatchStream = futures::stream::Iter<std::vec::IntoIter<Result<BatchChunk, Status>>>;

    async fn get_batch(&self, req: Request<GetBatchRequest>) -> Result<Response<Self::GetBatchStream>, Status> {
        let key = batch_key(req.into_inner().batch_id)?;
        let orders = self.node.batch(key).await??;
        Ok(Response::new(futures::stream::iter(batch_chunks(orders))))
    }

    async fn submit_result(&self, req: Request<SubmitResultRequest>) -> Result<Response<SubmitResultResponse>, Status> {
        let req = req.into_inner();
        let key = batch_key(req.batch_id)?;
        let hash = <[u8; 32]>::try_from(req.result_hash.as_slice()).map_err(|_| {
            Status::invalid_argument(format!("result_hash: {} bytes, expected 32", req.result_hash.len()))
        })?;
        self.node.submit_result(key, hash, req.trade_count).await??;
        Ok(Response::new(SubmitResultResponse {}))
    }

    async fn seal_batch(&self, req: Request<SealBatchRequest>) -> Result<Response<SealBatchResponse>, Status> {
        let key = self.node.seal(req.into_inner().market).await??;
        Ok(Response::new(SealBatchResponse { batch_id: Some(key.to_proto()) }))
    }
}

/// Appends the count of orders accepted so far to an error's message.
fn with_accepted(s: Status, accepted: u64) -> Status {
    let code = conventional_code(s.code(), s.message());
    Status::new(code, format!("{} ({accepted} orders accepted before this error)", s.message()))
}

/// Binds the engine socket at `path`: creates the parent directory, replaces a stale socket
/// (one nobody answers on), refuses to take over a live one or to delete a non-socket file,
/// and sets mode 0660.
pub(crate) async fn bind_socket(path: &Path) -> anyhow::Result<UnixListener> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating socket directory {}", dir.display()))?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => match UnixStream::connect(path).await {
            Ok(_) => bail!("{}: another live process is serving this socket; not taking it over", path.display()),
            Err(e) if matches!(e.kind(), ErrorKind::ConnectionRefused | ErrorKind::NotFound) => {
                tracing::warn!(path = %path.display(), "removing a stale socket left by an earlier run");
                std::fs::remove_file(path).with_context(|| format!("removing stale socket {}", path.display()))?;
            }
            Err(e) => return Err(e).with_context(|| format!("probing existing socket {}", path.display())),
        },
        Ok(_) => bail!("{}: exists and is not a socket; refusing to replace it", path.display()),
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("inspecting {}", path.display())),
    }
    let listener = UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(SOCKET_MODE))
        .with_context(|| format!("setting mode 0660 on {}", path.display()))?;
    Ok(listener)
}

/// Serves the API and the standard `grpc.health.v1.Health` service on `listener` until
/// `stop` is cancelled, then drains in-flight calls (open `SubmitOrders` streams end at
/// once with UNAVAILABLE and the count they had accepted).
pub(crate) async fn serve(
    listener: UnixListener,
    node: NodeHandle,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    let cap = node.info().max_message_bytes;
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<SidecarServer<EngineApi>>().await;
    let svc = SidecarServer::new(EngineApi { node, stopping: stop.clone() }).max_decoding_message_size(cap);
    tonic::transport::Server::builder()
        .layer(tower::layer::layer_fn(move |inner| StatusCounter { inner, metrics: metrics.clone() }))
        .add_service(health_service)
        .add_service(svc)
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), stop.cancelled_owned())
        .await
}

/// Tower middleware that counts every call by method and status code and maps tonic's
/// transport-level codes for bad input to the conventional ones ([`conventional_code`]).
#[derive(Clone)]
struct StatusCounter<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

fn method_label(path: &str) -> String {
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    match (parts.next(), parts.next()) {
        (Some(svc), Some(m)) if svc == "openmatch.gossip.v1.Sidecar" || svc == "grpc.health.v1.Health" => {
            format!("{}/{m}", svc.rsplit('.').next().unwrap_or(svc))
        }
        _ => "unknown".to_owned(),
    }
}

impl<S, ReqB, ResB> tower::Service<http::Request<ReqB>> for StatusCounter<S>
where
    S: tower::Service<http::Request<ReqB>, Response = http::Response<ResB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    ReqB: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqB>) -> Self::Future {
        let method = method_label(req.uri().path());
        let metrics = self.metrics.clone();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let mut resp = fut.await?;
            // Errors before any response message are "trailers-only": the status is in the
            // headers. Streams that opened fine are counted as OK here.
            let status = tonic::Status::from_header_map(resp.headers());
            let code = status.as_ref().map_or(tonic::Code::Ok, |s| s.code());
            let mapped = conventional_code(code, status.as_ref().map_or("", |s| s.message()));
            if mapped != code {
                resp.headers_mut().insert("grpc-status", http::HeaderValue::from(mapped as i32));
            }
            metrics.api_requests.get_or_create(&MethodCode { method, code: format!("{mapped:?}") }).inc();
            Ok(resp)
        })
    }
}

/// Connects a gRPC client to the sidecar socket at `path`.
pub async fn connect(path: &Path) -> anyhow::Result<SidecarClient<Channel>> {
    Ok(SidecarClient::new(channel(path).await?).max_decoding_message_size(64 << 20))
}

/// A gRPC channel over the Unix socket at `path` (the URI is a placeholder; every
/// connection goes to the socket).
pub async fn channel(path: &Path) -> anyhow::Result<Channel> {
    let path: PathBuf = path.to_owned();
    let shown = path.display().to_string();
    Endpoint::try_from("http://[::]:50051")?
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
        }))
        .await
        .with_context(|| format!("connecting to the sidecar socket {shown}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_errors_map_to_the_documented_codes() {
        use crate::consensus::BatchPhase;
        use tonic::Code;
        let k = BatchKey { market: "M".into(), epoch: 3 };
        let cases = [
            (BatchError::Unknown(k.clone()), Code::NotFound, "batch M#3 is unknown or no longer kept"),
            (
                BatchError::NotServed { batch: k.clone(), phase: BatchPhase::Sealed },
                Code::FailedPrecondition,
                "batch M#3 is Sealed: only agreed batches are served",
            ),
            (BatchError::NotAgreed { batch: k.clone(), phase: None }, Code::FailedPrecondition, "batch M#3 is unknown"),
            (
                BatchError::NotAgreed { batch: k.clone(), phase: Some(BatchPhase::Settling) },
                Code::FailedPrecondition,
                "batch M#3 is Settling, not Agreed",
            ),
            (
                BatchError::ClockSealing,
                Code::FailedPrecondition,
                "the network seals by clock (consensus.sealing: clock)",
            ),
            (BatchError::UnknownMarket("X".into()), Code::FailedPrecondition, "market \"X\" is not traded here"),
        ];
        for (e, code, message) in cases {
            let s = Status::from(e);
            assert_eq!((s.code(), s.message()), (code, message));
        }
        assert_eq!(Status::from(NodeGone).code(), Code::Unavailable);
    }

    #[test]
    fn transport_codes_for_bad_input_become_the_conventional_ones() {
        use tonic::Code;
        assert_eq!(conventional_code(Code::OutOfRange, "message too large"), Code::ResourceExhausted);
        let evicted = ResumeError::Evicted { cursor: 1, oldest: 3 }.to_string();
        assert_eq!(conventional_code(Code::OutOfRange, &evicted), Code::OutOfRange, "a cursor refusal stands");
        assert_eq!(conventional_code(Code::Internal, "failed to decode Protobuf message"), Code::InvalidArgument);
        assert_eq!(conventional_code(Code::Internal, "h2 protocol error"), Code::Internal);
        let s = with_accepted(Status::out_of_range("message length too large"), 7);
        assert_eq!(
            (s.code(), s.message()),
            (Code::ResourceExhausted, "message length too large (7 orders accepted before this error)")
        );
    }

    #[test]
    fn a_batch_streams_in_full_chunks_in_order() {
        let orders = |n: usize| -> Vec<Order> { (0..n as u64).map(|id| Order { id, ..Order::default() }).collect() };
        for n in [0, 1, BATCH_CHUNK_ORDERS, 2 * BATCH_CHUNK_ORDERS + 5] {
            let chunks: Vec<Vec<Order>> = batch_chunks(orders(n)).into_iter().map(|c| c.unwrap().orders).collect();
            assert_eq!(chunks.len(), n.div_ceil(BATCH_CHUNK_ORDERS), "{n} orders");
            assert!(chunks.iter().all(|c| !c.is_empty() && c.len() <= BATCH_CHUNK_ORDERS));
            assert_eq!(chunks.concat(), orders(n), "{n} orders, in order");
        }
    }

    #[test]
    fn method_labels_are_bounded() {
        assert_eq!(method_label("/openmatch.gossip.v1.Sidecar/SubmitOrder"), "Sidecar/SubmitOrder");
        assert_eq!(method_label("/grpc.health.v1.Health/Check"), "Health/Check");
        assert_eq!(method_label("/evil.Service/X"), "unknown");
    }

    #[tokio::test]
    async fn stale_socket_is_replaced_live_one_and_plain_file_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/engine.sock");
        let live = bind_socket(&path).await.unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o660);
        let err = bind_socket(&path).await.unwrap_err().to_string();
        assert!(err.contains("live process"), "{err}");
        drop(live); // the file stays behind: now stale
        assert!(path.exists());
        let _again = bind_socket(&path).await.unwrap();
        let plain = dir.path().join("plain");
        std::fs::write(&plain, b"x").unwrap();
        let err = bind_socket(&plain).await.unwrap_err().to_string();
        assert!(err.contains("not a socket"), "{err}");
    }
}
