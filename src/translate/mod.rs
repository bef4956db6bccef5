//! Pure translation of Kubernetes objects (Ingress, Service, EndpointSlice, IngressClass)
//! into a [`RouteTable`]: no clients, no sockets, no clocks. The file source and the
//! controller both call [`translate`].

pub mod annotations;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use serde::Serialize;

use crate::routes::{RouteSettings, RouteTable};

/// The controller name our IngressClass must carry in `spec.controller`.
pub const CONTROLLER_NAME: &str = "wsingress.io/ingress-controller";
/// The default IngressClass name.
pub const DEFAULT_CLASS: &str = "wsingress";

/// Everything translation reads. Order does not matter.
#[derive(Debug, Clone, Default)]
pub struct ClusterSnapshot {
    pub ingresses: Vec<Ingress>,
    pub services: Vec<Service>,
    pub endpoint_slices: Vec<EndpointSlice>,
    pub ingress_classes: Vec<IngressClass>,
}

/// Flags that shape translation.
#[derive(Debug, Clone)]
pub struct Defaults {
    /// IngressClass name we serve (`--ingress-class`).
    pub class_name: String,
    /// Settings used where no annotation says otherwise (from the `serve` flags).
    pub settings: RouteSettings,
}

impl Default for Defaults {
    fn default() -> Self {
        Self {
            class_name: DEFAULT_CLASS.to_string(),
            settings: RouteSettings::default(),
        }
    }
}

/// A Kubernetes object a warning is about.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct ObjectRef {
    pub kind: String,
    pub namespace: String,
    pub name: String,
}

/// A configuration problem: it never fails the whole table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Warning {
    pub object: ObjectRef,
    /// e.g. `metadata.annotations[wsingress.io/idle-timeout]` or `spec.rules[0].http.paths[1].backend.service.port.name`.
    pub field: String,
    pub value: String,
    pub reason: String,
    /// Kubernetes Event reason: `InvalidAnnotation`, `ServiceNotFound`, `PortNotFound`,
    /// `NoReadyEndpoints`, `RuleConflict`, ...
    pub event_reason: &'static str,
}

/// Translate a snapshot. Interface fixed; body by the translate work.
pub fn translate(snapshot: &ClusterSnapshot, defaults: &Defaults) -> (RouteTable, Vec<Warning>) {
    let _ = (snapshot, defaults);
    (RouteTable::default(), Vec::new())
}
