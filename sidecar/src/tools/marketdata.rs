//! Recorded Binance USDⓈ-M market data turned into a deterministic order stream.
//!
//! A recording is a gzip text file with one message per line:
//! `<local receive time, ns since the Unix epoch> <raw Binance JSON>`. The JSON is a
//! websocket stream message `{"stream": .., "data": {"e": <event type>, ..}}` (a
//! `depthUpdate`, a `trade` or a `bookTicker`) or the unwrapped REST depth snapshot
//! `{"lastUpdateId": .., "E": <ms>, "T": <ms>, "bids": [[p, q], ..], "asks": [[p, q], ..]}`.
//! [`bundled_dataset_dir`] holds two such recordings (BTCUSDT and ETHUSDT, 2024-08-08).
//!
//! # Mapping (the project's reference)
//!
//! Lines are processed strictly in file order; each line yields zero or more
//! [`ReplayOrder`]s, which together form one [`MarketEvent`].
//!
//! * **Book state.** Per market (one [`parse_lines`] / [`load_file`] call) we keep the last
//!   known quantity `q0` of every (side, price) level, starting empty. Setting a level to
//!   a quantity `q` emits:
//!   - `q > q0`: a [`OrderKind::Limit`] order of `q - q0` lots at that price;
//!   - `q < q0`: a [`OrderKind::Cancel`] order of `q0 - q` lots at that price (`q = 0`
//!     removes the level, i.e. cancels the whole `q0`);
//!   - `q == q0`: nothing.
//!
//!   and then records `q` as the known quantity. A decrease at an unknown level cannot
//!   happen (`q0 = 0`), so e.g. removing an unknown level emits nothing.
//! * **REST snapshot line** (has `lastUpdateId`): seeds the book. Every level of `bids`
//!   (side [`Side::Buy`]) and `asks` (side [`Side::Sell`]) is set with the rule above: a
//!   level not known yet (the normal case) becomes a Limit order for its whole quantity if
//!   `q > 0`. A level already set by a depth update that precedes the snapshot in the file
//!   is diffed like any other rather than added again, so resting liquidity is never
//!   double counted. Known levels absent from the snapshot are left alone. The snapshot's
//!   `lastUpdateId` is not compared with the depth updates' `U`/`u`: file order rules.
//!   `client_ts_ns` = snapshot `"E"` (event time, ms) × 1_000_000.
//! * **`depthUpdate`**: every level `[p, q]` of `"b"` (Buy) and `"a"` (Sell) is set with the
//!   rule above. `client_ts_ns` = `"E"` (ms) × 1_000_000. Depth updates that precede the
//!   snapshot line are applied like any other, in file order.
//! * **`trade`**: one [`OrderKind::Market`] order at the trade price `"p"` (a reference
//!   price) for the traded quantity `"q"`. Side = [`Side::Sell`] when `"m"` (buyer is maker)
//!   is true (the seller was the aggressor), else [`Side::Buy`]. `client_ts_ns` = `"T"`
//!   (trade time, ms) × 1_000_000. The book state is not touched: the depth stream reports
//!   the liquidity a trade took as a level decrease (hence a Cancel) in a later depthUpdate.
//!   A trade of quantity 0 yields nothing.
//! * **`bookTicker`**: skipped (it is derived from the same book and would double count).
//! * Any other event type, a line that is neither a stream message nor a snapshot, bad
//!   JSON, a missing field or an unparsable number is an error naming the source and the
//!   1-based line number. Blank lines are ignored.
//! * **Order within a line**: bids as listed, then asks as listed.
//! * **`recv_ts_ns`** of the event = the line's leading receive timestamp (ns).
//! * Lines that yield no order (bookTicker, a depth update that changes nothing) produce no
//!   event, so every returned [`MarketEvent`] has at least one order.
//! * **Numbers**: prices and quantities are decimal strings converted exactly with
//!   [`parse_fixed`] at the given [`Scale`] ([`Scale::BINANCE_USDM`]: price tick = 0.01,
//!   quantity lot = 0.001); a value with more decimals than the scale is an error, as is a
//!   price of 0.
//!
//! Several markets are replayed together by interleaving their event lists with
//! [`merge_by_time`].

use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, HashMap};
use std::fmt;
use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde::de::{self, Deserializer, SeqAccess, Visitor};

/// Order side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    /// Bid side: depth `"b"` / snapshot `"bids"` levels, and trades whose buyer was the aggressor.
    Buy,
    /// Ask side: depth `"a"` / snapshot `"asks"` levels, and trades whose seller was the aggressor.
    Sell,
}

/// What an order does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OrderKind {
    /// Adds `quantity_lots` of resting liquidity at `price_ticks`.
    Limit,
    /// Removes `quantity_lots` of resting liquidity at `price_ticks`.
    Cancel,
    /// Takes `quantity_lots` of liquidity; `price_ticks` is the recorded trade price (a reference, not a limit).
    Market,
}

/// One order derived from the recording (no id, no origin: the engine assigns those).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayOrder {
    /// Side of the order.
    pub side: Side,
    /// Limit, Cancel or Market.
    pub kind: OrderKind,
    /// Price in ticks of 10^-`price_decimals` (see [`Scale`]); always > 0.
    pub price_ticks: u64,
    /// Quantity in lots of 10^-`quantity_decimals` (see [`Scale`]); always > 0.
    pub quantity_lots: u64,
    /// Exchange time of the source message in ns since the Unix epoch (Binance ms × 1_000_000).
    pub client_ts_ns: u64,
}

/// All orders derived from one recorded line, submitted together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MarketEvent {
    /// Local receive time of the line in ns since the Unix epoch (the line's leading number).
    pub recv_ts_ns: u64,
    /// The line's orders (never empty): bids as listed, then asks as listed.
    pub orders: Vec<ReplayOrder>,
}

/// Fixed-point scales: price tick = 10^-price_decimals, quantity lot = 10^-quantity_decimals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scale {
    /// Number of decimals of a price: a price of `p` is `p × 10^price_decimals` ticks.
    pub price_decimals: u32,
    /// Number of decimals of a quantity: a quantity of `q` is `q × 10^quantity_decimals` lots.
    pub quantity_decimals: u32,
}

impl Scale {
    /// Binance USDⓈ-M BTCUSDT / ETHUSDT: tick = 0.01 (price), lot = 0.001 (quantity).
    pub const BINANCE_USDM: Scale = Scale { price_decimals: 2, quantity_decimals: 3 };
}

/// Why a recording could not be turned into events.
#[derive(Debug, thiserror::Error)]
pub enum MarketDataError {
    /// The recording file could not be opened.
    #[error("{}: cannot open: {source}", path.display())]
    Open {
        /// The file that was to be opened.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// Reading, decompressing or UTF-8 decoding failed while reading a line.
    #[error("{source_name}:{line}: read error: {source}")]
    Io {
        /// The file path (or the name given to [`parse_lines`]).
        source_name: String,
        /// 1-based number of the line being read.
        line: usize,
        /// The underlying error.
        source: io::Error,
    },
    /// A line is not a valid recording line.
    #[error("{source_name}:{line}: {reason}")]
    Parse {
        /// The file path (or the name given to [`parse_lines`]).
        source_name: String,
        /// 1-based line number.
        line: usize,
        /// What is wrong with the line.
        reason: String,
    },
}

/// Reads a gzip recording and returns its events in file order (lines whose JSON yields no
/// order, e.g. bookTicker, are skipped). Errors name `path` and the 1-based line number.
pub fn load_file(path: &Path, scale: Scale) -> Result<Vec<MarketEvent>, MarketDataError> {
    let file = File::open(path).map_err(|source| MarketDataError::Open { path: path.to_owned(), source })?;
    let text = flate2::bufread::MultiGzDecoder::new(BufReader::new(file));
    parse_lines(BufReader::with_capacity(1 << 16, text), scale, &path.display().to_string())
}

/// Same as [`load_file`], from any reader of the decompressed text (for tests).
/// `source_name` is only used in error messages.
pub fn parse_lines<R: BufRead>(
    mut reader: R,
    scale: Scale,
    source_name: &str,
) -> Result<Vec<MarketEvent>, MarketDataError> {
    let mut replayer = Replayer::new(scale);
    let mut events = Vec::new();
    let mut buf = String::new();
    for line in 1usize.. {
        buf.clear();
        let read = reader.read_line(&mut buf).map_err(|source| MarketDataError::Io {
            source_name: source_name.to_owned(),
            line,
            source,
        })?;
        if read == 0 {
            break;
        }
        let event = replayer.line(&buf).map_err(|reason| MarketDataError::Parse {
            source_name: source_name.to_owned(),
            line,
            reason,
        })?;
        events.extend(event);
    }
    Ok(events)
}

/// Parses a decimal string like `"61800.20"` into an integer count of 10^-`decimals` units exactly;
/// error when it has more decimals than `decimals` (after trimming trailing zeros), a sign, or
/// overflows u64. Accepted shape: one or more ASCII digits, optionally followed by `.` and one
/// or more ASCII digits (so "61800.20" at 2 decimals is 6_180_020, "1.5" at 3 is 1_500).
pub fn parse_fixed(s: &str, decimals: u32) -> Result<u64, String> {
    if s.starts_with(['+', '-']) {
        return Err(format!("{s:?}: sign not allowed"));
    }
    let (int_part, frac_part) = s.split_once('.').unwrap_or((s, "0"));
    let is_digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
    if !is_digits(int_part) || !is_digits(frac_part) {
        return Err(format!("{s:?}: not a plain decimal number"));
    }
    let frac = frac_part.trim_end_matches('0');
    if frac.len() > decimals as usize {
        return Err(format!("{s:?}: more than {decimals} decimals"));
    }
    let overflow = || format!("{s:?}: does not fit in u64 at {decimals} decimals");
    let mut value: u64 = 0;
    for digit in int_part.bytes().chain(frac.bytes()) {
        value = value.checked_mul(10).and_then(|v| v.checked_add(u64::from(digit - b'0'))).ok_or_else(overflow)?;
    }
    if value == 0 {
        return Ok(0);
    }
    // frac.len() <= decimals, so the cast cannot truncate.
    let pad = 10u64.checked_pow(decimals - frac.len() as u32).ok_or_else(overflow)?;
    value.checked_mul(pad).ok_or_else(overflow)
}

/// k-way merge of several markets' event lists by `recv_ts_ns` (stable: ties keep the input
/// order of the lists), tagging each with its list index.
///
/// Returns `(index of the list in markets, event)`. Each list's own order is always kept; at
/// every step the list whose next event has the smallest `recv_ts_ns` goes first, the lowest
/// list index winning ties. For lists sorted by `recv_ts_ns` the result is sorted too.
pub fn merge_by_time(markets: Vec<Vec<MarketEvent>>) -> Vec<(usize, MarketEvent)> {
    let mut merged = Vec::with_capacity(markets.iter().map(Vec::len).sum());
    let mut lists: Vec<_> = markets.into_iter().map(|events| events.into_iter().peekable()).collect();
    let mut heads: BinaryHeap<Reverse<(u64, usize)>> = lists
        .iter_mut()
        .enumerate()
        .filter_map(|(index, list)| list.peek().map(|event| Reverse((event.recv_ts_ns, index))))
        .collect();
    while let Some(Reverse((_, index))) = heads.pop() {
        let list = &mut lists[index];
        let event = list.next().expect("a list in the heap has a next event");
        if let Some(next) = list.peek() {
            heads.push(Reverse((next.recv_ts_ns, index)));
        }
        merged.push((index, event));
    }
    merged
}

/// Path of the bundled dataset directory:
/// `concat!(env!("CARGO_MANIFEST_DIR"), "/data/binance-usdm-20240808")`.
/// It holds `btcusdt_20240808.gz` and `ethusdt_20240808.gz` (read them with [`load_file`] and
/// [`Scale::BINANCE_USDM`]), plus their README.md and licence.
pub fn bundled_dataset_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/data/binance-usdm-20240808"))
}

/// `[price, quantity]` as decimal strings.
type Level<'a> = (&'a str, &'a str);

/// One line's JSON: a stream message (`data`) or a REST depth snapshot (`lastUpdateId`, ...).
#[derive(Deserialize)]
struct RawLine<'a> {
    #[serde(borrow)]
    data: Option<RawPayload<'a>>,
    #[serde(rename = "lastUpdateId")]
    last_update_id: Option<u64>,
    #[serde(rename = "E")]
    event_ms: Option<u64>,
    #[serde(borrow, default)]
    bids: Vec<Level<'a>>,
    #[serde(borrow, default)]
    asks: Vec<Level<'a>>,
}

/// The `data` of a stream message; which fields are present depends on `e`.
#[derive(Deserialize)]
struct RawPayload<'a> {
    e: &'a str,
    #[serde(rename = "E")]
    event_ms: Option<u64>,
    #[serde(rename = "T")]
    trade_ms: Option<u64>,
    #[serde(borrow)]
    b: Option<BookField<'a>>,
    #[serde(borrow)]
    a: Option<BookField<'a>>,
    p: Option<&'a str>,
    q: Option<&'a str>,
    m: Option<bool>,
}

/// `"b"` / `"a"` of a stream message: a level list in a depthUpdate, a single price string in
/// a bookTicker. Deserialized without buffering, whichever it is.
enum BookField<'a> {
    Levels(Vec<Level<'a>>),
    Scalar,
}

impl<'a> BookField<'a> {
    /// The level list of a depthUpdate's field `name`, or an error if it is missing or not a list.
    fn levels(field: Option<Self>, name: &str) -> Result<Vec<Level<'a>>, String> {
        match field {
            Some(BookField::Levels(levels)) => Ok(levels),
            _ => Err(format!("depthUpdate without a level list \"{name}\"")),
        }
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for BookField<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct BookFieldVisitor<'a>(PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for BookFieldVisitor<'a> {
            type Value = BookField<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a list of [price, quantity] levels or a price string")
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
                Ok(BookField::Scalar)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut levels = Vec::with_capacity(seq.size_hint().unwrap_or(0));
                while let Some(level) = seq.next_element()? {
                    levels.push(level);
                }
                Ok(BookField::Levels(levels))
            }
        }
        deserializer.deserialize_any(BookFieldVisitor(PhantomData))
    }
}

/// Per-market replay state: the last known quantity (lots) of every (side, price ticks) level.
struct Replayer {
    scale: Scale,
    book: HashMap<(Side, u64), u64>,
}

impl Replayer {
    fn new(scale: Scale) -> Self {
        Replayer { scale, book: HashMap::new() }
    }

    /// One raw line (with or without its line terminator) → its event, if it yields orders.
    fn line(&mut self, text: &str) -> Result<Option<MarketEvent>, String> {
        let text = text.trim();
        if text.is_empty() {
            return Ok(None);
        }
        let (recv, json) = text.split_once(' ').ok_or("expected `<receive time ns> <json>`")?;
        let recv_ts_ns = recv.parse::<u64>().map_err(|e| format!("receive timestamp {recv:?}: {e}"))?;
        let orders = self.orders(json)?;
        Ok((!orders.is_empty()).then_some(MarketEvent { recv_ts_ns, orders }))
    }

    fn orders(&mut self, json: &str) -> Result<Vec<ReplayOrder>, String> {
        let raw: RawLine = serde_json::from_str(json).map_err(|e| format!("invalid JSON: {e}"))?;
        match (raw.data, raw.last_update_id) {
            (Some(payload), None) => self.stream_message(payload),
            (None, Some(_)) => {
                let ts = ms_to_ns(required(raw.event_ms, "E")?)?;
                self.set_levels(&raw.bids, &raw.asks, ts)
            }
            (Some(_), Some(_)) => Err("both \"data\" and \"lastUpdateId\" present".into()),
            (None, None) => Err("neither a stream message (\"data\") nor a depth snapshot (\"lastUpdateId\")".into()),
        }
    }

    fn stream_message(&mut self, payload: RawPayload) -> Result<Vec<ReplayOrder>, String> {
        match payload.e {
            "depthUpdate" => {
                let ts = ms_to_ns(required(payload.event_ms, "E")?)?;
                let bids = BookField::levels(payload.b, "b")?;
                self.set_levels(&bids, &BookField::levels(payload.a, "a")?, ts)
            }
            "trade" => {
                let ts = ms_to_ns(required(payload.trade_ms, "T")?)?;
                let side = if required(payload.m, "m")? { Side::Sell } else { Side::Buy };
                let price_ticks = self.price(required(payload.p, "p")?).map_err(|e| format!("trade price {e}"))?;
                let quantity_lots =
                    self.quantity(required(payload.q, "q")?).map_err(|e| format!("trade quantity {e}"))?;
                Ok(if quantity_lots == 0 {
                    Vec::new()
                } else {
                    vec![ReplayOrder { side, kind: OrderKind::Market, price_ticks, quantity_lots, client_ts_ns: ts }]
                })
            }
            "bookTicker" => Ok(Vec::new()),
            other => Err(format!("unsupported event type {other:?}")),
        }
    }

    /// Applies bid then ask levels to the book, returning the resulting Limit/Cancel orders.
    fn set_levels(&mut self, bids: &[Level], asks: &[Level], ts: u64) -> Result<Vec<ReplayOrder>, String> {
        let mut orders = Vec::new();
        for (side, name, levels) in [(Side::Buy, "bid", bids), (Side::Sell, "ask", asks)] {
            for (index, &(price, quantity)) in levels.iter().enumerate() {
                let price_ticks = self.price(price).map_err(|e| format!("{name} level {}: price {e}", index + 1))?;
                let quantity_lots =
                    self.quantity(quantity).map_err(|e| format!("{name} level {}: quantity {e}", index + 1))?;
                orders.extend(self.set_level(side, price_ticks, quantity_lots, ts));
            }
        }
        Ok(orders)
    }

    /// Sets one level to `quantity_lots`; the order for the difference to the known quantity, if any.
    fn set_level(&mut self, side: Side, price_ticks: u64, quantity_lots: u64, ts: u64) -> Option<ReplayOrder> {
        let key = (side, price_ticks);
        let known =
            if quantity_lots == 0 { self.book.remove(&key) } else { self.book.insert(key, quantity_lots) }.unwrap_or(0);
        let (kind, difference) = match quantity_lots.cmp(&known) {
            Ordering::Greater => (OrderKind::Limit, quantity_lots - known),
            Ordering::Less => (OrderKind::Cancel, known - quantity_lots),
            Ordering::Equal => return None,
        };
        Some(ReplayOrder { side, kind, price_ticks, quantity_lots: difference, client_ts_ns: ts })
    }

    fn price(&self, s: &str) -> Result<u64, String> {
        match parse_fixed(s, self.scale.price_decimals)? {
            0 => Err(format!("{s:?}: must be positive")),
            ticks => Ok(ticks),
        }
    }

    fn quantity(&self, s: &str) -> Result<u64, String> {
        parse_fixed(s, self.scale.quantity_decimals)
    }
}

fn required<T>(value: Option<T>, field: &str) -> Result<T, String> {
    value.ok_or_else(|| format!("missing field \"{field}\""))
}

fn ms_to_ns(ms: u64) -> Result<u64, String> {
    ms.checked_mul(1_000_000).ok_or_else(|| format!("timestamp {ms} ms overflows u64 ns"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCALE: Scale = Scale::BINANCE_USDM;

    fn order(side: Side, kind: OrderKind, price_ticks: u64, quantity_lots: u64, ms: u64) -> ReplayOrder {
        ReplayOrder { side, kind, price_ticks, quantity_lots, client_ts_ns: ms * 1_000_000 }
    }

    fn parse(text: &str) -> Result<Vec<MarketEvent>, MarketDataError> {
        parse_lines(text.as_bytes(), SCALE, "sample")
    }

    #[test]
    fn parse_fixed_exact_values() {
        assert_eq!(parse_fixed("61800.20", 2), Ok(6_180_020));
        assert_eq!(parse_fixed("61800.2", 2), Ok(6_180_020));
        assert_eq!(parse_fixed("61800", 2), Ok(6_180_000));
        assert_eq!(parse_fixed("0.001", 3), Ok(1));
        assert_eq!(parse_fixed("1.5", 3), Ok(1_500));
        assert_eq!(parse_fixed("007.5", 1), Ok(75));
        assert_eq!(parse_fixed("0", 3), Ok(0));
        assert_eq!(parse_fixed("0.000", 3), Ok(0));
        assert_eq!(parse_fixed("42", 0), Ok(42));
        assert_eq!(parse_fixed("0", 40), Ok(0));
        assert_eq!(parse_fixed("18446744073709551615", 0), Ok(u64::MAX));
        assert_eq!(parse_fixed("18446744073709.551615", 6), Ok(u64::MAX));
    }

    #[test]
    fn parse_fixed_trailing_zeros_do_not_count_as_decimals() {
        assert_eq!(parse_fixed("12.3400000", 2), Ok(1_234));
        assert_eq!(parse_fixed("5.000000000000000000000000", 0), Ok(5));
        assert_eq!(parse_fixed("1.10", 1), Ok(11));
    }

    #[test]
    fn parse_fixed_rejects_too_many_decimals() {
        assert!(parse_fixed("61800.205", 2).unwrap_err().contains("more than 2 decimals"));
        assert!(parse_fixed("0.0001", 3).is_err());
        assert!(parse_fixed("1.5", 0).is_err());
    }

    #[test]
    fn parse_fixed_rejects_junk_and_signs() {
        for junk in ["", ".", "1.", ".5", "1.2.3", "abc", "1e5", " 1", "1 ", "1,5", "0x10", "½", "NaN"] {
            assert!(parse_fixed(junk, 3).is_err(), "{junk:?} accepted");
        }
        assert!(parse_fixed("-1", 2).unwrap_err().contains("sign"));
        assert!(parse_fixed("+1", 2).unwrap_err().contains("sign"));
        assert!(parse_fixed("-0.0", 2).is_err());
    }

    #[test]
    fn parse_fixed_rejects_overflow() {
        assert!(parse_fixed("18446744073709551616", 0).unwrap_err().contains("does not fit"));
        assert!(parse_fixed("18446744073709551615", 1).is_err());
        assert!(parse_fixed("18446744073709551.62", 3).is_err());
        assert!(parse_fixed("1", 20).is_err());
        assert!(parse_fixed("99999999999999999999999999", 0).is_err());
    }

    const SAMPLE: &str = concat!(
        // Snapshot: two bids, one ask, and an empty ask level (yields nothing).
        r#"1000 {"lastUpdateId":10,"E":5,"T":4,"bids":[["100.50","2.000"],["100.00","1.5"]],"asks":[["101.00","0.250"],["102.00","0.000"]]}"#,
        "\n",
        // Increase 100.50 by 1, decrease 100.00 by 0.5, 101.00 unchanged, new ask 103.00,
        // removal of the unknown 105.00 (nothing).
        r#"2000 {"stream":"x@depth@0ms","data":{"e":"depthUpdate","E":6,"T":6,"s":"X","U":11,"u":12,"pu":10,"b":[["100.50","3.000"],["100.00","1.000"]],"a":[["101.00","0.250"],["103.00","0.100"],["105.00","0.000"]]}}"#,
        "\n",
        r#"3000 {"stream":"x@bookTicker","data":{"e":"bookTicker","u":12,"s":"X","b":"100.50","B":"3.000","a":"101.00","A":"0.250","T":6,"E":6}}"#,
        "\n",
        // Removal of both best levels.
        r#"4000 {"stream":"x@depth@0ms","data":{"e":"depthUpdate","E":7,"T":7,"s":"X","U":13,"u":14,"pu":12,"b":[["100.50","0.000"]],"a":[["101.00","0"]]}}"#,
        "\r\n",
        r#"5000 {"stream":"x@trade","data":{"e":"trade","E":9,"T":8,"s":"X","t":1,"p":"100.00","q":"0.400","X":"MARKET","m":true}}"#,
        "\n",
        "\n",
        r#"6000 {"stream":"x@trade","data":{"e":"trade","E":9,"T":9,"s":"X","t":2,"p":"103.00","q":"0.1","X":"MARKET","m":false}}"#,
        "\n",
        // Nothing changes: no event.
        r#"7000 {"stream":"x@depth@0ms","data":{"e":"depthUpdate","E":10,"T":10,"s":"X","U":15,"u":16,"pu":14,"b":[["100.00","1.000"]],"a":[]}}"#,
    );

    #[test]
    fn sample_maps_to_expected_events() {
        use OrderKind::*;
        use Side::*;
        let expected = vec![
            MarketEvent {
                recv_ts_ns: 1000,
                orders: vec![
                    order(Buy, Limit, 10_050, 2_000, 5),
                    order(Buy, Limit, 10_000, 1_500, 5),
                    order(Sell, Limit, 10_100, 250, 5),
                ],
            },
            MarketEvent {
                recv_ts_ns: 2000,
                orders: vec![
                    order(Buy, Limit, 10_050, 1_000, 6),
                    order(Buy, Cancel, 10_000, 500, 6),
                    order(Sell, Limit, 10_300, 100, 6),
                ],
            },
            MarketEvent {
                recv_ts_ns: 4000,
                orders: vec![order(Buy, Cancel, 10_050, 3_000, 7), order(Sell, Cancel, 10_100, 250, 7)],
            },
            MarketEvent { recv_ts_ns: 5000, orders: vec![order(Sell, Market, 10_000, 400, 8)] },
            MarketEvent { recv_ts_ns: 6000, orders: vec![order(Buy, Market, 10_300, 100, 9)] },
        ];
        assert_eq!(parse(SAMPLE).unwrap(), expected);
    }

    #[test]
    fn snapshot_after_depth_update_diffs_known_levels() {
        let text = concat!(
            r#"1 {"stream":"x@depth@0ms","data":{"e":"depthUpdate","E":1,"T":1,"b":[["10.00","1.000"],["9.00","2.000"]],"a":[]}}"#,
            "\n",
            r#"2 {"lastUpdateId":3,"E":2,"T":2,"bids":[["10.00","1.000"],["9.00","1.500"],["8.00","0.500"]],"asks":[]}"#,
        );
        let events = parse(text).unwrap();
        assert_eq!(
            events[1].orders,
            vec![order(Side::Buy, OrderKind::Cancel, 900, 500, 2), order(Side::Buy, OrderKind::Limit, 800, 500, 2)]
        );
    }

    #[test]
    fn malformed_line_error_names_source_and_line() {
        let mut lines: Vec<&str> = SAMPLE.lines().collect();
        lines[2] = r#"3000 {"stream":"x@bookTicker","data":{"e":"bookTicker""#;
        let err = parse(&lines.join("\n")).unwrap_err();
        assert!(
            matches!(&err, MarketDataError::Parse { line: 3, source_name, .. } if source_name == "sample"),
            "{err:?}"
        );
        assert!(err.to_string().starts_with("sample:3: invalid JSON"), "{err}");

        let cases = [
            (r#"1 {"stream":"x@trade","data":{"e":"trade","T":1,"p":"1.001","q":"1","m":true}}"#, "trade price"),
            (r#"1 {"stream":"x@trade","data":{"e":"trade","T":1,"p":"1.00","q":"1"}}"#, "missing field \"m\""),
            (
                r#"1 {"stream":"x","data":{"e":"depthUpdate","E":1,"b":[["1.00","-1"]],"a":[]}}"#,
                "bid level 1: quantity",
            ),
            (r#"1 {"stream":"x","data":{"e":"depthUpdate","E":1,"b":[],"a":[["0.00","1"]]}}"#, "must be positive"),
            (r#"1 {"stream":"x","data":{"e":"depthUpdate","E":1,"b":"1.00","a":[]}}"#, "level list \"b\""),
            (r#"1 {"stream":"x","data":{"e":"aggTrade","E":1}}"#, "unsupported event type"),
            (r#"1 {"result":null,"id":1}"#, "neither"),
            (r#"x1 {"lastUpdateId":1,"E":1,"bids":[],"asks":[]}"#, "receive timestamp"),
            ("12345", "expected `<receive time ns> <json>`"),
        ];
        for (line, reason) in cases {
            let text = format!("{}\n{line}\n", lines[0]);
            let err = parse(&text).unwrap_err().to_string();
            assert!(err.starts_with("sample:2: ") && err.contains(reason), "{line}: {err}");
        }
    }

    #[test]
    fn missing_file_error_names_the_file() {
        let err = load_file(Path::new("/nonexistent/x.gz"), SCALE).unwrap_err();
        assert!(err.to_string().starts_with("/nonexistent/x.gz: cannot open"), "{err}");
    }

    fn marker(recv_ts_ns: u64, id: u64) -> MarketEvent {
        MarketEvent { recv_ts_ns, orders: vec![order(Side::Buy, OrderKind::Limit, 1, 1, id)] }
    }

    #[test]
    fn merge_by_time_orders_by_time_and_keeps_ties_stable() {
        let markets = vec![
            vec![marker(1, 0), marker(3, 1), marker(3, 2), marker(5, 3)],
            vec![marker(2, 10), marker(3, 11), marker(4, 12)],
            vec![],
            vec![marker(3, 30)],
        ];
        let merged: Vec<(usize, u64)> = merge_by_time(markets)
            .into_iter()
            .map(|(index, event)| (index, event.orders[0].client_ts_ns / 1_000_000))
            .collect();
        assert_eq!(merged, vec![(0, 0), (1, 10), (0, 1), (0, 2), (1, 11), (3, 30), (1, 12), (0, 3)]);
        assert!(merge_by_time(vec![]).is_empty());
        assert!(merge_by_time(vec![vec![], vec![]]).is_empty());
    }

    /// Per-file figures: (file, events, Limit orders, Cancel orders, Market orders).
    /// Computed once by running load_file on the bundled files with Scale::BINANCE_USDM (and
    /// cross-checked with an independent Python implementation of the mapping); Market equals
    /// the README's trade count. Events = non-bookTicker lines minus depth updates that change
    /// nothing.
    const BUNDLED: [(&str, usize, usize, usize, usize); 2] = [
        ("btcusdt_20240808.gz", 27_865, 205_344, 201_431, 21_313),
        ("ethusdt_20240808.gz", 20_663, 200_908, 198_580, 14_076),
    ];

    #[test]
    fn bundled_recordings_load_with_expected_counts() {
        for (file, events_expected, limits, cancels, markets) in BUNDLED {
            // load_file succeeding also proves every price/quantity fits Scale::BINANCE_USDM exactly.
            let events = load_file(&bundled_dataset_dir().join(file), SCALE).unwrap();
            let orders: Vec<&ReplayOrder> = events.iter().flat_map(|event| &event.orders).collect();
            let count = |kind| orders.iter().filter(|order| order.kind == kind).count();
            assert_eq!(
                (events.len(), count(OrderKind::Limit), count(OrderKind::Cancel), count(OrderKind::Market)),
                (events_expected, limits, cancels, markets),
                "{file}"
            );
            assert_eq!(orders.len(), limits + cancels + markets, "{file}");
            assert!(orders.iter().all(|order| order.quantity_lots > 0 && order.price_ticks > 0), "{file}");
            assert!(events.windows(2).all(|pair| pair[0].recv_ts_ns <= pair[1].recv_ts_ns), "{file}");
        }
    }
}
