"""Drives the sidecar's engine socket from Python grpcio, as an engine in another language
would: `grpc.insecure_channel("unix:<path>")` with no channel options (grpcio sends the
socket path as :authority). Every RPC of the Sidecar service and the standard health
service; prints one line per check, exits non-zero on the first failure.

Usage: client.py SOCKET STUBS_DIR
"""

import sys
import time

sock, stubs = sys.argv[1], sys.argv[2]
sys.path.insert(0, stubs)

import grpc  # noqa: E402
from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402
from openmatch.gossip.v1 import engine_pb2, engine_pb2_grpc, wire_pb2  # noqa: E402

MARKET = "BTC-USDT"
TIMEOUT = 30


def ok(msg):
    print(f"ok: {msg}", flush=True)


def order(i):
    return wire_pb2.Order(id=i, market=MARKET, side=wire_pb2.SIDE_BUY if i % 2 else wire_pb2.SIDE_SELL,
                          price_ticks=60_000_00 + i, quantity_lots=1 + i, kind=wire_pb2.ORDER_KIND_LIMIT,
                          client_ts_ns=time.time_ns())


def expect_code(call, code, what):
    try:
        call()
    except grpc.RpcError as e:
        if e.code() != code:
            sys.exit(f"{what}: {e.code()} ({e.details()}), expected {code}")
        ok(f"{what}: {code.name} ({e.details()})")
        return
    sys.exit(f"{what}: succeeded, expected {code}")


with grpc.insecure_channel(f"unix:{sock}") as channel:
    grpc.channel_ready_future(channel).result(timeout=TIMEOUT)
    stub = engine_pb2_grpc.SidecarStub(channel)

    health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT)
    if health.status != health_pb2.HealthCheckResponse.SERVING:
        sys.exit(f"health: {health}")
    ok("grpc.health.v1.Health/Check: SERVING")

    status = stub.GetStatus(engine_pb2.GetStatusRequest(), timeout=TIMEOUT)
    if not status.peer_id.startswith("12D3KooW") or MARKET not in status.markets:
        sys.exit(f"GetStatus: {status}")
    ok(f"GetStatus: peer {status.peer_id}, markets {list(status.markets)}, health {status.health}")

    # Subscribe first, so every event of the orders below reaches this engine.
    events = stub.Subscribe(engine_pb2.SubscribeRequest(markets=[MARKET]), timeout=TIMEOUT)

    first = stub.SubmitOrder(engine_pb2.SubmitOrderRequest(order=order(1)), timeout=TIMEOUT)
    if len(first.digest) != 32 or first.epoch == 0:
        sys.exit(f"SubmitOrder: {first}")
    ok(f"SubmitOrder: digest {first.digest.hex()[:16]}..., epoch {first.epoch}")

    chunks = [engine_pb2.SubmitOrdersRequest(orders=[order(i) for i in range(2 + 10 * c, 12 + 10 * c)])
              for c in range(3)]
    streamed = stub.SubmitOrders(iter(chunks), timeout=TIMEOUT)
    if streamed.accepted != 30:
        sys.exit(f"SubmitOrders: {streamed}")
    ok(f"SubmitOrders: 3 chunks, {streamed.accepted} orders accepted")

    expect_code(lambda: stub.SubmitOrder(engine_pb2.SubmitOrderRequest(order=wire_pb2.Order(id=99, market="NOPE-USDT")),
                                         timeout=TIMEOUT),
                grpc.StatusCode.FAILED_PRECONDITION, "SubmitOrder of a market not traded")
    expect_code(lambda: stub.SealBatch(engine_pb2.SealBatchRequest(market=MARKET), timeout=TIMEOUT),
                grpc.StatusCode.FAILED_PRECONDITION, "SealBatch under clock sealing")

    # Every order committed in agreed batches (a one-member network decides alone).
    committed, agreed = set(), {}
    for ev in events:
        kind = ev.WhichOneof("kind")
        if kind == "batch_agreed":
            agreed[(ev.batch_agreed.batch_id.market, ev.batch_agreed.batch_id.epoch)] = ev.batch_agreed
        elif kind == "orders_committed":
            committed.update(ev.orders_committed.ids)
        elif kind in ("orders_excluded", "batch_disputed"):
            sys.exit(f"Subscribe: {ev}")
        if committed >= set(range(1, 32)):
            break
    events.cancel()
    ok(f"Subscribe: 31 orders committed in {len(agreed)} agreed batches (cursor-bearing events)")

    (market, epoch), first_batch = min(agreed.items())
    batch_id = wire_pb2.BatchId(market=market, epoch=epoch)
    orders = [o for chunk in stub.GetBatch(engine_pb2.GetBatchRequest(batch_id=batch_id), timeout=TIMEOUT)
              for o in chunk.orders]
    if len(orders) != first_batch.order_count:
        sys.exit(f"GetBatch {market}#{epoch}: {len(orders)} orders, BatchAgreed said {first_batch.order_count}")
    ok(f"GetBatch {market}#{epoch}: {len(orders)} orders, as agreed")

    result = bytes(range(32))
    stub.SubmitResult(engine_pb2.SubmitResultRequest(batch_id=batch_id, result_hash=result, trade_count=0),
                      timeout=TIMEOUT)
    stub.SubmitResult(engine_pb2.SubmitResultRequest(batch_id=batch_id, result_hash=result, trade_count=0),
                      timeout=TIMEOUT)
    ok(f"SubmitResult {market}#{epoch}: accepted, and again (idempotent)")
    expect_code(lambda: stub.GetBatch(engine_pb2.GetBatchRequest(
        batch_id=wire_pb2.BatchId(market=MARKET, epoch=1)), timeout=TIMEOUT).next(),
                grpc.StatusCode.NOT_FOUND, "GetBatch of an unknown batch")
print("python grpcio: every RPC of the engine socket works with no channel options")
