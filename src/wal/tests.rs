//! The WAL against a model, on a file system that forgets unsynced bytes at a crash.

use std::collections::BTreeMap;
use std::io;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use bytes::Bytes;
use proptest::prelude::*;
use tokio::sync::{mpsc, oneshot};

use super::Admitted;
use super::fs::mem::MemFs;
use super::record::Head;
use super::*;
use crate::budget::{Budget, Held};
use crate::decode::Message;
use crate::decode::Source;
use crate::telemetry::Stats;

/// Tiny segments so rotation and release happen often.
const SEGMENT: u64 = 300;

#[derive(Clone, Debug)]
enum Op {
    /// Stage `n` records from source `s`.
    Stage(u8, u8),
    /// Write staged records without syncing.
    Write,
    /// Write and sync: everything written so far is acknowledged.
    Commit,
    /// Make appends fail with "no space" (or stop failing).
    Full(bool),
    /// Declare the acknowledged records below a point published, and release.
    Release(u8),
    /// Power loss keeping `n/255` of each file's unsynced bytes, then recovery.
    Crash(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u8..3, 1u8..6).prop_map(|(s, n)| Op::Stage(s, n)),
        2 => Just(Op::Write),
        3 => Just(Op::Commit),
        1 => any::<bool>().prop_map(Op::Full),
        1 => any::<u8>().prop_map(Op::Release),
        2 => any::<u8>().prop_map(Op::Crash),
    ]
}

struct Model {
    fs: MemFs,
    log: Log<MemFs>,
    staged: Vec<(u64, String)>,
    written: Vec<(u64, String)>,
    /// Records that must come back (acknowledged, or already recovered once).
    durable: BTreeMap<u64, String>,
    counters: [u32; 3],
    low_water: u64,
    crashes: u32,
}

impl Model {
    fn new() -> io::Result<Self> {
        let fs = MemFs::default();
        Ok(Self {
            log: Log::start(fs.clone(), Vec::new(), 0, SEGMENT)?,
            fs,
            staged: Vec::new(),
            written: Vec::new(),
            durable: BTreeMap::new(),
            counters: [0; 3],
            low_water: 0,
            crashes: 0,
        })
    }

    fn write(&mut self) -> io::Result<bool> {
        match self.log.write() {
            Ok(_) => {
                self.written.append(&mut self.staged);
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::StorageFull => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn apply(&mut self, op: &Op) -> io::Result<()> {
        match *op {
            Op::Stage(s, n) => {
                for _ in 0..n {
                    let c = self.counters[s as usize];
                    self.counters[s as usize] += 1;
                    let payload = format!("{s}:{c}");
                    let seq = self.log.stage(
                        Head::of(Source::Mqtt),
                        7,
                        &format!("client-{s}"),
                        "t",
                        payload.as_bytes(),
                    );
                    self.staged.push((seq, payload));
                }
            }
            Op::Write => {
                self.write()?;
            }
            Op::Commit => {
                if self.write()? {
                    self.log.sync()?;
                    self.durable.extend(self.written.drain(..));
                    self.log.rotate_if_full()?;
                }
            }
            Op::Full(full) => self.fs.set_full(full),
            Op::Release(frac) => {
                let keys: Vec<u64> = self.durable.keys().copied().collect();
                if let Some(&lw) = keys.get(keys.len() * frac as usize / 256) {
                    self.low_water = self.low_water.max(lw);
                    self.log.release(self.low_water, false)?;
                }
            }
            Op::Crash(keep) => {
                self.fs.set_full(false);
                self.fs.crash(|len| len * keep as usize / 255);
                self.recover()?;
            }
        }
        Ok(())
    }

    /// Replays, checks the promises, and starts a new log.
    fn recover(&mut self) -> io::Result<()> {
        self.crashes += 1;
        let mut seen: BTreeMap<u64, String> = BTreeMap::new();
        let mut twice = Vec::new();
        let recovery = replay(&self.fs, |e| {
            let payload = String::from_utf8_lossy(&e.payload).to_string();
            if seen.insert(e.seq, payload).is_some() {
                twice.push(e.seq);
            }
            Ok(())
        })?;
        assert!(twice.is_empty(), "records recovered twice: {twice:?}");
        for (seq, payload) in self.durable.range(self.low_water..) {
            assert_eq!(
                seen.get(seq),
                Some(payload),
                "acknowledged record {seq} lost after crash {}",
                self.crashes
            );
        }
        let mut last = [None::<u32>; 3];
        for payload in seen.values() {
            let (s, c) = payload.split_once(':').unwrap_or(("0", "0"));
            let (s, c): (usize, u32) = (s.parse().unwrap_or(0), c.parse().unwrap_or(0));
            assert!(
                last[s].is_none_or(|l| l < c),
                "source {s} out of order at {c}"
            );
            last[s] = Some(c);
        }
        // What came back is durable from now on (it sits in a closed segment).
        self.durable = seen;
        self.staged.clear();
        self.written.clear();
        let next = recovery.next_seq().max(self.low_water);
        self.log = Log::start(self.fs.clone(), recovery.segments, next, SEGMENT)?;
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn no_acknowledged_record_is_lost_or_recovered_twice(ops in prop::collection::vec(op(), 1..80)) {
        let mut model = Model::new()?;
        for op in &ops {
            model.apply(op)?;
        }
        model.apply(&Op::Crash(0))?;
    }
}

#[test]
fn a_clean_release_deletes_every_segment_and_the_next_start_continues_the_numbers() -> io::Result<()>
{
    let fs = MemFs::default();
    let mut log = Log::start(fs.clone(), Vec::new(), 0, SEGMENT)?;
    for i in 0..50 {
        log.stage(
            Head::of(Source::Mqtt),
            0,
            "c",
            "t",
            format!("{i:040}").as_bytes(),
        );
        log.write()?;
        log.sync()?;
        log.rotate_if_full()?;
    }
    assert!(fs.list()?.len() > 3, "small segments rotate");
    let deleted = log.release(20, false)?;
    let firsts = fs.list()?;
    assert!(deleted > 0);
    assert!(
        firsts[0] <= 20 && firsts.get(1).is_none_or(|&f| f > 20),
        "only segments wholly below 20 go: {firsts:?}"
    );
    log.release(50, true)?;
    assert!(fs.list()?.is_empty());
    Ok(())
}

#[test]
fn damage_in_one_segment_stops_only_that_segment_and_is_counted() -> io::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut log = Log::start(DiskFs::open(dir.path())?, Vec::new(), 0, SEGMENT)?;
    for i in 0..12 {
        log.stage(
            Head::of(Source::Mqtt),
            0,
            "c",
            "t",
            format!("{i:040}").as_bytes(),
        );
        log.write()?;
        log.sync()?;
        log.rotate_if_full()?;
    }
    drop(log);
    // Flip one byte inside the third record of the first segment.
    let first = dir.path().join(format!("{:020}.wal", 0));
    let mut bytes = std::fs::read(&first)?;
    let at = record::MAGIC.len() + 2 * 71 + 30;
    bytes[at] ^= 0xff;
    std::fs::write(&first, bytes)?;
    let mut seqs = Vec::new();
    let recovery = replay(&DiskFs::open(dir.path())?, |e| {
        seqs.push(e.seq);
        Ok(())
    })?;
    assert_eq!(recovery.damaged, 1);
    assert_eq!(&seqs[..2], [0, 1], "records before the damage are replayed");
    assert!(!seqs.contains(&2), "the damaged record is not");
    assert!(
        seqs.ends_with(&[5, 6, 7, 8, 9, 10, 11]),
        "later segments are: {seqs:?}"
    );
    Ok(())
}

fn message(topic: &str) -> Message {
    Message {
        table: Arc::from("t"),
        device_id: Arc::from("d"),
        received_at: 1,
        columns: Vec::new(),
        rows: Vec::new(),
        topic: topic.into(),
        payload: Bytes::from_static(b"{}"),
        seq: 0,
        source: crate::decode::Source::Mqtt,
        rejected: None,
        mqtt: crate::decode::MqttMeta::default(),
    }
}

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn the_writer_acks_after_sync_in_order_and_holds_acks_while_the_disk_is_full()
-> io::Result<()> {
    let fs = MemFs::default();
    let log = Log::start(fs.clone(), Vec::new(), 0, SEGMENT)?;
    let (out_tx, mut out_rx) = mpsc::channel::<Admitted>(16);
    let stats = Arc::new(Stats::default());
    let budget = Budget::new(1000);
    let parts = writer::WriterParts {
        out: out_tx,
        sync_interval: Duration::from_millis(1),
        low_water: Arc::new(AtomicU64::new(0)),
        release_grace: Duration::ZERO,
        stats: stats.clone(),
        heartbeats: crate::telemetry::Heartbeats::new(),
        fanout: None,
        hold: Arc::new(AtomicU64::new(u64::MAX)),
    };
    let (wal, end) = writer::spawn(log, parts)?;
    let client: Arc<str> = Arc::from("c1");
    let append = |topics: &[&str], refuse_when_full: bool| {
        let (tx, rx) = oneshot::channel();
        let msgs = topics.iter().map(|t| message(t)).collect();
        let ok = wal.append(Append {
            client: client.clone(),
            group: Admitted {
                msgs,
                held: Held::default(),
            },
            done: Some(tx),
            refuse_when_full,
        });
        assert!(ok.is_ok());
        rx
    };
    append(&["a", "b"], false)
        .await
        .map_err(|_| io::Error::other("writer dropped the ack"))?
        .map_err(io::Error::other)?;
    let first = out_rx.recv().await.ok_or(io::ErrorKind::BrokenPipe)?;
    assert_eq!(first.msgs.iter().map(|m| m.seq).collect::<Vec<_>>(), [0, 1]);

    fs.set_full(true);
    let mut pending = append(&["c"], false);
    wait_for("the writer to hit the full disk", || {
        stats
            .wal_disk_full
            .load(std::sync::atomic::Ordering::Relaxed)
            == 1
    })
    .await;
    assert!(pending.try_recv().is_err(), "no ack while the disk is full");
    assert!(
        out_rx.try_recv().is_err(),
        "nothing passed on while the disk is full"
    );
    // A sender that can say "not stored" (MQTT 5) is told at once, and its budget comes back.
    let held = budget.acquire(300).await;
    assert_eq!(budget.in_use(), 300);
    let (tx, rx) = oneshot::channel();
    let refused = wal.append(Append {
        client: client.clone(),
        group: Admitted {
            msgs: vec![message("refused")],
            held,
        },
        done: Some(tx),
        refuse_when_full: true,
    });
    assert!(refused.is_ok());
    assert_eq!(rx.await.ok(), Some(Err(crate::wal::NotStored::Full)));
    assert_eq!(budget.in_use(), 0);
    fs.set_full(false);
    tokio::time::timeout(Duration::from_secs(10), pending)
        .await
        .map_err(|_| io::Error::other("no ack after space came back"))?
        .map_err(|_| io::Error::other("writer dropped the ack"))?
        .map_err(io::Error::other)?;
    let second = out_rx.recv().await.ok_or(io::ErrorKind::BrokenPipe)?;
    assert_eq!(second.msgs[0].seq, 2);

    drop(wal);
    let log = end
        .await
        .map_err(|_| io::Error::other("writer vanished"))??;
    assert_eq!(log.next_seq(), 3);
    let mut seqs = Vec::new();
    replay(&fs, |e| {
        seqs.push((e.seq, e.topic));
        Ok(())
    })?;
    assert_eq!(seqs, [(0, "a".into()), (1, "b".into()), (2, "c".into())]);
    Ok(())
}
