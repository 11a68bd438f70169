//! Buffer admission: the one global byte budget and the handle sources use to put messages
//! into the pipeline. A source calls [`Ingest::submit`]; it returns once the messages hold
//! their share of the budget and are durable in the WAL (which then passes them on to the
//! batcher). While the budget is spent or the WAL volume is full, `submit` waits: the MQTT
//! connection stops reading its socket and withholds acks, so TCP pushes back on the device
//! instead of fleetlake dropping data. Budget is given back when the batch that holds the
//! message is published.

mod budget;

use std::sync::Arc;

use tokio::sync::oneshot;

pub use budget::Budget;

use crate::config::Qos0WhenFull;
use crate::decode::Message;
use crate::telemetry::Stats;
use crate::wal::{Append, WalHandle};

/// Messages admitted into the pipeline together, with the budget they hold.
///
/// A connection admits everything it decoded from one socket read as one group: one budget
/// operation and one queue send per read instead of per message (each send may wake the
/// batcher's thread, which costs more than decoding a small message).
#[derive(Debug)]
pub struct Admitted {
    /// The messages, in arrival order.
    pub msgs: Vec<Message>,
    /// Bytes of budget they hold together.
    pub cost: usize,
}

/// The pipeline has shut down; nothing more is accepted.
#[derive(Debug, thiserror::Error)]
#[error("the pipeline is shutting down")]
pub struct Closed;

/// Outcome of a submit that did not fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// In the pipeline.
    Accepted,
    /// QoS 0 dropped under the `shed` policy (counted).
    Shed,
}

/// Cloneable front door of the pipeline, one per source task.
#[derive(Clone, Debug)]
pub struct Ingest {
    wal: WalHandle,
    budget: Budget,
    stats: Arc<Stats>,
    qos0_when_full: Qos0WhenFull,
}

impl Ingest {
    /// A handle appending to the WAL writer `wal`.
    pub fn new(
        wal: WalHandle,
        budget: Budget,
        stats: Arc<Stats>,
        qos0_when_full: Qos0WhenFull,
    ) -> Self {
        Self {
            wal,
            budget,
            stats,
            qos0_when_full,
        }
    }

    /// Bytes a source should gather before submitting a group.
    pub fn group_limit(&self) -> usize {
        (self.budget.total() / 8).min(1 << 20)
    }

    /// Admits `msgs` from `client` whose summed [`Message::cost`] is `cost`, waiting for
    /// budget when it is spent, then for the WAL fsync that makes them durable. `qos0_only`
    /// groups (nothing to acknowledge) do not wait for the fsync, and may be shed under
    /// `memory.qos0_when_full = "shed"`.
    ///
    /// Cancel-safe: a cancelled budget wait holds nothing; a group cancelled while its fsync
    /// is pending is still written, just never acknowledged (at-least-once).
    pub async fn submit(
        &self,
        client: &Arc<str>,
        msgs: Vec<Message>,
        cost: usize,
        qos0_only: bool,
    ) -> Result<Admission, Closed> {
        if msgs.is_empty() {
            return Ok(Admission::Accepted);
        }
        let cost = if qos0_only && self.qos0_when_full == Qos0WhenFull::Shed {
            match self.budget.try_acquire(cost) {
                Some(c) => c,
                None => {
                    Stats::add(&self.stats.messages_shed, msgs.len() as u64);
                    return Ok(Admission::Shed);
                }
            }
        } else {
            self.budget.acquire(cost).await
        };
        let (done, durable) = if qos0_only {
            (None, None)
        } else {
            let (tx, rx) = oneshot::channel();
            (Some(tx), Some(rx))
        };
        let append = Append {
            client: client.clone(),
            group: Admitted { msgs, cost },
            done,
        };
        if let Err(append) = self.wal.append(append) {
            self.budget.release(append.group.cost);
            return Err(Closed);
        }
        match durable {
            // The writer drops the sender without telling only when it stopped on an error.
            Some(rx) => rx.await.map(|()| Admission::Accepted).map_err(|_| Closed),
            None => Ok(Admission::Accepted),
        }
    }
}
