//! Kubernetes Events (`events.k8s.io/v1`) for translation warnings: one Warning Event on the
//! object a warning is about, naming the field and value, posted once per distinct warning
//! (an unchanged warning is not re-posted on every resync; a warning that goes away and comes
//! back is posted again). Only the leader posts, so replicas do not repeat each other.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::PostParams;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::translate::{CONTROLLER_NAME, Warning};

/// The longest `note` the API server accepts (events.k8s.io/v1: 1 kB).
const NOTE_MAX: usize = 1024;

/// A warning and the full reference of the object it is about (uid, apiVersion when known).
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub warning: Warning,
    pub regarding: ObjectReference,
}

/// What makes two reports "the same" for deduplication: same object (same uid: a re-created
/// object is new), field, value and reason.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ReportKey {
    object: crate::translate::ObjectRef,
    uid: Option<String>,
    field: String,
    value: String,
    event_reason: &'static str,
}

impl Report {
    fn key(&self) -> ReportKey {
        ReportKey {
            object: self.warning.object.clone(),
            uid: self.regarding.uid.clone(),
            field: self.warning.field.clone(),
            value: self.warning.value.clone(),
            event_reason: self.warning.event_reason,
        }
    }
}

/// The human message: field, value and what is wrong.
pub fn note(w: &Warning) -> String {
    let mut note = format!("{}: {:?}: {}", w.field, w.value, w.reason);
    if note.len() > NOTE_MAX {
        let mut cut = NOTE_MAX - 3;
        while !note.is_char_boundary(cut) {
            cut -= 1;
        }
        note.truncate(cut);
        note.push_str("...");
    }
    note
}

fn event_for(report: &Report, instance: &str, now: Timestamp) -> Event {
    let w = &report.warning;
    let namespace = if w.object.namespace.is_empty() { "default".to_string() } else { w.object.namespace.clone() };
    Event {
        metadata: ObjectMeta {
            name: Some(format!("{}.{:x}", w.object.name, now.as_nanosecond())),
            namespace: Some(namespace),
            ..ObjectMeta::default()
        },
        event_time: Some(MicroTime(now)),
        type_: Some("Warning".to_string()),
        reason: Some(w.event_reason.to_string()),
        action: Some("Translate".to_string()),
        note: Some(note(w)),
        regarding: Some(report.regarding.clone()),
        reporting_controller: Some(CONTROLLER_NAME.to_string()),
        reporting_instance: Some(instance.to_string()),
        ..Event::default()
    }
}

/// Which reports of `current` still need posting, given what was posted; forgets posted
/// keys no longer current (so a warning that comes back is posted again).
fn pending<'a>(current: &'a [Report], posted: &mut HashSet<ReportKey>) -> Vec<&'a Report> {
    let keys: HashSet<ReportKey> = current.iter().map(Report::key).collect();
    posted.retain(|k| keys.contains(k));
    let mut seen = HashSet::new();
    current
        .iter()
        .filter(|r| {
            let k = r.key();
            !posted.contains(&k) && seen.insert(k)
        })
        .collect()
}

/// Post Events for `reports` while leading, until `shutdown`. Failed posts are retried
/// after `retry_every`.
pub async fn run(
    client: kube::Client,
    instance: String,
    mut reports: watch::Receiver<Arc<Vec<Report>>>,
    mut leader: watch::Receiver<bool>,
    retry_every: Duration,
    shutdown: CancellationToken,
) {
    let mut posted: HashSet<ReportKey> = HashSet::new();
    let mut failed = false;
    loop {
        if *leader.borrow_and_update() {
            let current = reports.borrow_and_update().clone();
            failed = false;
            for report in pending(&current, &mut posted) {
                let ns = report.regarding.namespace.clone().unwrap_or_else(|| "default".to_string());
                let api: Api<Event> = Api::namespaced(client.clone(), &ns);
                let event = event_for(report, &instance, Timestamp::now());
                match api.create(&PostParams::default(), &event).await {
                    Ok(_) => {
                        posted.insert(report.key());
                    }
                    Err(e) => {
                        failed = true;
                        tracing::warn!(error = %e, reason = report.warning.event_reason, "could not post a Kubernetes Event");
                        break;
                    }
                }
            }
        } else {
            // A new leader posts what is current; we post again if we lead again.
            posted.clear();
        }
        tokio::select! {
            r = reports.changed() => if r.is_err() { return },
            r = leader.changed() => if r.is_err() { return },
            () = tokio::time::sleep(retry_every), if failed => {}
            () = shutdown.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::translate::ObjectRef;

    fn report(name: &str, value: &str) -> Report {
        Report {
            warning: Warning {
                object: ObjectRef { kind: "Ingress".into(), namespace: "apps".into(), name: name.into() },
                field: "metadata.annotations[wsingress.io/idle-timeout]".into(),
                value: value.into(),
                reason: "not a duration".into(),
                event_reason: "InvalidAnnotation",
            },
            regarding: ObjectReference {
                kind: Some("Ingress".into()),
                namespace: Some("apps".into()),
                name: Some(name.into()),
                uid: Some(format!("uid-{name}")),
                ..ObjectReference::default()
            },
        }
    }

    #[test]
    fn unchanged_warnings_are_posted_once_and_again_after_they_clear() {
        let mut posted = HashSet::new();
        let a = report("chat", "forever");
        let now = vec![a.clone(), a.clone()];
        let p = pending(&now, &mut posted);
        assert_eq!(p.len(), 1, "duplicates in one round are posted once");
        posted.insert(a.key());
        assert!(pending(&now, &mut posted).is_empty(), "resync re-posts nothing");
        // Value changed: a new event.
        let b = report("chat", "10 parsecs");
        assert_eq!(pending(std::slice::from_ref(&b), &mut posted).len(), 1);
        assert!(posted.is_empty(), "the old warning is forgotten once gone");
        posted.insert(b.key());
        // Gone, then back: posted again.
        assert!(pending(&[], &mut posted).is_empty());
        assert_eq!(pending(std::slice::from_ref(&b), &mut posted).len(), 1);
    }

    #[test]
    fn event_names_field_value_and_reason() {
        let r = report("chat", "forever");
        let e = event_for(&r, "pod-1", Timestamp::UNIX_EPOCH);
        assert_eq!(e.reason.as_deref(), Some("InvalidAnnotation"));
        assert_eq!(e.type_.as_deref(), Some("Warning"));
        assert_eq!(e.metadata.namespace.as_deref(), Some("apps"));
        let n = e.note.unwrap_or_default();
        assert!(n.contains("wsingress.io/idle-timeout") && n.contains("forever"), "{n}");
        let long = Warning { value: "x".repeat(5000), ..r.warning };
        assert!(note(&long).len() <= NOTE_MAX);
    }
}
