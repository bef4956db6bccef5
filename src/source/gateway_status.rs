//! Gateway API status in cluster mode: the leader writes the status that
//! [`translate::gateway_status`](crate::translate::gateway_status) derives from the snapshot —
//! GatewayClass `Accepted`, Gateway conditions, listeners and addresses, and each HTTPRoute's
//! parent entries — to the objects' `status` subresource.
//!
//! - **Only when changed.** The derived status keeps each condition's `lastTransitionTime`
//!   while its status stays, so a status equal to the cached one is not written again.
//! - **Only ours.** GatewayClasses and Gateways of our controller are ours whole. On an
//!   HTTPRoute only the `status.parents` entries whose `controllerName` is ours are replaced;
//!   every other controller's entry is kept as it is, in its place.
//! - **Optimistic.** Each write is a `PUT .../status` of the cached object, carrying its
//!   `resourceVersion`: when someone wrote in between (another controller adding its parent
//!   entry), the API server answers 409 and nothing is lost; the watch then delivers the newer
//!   object, which wakes the next pass, and the merge is done again on it.
//! - **Leader only**, like Ingress status ([`super::leader`]); a pass also runs every
//!   `resync`, so addresses from a publish Service are followed.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::Resource;
use kube::api::PostParams;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::status::{NodeCache, PublishSource, StatusConfig, resolve};
use crate::gateway_api::{Gateway, GatewayClass, HTTPRoute, HTTPRouteStatus, RouteParentStatus};
use crate::translate::gateway_status::{GatewayStatuses, gateway_statuses};
use crate::translate::{ClusterSnapshot, Defaults, ObjectRef};

/// What the writer acts on: the snapshot the last pass translated (Gateway API part).
/// Compared by identity: a new value means the caches changed.
#[derive(Debug, Clone, Default)]
pub struct GatewayStatusInput(pub Arc<ClusterSnapshot>);

impl PartialEq for GatewayStatusInput {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

#[derive(Debug, thiserror::Error)]
enum WriteError {
    #[error("building the request: {0}")]
    Request(#[from] kube::core::request::Error),
    #[error("encoding the object: {0}")]
    Json(#[from] serde_json::Error),
    #[error(transparent)]
    Api(#[from] kube::Error),
}

impl WriteError {
    fn is_conflict(&self) -> bool {
        matches!(self, Self::Api(kube::Error::Api(s)) if s.code == 409)
    }
}

/// One status write: the object (kind, namespace, name), its path and the object to PUT.
#[derive(Debug, Clone, PartialEq)]
pub struct StatusWrite {
    pub object: ObjectRef,
    url_path: String,
    body: Value,
}

/// The parents of `current` with ours (`controller`) replaced by `ours`: other controllers'
/// entries stay where they are; ours follow them, in the order given. `None` when that is
/// what `current` already says (order of our entries aside).
pub fn merge_parents(
    current: Option<&HTTPRouteStatus>,
    ours: &[RouteParentStatus],
    controller: &str,
) -> Option<Vec<RouteParentStatus>> {
    let parents = current.map(|s| s.parents.as_slice()).unwrap_or_default();
    let (mine, others): (Vec<&RouteParentStatus>, Vec<&RouteParentStatus>) =
        parents.iter().partition(|p| p.controller_name == controller);
    let same = mine.len() == ours.len() && ours.iter().all(|o| mine.contains(&o));
    if same {
        return None;
    }
    Some(others.into_iter().cloned().chain(ours.iter().cloned()).collect())
}

/// `object` as JSON with `status` set: the body of a `PUT .../status` (the API server takes
/// only `status` from it, and checks `metadata.resourceVersion`).
fn with_status<K: Serialize, S: Serialize>(object: &K, status: &S) -> Result<Value, serde_json::Error> {
    let mut body = serde_json::to_value(object)?;
    body["status"] = serde_json::to_value(status)?;
    Ok(body)
}

fn key_of(meta: &kube::api::ObjectMeta) -> (String, String) {
    (meta.namespace.clone().unwrap_or_default(), meta.name.clone().unwrap_or_default())
}

/// The writes that make the cached objects of `snapshot` say what `want` says (pure).
pub fn plan(snapshot: &ClusterSnapshot, want: &GatewayStatuses, controller: &str) -> Vec<StatusWrite> {
    let mut out = Vec::new();
    let mut push = |object: &ObjectRef, url_path: String, body: Result<Value, serde_json::Error>| match body {
        Ok(body) => out.push(StatusWrite { object: object.clone(), url_path, body }),
        Err(e) => tracing::warn!(kind = %object.kind, name = %object.name, error = %e, "cannot encode status"),
    };
    for (o, status) in &want.classes {
        let Some(class) = snapshot.gateway_classes.iter().find(|c| c.metadata.name.as_deref() == Some(&o.name)) else {
            continue;
        };
        if class.status.as_ref() != Some(status) {
            push(o, GatewayClass::url_path(&(), None), with_status(class.as_ref(), status));
        }
    }
    for (o, status) in &want.gateways {
        let found = snapshot.gateways.iter().find(|g| key_of(&g.metadata) == (o.namespace.clone(), o.name.clone()));
        let Some(gateway) = found else { continue };
        if gateway.status.as_ref() != Some(status) {
            push(o, Gateway::url_path(&(), Some(&o.namespace)), with_status(gateway.as_ref(), status));
        }
    }
    // Every route: one that no longer names our Gateways loses our entries.
    let wanted: std::collections::BTreeMap<(String, String), &Vec<RouteParentStatus>> =
        want.routes.iter().map(|(o, parents)| ((o.namespace.clone(), o.name.clone()), parents)).collect();
    for route in &snapshot.http_routes {
        let key = key_of(&route.metadata);
        let ours = wanted.get(&key).map(|v| v.as_slice()).unwrap_or_default();
        if let Some(parents) = merge_parents(route.status.as_ref(), ours, controller) {
            let object = ObjectRef { kind: "HTTPRoute".into(), namespace: key.0.clone(), name: key.1.clone() };
            let status = HTTPRouteStatus { parents };
            push(&object, HTTPRoute::url_path(&(), Some(&key.0)), with_status(route.as_ref(), &status));
        }
    }
    out
}

async fn put_status(client: &kube::Client, write: &StatusWrite) -> Result<(), WriteError> {
    let request = kube::core::Request::new(write.url_path.clone()).replace_subresource(
        "status",
        &write.object.name,
        &PostParams::default(),
        serde_json::to_vec(&write.body)?,
    )?;
    client.request::<Value>(request).await?;
    Ok(())
}

/// Published addresses as Gateway status wants them (IPs or host names); none without
/// `--publish-service`/`--publish-address`.
async fn addresses(
    client: &kube::Client,
    config: Option<&StatusConfig>,
    source: Option<&PublishSource>,
    nodes: &mut NodeCache,
) -> Vec<String> {
    let Some(config) = config else { return Vec::new() };
    match resolve(client, config, source, nodes).await {
        Ok(entries) => {
            let set: BTreeSet<String> = entries.into_iter().filter_map(|e| e.ip.or(e.hostname)).collect();
            set.into_iter().collect()
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot resolve the addresses to publish in Gateway status");
            Vec::new()
        }
    }
}

/// Keep Gateway API status right while leading, until `shutdown`: a pass runs when `input`
/// changes, leadership is gained, or `resync` elapses.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    client: kube::Client,
    defaults: Defaults,
    config: Option<StatusConfig>,
    publish: Option<PublishSource>,
    resync: Duration,
    mut input: watch::Receiver<GatewayStatusInput>,
    mut leader: watch::Receiver<bool>,
    shutdown: CancellationToken,
) {
    let mut nodes = NodeCache::default();
    loop {
        let leading = *leader.borrow_and_update();
        if leading {
            let snapshot = input.borrow_and_update().0.clone();
            let published = addresses(&client, config.as_ref(), publish.as_ref(), &mut nodes).await;
            let now = Time(Timestamp::now());
            let want = gateway_statuses(&snapshot, &defaults, &published, &now);
            for write in plan(&snapshot, &want, &defaults.gateway_controller_name) {
                if !*leader.borrow() {
                    break;
                }
                let o = &write.object;
                match put_status(&client, &write).await {
                    Ok(()) => {
                        tracing::info!(kind = %o.kind, namespace = %o.namespace, name = %o.name, "Gateway API status written")
                    }
                    // Written by someone else since it was cached: the watch brings the newer
                    // object and with it the next pass.
                    Err(e) if e.is_conflict() => {
                        tracing::debug!(kind = %o.kind, namespace = %o.namespace, name = %o.name, "status changed meanwhile; merging again on the newer object")
                    }
                    Err(e) => {
                        tracing::warn!(kind = %o.kind, namespace = %o.namespace, name = %o.name, error = %e, "could not write Gateway API status")
                    }
                }
            }
        }
        tokio::select! {
            r = input.changed() => if r.is_err() { return },
            r = leader.changed() => if r.is_err() { return },
            () = tokio::time::sleep(resync) => {}
            () = shutdown.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway_api::ParentReference;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

    const OURS: &str = "wsingress.io/gateway-controller";

    fn parent(gateway: &str, controller: &str, accepted: bool) -> RouteParentStatus {
        RouteParentStatus {
            parent_ref: ParentReference { name: gateway.into(), ..ParentReference::default() },
            controller_name: controller.into(),
            conditions: vec![Condition {
                type_: "Accepted".into(),
                status: if accepted { "True" } else { "False" }.into(),
                reason: "Accepted".into(),
                message: String::new(),
                observed_generation: Some(1),
                last_transition_time: Time(Timestamp::UNIX_EPOCH),
            }],
        }
    }

    #[test]
    fn other_controllers_parent_entries_are_kept_in_place() {
        let theirs = parent("envoy-gw", "example.com/other", true);
        let current = HTTPRouteStatus { parents: vec![theirs.clone(), parent("edge", OURS, false)] };
        let want = [parent("edge", OURS, true)];
        let merged = merge_parents(Some(&current), &want, OURS).expect("ours changed");
        assert_eq!(merged, vec![theirs.clone(), want[0].clone()]);
        // Already so: nothing to write.
        let written = HTTPRouteStatus { parents: merged };
        assert_eq!(merge_parents(Some(&written), &want, OURS), None);
        // Not ours any more: only our entry goes.
        assert_eq!(merge_parents(Some(&written), &[], OURS), Some(vec![theirs.clone()]));
        // Never ours, nothing wanted: nothing to write.
        assert_eq!(merge_parents(Some(&HTTPRouteStatus { parents: vec![theirs] }), &[], OURS), None);
        assert_eq!(merge_parents(None, &[], OURS), None);
    }

    #[test]
    fn our_entries_compare_as_a_set() {
        let a = parent("a", OURS, true);
        let b = parent("b", OURS, true);
        let current = HTTPRouteStatus { parents: vec![b.clone(), a.clone()] };
        assert_eq!(merge_parents(Some(&current), &[a, b], OURS), None);
    }

    #[test]
    fn plan_writes_only_what_differs_with_the_cached_resource_version() {
        let route: HTTPRoute = serde_yaml::from_str(
            r#"
metadata: {name: chat, namespace: apps, resourceVersion: "7", generation: 2}
spec: {parentRefs: [{name: edge}]}
status:
  parents:
  - parentRef: {name: other-gw}
    controllerName: example.com/other
    conditions: []
"#,
        )
        .expect("route");
        let class: GatewayClass = serde_yaml::from_str(
            "metadata: {name: ws, resourceVersion: \"3\"}\nspec: {controllerName: wsingress.io/gateway-controller}",
        )
        .expect("class");
        let snapshot = ClusterSnapshot {
            http_routes: vec![Arc::new(route)],
            gateway_classes: vec![Arc::new(class.clone())],
            ..ClusterSnapshot::default()
        };
        let chat = ObjectRef { kind: "HTTPRoute".into(), namespace: "apps".into(), name: "chat".into() };
        let ws = ObjectRef { kind: "GatewayClass".into(), namespace: String::new(), name: "ws".into() };
        let want = GatewayStatuses {
            classes: vec![(ws.clone(), Default::default())],
            gateways: Vec::new(),
            routes: vec![(chat.clone(), vec![parent("edge", OURS, true)])],
        };
        let writes = plan(&snapshot, &want, OURS);
        assert_eq!(writes.len(), 2, "{writes:?}");
        let class_write = &writes[0];
        assert_eq!(class_write.object, ws);
        assert_eq!(class_write.url_path, "/apis/gateway.networking.k8s.io/v1/gatewayclasses");
        assert_eq!(class_write.body["metadata"]["resourceVersion"], "3");
        let route_write = &writes[1];
        assert_eq!(route_write.url_path, "/apis/gateway.networking.k8s.io/v1/namespaces/apps/httproutes");
        assert_eq!(route_write.body["metadata"]["resourceVersion"], "7", "a concurrent write conflicts");
        let parents = route_write.body["status"]["parents"].as_array().expect("parents");
        let controllers: Vec<&str> = parents.iter().filter_map(|p| p["controllerName"].as_str()).collect();
        assert_eq!(controllers, ["example.com/other", OURS]);
    }
}
