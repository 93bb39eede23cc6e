//! One subscriber's event queue: the node pushes, the `Subscribe` stream pops.
//!
//! Unlike a channel, the node can end a subscription *and discard what is queued for it*:
//! an engine that stopped reading (its HTTP/2 window full, so its stream is never polled
//! again) would otherwise keep every event queued before the end alive until its
//! connection closes, and ending it would free nothing. The queue tracks its backlog in
//! orders (an `OrdersReceived` weighs its orders, any other event 1) and in bytes (the
//! events' protobuf encoded length), which the node's memory bound is counted in.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use futures::Stream;
use futures::task::AtomicWaker;
use tonic::Status;

use crate::proto::Event;

/// What is queued for one subscriber: `orders` (event weights) and `bytes` (encoded
/// lengths).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Backlog {
    /// Orders queued (an `OrdersReceived` weighs its orders, any other event 1).
    pub(super) orders: usize,
    /// Encoded bytes queued.
    pub(super) bytes: usize,
}

enum End {
    /// Still open.
    Open,
    /// Ended: the stream yields this error once the queue is empty (if any), then ends.
    Ending(Option<Status>),
}

struct State {
    events: VecDeque<(Event, Backlog)>,
    backlog: Backlog,
    end: End,
    reader_gone: bool,
}

struct Shared {
    state: Mutex<State>,
    waker: AtomicWaker,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves the queue consistent (every update is one
        // assignment), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The node's end of a subscription.
pub(super) struct EventQueue {
    shared: Arc<Shared>,
}

/// The stream of events one subscriber reads (the body of the `Subscribe` RPC).
pub(crate) struct EventStream {
    shared: Arc<Shared>,
}

/// A new, empty queue and the stream that reads it.
pub(super) fn event_queue() -> (EventQueue, EventStream) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            events: VecDeque::new(),
            backlog: Backlog::default(),
            end: End::Open,
            reader_gone: false,
        }),
        waker: AtomicWaker::new(),
    });
    (EventQueue { shared: shared.clone() }, EventStream { shared })
}

impl EventQueue {
    /// Queues `event`, which weighs `weight`; returns the backlog after it. An ended queue
    /// or one whose reader went away drops the event.
    pub(super) fn push(&self, event: Event, weight: Backlog) -> Backlog {
        let mut st = self.shared.lock();
        if st.reader_gone || !matches!(st.end, End::Open) {
            return st.backlog;
        }
        st.backlog.orders += weight.orders;
        st.backlog.bytes += weight.bytes;
        st.events.push_back((event, weight));
        let backlog = st.backlog;
        drop(st);
        self.shared.waker.wake();
        backlog
    }

    /// What is queued now.
    pub(super) fn backlog(&self) -> Backlog {
        self.shared.lock().backlog
    }

    /// Ends the subscription with `status`. With `discard`, what is still queued is
    /// dropped now (its memory freed) and the reader gets `status` next; without, it reads
    /// the queued events first.
    pub(super) fn end(&self, status: Status, discard: bool) {
        let mut st = self.shared.lock();
        if discard {
            st.events.clear();
            st.backlog = Backlog::default();
        }
        if matches!(st.end, End::Open) {
            st.end = End::Ending(Some(status));
        }
        drop(st);
        self.shared.waker.wake();
    }

    /// Whether the subscription is over: ended, or its reader went away.
    pub(super) fn is_finished(&self) -> bool {
        let st = self.shared.lock();
        st.reader_gone || !matches!(st.end, End::Open)
    }
}

impl Drop for EventQueue {
    /// The node went away: the reader gets what is queued, then the end of the stream.
    fn drop(&mut self) {
        let mut st = self.shared.lock();
        if matches!(st.end, End::Open) {
            st.end = End::Ending(None);
        }
        drop(st);
        self.shared.waker.wake();
    }
}

impl Stream for EventStream {
    type Item = Result<Event, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut st = self.shared.lock();
        if let Some((event, w)) = st.events.pop_front() {
            st.backlog.orders -= w.orders;
            st.backlog.bytes -= w.bytes;
            return Poll::Ready(Some(Ok(event)));
        }
        match &mut st.end {
            End::Ending(status) => Poll::Ready(status.take().map(Err)),
            End::Open => {
                // Registered under the lock: a push after this point wakes this task.
                self.shared.waker.register(cx.waker());
                Poll::Pending
            }
        }
    }
}

impl Drop for EventStream {
    /// The engine went away: nothing more is queued for it and its backlog is freed.
    fn drop(&mut self) {
        let mut st = self.shared.lock();
        st.reader_gone = true;
        st.events.clear();
        st.backlog = Backlog::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt as _;

    fn ev(seq: u64) -> Event {
        Event { cursor: Some(crate::proto::Cursor { incarnation: 1, sequence: seq }), kind: None }
    }

    const W: Backlog = Backlog { orders: 2, bytes: 10 };

    #[tokio::test]
    async fn events_come_out_in_order_and_the_backlog_follows_the_reader() {
        let (q, mut s) = event_queue();
        assert_eq!(q.push(ev(1), W), W);
        assert_eq!(q.push(ev(2), W), Backlog { orders: 4, bytes: 20 });
        assert_eq!(s.next().await.unwrap().unwrap(), ev(1));
        assert_eq!(q.backlog(), W);
        assert_eq!(s.next().await.unwrap().unwrap(), ev(2));
        assert_eq!(q.backlog(), Backlog::default());
    }

    /// Ending with `discard` frees the backlog at once, without the reader reading: the
    /// reader then gets the status and the end.
    #[tokio::test]
    async fn ending_with_discard_frees_the_backlog_without_a_read() {
        let (q, mut s) = event_queue();
        q.push(ev(1), W);
        q.push(ev(2), W);
        q.end(Status::resource_exhausted("cut"), true);
        assert_eq!(q.backlog(), Backlog::default());
        assert!(q.is_finished());
        assert_eq!(q.push(ev(3), W), Backlog::default(), "an ended queue takes nothing more");
        assert_eq!(s.next().await.unwrap().unwrap_err().code(), tonic::Code::ResourceExhausted);
        assert!(s.next().await.is_none());
    }

    /// Ending without `discard` (shutdown) lets the reader read what is queued first.
    #[tokio::test]
    async fn ending_without_discard_delivers_the_backlog_first() {
        let (q, mut s) = event_queue();
        q.push(ev(1), W);
        q.end(Status::unavailable("stopping"), false);
        assert_eq!(s.next().await.unwrap().unwrap(), ev(1));
        assert_eq!(s.next().await.unwrap().unwrap_err().code(), tonic::Code::Unavailable);
        assert!(s.next().await.is_none());
    }

    #[tokio::test]
    async fn a_waiting_reader_is_woken_by_a_push_and_by_the_node_going_away() {
        let (q, mut s) = event_queue();
        let reader = tokio::spawn(async move {
            let first = s.next().await.map(|r| r.unwrap());
            let second = s.next().await.map(|r| r.unwrap());
            (first, second)
        });
        tokio::task::yield_now().await;
        q.push(ev(7), W);
        drop(q);
        assert_eq!(reader.await.unwrap(), (Some(ev(7)), None));
    }

    #[test]
    fn a_dropped_reader_finishes_the_queue_and_frees_its_backlog() {
        let (q, s) = event_queue();
        q.push(ev(1), W);
        drop(s);
        assert!(q.is_finished());
        assert_eq!(q.backlog(), Backlog::default());
    }
}
