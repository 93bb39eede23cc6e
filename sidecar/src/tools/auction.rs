//! The reference engine's deterministic matcher: a **uniform-price call auction**, run once
//! per agreed batch, and the **result hash** replicas compare (DESIGN §4, SETTLE).
//!
//! This module doc is the specification (version 1). An engine in any language that wants
//! its results to agree with this one must reproduce it exactly; `docs/PROTOCOL.md` carries
//! test vectors checked against this code.
//!
//! ## Input
//! The orders of one agreed batch (one market, one epoch) in **canonical order**: ascending
//! order digest ([`crate::wire::order_digest`], compared bytewise — the order whose sorted
//! digests give the batch hash, [`crate::batch_hash`]). An order's **position** is its
//! 0-based index in that list; every order counts, including those that do not trade. Only
//! `side`, `kind`, `price_ticks`, `quantity_lots` and the position matter here.
//!
//! Each batch is auctioned on its own: no book is carried between batches, and whatever a
//! batch leaves unfilled expires with it.
//!
//! ## Rules
//! 1. **Participants.** An order takes part when its kind is LIMIT (1) or MARKET (2), its
//!    side BUY (1) or SELL (2), and `quantity_lots > 0`:
//!    - a limit buy bids `price_ticks` (it trades at that price or lower);
//!    - a limit sell asks `price_ticks` (it trades at that price or higher);
//!    - a market buy or sell trades at any price; its `price_ticks` (a reference price) is
//!      ignored.
//!
//!    CANCEL (3) orders do not trade and do not affect the auction: a cancel removes resting
//!    liquidity, and nothing rests between batches. Orders of any other side or kind (which
//!    the sidecar refuses anyway) are ignored likewise.
//! 2. **Candidate prices** are the distinct `price_ticks` of the participating LIMIT orders,
//!    both sides together. For a candidate price `p`:
//!    - `B(p)` = lots of all market buys + lots of the limit buys with bid ≥ `p`;
//!    - `S(p)` = lots of all market sells + lots of the limit sells with ask ≤ `p`;
//!    - executable volume `V(p) = min(B(p), S(p))`, imbalance `I(p) = |B(p) − S(p)|`.
//!
//!    Sums are exact (this implementation adds in 128 bits; with `u64` lots and fewer than
//!    2^32 orders nothing overflows).
//! 3. **Clearing price** `p*`: the candidate with the largest `V`; among those, the smallest
//!    `I`; among those, the lowest price. No trades when there is no candidate (no limit
//!    order on either side) or when `V(p*) = 0`.
//! 4. **Allocation** at `p*`, in two queues:
//!    - buys: all market buys, then the limit buys with bid ≥ `p*` by bid **descending**;
//!    - sells: all market sells, then the limit sells with ask ≤ `p*` by ask **ascending**;
//!
//!    ties (including among market orders) by position ascending. Then repeatedly: take the
//!    head of each queue, trade `q = min(remaining lots of both)` at `p*`, subtract `q` from
//!    both, and drop an order from its queue once it is filled; stop when either queue is
//!    empty. Partial fills are normal. Exactly `V(p*)` lots trade, every trade at `p*`.
//!
//! ## Output
//! The trades in the order the matching produced them, each
//! `(buy position, sell position, price_ticks = p*, quantity_lots > 0)` ([`Trade`]). A
//! buy–sell pair appears at most once.
//!
//! ## Result hash
//! [`result_hash`] = SHA-256 over, all integers big-endian:
//!
//! | field | encoding |
//! |---|---|
//! | tag | the 4 ASCII bytes `OMR1` |
//! | batch hash | 32 bytes ([`crate::batch_hash`]) |
//! | trade count | u32 |
//! | per trade, in output order | u32 buy position, u32 sell position, u64 price_ticks, u64 quantity_lots (24 bytes) |
//!
//! A batch without trades still has a result hash (tag, batch hash, count 0).
//!
//! ## Cost
//! O(n log n) time and O(n) memory for n orders (sorting the candidate prices and the two
//! queues; sums by prefix sums over the candidates).

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::proto::{Order, OrderKind, Side};
use crate::wire::Digest;

/// One execution: `quantity_lots` lots pass from the sell order to the buy order at
/// `price_ticks`. Orders are named by their position in the batch's canonical order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Trade {
    /// Position of the buy order in the batch (0-based, canonical order).
    pub buy: u32,
    /// Position of the sell order in the batch (0-based, canonical order).
    pub sell: u32,
    /// The clearing price, ticks (the same for every trade of a batch).
    pub price_ticks: u64,
    /// Quantity, lots (> 0).
    pub quantity_lots: u64,
}

/// Runs the call auction (module docs) over one batch's orders in canonical order and
/// returns its trades in output order; empty when nothing crosses.
///
/// Panics if the batch holds 2^32 orders or more (positions are u32).
pub fn run_auction(orders_in_canonical_order: &[Order]) -> Vec<Trade> {
    let (buys, sells) = participants(orders_in_canonical_order);
    let Some(price) = clearing_price(&buys, &sells) else {
        return Vec::new();
    };
    allocate(price, &queue(&buys, Dir::Buy, price), &queue(&sells, Dir::Sell, price))
}

/// The result hash of a batch's trades (module docs): SHA-256 over `OMR1`, the 32-byte
/// `batch_hash`, the u32 trade count and each trade's buy, sell (u32), price and quantity
/// (u64), all big-endian.
///
/// Panics on 2^32 trades or more (a batch of fewer than 2^32 orders has fewer trades).
pub fn result_hash(batch_hash: &Digest, trades: &[Trade]) -> Digest {
    let count = u32::try_from(trades.len()).expect("fewer than 2^32 trades");
    let mut h = Sha256::new();
    h.update(b"OMR1");
    h.update(batch_hash);
    h.update(count.to_be_bytes());
    for t in trades {
        h.update(t.buy.to_be_bytes());
        h.update(t.sell.to_be_bytes());
        h.update(t.price_ticks.to_be_bytes());
        h.update(t.quantity_lots.to_be_bytes());
    }
    h.finalize().into()
}

/// A participating order.
#[derive(Debug, Clone, Copy)]
struct Entry {
    /// Position in the batch.
    pos: u32,
    /// Limit price, ticks; `None` for a market order.
    limit: Option<u64>,
    /// Quantity, lots (> 0).
    lots: u64,
}

/// Which side a queue or sum is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dir {
    Buy,
    Sell,
}

impl Dir {
    /// Whether a limit order of this side at `limit` trades at `price`.
    fn accepts(self, limit: u64, price: u64) -> bool {
        match self {
            Dir::Buy => limit >= price,
            Dir::Sell => limit <= price,
        }
    }

    /// Queue priority, smallest first: market orders (`None`) before limits, limits from the
    /// most aggressive price (highest bid, lowest ask), then position.
    fn priority(self, e: &Entry) -> (Option<u64>, u32) {
        let aggressiveness = e.limit.map(|p| match self {
            Dir::Buy => u64::MAX - p,
            Dir::Sell => p,
        });
        (aggressiveness, e.pos)
    }
}

/// The participating buys and sells (rule 1), in position order.
fn participants(orders: &[Order]) -> (Vec<Entry>, Vec<Entry>) {
    assert!(u32::try_from(orders.len()).is_ok(), "a batch holds fewer than 2^32 orders");
    let (mut buys, mut sells) = (Vec::new(), Vec::new());
    for (pos, o) in orders.iter().enumerate() {
        let limit = match OrderKind::try_from(o.kind) {
            Ok(OrderKind::Limit) => Some(o.price_ticks),
            Ok(OrderKind::Market) => None,
            _ => continue,
        };
        let side = match Side::try_from(o.side) {
            Ok(Side::Buy) => &mut buys,
            Ok(Side::Sell) => &mut sells,
            _ => continue,
        };
        if o.quantity_lots > 0 {
            side.push(Entry { pos: pos as u32, limit, lots: o.quantity_lots });
        }
    }
    (buys, sells)
}

/// The clearing price (rules 2 and 3), `None` when nothing can trade.
fn clearing_price(buys: &[Entry], sells: &[Entry]) -> Option<u64> {
    let mut prices: Vec<u64> = buys.iter().chain(sells).filter_map(|e| e.limit).collect();
    prices.sort_unstable();
    prices.dedup();
    let demand = lots_willing(buys, Dir::Buy, &prices);
    let supply = lots_willing(sells, Dir::Sell, &prices);
    // (price, volume, imbalance) of the best candidate so far; prices ascend, so only a
    // strictly better candidate replaces it and ties keep the lowest price.
    let mut best: Option<(u64, u128, u128)> = None;
    for ((&p, &b), &s) in prices.iter().zip(&demand).zip(&supply) {
        let (v, i) = (b.min(s), b.abs_diff(s));
        if best.is_none_or(|(_, bv, bi)| v > bv || (v == bv && i < bi)) {
            best = Some((p, v, i));
        }
    }
    best.filter(|&(_, v, _)| v > 0).map(|(p, _, _)| p)
}

/// For each of the ascending candidate `prices`, the lots of `entries` (one side) that trade
/// there: `B(p)` for buys, `S(p)` for sells.
fn lots_willing(entries: &[Entry], dir: Dir, prices: &[u64]) -> Vec<u128> {
    let mut at = vec![0u128; prices.len()];
    let mut market = 0u128;
    for e in entries {
        match e.limit {
            Some(p) => {
                let k = prices.binary_search(&p).expect("every limit price is a candidate");
                at[k] += u128::from(e.lots);
            }
            None => market += u128::from(e.lots),
        }
    }
    // Sells at p: asks ≤ p, a running sum upwards; buys: bids ≥ p, a running sum downwards.
    if dir == Dir::Buy {
        at.reverse();
    }
    let mut sum = market;
    for lots in &mut at {
        sum += *lots;
        *lots = sum;
    }
    if dir == Dir::Buy {
        at.reverse();
    }
    at
}

/// One side's allocation queue at `price` (rule 4): the orders that trade there, by priority.
fn queue(entries: &[Entry], dir: Dir, price: u64) -> Vec<Entry> {
    let mut q: Vec<Entry> = entries.iter().filter(|e| e.limit.is_none_or(|l| dir.accepts(l, price))).copied().collect();
    q.sort_unstable_by_key(|e| dir.priority(e));
    q
}

/// Matches the two queues head to head at `price` (rule 4).
fn allocate(price: u64, buys: &[Entry], sells: &[Entry]) -> Vec<Trade> {
    let mut trades = Vec::with_capacity((buys.len() + sells.len()).saturating_sub(1));
    let (mut i, mut j) = (0, 0);
    let (mut buy_left, mut sell_left) = (buys.first().map_or(0, |e| e.lots), sells.first().map_or(0, |e| e.lots));
    while i < buys.len() && j < sells.len() {
        let q = buy_left.min(sell_left);
        trades.push(Trade { buy: buys[i].pos, sell: sells[j].pos, price_ticks: price, quantity_lots: q });
        buy_left -= q;
        sell_left -= q;
        if buy_left == 0 {
            i += 1;
            buy_left = buys.get(i).map_or(0, |e| e.lots);
        }
        if sell_left == 0 {
            j += 1;
            sell_left = sells.get(j).map_or(0, |e| e.lots);
        }
    }
    trades
}

#[cfg(test)]
mod tests {
    use super::*;

    const BUY: Side = Side::Buy;
    const SELL: Side = Side::Sell;

    fn order(side: Side, kind: OrderKind, price_ticks: u64, quantity_lots: u64) -> Order {
        Order {
            market: "BTC-USDT".into(),
            side: side as i32,
            kind: kind as i32,
            price_ticks,
            quantity_lots,
            ..Default::default()
        }
    }

    fn limit(side: Side, price: u64, lots: u64) -> Order {
        order(side, OrderKind::Limit, price, lots)
    }

    fn market(side: Side, lots: u64) -> Order {
        order(side, OrderKind::Market, 0, lots)
    }

    fn t(buy: u32, sell: u32, price_ticks: u64, quantity_lots: u64) -> Trade {
        Trade { buy, sell, price_ticks, quantity_lots }
    }

    #[test]
    fn no_cross_no_trades() {
        assert!(run_auction(&[]).is_empty());
        assert!(run_auction(&[limit(BUY, 99, 5), limit(SELL, 101, 5)]).is_empty());
        assert!(run_auction(&[limit(BUY, 100, 5), limit(BUY, 101, 5)]).is_empty(), "one side only");
        assert!(run_auction(&[market(BUY, 5), market(SELL, 5)]).is_empty(), "no limit price");
    }

    #[test]
    fn simple_cross() {
        // Candidates 100 and 101 both clear 10 lots with no imbalance: the lower wins.
        let trades = run_auction(&[limit(BUY, 101, 10), limit(SELL, 100, 10)]);
        assert_eq!(trades, [t(0, 1, 100, 10)]);
    }

    #[test]
    fn market_orders_go_first_and_do_not_set_the_price() {
        // Market buy (position 1) fills before the better-priced limit buy at 105.
        let trades = run_auction(&[limit(BUY, 105, 3), market(BUY, 3), limit(SELL, 100, 4)]);
        assert_eq!(trades, [t(1, 2, 100, 3), t(0, 2, 100, 1)]);
        // A market order's reference price is no candidate: 90 would clear as much as 100,
        // with no more imbalance, and is lower.
        let ref_price = order(SELL, OrderKind::Market, 90, 10);
        assert_eq!(run_auction(&[ref_price, limit(BUY, 100, 10)]), [t(1, 0, 100, 10)]);
        // Market orders count on their side at every candidate.
        let trades = run_auction(&[market(SELL, 6), limit(BUY, 100, 4), limit(BUY, 99, 4)]);
        assert_eq!(trades, [t(1, 0, 99, 4), t(2, 0, 99, 2)]);
    }

    #[test]
    fn largest_volume_wins_over_imbalance() {
        // p=100: B 8, S 3 (V 3, I 5); p=101: B 8, S 15 (V 8, I 7).
        let trades = run_auction(&[limit(BUY, 101, 8), limit(SELL, 100, 3), limit(SELL, 101, 12)]);
        assert_eq!(trades, [t(0, 1, 101, 3), t(0, 2, 101, 5)]);
    }

    #[test]
    fn equal_volume_smallest_imbalance_wins() {
        // p=100: B 14, S 10 (V 10, I 4); p=101: B 10, S 10 (V 10, I 0) — the higher price wins.
        let trades = run_auction(&[limit(BUY, 100, 4), limit(SELL, 100, 10), limit(BUY, 101, 10)]);
        assert_eq!(trades, [t(2, 1, 101, 10)]);
    }

    #[test]
    fn equal_volume_and_imbalance_lowest_price_wins() {
        // 100 and 102 both clear 10 with no imbalance.
        let batch = [limit(SELL, 100, 10), limit(BUY, 102, 10), limit(BUY, 101, 0), limit(SELL, 101, 0)];
        assert_eq!(run_auction(&batch[..2]), [t(1, 0, 100, 10)]);
        // Zero-lot orders do not participate, so their prices are no candidates either.
        assert_eq!(run_auction(&batch), [t(1, 0, 100, 10)]);
    }

    #[test]
    fn ties_in_price_go_by_position() {
        let batch = [limit(SELL, 100, 5), limit(BUY, 100, 3), limit(BUY, 100, 3), market(BUY, 1), market(BUY, 1)];
        assert_eq!(run_auction(&batch), [t(3, 0, 100, 1), t(4, 0, 100, 1), t(1, 0, 100, 3)]);
    }

    #[test]
    fn partial_fills_walk_the_queues() {
        // Clears at 100 (V 10); sells fill from the lowest ask, the last one partly.
        let batch = [limit(BUY, 100, 10), limit(SELL, 100, 3), limit(SELL, 99, 4), limit(SELL, 98, 5)];
        assert_eq!(run_auction(&batch), [t(0, 3, 100, 5), t(0, 2, 100, 4), t(0, 1, 100, 1)]);
        // One sell across several buys, the worst bid filled partly.
        let batch = [limit(SELL, 95, 7), limit(BUY, 96, 4), limit(BUY, 97, 2), limit(BUY, 95, 9)];
        // p=95: B 15, S 7 (V 7, I 8); p=96: B 6, S 7; p=97: B 2.
        assert_eq!(run_auction(&batch), [t(2, 0, 95, 2), t(1, 0, 95, 4), t(3, 0, 95, 1)]);
    }

    #[test]
    fn cancels_and_unknown_orders_are_ignored_but_keep_their_positions() {
        let plain = [limit(BUY, 101, 6), limit(SELL, 100, 4), market(SELL, 3)];
        let noise = |side| order(side, OrderKind::Cancel, 100, 50);
        let unknown_side = Order { side: 0, ..limit(BUY, 200, 50) };
        let unknown_kind = Order { kind: 9, ..limit(SELL, 1, 50) };
        let batch =
            [noise(BUY), plain[0].clone(), noise(SELL), unknown_side, plain[1].clone(), unknown_kind, plain[2].clone()];
        let at = [1, 4, 6]; // positions of `plain` in `batch`
        let expected: Vec<Trade> = run_auction(&plain)
            .into_iter()
            .map(|x| Trade { buy: at[x.buy as usize], sell: at[x.sell as usize], ..x })
            .collect();
        assert!(!expected.is_empty());
        assert_eq!(run_auction(&batch), expected);
        assert!(run_auction(&[noise(BUY), noise(SELL)]).is_empty());
    }

    /// A small deterministic pseudo-random generator (64-bit LCG, high bits).
    struct Lcg(u64);

    impl Lcg {
        fn below(&mut self, n: u64) -> u64 {
            self.0 = self.0.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            (self.0 >> 33) % n
        }

        fn batch(&mut self, n: usize) -> Vec<Order> {
            (0..n)
                .map(|_| {
                    let side = if self.below(2) == 0 { BUY } else { SELL };
                    let kind = match self.below(10) {
                        0 => OrderKind::Market,
                        1 => OrderKind::Cancel,
                        _ => OrderKind::Limit,
                    };
                    order(side, kind, 95 + self.below(11), self.below(20))
                })
                .collect()
        }
    }

    /// The clearing price and volume straight from rules 1–3, O(n²).
    fn clearing_by_definition(orders: &[Order]) -> Option<(u64, u128)> {
        let is = |o: &Order, kind: OrderKind| o.kind == kind as i32;
        let participates = |o: &&Order| o.quantity_lots > 0 && !is(o, OrderKind::Cancel);
        let lots = |side: Side, accepts: &dyn Fn(u64) -> bool| -> u128 {
            orders
                .iter()
                .filter(participates)
                .filter(|o| o.side == side as i32 && (is(o, OrderKind::Market) || accepts(o.price_ticks)))
                .map(|o| u128::from(o.quantity_lots))
                .sum()
        };
        let score = |p: u64| {
            let (b, s) = (lots(BUY, &|bid: u64| bid >= p), lots(SELL, &|ask: u64| ask <= p));
            (b.min(s), std::cmp::Reverse(b.abs_diff(s)), std::cmp::Reverse(p))
        };
        let limits = orders.iter().filter(participates).filter(|o| is(o, OrderKind::Limit));
        let best = limits.map(|o| o.price_ticks).max_by_key(|&p| score(p))?;
        let volume = score(best).0;
        (volume > 0).then_some((best, volume))
    }

    #[test]
    fn agrees_with_the_rules_on_random_batches() {
        let mut rng = Lcg(42);
        for round in 0..500 {
            let n = 1 + rng.below(40) as usize;
            let batch = rng.batch(n);
            let trades = run_auction(&batch);
            let Some((price, volume)) = clearing_by_definition(&batch) else {
                assert!(trades.is_empty(), "round {round}: {batch:?}");
                continue;
            };
            let mut filled = vec![0u64; n];
            for x in &trades {
                assert_eq!(x.price_ticks, price, "round {round}: {batch:?}");
                assert!(x.quantity_lots > 0);
                assert_eq!((batch[x.buy as usize].side, batch[x.sell as usize].side), (BUY as i32, SELL as i32));
                filled[x.buy as usize] += x.quantity_lots;
                filled[x.sell as usize] += x.quantity_lots;
            }
            let traded: u64 = trades.iter().map(|x| x.quantity_lots).sum();
            assert_eq!(u128::from(traded), volume, "round {round}");
            // Each side's queue, straight from rule 4: filled in full up to one partial fill,
            // nothing after it, nothing outside it.
            for side in [BUY, SELL] {
                let better = |a: u64, b: u64| if side == BUY { a > b } else { a < b };
                let mut q: Vec<usize> = (0..n)
                    .filter(|&i| batch[i].side == side as i32 && batch[i].quantity_lots > 0)
                    .filter(|&i| match OrderKind::try_from(batch[i].kind).unwrap() {
                        OrderKind::Market => true,
                        OrderKind::Limit => !better(price, batch[i].price_ticks),
                        _ => false,
                    })
                    .collect();
                let rank = |i: usize| {
                    let o = &batch[i];
                    let p = if o.kind == OrderKind::Market as i32 { None } else { Some(o.price_ticks) };
                    (p.is_some(), p.map(|p| if side == BUY { u64::MAX - p } else { p }), i)
                };
                q.sort_by_key(|&i| rank(i));
                let fills: Vec<u64> = q.iter().map(|&i| filled[i]).collect();
                let full = q.iter().take_while(|&&i| filled[i] == batch[i].quantity_lots).count();
                assert!(fills[full..].iter().skip(1).all(|&f| f == 0), "round {round}: {fills:?}");
                let outside: u64 =
                    (0..n).filter(|i| !q.contains(i) && batch[*i].side == side as i32).map(|i| filled[i]).sum();
                assert_eq!(outside, 0, "round {round}");
            }
        }
    }

    #[test]
    fn deterministic_and_fast_on_large_batches() {
        let batch = Lcg(7).batch(100_000);
        let trades = run_auction(&batch);
        assert!(trades.len() > 1000, "{} trades", trades.len());
        assert_eq!(run_auction(&batch), trades);
        assert_eq!(run_auction(&Lcg(7).batch(100_000)), trades);
    }

    #[test]
    fn result_hash_layout() {
        let batch_hash = [0xab; 32];
        let trades = [t(1, 2, 3, 4), t(5, 6, 7, 8)];
        let mut bytes = b"OMR1".to_vec();
        bytes.extend_from_slice(&batch_hash);
        bytes.extend_from_slice(&[0, 0, 0, 2]);
        for x in &trades {
            bytes.extend_from_slice(&x.buy.to_be_bytes());
            bytes.extend_from_slice(&x.sell.to_be_bytes());
            bytes.extend_from_slice(&x.price_ticks.to_be_bytes());
            bytes.extend_from_slice(&x.quantity_lots.to_be_bytes());
        }
        assert_eq!(bytes.len(), 4 + 32 + 4 + 2 * 24);
        assert_eq!(result_hash(&batch_hash, &trades), <[u8; 32]>::from(Sha256::digest(&bytes)));
        let empty: [u8; 32] = Sha256::digest([&b"OMR1"[..], &batch_hash, &[0; 4]].concat()).into();
        assert_eq!(result_hash(&batch_hash, &[]), empty);
    }

    #[test]
    fn result_hash_changes_with_any_trade_change() {
        let bh = [1; 32];
        let trades = vec![t(0, 1, 100, 5), t(2, 1, 100, 3)];
        let h = result_hash(&bh, &trades);
        let mut variants = vec![
            vec![t(9, 1, 100, 5), trades[1]],
            vec![t(0, 9, 100, 5), trades[1]],
            vec![t(0, 1, 101, 5), trades[1]],
            vec![t(0, 1, 100, 6), trades[1]],
            vec![trades[1], trades[0]],
            vec![trades[0]],
            vec![],
        ];
        variants.push([trades.clone(), vec![t(3, 4, 100, 1)]].concat());
        for v in variants {
            assert_ne!(result_hash(&bh, &v), h, "{v:?}");
        }
        assert_ne!(result_hash(&[2; 32], &trades), h, "the batch hash is covered");
        assert_eq!(result_hash(&bh, &trades), h, "deterministic");
    }
}
