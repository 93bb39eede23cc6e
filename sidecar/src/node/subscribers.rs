//! Engine event subscriptions: each gets its own unbounded queue whose backlog (in orders)
//! is tracked. A subscriber that falls more than the buffer limit behind is ended with
//! RESOURCE_EXHAUSTED and counted — never left silently missing events — and the node is
//! never blocked by a slow engine.

use std::collections::HashSet;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use futures::Stream;
use tokio::sync::mpsc;
use tonic::Status;

use crate::metrics::Metrics;
use crate::proto::{Event, Order, OrdersReceived, event::Kind};

struct Subscriber {
    markets: Option<HashSet<String>>,
    tx: mpsc::UnboundedSender<Result<Event, Status>>,
    backlog: Arc<AtomicUsize>,
}

/// The node's subscribers.
pub(super) struct Subscribers {
    list: Vec<Subscriber>,
    buffer_limit: usize,
    metrics: Arc<Metrics>,
}

/// The stream of events one subscriber reads (the body of the `Subscribe` RPC).
pub(crate) struct EventStream {
    rx: mpsc::UnboundedReceiver<Result<Event, Status>>,
    backlog: Arc<AtomicUsize>,
}

fn weight(event: &Result<Event, Status>) -> usize {
    match event {
        Ok(Event { kind: Some(Kind::Orders(o)) }) => o.orders.len().max(1),
        _ => 1,
    }
}

impl Stream for EventStream {
    type Item = Result<Event, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let item = self.rx.poll_recv(cx);
        if let Poll::Ready(Some(ev)) = &item {
            self.backlog.fetch_sub(weight(ev), Ordering::Relaxed);
        }
        item
    }
}

impl Subscribers {
    /// No subscribers yet; each may fall `buffer_limit` orders behind.
    pub(super) fn new(buffer_limit: usize, metrics: Arc<Metrics>) -> Self {
        Subscribers { list: Vec::new(), buffer_limit, metrics }
    }

    /// Adds a subscriber for `markets` (empty = all).
    pub(super) fn add(&mut self, markets: Vec<String>) -> EventStream {
        let (tx, rx) = mpsc::unbounded_channel();
        let backlog = Arc::new(AtomicUsize::new(0));
        let markets = (!markets.is_empty()).then(|| markets.into_iter().collect());
        self.list.push(Subscriber { markets, tx, backlog: backlog.clone() });
        self.metrics.subscribers.set(self.list.len() as i64);
        EventStream { rx, backlog }
    }

    /// Open subscriptions.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.list.len()
    }

    /// Delivers peers' orders of `market` to every subscriber of that market; returns how
    /// many subscribers that was (0: nobody was listening, and the orders are gone).
    pub(super) fn deliver_orders(&mut self, market: &str, orders: Vec<Order>) -> usize {
        let mut pending = Some(orders);
        let interested: Vec<usize> = (0..self.list.len())
            .filter(|&i| self.list[i].markets.as_ref().is_none_or(|m| m.contains(market)))
            .collect();
        for (k, &i) in interested.iter().enumerate() {
            // The last interested subscriber takes the orders without a copy.
            let orders = if k + 1 == interested.len() {
                pending.take().unwrap_or_default()
            } else {
                pending.clone().unwrap_or_default()
            };
            let ev = Event { kind: Some(Kind::Orders(OrdersReceived { orders })) };
            self.send(i, Ok(ev));
        }
        self.prune();
        interested.len()
    }

    /// Sends `event` to every subscriber.
    pub(super) fn broadcast(&mut self, kind: Kind) {
        for i in 0..self.list.len() {
            self.send(i, Ok(Event { kind: Some(kind.clone()) }));
        }
        self.prune();
    }

    /// Ends every subscription with `status` (e.g. UNAVAILABLE on shutdown).
    pub(super) fn close_all(&mut self, status: Status) {
        for s in self.list.drain(..) {
            let _ = s.tx.send(Err(status.clone()));
        }
        self.metrics.subscribers.set(0);
    }

    fn send(&mut self, i: usize, ev: Result<Event, Status>) {
        let s = &self.list[i];
        let w = weight(&ev);
        let backlog = s.backlog.fetch_add(w, Ordering::Relaxed) + w;
        if backlog > self.buffer_limit {
            tracing::warn!(backlog, limit = self.buffer_limit, "subscriber fell behind; ending its stream");
            self.metrics.subscribers_dropped.inc();
            let _ = s.tx.send(Err(Status::resource_exhausted(format!(
                "subscriber fell {backlog} orders behind (limit {}); resubscribe",
                self.buffer_limit
            ))));
            // Closing the sender ends the stream after the error; prune() removes it.
            self.list[i].markets = Some(HashSet::new());
            self.list[i].backlog.store(usize::MAX / 2, Ordering::Relaxed);
            return;
        }
        let _ = s.tx.send(ev);
    }

    /// Removes subscribers whose stream was dropped or that were ended.
    fn prune(&mut self) {
        let before = self.list.len();
        self.list.retain(|s| !s.tx.is_closed() && s.backlog.load(Ordering::Relaxed) < usize::MAX / 4);
        if self.list.len() != before {
            self.metrics.subscribers.set(self.list.len() as i64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt as _;
    use prometheus_client::registry::Registry;

    fn subs(limit: usize) -> (Subscribers, Arc<Metrics>) {
        let m = Arc::new(Metrics::register(&mut Registry::default()));
        (Subscribers::new(limit, m.clone()), m)
    }

    fn orders(n: u64) -> Vec<Order> {
        (0..n).map(|id| Order { id, ..Default::default() }).collect()
    }

    #[tokio::test]
    async fn market_filter_and_fan_out() {
        let (mut s, _) = subs(100);
        let mut all = s.add(vec![]);
        let mut btc = s.add(vec!["BTC".into()]);
        s.deliver_orders("ETH", orders(2));
        s.deliver_orders("BTC", orders(3));
        let first = all.next().await.unwrap().unwrap();
        assert!(matches!(first.kind, Some(Kind::Orders(ref o)) if o.orders.len() == 2));
        let second = all.next().await.unwrap().unwrap();
        assert!(matches!(second.kind, Some(Kind::Orders(ref o)) if o.orders.len() == 3));
        let only = btc.next().await.unwrap().unwrap();
        assert!(matches!(only.kind, Some(Kind::Orders(ref o)) if o.orders.len() == 3));
    }

    #[tokio::test]
    async fn slow_subscriber_is_ended_with_resource_exhausted_fast_one_keeps_going() {
        let (mut s, m) = subs(10);
        let mut slow = s.add(vec![]);
        let mut fast = s.add(vec![]);
        for _ in 0..3 {
            s.deliver_orders("BTC", orders(4));
            assert!(fast.next().await.unwrap().is_ok());
        }
        // slow has 12 > 10 orders pending: it got two events, then the error, then the end.
        assert!(slow.next().await.unwrap().is_ok());
        assert!(slow.next().await.unwrap().is_ok());
        let err = slow.next().await.unwrap().unwrap_err();
        assert_eq!(err.code(), tonic::Code::ResourceExhausted);
        assert!(slow.next().await.is_none());
        assert_eq!(s.len(), 1);
        assert_eq!(m.subscribers_dropped.get(), 1);
    }
}
