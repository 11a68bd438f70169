//! The WAL's side of the durability contract, as values. A source hands the writer a group of
//! [`Admitted`] messages (with the budget they hold) and keeps a [`Durable`]: the right to
//! acknowledge them, which resolves once the group is in the fsynced log, or says why it never
//! will be ([`NotStored`]). The writer passes the group on to the batcher after the sync.

use tokio::sync::oneshot;

use crate::budget::Held;
use crate::decode::Message;

/// Messages admitted into the pipeline together, with the budget they hold.
///
/// A connection admits everything it decoded from one socket read as one group: one budget
/// operation and one queue send per read instead of per message (each send may wake the
/// batcher's thread, which costs more than decoding a small message).
#[derive(Debug)]
pub struct Admitted {
    /// The messages, in arrival order.
    pub msgs: Vec<Message>,
    /// The budget they hold together (given back when dropped).
    pub held: Held,
}

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

/// Tells a sender its group is durable, or why it was not stored.
pub type Done = oneshot::Sender<Result<(), NotStored>>;

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

    /// A pair: the sender the writer tells, and the `Durable` the source waits on.
    pub fn pending() -> (Done, Self) {
        let (tx, rx) = oneshot::channel();
        (tx, Self(Outcome::Waiting(rx)))
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
