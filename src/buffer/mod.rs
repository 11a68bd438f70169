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

/// Why a submitted group was not stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NotStored {
    /// The WAL writer stopped on an error (the daemon is exiting).
    #[error("the pipeline stopped")]
    Closed,
    /// The WAL volume is full and the sender asked to be told (MQTT 5: PUBACK 0x97).
    #[error("the WAL volume is full")]
    Full,
}

/// Resolves once a submitted group is durable in the WAL, or says why it never will be.
/// Done at once for groups nobody acknowledges (QoS 0, shed). The outcome is kept: asking
/// again after [`wait`](Self::wait) returned gives the same answer.
#[derive(Debug)]
pub struct Durable(Outcome);

#[derive(Debug)]
enum Outcome {
    Waiting(oneshot::Receiver<Result<(), NotStored>>),
    Settled(Result<(), NotStored>),
}

impl Durable {
    /// Already done (nothing to wait for).
    pub fn done() -> Self {
        Self(Outcome::Settled(Ok(())))
    }

    /// Whether it is settled, without polling.
    pub fn is_done(&self) -> bool {
        matches!(self.0, Outcome::Settled(_))
    }

    /// Whether the group is durable now (`Ok(false)`: not yet).
    pub fn try_done(&mut self) -> Result<bool, NotStored> {
        if let Outcome::Waiting(rx) = &mut self.0 {
            let reply = match rx.try_recv() {
                Ok(reply) => reply,
                Err(oneshot::error::TryRecvError::Empty) => return Ok(false),
                Err(oneshot::error::TryRecvError::Closed) => Err(NotStored::Closed),
            };
            self.0 = Outcome::Settled(reply);
        }
        match self.0 {
            Outcome::Settled(r) => r.map(|()| true),
            Outcome::Waiting(_) => Ok(false),
        }
    }

    /// Waits until settled (cancel-safe).
    pub async fn wait(&mut self) -> Result<(), NotStored> {
        if let Outcome::Waiting(rx) = &mut self.0 {
            // The writer drops the sender unsent only when it stopped on an error.
            let reply = rx.await.unwrap_or(Err(NotStored::Closed));
            self.0 = Outcome::Settled(reply);
        }
        match self.0 {
            Outcome::Settled(r) => r,
            Outcome::Waiting(_) => Err(NotStored::Closed),
        }
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
    /// With `refuse_when_full`, a full WAL volume makes the `Durable` fail with
    /// [`NotStored::Full`] instead of waiting for space.
    ///
    /// Cancel-safe: a cancelled budget wait holds nothing.
    pub async fn submit(
        &self,
        client: &Arc<str>,
        msgs: Vec<Message>,
        cost: usize,
        qos0_only: bool,
        refuse_when_full: bool,
    ) -> Result<Durable, Closed> {
        if msgs.is_empty() {
            return Ok(Durable::done());
        }
        let cost = if qos0_only && self.qos0_when_full == Qos0WhenFull::Shed {
            match self.budget.try_acquire(cost) {
                Some(c) => c,
                None => {
                    Stats::add(&self.stats.messages_shed, msgs.len() as u64);
                    return Ok(Durable::done());
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
            refuse_when_full,
        };
        if let Err(append) = self.wal.append(append) {
            self.budget.release(append.group.cost);
            return Err(Closed);
        }
        Ok(Durable(match durable {
            Some(rx) => Outcome::Waiting(rx),
            None => Outcome::Settled(Ok(())),
        }))
    }
}
