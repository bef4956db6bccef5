//! Kubernetes Events (`events.k8s.io/v1`) for translation warnings: one Warning Event on the
//! object a warning is about, naming the field and value. Only the leader posts.
//!
//! As client-go's event correlator and spam filter do it:
//! - **De-duplicated.** A warning that stays is posted once, not on every resync. Each
//!   distinct warning (object uid, reason, field, value, message, reporting controller) has a
//!   deterministic Event name, so when it is observed again — it went away and came back, the
//!   process restarted, another replica became leader — the create answers 409 and the
//!   existing Event's `series` is updated instead (count + 1, `lastObservedTime`).
//! - **Rate limited.** Token buckets: per object (burst 25, then one per 5 minutes, like
//!   client-go's `EventSourceObjectSpamFilter`) and for the whole process (burst 25, then 5
//!   per second), so a broken change to ten thousand Ingresses does not flood the API
//!   server. A warning held back is posted when its bucket refills, unless it is gone by then.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::{Event, EventSeries};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::json;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::routes::ring::hash_key;
use crate::translate::{ObjectRef, Warning};

/// The longest `note` the API server accepts (events.k8s.io/v1: 1 kB).
const NOTE_MAX: usize = 1024;
/// The longest object name (a DNS subdomain).
const NAME_MAX: usize = 253;

/// A warning and the full reference of the object it is about (uid, apiVersion when known).
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub warning: Warning,
    pub regarding: ObjectReference,
}

/// What makes two reports "the same": same object (same uid: a re-created object is new),
/// field, value, reason and message (as client-go's aggregation key).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ReportKey {
    object: ObjectRef,
    uid: Option<String>,
    field: String,
    value: String,
    event_reason: &'static str,
    message: String,
}

impl Report {
    fn key(&self) -> ReportKey {
        ReportKey {
            object: self.warning.object.clone(),
            uid: self.regarding.uid.clone(),
            field: self.warning.field.clone(),
            value: self.warning.value.clone(),
            event_reason: self.warning.event_reason,
            message: self.warning.reason.clone(),
        }
    }
}

/// Who reports: `reportingController` (`--controller-name`) and `reportingInstance` (the pod).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reporter {
    pub controller: String,
    pub instance: String,
}

/// Token buckets for Events (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EventLimits {
    pub per_object_burst: u32,
    pub per_object_every: Duration,
    pub global_burst: u32,
    pub global_every: Duration,
}

impl Default for EventLimits {
    fn default() -> Self {
        Self {
            per_object_burst: 25,
            per_object_every: Duration::from_secs(300),
            global_burst: 25,
            global_every: Duration::from_millis(200),
        }
    }
}

/// A token bucket: `burst` tokens, one more every `every`.
#[derive(Debug, Clone)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(burst: u32, now: Instant) -> Self {
        Self { tokens: f64::from(burst), at: now }
    }

    fn refill(&mut self, burst: u32, every: Duration, now: Instant) {
        let gained = now.saturating_duration_since(self.at).as_secs_f64() / every.as_secs_f64().max(1e-9);
        self.tokens = (self.tokens + gained).min(f64::from(burst));
        self.at = now;
    }

    /// When the next token is there (now if one is).
    fn ready_at(&self, every: Duration) -> Instant {
        if self.tokens >= 1.0 { self.at } else { self.at + every.mul_f64(1.0 - self.tokens) }
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

/// The Event's namespace: the object's, or `default` for a cluster-scoped one.
fn event_namespace(r: &Report) -> String {
    r.regarding.namespace.clone().filter(|n| !n.is_empty()).unwrap_or_else(|| "default".to_string())
}

/// The deterministic name of the Event for `report`: the object's name (cut to fit) and a
/// stable hash of what makes the warning distinct, so every process and replica finds it.
fn event_name(report: &Report, controller: &str) -> String {
    let k = report.key();
    let identity = format!(
        "{controller}\n{}\n{}\n{}\n{}\n{}\n{}\n{}\n{}",
        k.object.kind,
        k.object.namespace,
        k.object.name,
        k.uid.unwrap_or_default(),
        k.event_reason,
        k.field,
        k.value,
        k.message
    );
    let suffix = format!(".{:016x}", hash_key(identity.as_bytes()));
    let mut base: String = k
        .object
        .name
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '.' { c } else { '-' })
        .collect();
    base.truncate(NAME_MAX - suffix.len());
    let base = base.trim_matches(|c: char| c == '-' || c == '.');
    let base = if base.is_empty() { "wsingress" } else { base };
    format!("{base}{suffix}")
}

fn event_for(report: &Report, reporter: &Reporter, now: Timestamp) -> Event {
    let w = &report.warning;
    Event {
        metadata: ObjectMeta {
            name: Some(event_name(report, &reporter.controller)),
            namespace: Some(event_namespace(report)),
            ..ObjectMeta::default()
        },
        event_time: Some(MicroTime(now)),
        type_: Some("Warning".to_string()),
        reason: Some(w.event_reason.to_string()),
        action: Some("Translate".to_string()),
        note: Some(note(w)),
        regarding: Some(report.regarding.clone()),
        reporting_controller: Some(reporter.controller.clone()),
        reporting_instance: Some(reporter.instance.clone()),
        ..Event::default()
    }
}

/// The series patch for an Event observed once more.
fn series_patch(existing: Option<&EventSeries>, now: Timestamp) -> serde_json::Value {
    let count = existing.map_or(1, |s| s.count) + 1;
    json!({"series": {"count": count, "lastObservedTime": MicroTime(now)}})
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

#[derive(Debug, thiserror::Error)]
enum PostError {
    #[error(transparent)]
    Api(#[from] kube::Error),
}

/// Create the Event, or, when one of that name exists, count one more observation of it.
async fn post(client: &kube::Client, report: &Report, reporter: &Reporter) -> Result<(), PostError> {
    let api: Api<Event> = Api::namespaced(client.clone(), &event_namespace(report));
    let now = Timestamp::now();
    let event = event_for(report, reporter, now);
    match api.create(&PostParams::default(), &event).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => {
            let name = event.metadata.name.clone().unwrap_or_default();
            let existing = api.get_opt(&name).await?;
            let patch = series_patch(existing.as_ref().and_then(|e| e.series.as_ref()), now);
            if existing.is_some() {
                api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
            } else {
                // Expired between the two requests: create it afresh.
                api.create(&PostParams::default(), &event).await?;
            }
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

/// Post Events for `reports` while leading, until `shutdown`, within `limits`. Failed posts
/// are retried after `retry_every`.
pub async fn run(
    client: kube::Client,
    reporter: Reporter,
    limits: EventLimits,
    mut reports: watch::Receiver<Arc<Vec<Report>>>,
    mut leader: watch::Receiver<bool>,
    retry_every: Duration,
    shutdown: CancellationToken,
) {
    let mut posted: HashSet<ReportKey> = HashSet::new();
    let mut global = Bucket::full(limits.global_burst, Instant::now());
    let mut per_object: HashMap<ObjectRef, Bucket> = HashMap::new();
    loop {
        // When to look again without a change: a failed post or a held-back warning.
        let mut wake: Option<Instant> = None;
        if *leader.borrow_and_update() {
            let current = reports.borrow_and_update().clone();
            let live: HashSet<&ObjectRef> = current.iter().map(|r| &r.warning.object).collect();
            per_object.retain(|o, _| live.contains(o));
            for report in pending(&current, &mut posted) {
                let now = Instant::now();
                global.refill(limits.global_burst, limits.global_every, now);
                let bucket = per_object
                    .entry(report.warning.object.clone())
                    .or_insert_with(|| Bucket::full(limits.per_object_burst, now));
                bucket.refill(limits.per_object_burst, limits.per_object_every, now);
                if bucket.tokens < 1.0 || global.tokens < 1.0 {
                    let at = bucket.ready_at(limits.per_object_every).max(global.ready_at(limits.global_every));
                    wake = Some(wake.map_or(at, |w| w.min(at)));
                    continue;
                }
                bucket.tokens -= 1.0;
                global.tokens -= 1.0;
                match post(&client, report, &reporter).await {
                    Ok(()) => {
                        posted.insert(report.key());
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, reason = report.warning.event_reason, "could not post a Kubernetes Event");
                        let at = Instant::now() + retry_every;
                        wake = Some(wake.map_or(at, |w| w.min(at)));
                        break;
                    }
                }
            }
        } else {
            // A new leader posts what is current (as one more observation of existing Events).
            posted.clear();
        }
        tokio::select! {
            r = reports.changed() => if r.is_err() { return },
            r = leader.changed() => if r.is_err() { return },
            () = tokio::time::sleep_until(wake.unwrap_or_else(Instant::now)), if wake.is_some() => {}
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

    fn reporter() -> Reporter {
        Reporter { controller: "wsingress.io/ingress-controller".into(), instance: "pod-1".into() }
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
        let e = event_for(&r, &reporter(), Timestamp::UNIX_EPOCH);
        assert_eq!(e.reason.as_deref(), Some("InvalidAnnotation"));
        assert_eq!(e.type_.as_deref(), Some("Warning"));
        assert_eq!(e.metadata.namespace.as_deref(), Some("apps"));
        assert_eq!(e.reporting_controller.as_deref(), Some("wsingress.io/ingress-controller"));
        let n = e.note.unwrap_or_default();
        assert!(n.contains("wsingress.io/idle-timeout") && n.contains("forever"), "{n}");
        let long = Warning { value: "x".repeat(5000), ..r.warning };
        assert!(note(&long).len() <= NOTE_MAX);
    }

    #[test]
    fn event_names_are_stable_per_warning_and_valid() {
        let c = "wsingress.io/ingress-controller";
        let a = event_name(&report("chat", "forever"), c);
        assert_eq!(a, event_name(&report("chat", "forever"), c), "the same warning, the same name");
        assert_ne!(a, event_name(&report("chat", "5 parsecs"), c));
        assert_ne!(a, event_name(&report("chat", "forever"), "example.com/other"), "per controller");
        assert!(a.starts_with("chat."), "{a}");
        let mut long = report(&"n".repeat(300), "x");
        long.warning.object.name = "Very_Long".repeat(40);
        let name = event_name(&long, c);
        assert!(name.len() <= NAME_MAX, "{}", name.len());
        assert!(name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.'), "{name}");
    }

    #[test]
    fn series_counts_one_more_observation() {
        let now = Timestamp::UNIX_EPOCH;
        assert_eq!(series_patch(None, now)["series"]["count"], 2);
        let s = EventSeries { count: 7, last_observed_time: MicroTime(now) };
        assert_eq!(series_patch(Some(&s), now)["series"]["count"], 8);
    }

    #[test]
    fn buckets_hold_back_and_refill() {
        let t0 = Instant::now();
        let every = Duration::from_secs(10);
        let mut b = Bucket::full(2, t0);
        b.tokens -= 2.0;
        assert_eq!(b.ready_at(every), t0 + every);
        b.refill(2, every, t0 + Duration::from_secs(5));
        assert!((b.tokens - 0.5).abs() < 1e-9);
        b.refill(2, every, t0 + Duration::from_secs(100));
        assert!((b.tokens - 2.0).abs() < 1e-9, "never above the burst");
    }
}
