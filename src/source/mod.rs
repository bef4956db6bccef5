//! Route sources: a static upstream list (sidecar), a manifests file, the Kubernetes API.
//! Each builds `RouteTable`s and hands them to a [`Publisher`].

pub mod events;
pub mod file;
pub mod kube;
pub mod leader;
pub mod rbac;
pub mod static_upstream;
pub mod status;

use std::sync::Arc;

use crate::metrics::Metrics;
use crate::routes::{RouteHandle, RouteTable};
use crate::translate::Warning;

/// Swaps tables in and records the update in metrics and logs.
#[derive(Debug, Clone)]
pub struct Publisher {
    routes: Arc<RouteHandle>,
    metrics: Arc<Metrics>,
    source: &'static str,
}

impl Publisher {
    pub fn new(routes: Arc<RouteHandle>, metrics: Arc<Metrics>, source: &'static str) -> Self {
        Self { routes, metrics, source }
    }

    pub fn routes(&self) -> &Arc<RouteHandle> {
        &self.routes
    }

    /// Publish a new table; warnings are logged (and counted) here, once.
    pub fn publish(&self, table: RouteTable, warnings: &[Warning]) -> u64 {
        for w in warnings {
            tracing::warn!(
                source = self.source,
                kind = %w.object.kind,
                namespace = %w.object.namespace,
                name = %w.object.name,
                field = %w.field,
                value = %w.value,
                reason = %w.reason,
                "configuration warning"
            );
        }
        let generation = self.routes.publish(table);
        let current = self.routes.load();
        self.metrics.table_published(self.source, &current, warnings.len());
        // The proxy's per-route metric handles for this table are resolved here, off the data path.
        self.metrics.for_table(&current);
        tracing::info!(source = self.source, generation, routes = current.routes().count(), "route table published");
        generation
    }

    /// The source could not produce a table; the last good one keeps serving.
    pub fn rejected(&self, why: &str) {
        self.metrics.table_rejected(self.source);
        tracing::error!(source = self.source, error = why, "route update rejected; keeping the last good table");
    }
}
