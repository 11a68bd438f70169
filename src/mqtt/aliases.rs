//! Topic aliases toward an MQTT 5 subscriber (MQTT 5 §3.3.2.3.4), sans-IO.
//!
//! A client that announces a Topic Alias Maximum in CONNECT gets, for each topic delivered to
//! it, an alias: the first PUBLISH of a topic carries the topic and the alias, later ones the
//! alias and an empty topic. When every alias is taken, the next new topic takes the oldest
//! assigned alias over (round robin), sending its topic again. Aliases live as long as the
//! network connection; a resumed session starts with none (§3.3.2.3.4).
//!
//! A QoS 2 PUBLISH always carries its topic beside the alias (allowed: it sets the same
//! mapping again): MQTT.js 5 hands a QoS 2 message to the application at PUBREL from the
//! packet it stored, whose topic is still empty when the alias stood alone.
//!
//! Cost: one hash lookup of the topic per delivery to a client that asked for aliases;
//! nothing for clients that did not (3.1.1, or MQTT 5 without the property).

use std::collections::HashMap;
use std::sync::Arc;

use crate::broker::outbox::PublishOut;

/// Aliases we use toward one client at most, whatever it allows: bounds this table.
pub const OUT_ALIAS_MAX: u16 = 64;

/// One connection's outgoing topic aliases.
#[derive(Debug)]
pub struct OutAliases {
    /// Aliases in use at most: the client's Topic Alias Maximum, capped.
    max: u16,
    /// The client's maximum packet size (0: none): an alias must not push a PUBLISH over it.
    max_packet: usize,
    by_topic: HashMap<Arc<str>, u16>,
    /// Topic of each alias (index = alias − 1).
    topics: Vec<Arc<str>>,
    /// The alias a new topic takes once all are in use.
    next: u16,
    empty: Arc<str>,
}

impl OutAliases {
    /// The table for a client that allows `client_max` aliases (0: none) and packets of up to
    /// `max_packet` bytes (0: no limit).
    pub fn new(client_max: u16, max_packet: u32) -> Self {
        Self {
            max: client_max.min(OUT_ALIAS_MAX),
            max_packet: max_packet as usize,
            by_topic: HashMap::new(),
            topics: Vec::new(),
            next: 1,
            empty: Arc::from(""),
        }
    }

    /// Gives `p` an alias: the topic is dropped from the packet when the client knows the
    /// alias already; a new alias is set with the topic unless that would make the packet
    /// larger than the client takes.
    pub fn apply(&mut self, p: &mut PublishOut) {
        if self.max == 0 || p.topic.is_empty() {
            return;
        }
        if let Some(&alias) = self.by_topic.get(&p.topic) {
            p.alias = Some(alias);
            if p.qos < 2 {
                p.topic = self.empty.clone();
            }
            return;
        }
        if self.max_packet > 0 && p.packet_len() + 3 > self.max_packet {
            return;
        }
        let alias = if self.topics.len() < usize::from(self.max) {
            self.topics.push(p.topic.clone());
            self.topics.len() as u16
        } else {
            let alias = self.next;
            self.next = if alias == self.max { 1 } else { alias + 1 };
            let slot = &mut self.topics[usize::from(alias) - 1];
            self.by_topic.remove(slot);
            *slot = p.topic.clone();
            alias
        };
        self.by_topic.insert(p.topic.clone(), alias);
        p.alias = Some(alias);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn publish(topic: &str) -> PublishOut {
        PublishOut {
            topic: Arc::from(topic),
            payload: Bytes::from_static(b"21.5"),
            qos: 1,
            pkid: 1,
            retain: false,
            dup: false,
            props: None,
            sub_ids: Vec::new(),
            alias: None,
        }
    }

    fn sent(a: &mut OutAliases, topic: &str) -> (String, Option<u16>) {
        sent_qos(a, topic, 1)
    }

    fn sent_qos(a: &mut OutAliases, topic: &str, qos: u8) -> (String, Option<u16>) {
        let mut p = publish(topic);
        p.qos = qos;
        a.apply(&mut p);
        (p.topic.to_string(), p.alias)
    }

    #[test]
    fn the_first_publish_sets_the_alias_and_later_ones_use_it_alone() {
        let mut a = OutAliases::new(10, 0);
        assert_eq!(sent(&mut a, "t/a"), ("t/a".into(), Some(1)));
        assert_eq!(sent(&mut a, "t/a"), (String::new(), Some(1)));
        assert_eq!(sent(&mut a, "t/b"), ("t/b".into(), Some(2)));
        assert_eq!(sent(&mut a, "t/a"), (String::new(), Some(1)));
    }

    #[test]
    fn a_qos2_publish_keeps_its_topic_beside_the_alias() {
        let mut a = OutAliases::new(10, 0);
        assert_eq!(sent_qos(&mut a, "t/a", 2), ("t/a".into(), Some(1)));
        assert_eq!(sent_qos(&mut a, "t/a", 2), ("t/a".into(), Some(1)));
        assert_eq!(sent_qos(&mut a, "t/a", 0), (String::new(), Some(1)));
    }

    #[test]
    fn a_client_without_a_topic_alias_maximum_gets_topics() {
        let mut a = OutAliases::new(0, 0);
        assert_eq!(sent(&mut a, "t/a"), ("t/a".into(), None));
        assert_eq!(sent(&mut a, "t/a"), ("t/a".into(), None));
    }

    #[test]
    fn when_all_aliases_are_taken_the_oldest_is_reassigned_with_its_topic() {
        let mut a = OutAliases::new(2, 0);
        sent(&mut a, "t/a");
        sent(&mut a, "t/b");
        assert_eq!(sent(&mut a, "t/c"), ("t/c".into(), Some(1)));
        assert_eq!(
            sent(&mut a, "t/a"),
            ("t/a".into(), Some(2)),
            "t/a lost its alias"
        );
        assert_eq!(sent(&mut a, "t/c"), (String::new(), Some(1)));
        assert_eq!(sent(&mut a, "t/b"), ("t/b".into(), Some(1)));
    }

    #[test]
    fn the_table_is_capped_whatever_the_client_allows() {
        let mut a = OutAliases::new(u16::MAX, 0);
        for i in 0..200 {
            let (_, alias) = sent(&mut a, &format!("t/{i}"));
            assert!(alias.is_some_and(|x| (1..=OUT_ALIAS_MAX).contains(&x)));
        }
        assert_eq!(a.by_topic.len(), usize::from(OUT_ALIAS_MAX));
    }

    #[test]
    fn no_alias_is_added_to_a_publish_at_the_clients_packet_limit() {
        let len = publish("t/a").packet_len();
        let mut a = OutAliases::new(10, len as u32);
        assert_eq!(sent(&mut a, "t/a"), ("t/a".into(), None));
        let mut roomy = OutAliases::new(10, len as u32 + 3);
        assert_eq!(sent(&mut roomy, "t/a"), ("t/a".into(), Some(1)));
    }
}
