//! Helpers for tests that drive the controller against [`super::fake_kube`]: tracing, polling
//! with a deadline, object metadata, our IngressClass, and the Events the fake holds.

use std::time::{Duration, Instant};

use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::networking::v1::{IngressClass, IngressClassSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use wsingress::translate::CONTROLLER_NAME;

use super::fake_kube::FakeKube;

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "wsingress=info".into()),
        )
        .with_test_writer()
        .try_init();
}

/// Poll `check` every 20 ms until it returns `Some`, or panic with `what` after `limit`.
pub async fn eventually<T>(limit: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {limit:?}: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Metadata with a name, and a namespace unless `ns` is empty (cluster-scoped).
pub fn meta(ns: &str, name: &str) -> ObjectMeta {
    ObjectMeta { name: Some(name.into()), namespace: (!ns.is_empty()).then(|| ns.to_string()), ..ObjectMeta::default() }
}

/// IngressClass `wsingress` for our controller.
pub fn ingress_class() -> IngressClass {
    IngressClass {
        metadata: meta("", "wsingress"),
        spec: Some(IngressClassSpec { controller: Some(CONTROLLER_NAME.into()), ..IngressClassSpec::default() }),
    }
}

pub fn events_with_reason(api: &FakeKube, reason: &str) -> Vec<Event> {
    api.list::<Event>().into_iter().filter(|e| e.reason.as_deref() == Some(reason)).collect()
}
