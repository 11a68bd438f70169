//! Buffer admission: the one global byte budget and the handle sources use to put messages
//! into the pipeline. A source calls [`Ingest::submit`]; it returns once the message holds its
//! share of the budget and sits in the batcher's queue. While the budget is spent, `submit`
//! waits: the MQTT connection stops reading its socket and withholds acks, so TCP pushes back
//! on the device instead of fleetlake dropping data. Budget is given back when the batch that
//! holds the message is published.

mod budget;

use std::sync::Arc;

use tokio::sync::mpsc;

pub use budget::Budget;

use crate::config::Qos0WhenFull;
use crate::decode::Message;
use crate::telemetry::Stats;

/// A message admitted into the pipeline with the budget it holds.
#[derive(Debug)]
pub struct Admitted {
    /// The message.
    pub msg: Message,
    /// Bytes of budget it holds.
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
    tx: mpsc::Sender<Admitted>,
    budget: Budget,
    stats: Arc<Stats>,
    qos0_when_full: Qos0WhenFull,
}

impl Ingest {
    /// A handle sending into the batcher's queue `tx`.
    pub fn new(
        tx: mpsc::Sender<Admitted>,
        budget: Budget,
        stats: Arc<Stats>,
        qos0_when_full: Qos0WhenFull,
    ) -> Self {
        Self {
            tx,
            budget,
            stats,
            qos0_when_full,
        }
    }

    /// Admits `msg` (QoS `qos`), waiting for budget when it is spent (cancel-safe: a cancelled
    /// wait holds no budget).
    pub async fn submit(&self, msg: Message, qos: u8) -> Result<Admission, Closed> {
        let cost = msg.cost();
        let cost = if qos == 0 && self.qos0_when_full == Qos0WhenFull::Shed {
            match self.budget.try_acquire(cost) {
                Some(c) => c,
                None => {
                    Stats::add(&self.stats.messages_shed, 1);
                    return Ok(Admission::Shed);
                }
            }
        } else {
            self.budget.acquire(cost).await
        };
        match self.tx.send(Admitted { msg, cost }).await {
            Ok(()) => Ok(Admission::Accepted),
            Err(_) => {
                self.budget.release(cost);
                Err(Closed)
            }
        }
    }
}
