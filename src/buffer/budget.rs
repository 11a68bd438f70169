//! The global memory budget: a byte-counting semaphore shared by every table. Holding bytes is
//! cheap (one atomic operation); waiting for bytes parks the source task.

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
    fn clamp(&self, cost: usize) -> u32 {
        u32::try_from(cost.min(self.total)).unwrap_or(u32::MAX)
    }

    /// Waits until `cost` bytes are free and holds them; returns the bytes held.
    pub async fn acquire(&self, cost: usize) -> usize {
        let n = self.clamp(cost);
        match self.sem.acquire_many(n).await {
            Ok(permit) => permit.forget(),
            // The semaphore is never closed; if it were, admitting without budget is the safe side.
            Err(_) => return 0,
        }
        n as usize
    }

    /// Holds `cost` bytes if free now.
    pub fn try_acquire(&self, cost: usize) -> Option<usize> {
        let n = self.clamp(cost);
        self.sem.try_acquire_many(n).ok().map(|p| {
            p.forget();
            n as usize
        })
    }

    /// Gives back bytes from [`acquire`](Self::acquire) / [`try_acquire`](Self::try_acquire).
    pub fn release(&self, bytes: usize) {
        if bytes > 0 {
            self.sem.add_permits(bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_budget_makes_acquire_wait_until_release() {
        let budget = Budget::new(100);
        assert_eq!(budget.acquire(80).await, 80);
        assert_eq!(budget.try_acquire(30), None);
        let waiter = {
            let b = budget.clone();
            tokio::spawn(async move { b.acquire(30).await })
        };
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        budget.release(80);
        assert_eq!(waiter.await.ok(), Some(30));
        assert_eq!(budget.in_use(), 30);
    }

    #[tokio::test]
    async fn a_request_larger_than_the_budget_is_clamped() {
        let budget = Budget::new(100);
        assert_eq!(budget.acquire(1_000).await, 100);
        budget.release(100);
        assert_eq!(budget.in_use(), 0);
    }
}
