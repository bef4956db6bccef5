//! Readiness and liveness. Readiness: true once a route table has been published (in
//! cluster mode the controller publishes only after its first complete sync), false for good
//! once draining starts; a one-way latch in each direction, tied to real state. Liveness
//! ([`Health`]): healthy until a task that must run for the life of the process (a watcher,
//! the controller loop, a source) ends, panics or is aborted; then `/healthz` fails, so the
//! kubelet restarts the pod instead of leaving it Ready with frozen routes.

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::FutureExt;
use tokio::task::{AbortHandle, JoinSet};
use tokio_util::sync::CancellationToken;

use crate::routes::RouteHandle;

#[derive(Debug)]
pub struct Readiness {
    routes: Arc<RouteHandle>,
    draining: AtomicBool,
    health: Arc<Health>,
}

impl Readiness {
    pub fn new(routes: Arc<RouteHandle>) -> Self {
        Self { routes, draining: AtomicBool::new(false), health: Arc::new(Health::default()) }
    }

    /// The process's liveness, which `/healthz` answers.
    pub fn health(&self) -> &Arc<Health> {
        &self.health
    }

    pub fn is_ready(&self) -> bool {
        self.routes.has_published() && !self.draining.load(Ordering::Acquire)
    }

    /// Why `/readyz` is false, for its response body.
    pub fn reason(&self) -> &'static str {
        if self.draining.load(Ordering::Acquire) {
            "draining"
        } else if !self.routes.has_published() {
            "waiting for the first route table"
        } else {
            "ready"
        }
    }

    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }
}

/// Liveness: which supervised tasks died, and why.
#[derive(Debug, Default)]
pub struct Health {
    failures: Mutex<Vec<String>>,
    /// Supervised tasks spawned into a set, by name, for [`Health::abort`].
    tasks: Mutex<Vec<(String, AbortHandle)>>,
}

impl Health {
    pub fn is_healthy(&self) -> bool {
        self.failures().is_empty()
    }

    /// What failed, one line per task; empty while healthy.
    pub fn failures(&self) -> Vec<String> {
        self.failures.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Record that `task` died: logged with the cause, and `/healthz` fails from now on.
    pub fn fail(&self, task: &str, cause: &str) {
        tracing::error!(
            task,
            cause,
            "a task that must keep running stopped; /healthz now fails so the pod is restarted"
        );
        self.failures.lock().unwrap_or_else(|p| p.into_inner()).push(format!("{task}: {cause}"));
    }

    /// `fut`, supervised: if it returns, panics or is dropped (aborted) before `stop` is
    /// cancelled, health fails naming `task` and the cause.
    pub fn supervise<F>(
        self: &Arc<Self>,
        task: String,
        stop: CancellationToken,
        fut: F,
    ) -> impl Future<Output = ()> + use<F>
    where
        F: Future<Output = ()>,
    {
        let health = self.clone();
        async move {
            let mut guard = Supervised { health, task, stop, done: false };
            let result = AssertUnwindSafe(fut).catch_unwind().await;
            guard.done = true;
            if guard.stop.is_cancelled() {
                return;
            }
            let cause = match result {
                Ok(()) => "ended unexpectedly".to_string(),
                Err(panic) => format!("panicked: {}", panic_message(panic.as_ref())),
            };
            guard.health.fail(&guard.task, &cause);
        }
    }

    /// Spawn `fut` into `set`, supervised (see [`Health::supervise`]).
    pub fn spawn<F>(self: &Arc<Self>, set: &mut JoinSet<()>, task: impl Into<String>, stop: &CancellationToken, fut: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let task = task.into();
        let handle = set.spawn(self.supervise(task.clone(), stop.clone(), fut));
        let mut tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        tasks.retain(|(_, h)| !h.is_finished());
        tasks.push((task, handle));
    }

    /// Names of the supervised tasks spawned by [`Health::spawn`] that are still running.
    pub fn running(&self) -> Vec<String> {
        let tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        tasks.iter().filter(|(_, h)| !h.is_finished()).map(|(n, _)| n.clone()).collect()
    }

    /// Abort the running supervised task named `task`, as a crash would stop it (for tests and
    /// debugging: health then fails like for any dead task). False when there is none.
    pub fn abort(&self, task: &str) -> bool {
        let tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        let found = tasks.iter().filter(|(n, h)| n == task && !h.is_finished()).inspect(|(_, h)| h.abort()).count();
        found > 0
    }
}

/// Fails health when dropped before the supervised future finished (the task was aborted).
struct Supervised {
    health: Arc<Health>,
    task: String,
    stop: CancellationToken,
    done: bool,
}

impl Drop for Supervised {
    fn drop(&mut self) {
        if !self.done && !self.stop.is_cancelled() {
            self.health.fail(&self.task, "stopped (aborted)");
        }
    }
}

fn panic_message(panic: &(dyn Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_supervised_task_that_ends_panics_or_is_aborted_fails_health() {
        let health = Arc::new(Health::default());
        let stop = CancellationToken::new();
        let mut set = JoinSet::new();
        health.spawn(&mut set, "forever", &stop, std::future::pending());
        assert!(health.is_healthy());
        health.spawn(&mut set, "ends", &stop, async {});
        health.spawn(&mut set, "panics", &stop, async { panic!("boom in a watcher") });
        while set.len() > 1 {
            set.join_next().await;
        }
        assert!(health.abort("forever"));
        while set.join_next().await.is_some() {}
        let f = health.failures();
        assert!(!health.is_healthy());
        assert!(f.contains(&"ends: ended unexpectedly".to_string()), "{f:?}");
        assert!(f.contains(&"panics: panicked: boom in a watcher".to_string()), "{f:?}");
        assert!(f.contains(&"forever: stopped (aborted)".to_string()), "{f:?}");
        assert!(!health.abort("forever"), "already gone");
    }

    #[tokio::test]
    async fn tasks_stopping_for_shutdown_are_not_failures() {
        let health = Arc::new(Health::default());
        let stop = CancellationToken::new();
        let mut set = JoinSet::new();
        let s = stop.clone();
        health.spawn(&mut set, "watch", &stop, async move { s.cancelled().await });
        health.spawn(&mut set, "idle", &stop, std::future::pending());
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(1), set.join_next()).await.unwrap();
        set.abort_all();
        while set.join_next().await.is_some() {}
        assert!(health.is_healthy(), "{:?}", health.failures());
    }
}
