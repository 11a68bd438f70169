//! The global memory budget: a byte-counting semaphore shared by every table, and [`Held`], the
//! bytes a piece of data holds of it. A `Held` gives its bytes back when dropped, so no stage
//! releases bytes by hand and no path (a refused group, a batch that cannot be finished, a
//! shutdown) can leak them. As data changes shape the holding moves with it: a group of
//! messages holds its decoded size; the batcher moves the part its rows keep into the table's
//! holding ([`Held::move_to`]) and drops the rest; a flushed batch carries the table's holding
//! to the publisher, which drops it once the batch's files are published.
//!
//! Cost: taking bytes is one semaphore operation per group of messages; moving bytes between
//! holdings is plain arithmetic; giving back takes the semaphore's lock, so the batcher gives
//! back once per group, not per message.

use std::sync::Arc;

use tokio::sync::Semaphore;

/// Bytes available to buffered data across all tables.
#[derive(Clone, Debug)]
pub struct Budget {
    sem: Arc<Semaphore>,
    total: usize,
}

impl Budget {
    /// A budget of `total` bytes.
    pub fn new(total: usize) -> Self {
        let total = total.min(Semaphore::MAX_PERMITS);
        Self {
            sem: Arc::new(Semaphore::new(total)),
            total,
        }
    }

    /// Total bytes.
    pub fn total(&self) -> usize {
        self.total
    }

    /// Bytes currently held.
    pub fn in_use(&self) -> usize {
        self.total - self.sem.available_permits()
    }

    /// A single request never exceeds the whole budget (it would wait forever).
    fn clamp(&self, bytes: usize) -> u32 {
        u32::try_from(bytes.min(self.total)).unwrap_or(u32::MAX)
    }

    /// Waits until `bytes` are free and holds them (at most the whole budget). Cancel-safe: a
    /// cancelled wait holds nothing.
    pub async fn acquire(&self, bytes: usize) -> Held {
        let n = self.clamp(bytes);
        match self.sem.acquire_many(n).await {
            Ok(permit) => permit.forget(),
            // The semaphore is never closed; if it were, admitting without budget is the safe side.
            Err(_) => return Held::default(),
        }
        self.held(n as usize)
    }

    /// Holds `bytes` if they are free now.
    pub fn try_acquire(&self, bytes: usize) -> Option<Held> {
        let n = self.clamp(bytes);
        let permit = self.sem.try_acquire_many(n).ok()?;
        permit.forget();
        Some(self.held(n as usize))
    }

    fn held(&self, bytes: usize) -> Held {
        Held {
            sem: Some(self.sem.clone()),
            bytes,
        }
    }
}

/// Bytes held of a [`Budget`], given back when dropped. `Held::default()` holds nothing.
#[derive(Debug, Default)]
#[must_use = "dropping a Held gives its bytes back at once"]
pub struct Held {
    /// The budget's semaphore; `None` only while nothing was ever held.
    sem: Option<Arc<Semaphore>>,
    bytes: usize,
}

impl Held {
    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Moves up to `bytes` of this holding into `into` (which may be empty); returns how many
    /// moved. Both must come from the same budget.
    pub fn move_to(&mut self, into: &mut Held, bytes: usize) -> usize {
        let n = bytes.min(self.bytes);
        if n == 0 {
            return 0;
        }
        debug_assert!(
            into.sem.is_none() || same_budget(&into.sem, &self.sem),
            "moving bytes between two budgets"
        );
        if into.sem.is_none() {
            into.sem.clone_from(&self.sem);
        }
        self.bytes -= n;
        into.bytes += n;
        n
    }

    /// Takes everything `other` holds into this holding.
    pub fn merge(&mut self, mut other: Held) {
        let n = other.bytes;
        other.move_to(self, n);
    }
}

fn same_budget(a: &Option<Arc<Semaphore>>, b: &Option<Arc<Semaphore>>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        _ => true,
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if self.bytes > 0
            && let Some(sem) = &self.sem
        {
            sem.add_permits(self.bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_budget_makes_acquire_wait_until_the_holding_is_dropped() {
        let budget = Budget::new(100);
        let held = budget.acquire(80).await;
        assert_eq!(held.bytes(), 80);
        assert!(budget.try_acquire(30).is_none());
        let waiter = {
            let b = budget.clone();
            tokio::spawn(async move { b.acquire(30).await.bytes() })
        };
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(held);
        assert_eq!(waiter.await.ok(), Some(30));
        assert_eq!(
            budget.in_use(),
            0,
            "the waiter's holding was dropped with its task"
        );
    }

    #[tokio::test]
    async fn a_request_larger_than_the_budget_is_clamped() {
        let budget = Budget::new(100);
        let held = budget.acquire(1_000).await;
        assert_eq!(held.bytes(), 100);
        drop(held);
        assert_eq!(budget.in_use(), 0);
    }

    #[test]
    fn move_and_merge_keep_the_sum_and_give_everything_back_on_drop() {
        let budget = Budget::new(1_000);
        let mut group = budget.try_acquire(600).unwrap_or_default();
        let mut table = Held::default();
        assert_eq!(group.move_to(&mut table, 250), 250);
        let mut part = Held::default();
        group.move_to(&mut part, 100);
        assert_eq!(
            (group.bytes(), table.bytes(), part.bytes()),
            (250, 250, 100)
        );
        assert_eq!(budget.in_use(), 600, "moving bytes gives nothing back");
        drop(part);
        assert_eq!(budget.in_use(), 500);
        table.merge(group);
        assert_eq!(table.bytes(), 500);
        let mut rest = Held::default();
        assert_eq!(
            table.move_to(&mut rest, 10_000),
            500,
            "a move takes at most what is held"
        );
        drop((table, rest));
        assert_eq!(budget.in_use(), 0);
    }
}
