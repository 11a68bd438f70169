//! Buffer admission: the one global byte budget and the handle sources use to put messages
//! into the pipeline. A source calls [`Ingest::submit`]; it returns once the messages hold
//! their share of the budget and are queued for the WAL, with a [`Durable`] to wait on before
//! acknowledging them (the WAL passes them on to the batcher once fsynced). While the budget
//! is spent, `submit` waits; while the WAL volume is full, `Durable` does: either way the MQTT
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

/// Resolves once a submitted group is durable in the WAL; `Err(Closed)` if the WAL writer
/// stopped on an error first. Resolves at once for groups nobody acknowledges (QoS 0, shed).
#[derive(Debug)]
pub struct Durable(Option<oneshot::Receiver<()>>);

impl Durable {
    /// Already done (nothing to wait for).
    pub fn done() -> Self {
        Self(None)
    }

    /// Whether nothing is left to wait for, without polling.
    pub fn is_done(&self) -> bool {
        self.0.is_none()
    }

    /// Whether the group is durable (or needs no waiting) now; `Err` when it never will be.
    pub fn try_done(&mut self) -> Result<bool, Closed> {
        match &mut self.0 {
            None => Ok(true),
            Some(rx) => match rx.try_recv() {
                Ok(()) => {
                    self.0 = None;
                    Ok(true)
                }
                Err(oneshot::error::TryRecvError::Empty) => Ok(false),
                Err(oneshot::error::TryRecvError::Closed) => Err(Closed),
            },
        }
    }

    /// Waits until durable (cancel-safe).
    pub async fn wait(&mut self) -> Result<(), Closed> {
        if let Some(rx) = &mut self.0 {
            // The writer drops the sender unsent only when it stopped on an error.
            rx.await.map_err(|_| Closed)?;
            self.0 = None;
        }
        Ok(())
    }
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
    /// budget when it is spent, and queues them for the WAL. Acks for them may be sent once
    /// the returned [`Durable`] resolves. `qos0_only` groups (nothing to acknowledge) get a
    /// `Durable` that is done at once, and may be shed under `memory.qos0_when_full = "shed"`.
    ///
    /// Cancel-safe: a cancelled budget wait holds nothing.
    pub async fn submit(
        &self,
        client: &Arc<str>,
        msgs: Vec<Message>,
        cost: usize,
        qos0_only: bool,
    ) -> Result<Durable, Closed> {
        if msgs.is_empty() {
            return Ok(Durable(None));
        }
        let cost = if qos0_only && self.qos0_when_full == Qos0WhenFull::Shed {
            match self.budget.try_acquire(cost) {
                Some(c) => c,
                None => {
                    Stats::add(&self.stats.messages_shed, msgs.len() as u64);
                    return Ok(Durable(None));
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
        Ok(Durable(durable))
    }
}
