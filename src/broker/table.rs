//! The subscription table: every session's filters in a trie of topic levels, so matching a
//! topic costs its number of levels (times the wildcard branches taken), not the number of
//! subscriptions. Shared subscriptions (`$share/{group}/{filter}`) sit at their filter's node
//! as groups; each matching message goes to one member of each group, round robin, preferring
//! members that are connected. Sans-IO: sessions are plain ids.

use std::collections::HashMap;

/// A session's id in the broker (never reused while the process runs).
pub type SessionId = u64;

/// The options of one subscription (MQTT 5 §3.8.3.1; 3.1.1 has the QoS only).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SubOpts {
    /// Granted QoS: the most a delivery through this subscription gets.
    pub qos: u8,
    /// Messages this session published itself are not delivered to it.
    pub no_local: bool,
    /// Deliveries keep the publisher's RETAIN flag (otherwise it is cleared).
    pub retain_as_published: bool,
    /// Subscription identifier to send with deliveries.
    pub id: Option<u32>,
}

/// One match: a session and the options it is delivered with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// The session.
    pub session: SessionId,
    /// The highest QoS among the session's matching subscriptions.
    pub qos: u8,
    /// Every matching subscription asked for no-local.
    pub no_local: bool,
    /// Some matching subscription keeps the RETAIN flag.
    pub retain_as_published: bool,
    /// Identifiers of the matching subscriptions that have one.
    pub ids: Vec<u32>,
}

impl Target {
    fn new(session: SessionId, o: SubOpts) -> Self {
        Self {
            session,
            qos: o.qos,
            no_local: o.no_local,
            retain_as_published: o.retain_as_published,
            ids: o.id.into_iter().collect(),
        }
    }
}

#[derive(Debug, Default)]
struct Group {
    name: Box<str>,
    members: Vec<(SessionId, SubOpts)>,
    next: usize,
}

#[derive(Debug, Default)]
struct Subs {
    direct: Vec<(SessionId, SubOpts)>,
    shared: Vec<Group>,
}

impl Subs {
    fn is_empty(&self) -> bool {
        self.direct.is_empty() && self.shared.is_empty()
    }

    /// Adds or replaces; `true` when it replaced.
    fn insert(&mut self, group: Option<&str>, session: SessionId, opts: SubOpts) -> bool {
        let list = match group {
            None => &mut self.direct,
            Some(name) => {
                let i = match self.shared.iter().position(|g| &*g.name == name) {
                    Some(i) => i,
                    None => {
                        self.shared.push(Group {
                            name: name.into(),
                            ..Group::default()
                        });
                        self.shared.len() - 1
                    }
                };
                &mut self.shared[i].members
            }
        };
        match list.iter_mut().find(|(s, _)| *s == session) {
            Some(entry) => {
                entry.1 = opts;
                true
            }
            None => {
                list.push((session, opts));
                false
            }
        }
    }

    fn remove(&mut self, group: Option<&str>, session: SessionId) -> bool {
        match group {
            None => remove_member(&mut self.direct, session),
            Some(name) => {
                let Some(i) = self.shared.iter().position(|g| &*g.name == name) else {
                    return false;
                };
                let removed = remove_member(&mut self.shared[i].members, session);
                if self.shared[i].members.is_empty() {
                    self.shared.swap_remove(i);
                }
                removed
            }
        }
    }

    fn collect(&mut self, online: &impl Fn(SessionId) -> bool, out: &mut Vec<(Target, bool)>) {
        out.extend(self.direct.iter().map(|&(s, o)| (Target::new(s, o), false)));
        for g in &mut self.shared {
            let n = g.members.len();
            let start = g.next % n;
            // The next connected member after the last one served; else the next in turn
            // (a persistent session that is away queues it).
            let pick = (0..n)
                .map(|k| (start + k) % n)
                .find(|&i| online(g.members[i].0))
                .unwrap_or(start);
            g.next = pick + 1;
            let (s, o) = g.members[pick];
            out.push((Target::new(s, o), true));
        }
    }
}

fn remove_member(list: &mut Vec<(SessionId, SubOpts)>, session: SessionId) -> bool {
    let before = list.len();
    list.retain(|(s, _)| *s != session);
    list.len() != before
}

#[derive(Debug, Default)]
struct Node {
    children: HashMap<Box<str>, Node>,
    plus: Option<Box<Node>>,
    /// Subscriptions ending in `#` here.
    hash: Subs,
    /// Subscriptions ending exactly here.
    here: Subs,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.children.is_empty()
            && self.plus.is_none()
            && self.hash.is_empty()
            && self.here.is_empty()
    }

    fn slot(&mut self, filter: &str) -> &mut Subs {
        let (level, rest) = split(filter);
        let node = match level {
            "#" => return &mut self.hash,
            "+" => self.plus.get_or_insert_with(Box::default),
            _ => self.children.entry(level.into()).or_default(),
        };
        match rest {
            Some(rest) => node.slot(rest),
            None => &mut node.here,
        }
    }

    /// Removes; prunes nodes left empty. Returns whether something was removed.
    fn remove(&mut self, filter: &str, group: Option<&str>, session: SessionId) -> bool {
        let (level, rest) = split(filter);
        if level == "#" {
            return self.hash.remove(group, session);
        }
        let removed;
        let empty;
        if level == "+" {
            let Some(node) = self.plus.as_mut() else {
                return false;
            };
            removed = node.remove_rest(rest, group, session);
            empty = node.is_empty();
            if empty {
                self.plus = None;
            }
        } else {
            let Some(node) = self.children.get_mut(level) else {
                return false;
            };
            removed = node.remove_rest(rest, group, session);
            empty = node.is_empty();
            if empty {
                self.children.remove(level);
            }
        }
        removed
    }

    fn remove_rest(&mut self, rest: Option<&str>, group: Option<&str>, s: SessionId) -> bool {
        match rest {
            Some(rest) => self.remove(rest, group, s),
            None => self.here.remove(group, s),
        }
    }

    fn walk(
        &mut self,
        rest: Option<&str>,
        wild: bool,
        online: &impl Fn(SessionId) -> bool,
        out: &mut Vec<(Target, bool)>,
    ) {
        if wild {
            self.hash.collect(online, out);
        }
        let Some(rest) = rest else {
            self.here.collect(online, out);
            return;
        };
        let (level, next) = split(rest);
        if let Some(child) = self.children.get_mut(level) {
            child.walk(next, true, online, out);
        }
        if wild && let Some(plus) = self.plus.as_mut() {
            plus.walk(next, true, online, out);
        }
    }
}

fn split(s: &str) -> (&str, Option<&str>) {
    match s.split_once('/') {
        Some((level, rest)) => (level, Some(rest)),
        None => (s, None),
    }
}

/// Every subscription of every session.
#[derive(Debug, Default)]
pub struct Table {
    root: Node,
    count: usize,
    scratch: Vec<(Target, bool)>,
}

impl Table {
    /// Subscriptions held.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether no subscription is held.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Subscribes `session` to the valid `filter` (of `group` when shared); a second
    /// subscription to the same filter replaces the first (MQTT 3.1.1 §3.8.4). `true` when it
    /// replaced one.
    pub fn insert(
        &mut self,
        session: SessionId,
        group: Option<&str>,
        filter: &str,
        opts: SubOpts,
    ) -> bool {
        let replaced = self.root.slot(filter).insert(group, session, opts);
        if !replaced {
            self.count += 1;
        }
        replaced
    }

    /// Removes one subscription; `false` when there was none.
    pub fn remove(&mut self, session: SessionId, group: Option<&str>, filter: &str) -> bool {
        let removed = self.root.remove(filter, group, session);
        if removed {
            self.count -= 1;
        }
        removed
    }

    /// The sessions `topic` goes to: one target per session for its direct subscriptions
    /// (overlapping ones merged: highest QoS, every identifier), plus one per shared group.
    /// `online` says which sessions are connected (shared groups prefer those).
    pub fn targets(
        &mut self,
        topic: &str,
        online: impl Fn(SessionId) -> bool,
        out: &mut Vec<Target>,
    ) {
        let mut found = std::mem::take(&mut self.scratch);
        let wild = !topic.starts_with('$');
        self.root.walk(Some(topic), wild, &online, &mut found);
        // Direct matches of one session merge into one delivery (few per topic: sort is cheap).
        found.sort_by_key(|(t, shared)| (*shared, t.session));
        let mut last_direct = None;
        for (t, shared) in found.drain(..) {
            if !shared && last_direct == Some(t.session) {
                if let Some(last) = out.last_mut() {
                    last.qos = last.qos.max(t.qos);
                    last.no_local &= t.no_local;
                    last.retain_as_published |= t.retain_as_published;
                    last.ids.extend(t.ids);
                }
                continue;
            }
            last_direct = (!shared).then_some(t.session);
            out.push(t);
        }
        self.scratch = found;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(qos: u8) -> SubOpts {
        SubOpts {
            qos,
            ..SubOpts::default()
        }
    }

    fn sessions(t: &mut Table, topic: &str) -> Vec<(SessionId, u8)> {
        let mut out = Vec::new();
        t.targets(topic, |_| true, &mut out);
        out.iter().map(|t| (t.session, t.qos)).collect()
    }

    #[test]
    fn a_topic_reaches_every_matching_filter() {
        let mut t = Table::default();
        t.insert(1, None, "a/b", opts(0));
        t.insert(2, None, "a/+", opts(1));
        t.insert(3, None, "a/#", opts(2));
        t.insert(4, None, "#", opts(0));
        t.insert(5, None, "+/+/c", opts(0));
        t.insert(6, None, "b/#", opts(0));
        assert_eq!(sessions(&mut t, "a/b"), [(1, 0), (2, 1), (3, 2), (4, 0)]);
        assert_eq!(sessions(&mut t, "a"), [(3, 2), (4, 0)]);
        assert_eq!(sessions(&mut t, "a/x/c"), [(3, 2), (4, 0), (5, 0)]);
        assert_eq!(sessions(&mut t, "$SYS/a"), []);
        assert_eq!(t.len(), 6);
    }

    #[test]
    fn overlapping_subscriptions_of_one_session_deliver_once_at_the_highest_qos() {
        let mut t = Table::default();
        t.insert(
            7,
            None,
            "a/+",
            SubOpts {
                id: Some(1),
                ..opts(0)
            },
        );
        t.insert(
            7,
            None,
            "a/#",
            SubOpts {
                id: Some(2),
                ..opts(2)
            },
        );
        t.insert(7, None, "a/b", opts(1));
        let mut out = Vec::new();
        t.targets("a/b", |_| true, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].qos, 2);
        let mut ids = out[0].ids.clone();
        ids.sort_unstable();
        assert_eq!(ids, [1, 2]);
    }

    #[test]
    fn resubscribing_replaces_and_unsubscribing_prunes() {
        let mut t = Table::default();
        assert!(!t.insert(1, None, "a/+/c", opts(0)));
        assert!(t.insert(1, None, "a/+/c", opts(2)));
        assert_eq!(t.len(), 1);
        assert_eq!(sessions(&mut t, "a/b/c"), [(1, 2)]);
        assert!(t.remove(1, None, "a/+/c"));
        assert!(!t.remove(1, None, "a/+/c"));
        assert!(t.is_empty());
        assert!(t.root.is_empty(), "empty nodes are pruned");
    }

    #[test]
    fn a_shared_group_gets_each_message_once_round_robin() {
        let mut t = Table::default();
        t.insert(1, Some("g"), "s/#", opts(1));
        t.insert(2, Some("g"), "s/#", opts(1));
        t.insert(3, Some("h"), "s/#", opts(0));
        let mut per = HashMap::new();
        for _ in 0..10 {
            for (s, _) in sessions(&mut t, "s/x") {
                *per.entry(s).or_insert(0) += 1;
            }
        }
        assert_eq!(per[&1], 5);
        assert_eq!(per[&2], 5);
        assert_eq!(per[&3], 10, "another group gets every message");
        // Offline members are passed over while another member is connected.
        let mut out = Vec::new();
        for _ in 0..4 {
            t.targets("s/x", |s| s != 1, &mut out);
        }
        assert!(out.iter().all(|t| t.session != 1));
        t.remove(1, Some("g"), "s/#");
        t.remove(2, Some("g"), "s/#");
        assert_eq!(sessions(&mut t, "s/x"), [(3, 0)]);
    }

    #[test]
    fn a_session_with_direct_and_shared_subscriptions_gets_both() {
        let mut t = Table::default();
        t.insert(1, None, "s/#", opts(0));
        t.insert(1, Some("g"), "s/#", opts(1));
        assert_eq!(sessions(&mut t, "s/x"), [(1, 0), (1, 1)]);
    }
}
