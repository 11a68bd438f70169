//! Recovery: at start, before any source runs, every WAL record the checkpoint does not cover
//! is decoded again ([`decode::decode_record`]: same client id and receive time, so the same
//! rows) and fed to the batcher through the memory budget, in sequence order. A batch that was
//! being published when the last run stopped is rebuilt exactly (see `batch::Batches::hold`).
//! Bridge records, published or not, also seed their bridge's redelivery filter: a broker may
//! still deliver them again.
//!
//! Runs on the blocking pool (segment reads and decoding are synchronous); the budget is taken
//! per group of about [`admit::group_limit`] bytes, so a long log streams through the pipeline
//! under the same budget as live traffic.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;

use crate::admit;
use crate::bridge::{Redelivery, redelivery};
use crate::budget::Budget;
use crate::decode::{self, Message, Source, topic::Router};
use crate::mqtt::recent::{QOS1_WINDOW, Recent, fingerprint};
use crate::mqtt::session::Parked;
use crate::telemetry::Stats;
use crate::wal::{self, Admitted, Checkpoint, DiskFs};

/// What a replay found.
#[derive(Debug)]
pub struct Recovered {
    /// The WAL's file system, given back.
    pub fs: DiskFs,
    /// Segments, records, the next sequence number.
    pub log: wal::Recovery,
    /// Per bridge name, the fingerprints of its records still in the WAL.
    pub redelivery: HashMap<String, Redelivery>,
    /// Per MQTT client id, its QoS 1/2 messages still in the WAL (so a resend after the
    /// crash is recognised).
    pub recent: HashMap<String, Parked>,
}

/// Feeds WAL records the checkpoint does not cover back into the batcher.
#[derive(Debug)]
pub struct Replay {
    /// Bridge name → size of its redelivery filter.
    pub bridges: HashMap<String, usize>,
    /// What is published already.
    pub checkpoint: Checkpoint,
    /// The current table routing (replay routes by it).
    pub router: Router,
    /// The batcher's input.
    pub out: mpsc::Sender<Admitted>,
    /// Replayed groups hold their share of it, like live ones.
    pub budget: Budget,
    /// Counters (`wal_replayed`, `wal_damaged_segments`).
    pub stats: Arc<Stats>,
    /// The broker, which takes the retained messages of every record still in the WAL.
    pub broker: Option<Arc<crate::broker::Broker>>,
}

impl Replay {
    /// Replays on the blocking pool.
    pub async fn run(self, fs: DiskFs) -> std::io::Result<Recovered> {
        let handle = tokio::runtime::Handle::current();
        let started = Instant::now();
        let stats = self.stats.clone();
        let (recovered, replayed) = tokio::task::spawn_blocking(move || self.replay(fs, &handle))
            .await
            .map_err(std::io::Error::other)??;
        let log = &recovered.log;
        Stats::add(&stats.wal_damaged_segments, log.damaged);
        tracing::info!(
            segments = log.segments.len(),
            records = log.records,
            replayed,
            damaged_segments = log.damaged,
            mib = log.bytes >> 20,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "WAL recovered"
        );
        Ok(recovered)
    }

    fn replay(
        self,
        fs: DiskFs,
        handle: &tokio::runtime::Handle,
    ) -> std::io::Result<(Recovered, u64)> {
        let mut redelivery: HashMap<String, Redelivery> = self
            .bridges
            .iter()
            .map(|(name, cap)| (name.clone(), Redelivery::new(*cap)))
            .collect();
        let mut recent = RecentSeeds::default();
        let group_limit = admit::group_limit(&self.budget);
        let mut group: Vec<Message> = Vec::new();
        let mut cost = 0;
        let mut replayed = 0u64;
        let send = |msgs: Vec<Message>, cost: usize| {
            let held = handle.block_on(self.budget.acquire(cost));
            self.out
                .blocking_send(Admitted { msgs, held })
                .map_err(|_| std::io::Error::other("the batcher stopped during replay"))
        };
        let log = wal::replay(&fs, |entry| {
            if entry.source == Source::Bridge
                && let Some(r) = redelivery.get_mut(&*entry.client)
            {
                // Published or not: a redelivery of it must not be stored again.
                r.insert(redelivery::fingerprint(&entry.topic, &entry.payload));
            }
            if entry.source == Source::Mqtt
                && let Some(pkid) = entry.pkid
            {
                recent.add(&entry.client, pkid, entry.qos, &entry.topic, &entry.payload);
            }
            let props = entry
                .props
                .as_deref()
                .and_then(decode::props::decode)
                .map(Arc::new);
            if let Some(b) = &self.broker
                && entry.source != Source::Grpc
                && b.wants_replay(entry.seq, entry.qos, entry.retain)
            {
                // Published or not: the broker's snapshots may not have it.
                b.replay(&crate::wal::Routed {
                    seq: entry.seq,
                    origin: entry.client.clone(),
                    topic: Arc::from(entry.topic.as_str()),
                    payload: entry.payload.clone(),
                    qos: entry.qos,
                    retain: entry.retain,
                    props: props.clone(),
                });
            }
            if entry.seq < self.checkpoint.low_water {
                return Ok(());
            }
            let mut msg = decode::decode_record(
                &self.router,
                entry.source,
                entry.topic,
                entry.payload,
                &entry.client,
                entry.received_at,
            );
            if self.checkpoint.covers(&msg.table, entry.seq) {
                return Ok(());
            }
            msg.seq = entry.seq;
            if props.is_some() {
                msg.mqtt.props = props;
                decode::property_columns(&self.router, &mut msg);
            }
            cost += msg.cost();
            group.push(msg);
            replayed += 1;
            Stats::add(&self.stats.wal_replayed, 1);
            if cost >= group_limit {
                send(std::mem::take(&mut group), std::mem::take(&mut cost))?;
            }
            Ok(())
        })?;
        if !group.is_empty() {
            send(group, cost)?;
        }
        let recovered = Recovered {
            fs,
            log,
            redelivery,
            recent: recent.finish(),
        };
        Ok((recovered, replayed))
    }
}

/// The last QoS 1/2 messages of each client found in the WAL, oldest first, at most
/// [`QOS1_WINDOW`] per client (a resend comes from what was in flight at the crash).
#[derive(Debug, Default)]
struct RecentSeeds(HashMap<Arc<str>, VecDeque<(u16, u8, u64)>>);

impl RecentSeeds {
    fn add(&mut self, client: &Arc<str>, pkid: u16, qos: u8, topic: &str, payload: &[u8]) {
        let seen = self.0.entry(client.clone()).or_default();
        if seen.len() == QOS1_WINDOW {
            seen.pop_front();
        }
        seen.push_back((pkid, qos, fingerprint(topic, payload)));
    }

    fn finish(self) -> HashMap<String, Parked> {
        self.0
            .into_iter()
            .map(|(client, seen)| {
                let mut recent = Recent::default();
                for (pkid, qos, fp) in seen {
                    match qos {
                        1 => recent.qos1_stored(pkid, fp),
                        // Its PUBREL may have come before the crash: a new message under the
                        // same id has another fingerprint and is stored.
                        _ => {
                            let _ = recent.qos2_resend(pkid, fp);
                        }
                    }
                }
                let parked = Parked {
                    persistent: false,
                    recent,
                };
                (client.to_string(), parked)
            })
            .collect()
    }
}
