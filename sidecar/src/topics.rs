//! GossipSub topic names (DESIGN §3): per network `N` and market `M`
//! `openmatch/N/orders/M`, `openmatch/N/batches/M`, `openmatch/N/results/M`, and one
//! `openmatch/N/control` per network.

use libp2p::gossipsub::IdentTopic;

/// What a topic carries; each kind admits exactly one gossip body type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TopicKind {
    /// `OrderGossip` of one market.
    Orders,
    /// `BatchSealed` of one market.
    Batches,
    /// `TradeResult` of one market.
    Results,
    /// `PeerStatus` heartbeats of the whole network.
    Control,
}

impl TopicKind {
    /// The kind's path segment and metric label: `orders`, `batches`, `results`, `control`.
    pub fn as_str(self) -> &'static str {
        match self {
            TopicKind::Orders => "orders",
            TopicKind::Batches => "batches",
            TopicKind::Results => "results",
            TopicKind::Control => "control",
        }
    }

    /// The per-market kinds, in topic-list order.
    pub const PER_MARKET: [TopicKind; 3] = [TopicKind::Orders, TopicKind::Batches, TopicKind::Results];
}

/// A parsed topic of this node's network. `market` is empty for [`TopicKind::Control`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Topic {
    /// What the topic carries.
    pub kind: TopicKind,
    /// Market name, empty for the control topic.
    pub market: String,
}

impl Topic {
    /// Orders topic of `market`.
    pub fn orders(market: &str) -> Self {
        Topic { kind: TopicKind::Orders, market: market.to_owned() }
    }

    /// The network's control topic.
    pub fn control() -> Self {
        Topic { kind: TopicKind::Control, market: String::new() }
    }

    /// Full topic string on `network`.
    pub fn name(&self, network: &str) -> String {
        match self.kind {
            TopicKind::Control => format!("openmatch/{network}/control"),
            kind => format!("openmatch/{network}/{}/{}", kind.as_str(), self.market),
        }
    }

    /// The libp2p topic (identity hash: the topic hash is the name itself).
    pub fn ident(&self, network: &str) -> IdentTopic {
        IdentTopic::new(self.name(network))
    }

    /// Parses a topic string of `network`; `None` for anything else (another network, an
    /// unknown kind, a malformed name).
    pub fn parse(network: &str, name: &str) -> Option<Topic> {
        let rest = name.strip_prefix("openmatch/")?.strip_prefix(network)?.strip_prefix('/')?;
        if rest == "control" {
            return Some(Topic::control());
        }
        let (kind, market) = rest.split_once('/')?;
        let kind = match kind {
            "orders" => TopicKind::Orders,
            "batches" => TopicKind::Batches,
            "results" => TopicKind::Results,
            _ => return None,
        };
        if market.is_empty() || market.contains('/') {
            return None;
        }
        Some(Topic { kind, market: market.to_owned() })
    }

    /// Every topic a node trading `markets` subscribes to: three per market plus control.
    pub fn all_for<'a>(markets: impl IntoIterator<Item = &'a String>) -> Vec<Topic> {
        let mut topics: Vec<Topic> = markets
            .into_iter()
            .flat_map(|m| TopicKind::PER_MARKET.map(|kind| Topic { kind, market: m.clone() }))
            .collect();
        topics.push(Topic::control());
        topics
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_design() {
        assert_eq!(Topic::orders("BTC-USD").name("n1"), "openmatch/n1/orders/BTC-USD");
        assert_eq!(Topic::control().name("n1"), "openmatch/n1/control");
        let t = Topic { kind: TopicKind::Results, market: "ETH-USDT".into() };
        assert_eq!(t.name("prod"), "openmatch/prod/results/ETH-USDT");
    }

    #[test]
    fn parse_inverts_name() {
        for t in Topic::all_for(&["BTC-USD".into(), "ETH-USD".into()]) {
            assert_eq!(Topic::parse("n1", &t.name("n1")), Some(t));
        }
        assert_eq!(Topic::all_for(&["A".into()]).len(), 4);
    }

    #[test]
    fn parse_rejects_foreign_and_malformed() {
        for bad in [
            "openmatch/n2/orders/BTC-USD",
            "openmatch/n1/trades/BTC-USD",
            "openmatch/n1/orders/",
            "openmatch/n1/orders/A/B",
            "openmatch/n1",
            "other/n1/control",
            "openmatch/n1x/control",
        ] {
            assert_eq!(Topic::parse("n1", bad), None, "{bad}");
        }
    }
}
