//! The delivery audit of Sparkplug B profiles (`format = "sparkplug_b"`): `seq` continuity per
//! edge node. Sparkplug carries no per-device sequence; each node numbers all its messages
//! 0-255 (NBIRTH 0), so the audit follows each node: a message whose `seq` is ahead of the
//! next one expected counts the skipped ones missing; one behind (or equal to an earlier one)
//! counts out of order. An NBIRTH starts the count again; NDEATH carries no `seq`. Kept apart
//! from the envelope's books (`ledger.rs`), which hand it every `spBv1.0/` message.

use crate::sim::sparkplug;
use std::collections::BTreeMap;

/// One edge node's books.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct NodeSeq {
    /// `GROUP/NODE`.
    pub node: String,
    pub messages: u64,
    pub births: u64,
    pub deaths: u64,
    /// Messages skipped by `seq` (lost on the way).
    pub missing: u64,
    /// Messages whose `seq` was behind the expected one (duplicates, reordering).
    pub out_of_order: u64,
    /// Messages before the node's first NBIRTH (not judged).
    pub before_birth: u64,
    #[serde(skip)]
    next: Option<u8>,
}

/// The Sparkplug part of an audit report.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct SparkplugAudit {
    pub nodes: Vec<NodeSeq>,
    pub messages: u64,
    pub missing: u64,
    pub out_of_order: u64,
    /// `spBv1.0/` messages whose topic or payload could not be read.
    pub unparsable: u64,
}

/// Every edge node seen.
#[derive(Debug, Default)]
pub struct SeqAudit {
    nodes: BTreeMap<String, NodeSeq>,
    unparsable: u64,
}

impl SeqAudit {
    /// Whether a topic is Sparkplug B's.
    pub fn is_sparkplug(topic: &str) -> bool {
        topic.starts_with("spBv1.0/")
    }

    /// One message on `topic` (`spBv1.0/GROUP/TYPE/NODE[/DEVICE]`).
    pub fn observe(&mut self, topic: &str, payload: &[u8]) {
        let mut levels = topic.split('/');
        let (Some(_), Some(group), Some(kind), Some(node)) =
            (levels.next(), levels.next(), levels.next(), levels.next())
        else {
            self.unparsable += 1;
            return;
        };
        if matches!(kind, "NCMD" | "DCMD" | "STATE") {
            return;
        }
        let key = format!("{group}/{node}");
        let n = self
            .nodes
            .entry(key.clone())
            .or_insert_with(|| NodeSeq { node: key, ..Default::default() });
        n.messages += 1;
        if kind == "NDEATH" {
            n.deaths += 1;
            return;
        }
        let Some(seq) = sparkplug::read_seq(payload) else {
            self.unparsable += 1;
            return;
        };
        let seq = seq as u8;
        if kind == "NBIRTH" {
            n.births += 1;
            n.next = Some(seq.wrapping_add(1));
            return;
        }
        let Some(want) = n.next else {
            n.before_birth += 1;
            return;
        };
        // Ahead by less than half the ring: skipped messages; otherwise behind.
        let ahead = seq.wrapping_sub(want);
        if ahead < 128 {
            n.missing += ahead as u64;
            n.next = Some(seq.wrapping_add(1));
        } else {
            n.out_of_order += 1;
        }
    }

    /// The books so far.
    pub fn report(&self) -> SparkplugAudit {
        let nodes: Vec<NodeSeq> = self.nodes.values().cloned().collect();
        SparkplugAudit {
            messages: nodes.iter().map(|n| n.messages).sum(),
            missing: nodes.iter().map(|n| n.missing).sum(),
            out_of_order: nodes.iter().map(|n| n.out_of_order).sum(),
            unparsable: self.unparsable,
            nodes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(kind: &str, seq: u8) -> (String, Vec<u8>) {
        let mut p = vec![];
        match kind {
            "NBIRTH" => sparkplug::encode_nbirth(&mut p, 1, 0),
            "NDEATH" => sparkplug::encode_ndeath(&mut p, 1, 0),
            _ => sparkplug::encode_ddeath(&mut p, 1, seq),
        }
        let dev = if kind.starts_with('D') { "/d1" } else { "" };
        (format!("spBv1.0/g/{kind}/n1{dev}"), p)
    }

    #[test]
    fn gaps_wraps_reordering_and_rebirths_per_node() {
        let mut a = SeqAudit::default();
        let mut feed = |kind: &str, seq: u8| {
            let (t, p) = msg(kind, seq);
            a.observe(&t, &p);
        };
        feed("DDATA", 7); // before any birth: not judged
        feed("NBIRTH", 0);
        for s in 1..=255u8 {
            feed("DDATA", s);
        }
        feed("DDATA", 0); // wrapped
        feed("DDATA", 3); // 1 and 2 missing
        feed("DDATA", 2); // behind
        feed("NDEATH", 0);
        feed("NBIRTH", 0); // a rebirth starts again
        feed("DDATA", 1);
        let r = a.report();
        assert_eq!(r.nodes.len(), 1);
        let n = &r.nodes[0];
        assert_eq!((n.births, n.deaths, n.before_birth), (2, 1, 1));
        assert_eq!((n.missing, n.out_of_order), (2, 1));
        assert_eq!(n.messages, 1 + 1 + 255 + 3 + 1 + 1 + 1);
        a.observe("spBv1.0/short", b"");
        assert_eq!(a.report().unparsable, 1);
    }
}
