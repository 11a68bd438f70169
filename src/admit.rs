//! Admission: the sources' front door. A source calls [`Ingest::submit`]; it returns once the
//! messages hold their share of the memory budget and are queued for the WAL, with a
//! [`Durable`] to wait on before acknowledging them (the WAL passes them on to the batcher once
//! fsynced). While the budget is spent, `submit` waits; while the WAL volume is full,
//! `Durable` does: either way the MQTT connection stops reading its socket and withholds acks,
//! so TCP pushes back on the device instead of fleetlake dropping data. The budget is given
//! back when the batch that holds the messages is published.

use std::sync::Arc;

use crate::budget::Budget;
use crate::config::Qos0WhenFull;
use crate::decode::Message;
use crate::telemetry::Stats;
use crate::wal::{Admitted, Append, Durable, WalHandle};

/// The pipeline has shut down; nothing more is accepted.
#[derive(Debug, thiserror::Error)]
#[error("the pipeline is shutting down")]
pub struct Closed;

/// How a submitted group is to be treated.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Submit {
    /// Nobody acknowledges these messages (QoS 0 only): the returned [`Durable`] is done at
    /// once, and under `memory.qos0_when_full = "shed"` the group is dropped (counted) rather
    /// than waiting for budget.
    pub unacknowledged: bool,
    /// While the WAL volume is full, fail the `Durable` with `NotStored::Full` at once instead
    /// of waiting for space (MQTT 5 and gRPC can tell their sender).
    pub refuse_when_full: bool,
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
        group_limit(&self.budget)
    }

    /// Admits `msgs` from `client` whose summed [`Message::cost`] is `cost`, waiting for
    /// budget when it is spent, and queues them for the WAL. Acks for them may be sent once
    /// the returned [`Durable`] resolves.
    ///
    /// Cancel-safe: a cancelled budget wait holds nothing.
    pub async fn submit(
        &self,
        client: &Arc<str>,
        msgs: Vec<Message>,
        cost: usize,
        how: Submit,
    ) -> Result<Durable, Closed> {
        if msgs.is_empty() {
            return Ok(Durable::done());
        }
        let held = if how.unacknowledged && self.qos0_when_full == Qos0WhenFull::Shed {
            match self.budget.try_acquire(cost) {
                Some(held) => held,
                None => {
                    Stats::add(&self.stats.messages_shed, msgs.len() as u64);
                    return Ok(Durable::done());
                }
            }
        } else {
            self.budget.acquire(cost).await
        };
        let (done, durable) = if how.unacknowledged {
            (None, Durable::done())
        } else {
            let (done, durable) = Durable::pending();
            (Some(done), durable)
        };
        let append = Append {
            client: client.clone(),
            group: Admitted { msgs, held },
            done,
            refuse_when_full: how.refuse_when_full,
        };
        // A refused append drops its group, and with it the group's budget.
        self.wal.append(append).map_err(|_| Closed)?;
        Ok(durable)
    }
}

/// Bytes a source (or the WAL replay) gathers into one group: an eighth of the budget, at
/// most 1 MiB.
pub fn group_limit(budget: &Budget) -> usize {
    (budget.total() / 8).min(1 << 20)
}
