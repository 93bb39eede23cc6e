//! Checks the test vectors in docs/PROTOCOL.md against the crate's own functions, so the
//! document cannot drift from the code: every order's canonical encoding and digest, the
//! canonical order, the batch hash, the auction's trades and the result hash, the order
//! bundle signature, and the GossipSub message id.

use std::path::Path;

use openmatch_gossip_sidecar::batch_hash;
use openmatch_gossip_sidecar::proto::Order;
use openmatch_gossip_sidecar::tools::auction::{Trade, result_hash, run_auction};
use openmatch_gossip_sidecar::{canonical_encoding, message_id, order_digest, signed_message};
use serde_json::Value;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    assert!(s.len().is_multiple_of(2), "odd-length hex {s:?}");
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex digit")).collect()
}

fn protocol_md() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/PROTOCOL.md");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The document's single ```json block, parsed.
fn vectors(doc: &str) -> Value {
    let blocks: Vec<&str> = doc.split("\n```json\n").skip(1).collect();
    assert_eq!(blocks.len(), 1, "PROTOCOL.md must hold exactly one ```json block");
    let body = blocks[0].split("\n```").next().expect("split yields at least one part");
    serde_json::from_str(body).expect("the ```json block parses")
}

/// The ```text block giving one order's encoding field by field: its id (from the heading
/// line `# order id N: ...`) and the concatenated hex of its lines (each line's last word).
fn layout(doc: &str) -> (u64, String) {
    let marker = "\n```text\n# order id ";
    let start = doc.find(marker).expect("PROTOCOL.md shows one order field by field") + marker.len();
    let block = doc[start..].split("\n```").next().expect("split yields at least one part");
    let (heading, rows) = block.split_once('\n').expect("rows after the heading");
    let id = heading.split(':').next().and_then(|n| n.parse().ok()).expect("`# order id N:` heading");
    let hex = rows.lines().filter_map(|l| l.split_whitespace().last()).collect();
    (id, hex)
}

fn u64_of(v: &Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or_else(|| panic!("{key}: not a u64 in {v}"))
}

fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key].as_str().unwrap_or_else(|| panic!("{key}: not a string in {v}"))
}

fn order_of(v: &Value) -> Order {
    let enum_of = |key| i32::try_from(u64_of(v, key)).expect("enum value fits i32");
    Order {
        id: u64_of(v, "id"),
        market: str_of(v, "market").to_owned(),
        side: enum_of("side"),
        kind: enum_of("kind"),
        price_ticks: u64_of(v, "price_ticks"),
        quantity_lots: u64_of(v, "quantity_lots"),
        client_ts_ns: u64_of(v, "client_ts_ns"),
        origin: unhex(str_of(v, "origin_hex")).into(),
        epoch: u64_of(v, "epoch"),
        freeze_proof: unhex(str_of(v, "freeze_proof_hex")),
        submitted_at_ns: u64_of(v, "submitted_at_ns"),
    }
}

#[test]
fn protocol_md_vectors_match_the_code() {
    let doc = protocol_md();
    let v = vectors(&doc);
    assert_eq!(u64_of(&v, "version"), 1);
    let (market, epoch) = (str_of(&v["batch_id"], "market"), u64_of(&v["batch_id"], "epoch"));

    let listed = v["orders"].as_array().expect("orders: an array");
    assert!(listed.len() >= 3, "at least three orders");
    let mut orders = Vec::new();
    for o in listed {
        let order = order_of(o);
        let id = order.id;
        assert_eq!((order.market.as_str(), order.epoch), (market, epoch), "order {id} is of the batch");
        let mut encoding = Vec::new();
        canonical_encoding(&order, &mut encoding);
        assert_eq!(hex(&encoding), str_of(o, "canonical_hex"), "order {id}: canonical_hex");
        let variable = order.origin.len() + order.market.len() + order.freeze_proof.len();
        assert_eq!(encoding.len(), 58 + variable, "order {id}: 58 bytes + origin + market + proof");
        let digest = order_digest(&order);
        assert_eq!(hex(&digest), str_of(o, "digest_hex"), "order {id}: digest_hex");
        let unsubmitted = Order { submitted_at_ns: 0, ..order.clone() };
        assert_eq!(order_digest(&unsubmitted), digest, "order {id}: submitted_at_ns is excluded");
        orders.push(order);
    }
    let (layout_id, layout_hex) = layout(&doc);
    let shown = listed.iter().find(|o| u64_of(o, "id") == layout_id).expect("the field-by-field order is a vector");
    assert_eq!(layout_hex, str_of(shown, "canonical_hex"), "field-by-field layout of order {layout_id}");

    let digests: Vec<_> = orders.iter().map(order_digest).collect();
    assert!(digests.is_sorted(), "orders are listed in canonical order (ascending digest)");

    let batch = batch_hash(digests.iter().rev().copied());
    assert_eq!(hex(&batch), str_of(&v, "batch_hash_hex"), "batch_hash_hex");

    let auction = &v["auction"];
    let expected: Vec<Trade> =
        serde_json::from_value(auction["trades"].clone()).expect("auction.trades: a list of trades");
    let trades = run_auction(&orders);
    assert_eq!(trades, expected, "auction.trades");
    assert!(!trades.is_empty(), "the example auction trades");
    assert!(trades.iter().all(|t| t.price_ticks == u64_of(auction, "clearing_price_ticks")));
    assert_eq!(hex(&result_hash(&batch, &trades)), str_of(auction, "result_hash_hex"), "result_hash_hex");
}

#[test]
fn protocol_md_quotes_the_empty_batch_hash() {
    let empty = hex(&batch_hash([]));
    assert!(protocol_md().contains(&empty), "PROTOCOL.md gives the empty batch hash {empty}");
}

/// The ```text block whose heading starts `# {title}`: each line's name (every word but
/// the last) and its bytes (the last word, hex).
fn named_bytes(doc: &str, title: &str) -> std::collections::HashMap<String, Vec<u8>> {
    let marker = format!("\n```text\n# {title}");
    let start = doc.find(&marker).unwrap_or_else(|| panic!("PROTOCOL.md gives a {title}")) + marker.len();
    let block = doc[start..].split("\n```").next().expect("split yields at least one part");
    let rows = block.split_once('\n').expect("rows after the heading").1;
    rows.lines()
        .filter_map(|l| l.rsplit_once(' '))
        .map(|(name, bytes)| (name.trim().to_owned(), unhex(bytes)))
        .collect()
}

#[test]
fn protocol_md_bundle_signature_matches_the_code() {
    let v = named_bytes(&protocol_md(), "order bundle signature");
    let field = |name: &str| v.get(name).unwrap_or_else(|| panic!("the bundle vector gives {name:?}")).clone();
    let key = libp2p::identity::Keypair::ed25519_from_bytes(field("seed")).expect("a 32-byte Ed25519 seed");
    assert_eq!(hex(&key.public().to_peer_id().to_bytes()), hex(&field("peer id")), "peer id");
    let network = String::from_utf8(field("network")).expect("UTF-8 network");
    let market = String::from_utf8(field("market")).expect("UTF-8 market");
    let digests: Vec<[u8; 32]> =
        ["digest 1", "digest 2"].map(|d| field(d).try_into().expect("32-byte digests")).to_vec();
    let message = signed_message(&network, &market, &digests);
    assert_eq!(hex(&message), hex(&field("signed message")), "signed message");
    let signature = key.sign(&message).expect("Ed25519 signs");
    assert_eq!(hex(&signature), hex(&field("signature")), "signature");
    assert!(key.public().verify(&message, &signature));
}

#[test]
fn protocol_md_message_id_matches_the_code() {
    let v = named_bytes(&protocol_md(), "gossip message id");
    let field = |name: &str| v.get(name).unwrap_or_else(|| panic!("the message id vector gives {name:?}")).clone();
    let topic = String::from_utf8(field("topic")).expect("UTF-8 topic");
    let id = message_id(&field("source"), &topic, &field("data"));
    assert_eq!(hex(&id), hex(&field("message id")), "message id");
}
