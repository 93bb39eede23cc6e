//! Engine event subscriptions and the event log they resume from (docs/PROTOCOL.md
//! §Cursors).
//!
//! Every event gets a [`Cursor`]: this sidecar run's incarnation (random at start) and a
//! sequence number (1, 2, … within the run). The log keeps the newest events up to
//! `retention` orders (an `OrdersReceived` weighs its orders, every other event 1), whether
//! or not an engine is subscribed, so an engine that reconnects with `resume_after` gets
//! exactly the events it missed, then the live ones, each once. A cursor the log cannot
//! continue from exactly is refused ([`ResumeError`]) rather than answered with a gap.
//!
//! Each subscription has its own queue ([`super::event_queue`]) and the node is never
//! blocked by a slow engine. Two limits end a subscriber with RESOURCE_EXHAUSTED (it may
//! resume from its last cursor), both counted in `subscribers_dropped_total{reason}`:
//! - `backlog`: it fell more than the buffer limit (orders) behind;
//! - `memory_bound`: the subscribers' queues together hold more than their share of the
//!   node's memory bound (bytes, encoded length). The subscriber furthest behind is cut
//!   first, its queue freed at once, and so on until the rest fit.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;

use prost::Message as _;
use tonic::Status;

pub(crate) use super::event_queue::EventStream;
use super::event_queue::{Backlog, EventQueue, event_queue};
use crate::metrics::{MarketLabel, Metrics, QueueLabel, ReasonLabel};
use crate::proto::{Cursor, Event, Order, OrdersReceived, event::Kind};

struct Subscriber {
    markets: Option<HashSet<String>>,
    queue: EventQueue,
}

impl Subscriber {
    fn wants(&self, market: Option<&str>) -> bool {
        wants(self.markets.as_ref(), market)
    }
}

/// Whether a subscriber to `markets` (`None`: all) gets an event of `market` (`None`: an
/// event of no market, which everyone gets).
fn wants(markets: Option<&HashSet<String>>, market: Option<&str>) -> bool {
    match (market, markets) {
        (Some(m), Some(set)) => set.contains(m),
        _ => true,
    }
}

/// A retained event: orders events keep their market (for subscribers' market filters)
/// and whether any subscriber got them (for the delivered counter).
struct Logged {
    event: Event,
    market: Option<String>,
    weight: Backlog,
    delivered: bool,
}

/// Why `Subscribe(resume_after)` was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ResumeError {
    /// The cursor is from another run of this sidecar: nothing from before this run is kept.
    #[error(
        "cursor is from another run of this sidecar (incarnation {theirs:016x}, this run {ours:016x}); events from before this run are not kept: subscribe without resume_after and reconcile (GetBatch, resubmit orders whose fate is unknown)"
    )]
    OtherIncarnation {
        /// The cursor's incarnation.
        theirs: u64,
        /// This run's.
        ours: u64,
    },
    /// Events after the cursor were already dropped from the log.
    #[error(
        "cursor {cursor} is older than the retention window (oldest event kept: {oldest}); subscribe without resume_after and reconcile"
    )]
    Evicted {
        /// The cursor's sequence number.
        cursor: u64,
        /// The oldest retained sequence number.
        oldest: u64,
    },
    /// Replaying what followed the cursor would alone pass the subscribers' memory bound
    /// (the subscription would be cut at once, and again on every resume).
    #[error(
        "replaying the {bytes} bytes of events after cursor {cursor} would pass the subscribers' memory bound of {bound} bytes (half of --queue-memory-bytes); subscribe without resume_after and reconcile, or raise --queue-memory-bytes"
    )]
    TooFarBehind {
        /// The cursor's sequence number.
        cursor: u64,
        /// Encoded bytes of the events to replay.
        bytes: usize,
        /// The subscribers' memory bound, bytes.
        bound: usize,
    },
    /// The cursor names an event this run has not sent yet.
    #[error("cursor {cursor} is ahead of the last event sent ({last})")]
    Ahead {
        /// The cursor's sequence number.
        cursor: u64,
        /// The newest sequence number.
        last: u64,
    },
}

/// Limits on what may wait for subscribers.
#[derive(Debug, Clone, Copy)]
pub(super) struct QueueLimits {
    /// Orders one subscriber may fall behind (`--subscriber-buffer`).
    pub(super) backlog_orders: usize,
    /// Encoded bytes all subscribers' queues may hold together (their share of
    /// `--queue-memory-bytes`).
    pub(super) memory_bytes: usize,
}

/// The node's subscribers and event log.
pub(super) struct Subscribers {
    list: Vec<Subscriber>,
    limits: QueueLimits,
    incarnation: u64,
    /// Sequence number of the newest event (0: none yet).
    last: u64,
    log: VecDeque<Logged>,
    log_weight: usize,
    retention: usize,
    metrics: Arc<Metrics>,
}

/// An event's weight: orders (an `OrdersReceived` weighs its orders, any other event 1)
/// and encoded bytes.
fn weight(event: &Event) -> Backlog {
    let orders = match event {
        Event { kind: Some(Kind::Orders(o)), .. } => o.orders.len().max(1),
        _ => 1,
    };
    Backlog { orders, bytes: event.encoded_len() }
}

impl Subscribers {
    /// No subscribers yet, queues bounded by `limits`; the log keeps the newest
    /// `retention` orders' worth of events. `incarnation` names this run in cursors.
    pub(super) fn new(limits: QueueLimits, retention: usize, incarnation: u64, metrics: Arc<Metrics>) -> Self {
        Subscribers {
            list: Vec::new(),
            limits,
            incarnation,
            last: 0,
            log: VecDeque::new(),
            log_weight: 0,
            retention,
            metrics,
        }
    }

    /// This run's incarnation (in every cursor and in `NodeStatus`).
    pub(super) fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// Adds a subscriber for `markets` (empty = all): live events only, or, with
    /// `resume_after`, first every retained event after that cursor.
    ///
    /// Errors: [`ResumeError`] when the log cannot continue exactly after the cursor.
    pub(super) fn add(
        &mut self,
        markets: Vec<String>,
        resume_after: Option<Cursor>,
    ) -> Result<EventStream, ResumeError> {
        let replay_from = match resume_after {
            None => None,
            Some(c) => Some(self.check(c)?),
        };
        let markets: Option<HashSet<String>> = (!markets.is_empty()).then(|| markets.into_iter().collect());
        if let Some(from) = replay_from {
            let bytes: usize = self
                .log
                .iter()
                .filter(|l| seq_of(&l.event) >= from && wants(markets.as_ref(), l.market.as_deref()))
                .map(|l| l.weight.bytes)
                .sum();
            if bytes > self.limits.memory_bytes {
                return Err(ResumeError::TooFarBehind { cursor: from - 1, bytes, bound: self.limits.memory_bytes });
            }
        }
        let (queue, stream) = event_queue();
        self.list.push(Subscriber { markets, queue });
        let i = self.list.len() - 1;
        if let Some(from) = replay_from {
            let skip = self.log.len() - self.log.iter().filter(|l| seq_of(&l.event) >= from).count();
            for k in skip..self.log.len() {
                let l = &self.log[k];
                if !self.list[i].wants(l.market.as_deref()) {
                    continue;
                }
                let (event, w, market) = (l.event.clone(), l.weight, l.market.clone());
                if !l.delivered
                    && let Some(m) = market
                {
                    let n = w.orders as u64;
                    self.metrics.orders_delivered.get_or_create(&MarketLabel { market: m }).inc_by(n);
                    self.log[k].delivered = true;
                }
                self.send(i, event, w);
            }
            self.enforce_memory_bound();
        }
        self.metrics.subscribers.set(self.list.len() as i64);
        Ok(stream)
    }

    /// The sequence number replay starts from, if the log continues exactly after `c`.
    fn check(&self, c: Cursor) -> Result<u64, ResumeError> {
        if c.incarnation != self.incarnation {
            return Err(ResumeError::OtherIncarnation { theirs: c.incarnation, ours: self.incarnation });
        }
        if c.sequence > self.last {
            return Err(ResumeError::Ahead { cursor: c.sequence, last: self.last });
        }
        let oldest = self.log.front().map_or(self.last + 1, |l| seq_of(&l.event));
        if c.sequence + 1 < oldest {
            return Err(ResumeError::Evicted { cursor: c.sequence, oldest });
        }
        Ok(c.sequence + 1)
    }

    /// Open subscriptions.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.list.len()
    }

    /// Logs peers' orders of `market` and delivers them to every subscriber of that
    /// market; returns how many subscribers that was (0: nobody is listening now; the
    /// orders wait in the log for a subscriber resuming from an earlier cursor).
    pub(super) fn deliver_orders(&mut self, market: &str, orders: Vec<Order>) -> usize {
        let event = Event { kind: Some(Kind::Orders(OrdersReceived { orders })), cursor: None };
        self.publish(event, Some(market))
    }

    /// Logs `kind` and sends it to every subscriber.
    pub(super) fn broadcast(&mut self, kind: Kind) {
        self.publish(Event { kind: Some(kind), cursor: None }, None);
    }

    fn publish(&mut self, mut event: Event, market: Option<&str>) -> usize {
        self.prune(); // a subscriber whose engine went away is not listening
        self.last += 1;
        event.cursor = Some(Cursor { incarnation: self.incarnation, sequence: self.last });
        let w = weight(&event);
        let interested: Vec<usize> = (0..self.list.len()).filter(|&i| self.list[i].wants(market)).collect();
        for &i in &interested {
            self.send(i, event.clone(), w);
        }
        self.log.push_back(Logged {
            event,
            market: market.map(str::to_owned),
            weight: w,
            delivered: !interested.is_empty(),
        });
        self.log_weight += w.orders;
        while self.log_weight > self.retention && self.log.len() > 1 {
            let old = self.log.pop_front().expect("len > 1");
            self.log_weight -= old.weight.orders;
        }
        self.enforce_memory_bound();
        self.prune();
        interested.len()
    }

    /// Ends every subscription with `status` (e.g. UNAVAILABLE on shutdown), after the
    /// events already queued for it.
    pub(super) fn close_all(&mut self, status: Status) {
        for s in self.list.drain(..) {
            s.queue.end(status.clone(), false);
        }
        self.metrics.subscribers.set(0);
    }

    fn send(&mut self, i: usize, ev: Event, w: Backlog) {
        let s = &self.list[i];
        let backlog = s.queue.push(ev, w).orders;
        if backlog > self.limits.backlog_orders {
            tracing::warn!(backlog, limit = self.limits.backlog_orders, "subscriber fell behind; ending its stream");
            self.metrics.subscribers_dropped.get_or_create(&ReasonLabel { reason: "backlog" }).inc();
            s.queue.end(
                Status::resource_exhausted(format!(
                    "subscriber fell {backlog} orders behind (limit {}); resubscribe with resume_after = the last cursor read",
                    self.limits.backlog_orders
                )),
                true,
            );
        }
    }

    /// Ends the subscribers furthest behind (most bytes queued) until the rest fit in the
    /// memory share; publishes the bytes queued.
    fn enforce_memory_bound(&mut self) {
        let mut queued: Vec<(usize, usize)> =
            (0..self.list.len()).map(|i| (self.list[i].queue.backlog().bytes, i)).collect();
        let mut total: usize = queued.iter().map(|(b, _)| b).sum();
        if total > self.limits.memory_bytes {
            queued.sort_unstable_by(|a, b| b.cmp(a));
            for (bytes, i) in queued {
                if total <= self.limits.memory_bytes || bytes == 0 {
                    break;
                }
                tracing::warn!(
                    queued_bytes = bytes,
                    all_subscribers_bytes = total,
                    limit = self.limits.memory_bytes,
                    "subscribers' queues over the memory bound; ending the subscriber furthest behind"
                );
                self.metrics.subscribers_dropped.get_or_create(&ReasonLabel { reason: "memory_bound" }).inc();
                self.list[i].queue.end(
                    Status::resource_exhausted(format!(
                        "this subscriber was furthest behind ({bytes} bytes queued) when the subscribers' queues passed their memory bound of {} bytes; resubscribe with resume_after = the last cursor read",
                        self.limits.memory_bytes
                    )),
                    true,
                );
                total -= bytes;
            }
        }
        self.metrics.queue_memory.get_or_create(&QueueLabel { queue: "subscribers" }).set(total as i64);
    }

    /// Removes subscribers whose stream was dropped or that were ended.
    fn prune(&mut self) {
        let before = self.list.len();
        self.list.retain(|s| !s.queue.is_finished());
        if self.list.len() != before {
            self.metrics.subscribers.set(self.list.len() as i64);
        }
    }
}

fn seq_of(event: &Event) -> u64 {
    event.cursor.as_ref().map_or(0, |c| c.sequence)
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt as _;
    use prometheus_client::registry::Registry;

    const RUN: u64 = 0xfeed;

    fn subs(limit: usize, retention: usize) -> (Subscribers, Arc<Metrics>) {
        bounded(QueueLimits { backlog_orders: limit, memory_bytes: usize::MAX }, retention)
    }

    fn bounded(limits: QueueLimits, retention: usize) -> (Subscribers, Arc<Metrics>) {
        let m = Arc::new(Metrics::register(&mut Registry::default()));
        (Subscribers::new(limits, retention, RUN, m.clone()), m)
    }

    fn dropped(m: &Metrics, reason: &'static str) -> u64 {
        m.subscribers_dropped.get_or_create(&ReasonLabel { reason }).get()
    }

    fn orders(n: u64) -> Vec<Order> {
        (0..n).map(|id| Order { id, ..Default::default() }).collect()
    }

    fn at(sequence: u64) -> Option<Cursor> {
        Some(Cursor { incarnation: RUN, sequence })
    }

    /// (sequence, orders) of the next event.
    async fn next(s: &mut EventStream) -> (u64, usize) {
        let ev = s.next().await.unwrap().unwrap();
        let n = match &ev.kind {
            Some(Kind::Orders(o)) => o.orders.len(),
            _ => 0,
        };
        (seq_of(&ev), n)
    }

    fn delivered(m: &Metrics, market: &str) -> u64 {
        m.orders_delivered.get_or_create(&MarketLabel { market: market.into() }).get()
    }

    #[tokio::test]
    async fn market_filter_and_fan_out() {
        let (mut s, _) = subs(100, 100);
        let mut all = s.add(vec![], None).unwrap();
        let mut btc = s.add(vec!["BTC".into()], None).unwrap();
        s.deliver_orders("ETH", orders(2));
        s.deliver_orders("BTC", orders(3));
        assert_eq!(next(&mut all).await, (1, 2));
        assert_eq!(next(&mut all).await, (2, 3));
        assert_eq!(next(&mut btc).await, (2, 3), "the ETH event is filtered out, its cursor skipped");
    }

    #[tokio::test]
    async fn slow_subscriber_is_ended_with_resource_exhausted_fast_one_keeps_going() {
        let (mut s, m) = subs(10, 100);
        let mut slow = s.add(vec![], None).unwrap();
        let mut fast = s.add(vec![], None).unwrap();
        for _ in 0..3 {
            s.deliver_orders("BTC", orders(4));
            assert!(fast.next().await.unwrap().is_ok());
        }
        // slow had 12 > 10 orders pending: its queue was dropped, it gets the error, then
        // the end.
        let err = slow.next().await.unwrap().unwrap_err();
        assert_eq!(err.code(), tonic::Code::ResourceExhausted);
        assert!(slow.next().await.is_none());
        assert_eq!(s.len(), 1);
        assert_eq!(dropped(&m, "backlog"), 1);
        assert_eq!(dropped(&m, "memory_bound"), 0);
    }

    /// The subscribers' queues together stay within their memory share: the subscriber
    /// furthest behind is cut first (its queue freed without it reading), one that keeps
    /// up is never cut, and the bytes queued are exported.
    #[tokio::test]
    async fn the_memory_bound_cuts_the_subscriber_furthest_behind_first() {
        let one = weight(&Event {
            kind: Some(Kind::Orders(OrdersReceived { orders: orders(4) })),
            cursor: Some(Cursor { incarnation: RUN, sequence: 1 }),
        })
        .bytes;
        // Room for six and a half such events in all queues together.
        let (mut s, m) = bounded(QueueLimits { backlog_orders: usize::MAX, memory_bytes: 6 * one + one / 2 }, 100);
        let mut fast = s.add(vec![], None).unwrap();
        let mut stalled = s.add(vec![], None).unwrap();
        let mut lagging = s.add(vec![], None).unwrap();
        s.deliver_orders("BTC", orders(4));
        assert_eq!(next(&mut fast).await.0, 1);
        assert_eq!(next(&mut lagging).await.0, 1);
        s.deliver_orders("BTC", orders(4));
        assert_eq!(next(&mut fast).await.0, 2);
        s.deliver_orders("BTC", orders(4)); // fast 1, stalled 3, lagging 2 queued: 6 fit
        assert_eq!(next(&mut fast).await.0, 3);
        assert_eq!(dropped(&m, "memory_bound"), 0);
        s.deliver_orders("BTC", orders(4)); // fast 1, stalled 4, lagging 3: 8, cut stalled
        assert_eq!(dropped(&m, "memory_bound"), 1);
        let queued = m.queue_memory.get_or_create(&QueueLabel { queue: "subscribers" }).get();
        assert_eq!(queued as usize, 4 * one, "fast's 1 and lagging's 3 events remain");
        let err = stalled.next().await.unwrap().unwrap_err();
        assert_eq!(err.code(), tonic::Code::ResourceExhausted);
        assert!(err.message().contains("furthest behind"), "{}", err.message());
        assert!(stalled.next().await.is_none(), "its queue was discarded");
        assert_eq!(next(&mut fast).await.0, 4, "the one keeping up goes on");
        assert_eq!(next(&mut lagging).await.0, 2, "within the bound once the furthest is cut");
        assert_eq!(s.len(), 2);
    }

    /// An engine that goes away and resumes from its last cursor gets exactly the events
    /// it missed (kept while nobody listened), then the live ones; orders count as
    /// delivered once, when a subscriber got them.
    #[tokio::test]
    async fn a_resumed_subscription_replays_exactly_what_was_missed() {
        let (mut s, m) = subs(100, 100);
        let mut first = s.add(vec![], None).unwrap();
        s.deliver_orders("BTC", orders(1));
        s.broadcast(Kind::PeerJoined(crate::proto::PeerJoined { peer_id: "p".into() }));
        assert_eq!(next(&mut first).await, (1, 1));
        assert_eq!(next(&mut first).await, (2, 0));
        drop(first);
        assert_eq!(s.deliver_orders("BTC", orders(2)), 0, "nobody listening");
        s.deliver_orders("ETH", orders(3));
        assert_eq!(delivered(&m, "BTC"), 0, "kept, not delivered yet");
        let mut again = s.add(vec!["BTC".into()], at(2)).unwrap();
        s.deliver_orders("BTC", orders(4));
        assert_eq!(next(&mut again).await, (3, 2), "missed while away");
        assert_eq!(next(&mut again).await, (5, 4), "then live (ETH filtered out)");
        assert_eq!(delivered(&m, "BTC"), 2, "the replayed event counts once; the live one is counted by the caller");
        let mut all = s.add(vec![], at(0)).unwrap();
        let seqs: Vec<u64> =
            [next(&mut all).await, next(&mut all).await, next(&mut all).await].iter().map(|(q, _)| *q).collect();
        assert_eq!(seqs, vec![1, 2, 3], "{{incarnation, 0}} replays everything retained");
        assert_eq!(delivered(&m, "ETH"), 3, "the ETH event reached a subscriber now");
    }

    /// A cursor the log cannot continue exactly is refused, naming why.
    #[tokio::test]
    async fn cursors_outside_the_log_are_refused() {
        let (mut s, _) = subs(100, 5);
        for _ in 0..4 {
            s.deliver_orders("BTC", orders(2)); // retention 5 orders: events 3 and 4 stay
        }
        assert_eq!(s.add(vec![], at(2)).map(|_| ()), Ok(()), "event 3 is the oldest kept");
        assert_eq!(s.add(vec![], at(1)).err(), Some(ResumeError::Evicted { cursor: 1, oldest: 3 }));
        assert_eq!(s.add(vec![], at(9)).err(), Some(ResumeError::Ahead { cursor: 9, last: 4 }));
        let other = Some(Cursor { incarnation: 7, sequence: 4 });
        assert_eq!(s.add(vec![], other).err(), Some(ResumeError::OtherIncarnation { theirs: 7, ours: RUN }));
        let one =
            weight(&Event { kind: Some(Kind::Orders(OrdersReceived { orders: orders(1) })), cursor: at(1) }).bytes;
        let mut s = bounded(QueueLimits { backlog_orders: usize::MAX, memory_bytes: one + one / 2 }, 5).0;
        for _ in 0..3 {
            s.deliver_orders("BTC", orders(1));
        }
        assert!(
            matches!(s.add(vec![], at(1)).err(), Some(ResumeError::TooFarBehind { cursor: 1, .. })),
            "two events to replay do not fit in one and a half"
        );
        assert_eq!(s.add(vec![], at(2)).map(|_| ()), Ok(()), "one does");
        let status = Status::from(ResumeError::Evicted { cursor: 1, oldest: 3 });
        assert_eq!(status.code(), tonic::Code::OutOfRange);
        assert!(status.message().contains("retention window"), "{}", status.message());
    }
}
