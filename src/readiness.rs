//! Readiness: true once a route table has been published (in cluster mode the controller
//! publishes only after its first complete sync), false for good once draining starts.
//! A one-way latch in each direction, tied to real state.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::routes::RouteHandle;

#[derive(Debug)]
pub struct Readiness {
    routes: Arc<RouteHandle>,
    draining: AtomicBool,
}

impl Readiness {
    pub fn new(routes: Arc<RouteHandle>) -> Self {
        Self { routes, draining: AtomicBool::new(false) }
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
