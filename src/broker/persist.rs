//! What of the broker outlives the process (see [`super::state`] and [`super::retained`]):
//! restoring the snapshots at start, routing the WAL records above them again, and taking
//! the snapshots for the fan-out thread to write.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::SyncSender;
use std::sync::{Arc, PoisonError};

use super::outbox::Outbox;
use super::state::{self, Now, SessionImage};
use super::{Broker, Entry, Routed};
use crate::decode::filter;
use crate::wal::Done;

/// The snapshots to write, and who waits for them.
#[derive(Debug)]
pub struct Snapshot {
    /// The highest WAL sequence number they cover.
    pub covered: u64,
    /// The retained store, if it changed.
    pub retained: Option<Vec<u8>>,
    /// The persistent sessions, if they changed.
    pub sessions: Option<Vec<u8>>,
    /// Told once both are written.
    pub waiters: Vec<Done>,
}

impl Broker {
    /// Whether the WAL writer is to hold every round it hands over (see `Broker::holds`).
    pub fn holds(&self) -> Arc<AtomicBool> {
        self.holds.clone()
    }

    /// Restores the persistent sessions of a snapshot covering the WAL up to `covered`; their
    /// clients are away until they connect again. A session whose client had been away longer
    /// than its expiry interval by `now` (fleetlake's downtime included) is not restored;
    /// returns how many were not.
    pub fn restore(&self, covered: u64, sessions: Vec<SessionImage>, now: &Now) -> usize {
        let mut hub = self.hub();
        let hub = &mut *hub;
        hub.sessions_covered = covered;
        hub.routed_seq = hub.routed_seq.max(covered);
        let mut expired = 0;
        for mut s in sessions {
            // The expiry runs on from where it was: what is left of it starts now (a client
            // online at the snapshot is taken as gone at the restart).
            if let Some(away) = s.away_since
                && s.expiry != u32::MAX
            {
                let gone = now.since(away);
                if gone >= u64::from(s.expiry) {
                    expired += 1;
                    continue;
                }
                s.expiry -= gone as u32;
            }
            hub.next_id += 1;
            let id = hub.next_id;
            let outbox = Arc::new(Outbox::default());
            outbox
                .lock()
                .restore(s.queue, s.inflight, s.next_pkid, &self.bounds);
            for (f, opts) in &s.subs {
                if let Ok(p) = filter::parse(f, usize::MAX) {
                    hub.table.insert(id, p.group, p.filter, *opts);
                }
            }
            let client: Arc<str> = Arc::from(s.client);
            hub.by_client.insert(client.clone(), id);
            let entry = Entry {
                client,
                user: s.user.map(Arc::from),
                outbox,
                persistent: true,
                expiry: s.expiry,
                away_since: Some(now.at),
                filters: s.subs,
            };
            hub.sessions.insert(id, entry);
        }
        self.after_change(hub);
        self.note_queued();
        expired
    }

    /// Whether a replayed record must be routed again: a retained one the snapshot may lack, or
    /// a QoS 1/2 one above the session snapshot while persistent sessions subscribe.
    pub fn wants_replay(&self, seq: u64, qos: u8, retain: bool) -> bool {
        retain
            || (qos > 0 && self.holds.load(Ordering::Acquire) && seq > self.hub().sessions_covered)
    }

    /// Routes a record found in the WAL at start (before any client connects): its retained
    /// message is applied (unless the snapshot has it), and above the session snapshot it is
    /// queued for the persistent sessions it matches (QoS 1/2; their clients are away).
    pub fn replay(&self, m: &Routed) {
        let mut hub = self.hub();
        let hub = &mut *hub;
        let mut targets = std::mem::take(&mut hub.targets);
        if m.seq > hub.sessions_covered {
            self.route_one(hub, m, &mut targets);
        } else if m.retain {
            self.retain(hub, m);
        }
        hub.targets = targets;
    }

    /// The snapshots that changed since the last call (with their waiters), or `None`.
    pub fn snapshot(&self) -> Option<Snapshot> {
        let mut hub = self.hub();
        let hub = &mut *hub;
        if !hub.retained_dirty && !hub.sessions_dirty && hub.waiters.is_empty() {
            return None;
        }
        let now = Now::get();
        let retained = std::mem::take(&mut hub.retained_dirty).then(|| hub.retained.encode(&now));
        let sessions = std::mem::take(&mut hub.sessions_dirty).then(|| {
            let images: Vec<SessionImage> = hub
                .sessions
                .values()
                .filter(|e| e.persistent)
                .map(|e| {
                    let (queue, inflight, next_pkid) = e.outbox.lock().image();
                    SessionImage {
                        client: e.client.to_string(),
                        user: e.user.as_deref().map(str::to_string),
                        subs: e.filters.clone(),
                        expiry: e.expiry,
                        away_since: e.away_since.map(|t| now.unix_of(t)),
                        queue,
                        inflight,
                        next_pkid,
                    }
                })
                .collect();
            state::encode(hub.routed_seq, &images, &now)
        });
        Some(Snapshot {
            covered: hub.routed_seq,
            retained,
            sessions,
            waiters: std::mem::take(&mut hub.waiters),
        })
    }

    /// `done` is told once the next snapshot is written (a persistent session's SUBACK waits
    /// for it); the fan-out is asked to write one now.
    pub fn after_snapshot(&self, done: Done) {
        self.hub().waiters.push(done);
        let kick = self.kick.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(tx) = kick.as_ref() {
            // Full: rounds are queued, and the fan-out snapshots after them anyway.
            let _ = tx.try_send(Vec::new());
        }
    }

    /// Ends the persistent sessions whose client has been away longer than their expiry
    /// interval (MQTT 5 §3.1.2.11.2), and drops the retained messages whose message expiry
    /// ran out; returns how many sessions ended.
    pub fn expire(&self, now: std::time::Instant) -> usize {
        let mut hub = self.hub();
        if hub.retained.expire(now) > 0 {
            hub.retained_dirty = true;
            self.stats
                .set_gauge(&self.stats.broker_retained, hub.retained.len());
        }
        let expired: Vec<_> = hub
            .sessions
            .iter()
            .filter(|(_, e)| {
                e.persistent
                    && e.expiry != u32::MAX
                    && e.away_since.is_some_and(|t| {
                        now.saturating_duration_since(t).as_secs() >= u64::from(e.expiry)
                    })
                    && !e.outbox.is_online()
            })
            .map(|(&id, _)| id)
            .collect();
        for &id in &expired {
            self.remove_session(&mut hub, id);
        }
        expired.len()
    }

    /// Lets [`Broker::after_snapshot`] wake the fan-out through `tx`.
    pub fn set_kick(&self, tx: SyncSender<Vec<Routed>>) {
        *self.kick.lock().unwrap_or_else(PoisonError::into_inner) = Some(tx);
    }

    /// Drops the broker's end of the fan-out channel (at shutdown, after the WAL writer's),
    /// so the fan-out thread writes its last snapshot and ends.
    pub fn close_feed(&self) {
        self.kick
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::broker::{Limits, retained::Retained};
    use crate::telemetry::Stats;

    fn broker() -> Broker {
        let limits = Limits {
            session_queue_bytes: 1 << 20,
            queue_bytes: 1 << 22,
            max_inflight: 8,
            max_subscriptions: 10,
            max_filter_len: 100,
            retained_max: 10,
            retained_max_bytes: 1 << 20,
        };
        Broker::new(
            limits,
            Retained::new(10, 1 << 20),
            Arc::new(Stats::default()),
        )
    }

    #[test]
    fn a_session_expires_after_the_interval_its_disconnect_set() {
        let b = broker();
        let a = b.attach("c", None, true, 1);
        let claim = a.outbox.claim(8, 0, &mut Vec::new());
        a.outbox.release(claim);
        b.detach(a.id, true, 5);
        assert_eq!(
            b.expire(Instant::now() + Duration::from_secs(3)),
            0,
            "5 s, not 1"
        );
        assert_eq!(b.expire(Instant::now() + Duration::from_secs(6)), 1);
    }

    #[test]
    fn a_restart_counts_the_time_away_toward_session_expiry() {
        let image = |client: &str, away_since| SessionImage {
            client: client.into(),
            user: None,
            subs: Vec::new(),
            expiry: 100,
            away_since,
            queue: Vec::new(),
            inflight: Vec::new(),
            next_pkid: 0,
        };
        let now = Now::get();
        let b = broker();
        let sessions = vec![
            image("gone", Some(now.unix - 150)),
            image("away", Some(now.unix - 60)),
            image("online", None),
        ];
        assert_eq!(b.restore(0, sessions, &now), 1, "150 s away of 100");
        assert!(b.hub().by_client.contains_key("away"));
        assert!(!b.hub().by_client.contains_key("gone"));
        assert_eq!(
            b.expire(now.at + Duration::from_secs(41)),
            1,
            "40 s were left"
        );
        assert_eq!(
            b.expire(now.at + Duration::from_secs(101)),
            1,
            "online: 100 s from now"
        );
    }
}
