//! Shutdown and drain: one signal that stops the accept loops and tells every tunnel to send
//! Close 1001, and a tracker to wait (up to a deadline) until every tunnel is gone.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};
use tokio_util::task::TaskTracker;

#[derive(Debug, Clone, Default)]
pub struct Drain {
    token: CancellationToken,
    tracker: TaskTracker,
    /// Window (nanoseconds) over which tunnels spread their Close 1001s once draining starts.
    spread: Arc<AtomicU64>,
}

impl Drain {
    pub fn new() -> Self {
        Self::default()
    }

    /// Start draining: accept loops stop, tunnels close with 1001 now.
    pub fn start(&self) {
        self.start_spread(Duration::ZERO);
    }

    /// Start draining; each tunnel sends its 1001 at a random instant within `spread`, so
    /// clients do not all reconnect at once.
    pub fn start_spread(&self, spread: Duration) {
        self.spread.store(spread.as_nanos().min(u128::from(u64::MAX)) as u64, Ordering::Release);
        self.token.cancel();
    }

    /// The spread draining started with (shared with every tunnel).
    pub fn spread(&self) -> Arc<AtomicU64> {
        self.spread.clone()
    }

    pub fn is_draining(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Resolves when draining starts.
    pub fn started(&self) -> WaitForCancellationFuture<'_> {
        self.token.cancelled()
    }

    pub fn token(&self) -> &CancellationToken {
        &self.token
    }

    /// Spawn a connection task that shutdown waits for.
    pub fn spawn<F>(&self, task: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tracker.spawn(task)
    }

    /// Connection tasks still running.
    pub fn active(&self) -> usize {
        self.tracker.len()
    }

    /// Wait until every tracked task has finished or `deadline` passed; true when all finished.
    pub async fn wait(&self, deadline: Duration) -> bool {
        self.tracker.close();
        tokio::time::timeout(deadline, self.tracker.wait()).await.is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn wait_returns_when_tasks_end_or_deadline_passes() {
        let d = Drain::new();
        let token = d.token().clone();
        d.spawn(async move { token.cancelled().await });
        assert!(!d.wait(Duration::from_millis(50)).await, "task still running");
        d.start();
        assert!(d.wait(Duration::from_secs(5)).await);
        assert_eq!(d.active(), 0);
    }
}
