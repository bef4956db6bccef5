//! Lease-based leader election (`coordination.k8s.io/v1` Lease), so only one replica writes
//! Ingress status and posts Events.
//!
//! Written on kube's `Api<Lease>` with the client-go algorithm: read the Lease; take it when
//! it is free, ours, or its holder has not renewed for `lease_duration` *as observed by this
//! replica's own clock* (no cross-node clock comparison); every write is a replace carrying
//! the read `resourceVersion`, so two candidates racing for it get one success and one 409.
//! A leader that cannot renew within `renew_deadline` steps down before anyone else may take
//! over; on shutdown it releases the Lease so a successor takes over at once. The bound: a
//! leader stops acting at most `renew_deadline` (10 s) after the start of its last successful
//! renewal; a follower takes over no earlier than `lease_duration` (15 s) after it last saw
//! the Lease change, which is after that renewal started; so two replicas never act as leader
//! at once unless their clocks' rates differ by a third.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::PostParams;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Who we are and how the Lease is held (client-go's `LeaderElectionConfig`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElectionConfig {
    pub namespace: String,
    pub lease_name: String,
    /// This replica's identity (`--pod-name`).
    pub identity: String,
    /// How long a holder's claim lasts without renewal (written into the Lease): a follower
    /// takes over only after it has seen no renewal for this long.
    pub lease_duration: Duration,
    /// A leader that has not renewed for this long (from the start of its last successful
    /// renewal) stops acting as leader. Shorter than `lease_duration`, so it steps down
    /// before any follower may take over.
    pub renew_deadline: Duration,
    /// How often the leader renews and a follower tries to acquire; also the wait between
    /// failed attempts.
    pub retry_period: Duration,
}

impl ElectionConfig {
    /// client-go's defaults: 15 s lease, 10 s renew deadline, 2 s retry period.
    pub fn new(namespace: String, lease_name: String, identity: String) -> Self {
        Self {
            namespace,
            lease_name,
            identity,
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }

    fn lease_seconds(&self) -> i32 {
        i32::try_from(self.lease_duration.as_secs().max(1)).unwrap_or(i32::MAX)
    }
}

/// What one look at the Lease decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Round {
    /// We hold it (acquired or renewed).
    Held,
    /// Someone else holds it (or won a race).
    Other,
}

#[derive(Debug, thiserror::Error)]
enum RoundError {
    #[error(transparent)]
    Api(#[from] kube::Error),
    #[error("no answer within {0:?}")]
    TimedOut(Duration),
}

struct Elector {
    api: Api<Lease>,
    config: ElectionConfig,
    /// The last (holder, renewTime) seen and when this replica first saw it.
    observed: Option<(Option<String>, Option<String>)>,
    observed_at: Instant,
}

impl Elector {
    fn is_conflict(e: &kube::Error) -> bool {
        matches!(e, kube::Error::Api(s) if s.code == 409)
    }

    async fn round(&mut self) -> Result<Round, RoundError> {
        let now = MicroTime(Timestamp::now());
        let me = self.config.identity.clone();
        let Some(mut lease) = self.api.get_opt(&self.config.lease_name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.config.lease_name.clone()),
                    namespace: Some(self.config.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(me),
                    lease_duration_seconds: Some(self.config.lease_seconds()),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(Round::Held),
                Err(e) if Self::is_conflict(&e) => Ok(Round::Other),
                Err(e) => Err(e.into()),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let seen = (holder.clone(), spec.renew_time.as_ref().map(|t| t.0.to_string()));
        if self.observed.as_ref() != Some(&seen) {
            self.observed = Some(seen);
            self.observed_at = Instant::now();
        }
        let duration = spec
            .lease_duration_seconds
            .and_then(|s| u64::try_from(s).ok())
            .map_or(self.config.lease_duration, Duration::from_secs);
        let ours = holder.as_deref() == Some(me.as_str());
        if holder.is_some() && !ours && self.observed_at.elapsed() < duration {
            return Ok(Round::Other);
        }
        lease.spec = Some(LeaseSpec {
            holder_identity: Some(me),
            lease_duration_seconds: Some(self.config.lease_seconds()),
            acquire_time: if ours { spec.acquire_time.clone() } else { Some(now.clone()) },
            renew_time: Some(now),
            lease_transitions: Some(spec.lease_transitions.unwrap_or(0) + i32::from(!ours)),
            ..spec
        });
        match self.api.replace(&self.config.lease_name, &PostParams::default(), &lease).await {
            Ok(_) => Ok(Round::Held),
            Err(e) if Self::is_conflict(&e) => Ok(Round::Other),
            Err(e) => Err(e.into()),
        }
    }

    /// Give the Lease up (holder cleared, 1 s duration) if we still hold it.
    async fn release(&self) -> Result<(), kube::Error> {
        let Some(mut lease) = self.api.get_opt(&self.config.lease_name).await? else {
            return Ok(());
        };
        let mut spec = lease.spec.clone().unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(self.config.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        lease.spec = Some(spec);
        self.api.replace(&self.config.lease_name, &PostParams::default(), &lease).await.map(|_| ())
    }
}

/// Run the election until `shutdown`; `leader` says whether this replica leads right now.
///
/// As client-go: a follower tries to acquire every `retry_period`; the leader renews every
/// `retry_period`, retrying failed renewals at the same pace, and steps down as soon as
/// `renew_deadline` has passed since the start of its last successful renewal, even while a
/// request hangs (each attempt is bounded by the time left). A follower takes the Lease only
/// after `lease_duration` without a renewal, as timed by its own clock.
pub async fn run(
    client: kube::Client,
    config: ElectionConfig,
    leader: watch::Sender<bool>,
    shutdown: CancellationToken,
) {
    let mut elector = Elector {
        api: Api::namespaced(client, &config.namespace),
        config,
        observed: None,
        observed_at: Instant::now(),
    };
    let retry = elector.config.retry_period;
    let renew_deadline = elector.config.renew_deadline;
    // When the last successful renewal was sent (the server may have applied it any time after).
    let mut renewed_at: Option<Instant> = None;
    loop {
        let leading = *leader.borrow();
        let started = Instant::now();
        let deadline = renewed_at.map(|t| t + renew_deadline);
        let limit = match deadline {
            Some(d) if leading => d.saturating_duration_since(started).min(retry),
            _ => retry,
        }
        .max(Duration::from_millis(1));
        let round = tokio::select! {
            r = tokio::time::timeout(limit, elector.round()) => r.unwrap_or(Err(RoundError::TimedOut(limit))),
            () = shutdown.cancelled() => break,
        };
        match round {
            Ok(Round::Held) => {
                renewed_at = Some(started);
                if !leading {
                    tracing::info!(identity = %elector.config.identity, lease = %elector.config.lease_name, "became leader");
                    leader.send_replace(true);
                }
            }
            Ok(Round::Other) => {
                if leading {
                    tracing::warn!(identity = %elector.config.identity, "lost leadership: another replica holds the lease");
                    leader.send_replace(false);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, lease = %elector.config.lease_name, "leader election: lease request failed");
            }
        }
        let deadline = renewed_at.map(|t| t + renew_deadline);
        let mut next = Instant::now() + retry;
        if *leader.borrow() {
            match deadline {
                Some(d) if Instant::now() >= d => {
                    tracing::warn!(
                        identity = %elector.config.identity,
                        deadline_s = renew_deadline.as_secs_f64(),
                        "could not renew the lease within the renew deadline; stepping down"
                    );
                    leader.send_replace(false);
                }
                Some(d) => next = next.min(d),
                None => {}
            }
        }
        tokio::select! {
            () = tokio::time::sleep_until(next) => {}
            () = shutdown.cancelled() => break,
        }
    }
    if *leader.borrow() {
        leader.send_replace(false);
        // Bounded: a dead API server must not hold shutdown up.
        match tokio::time::timeout(Duration::from_secs(2), elector.release()).await {
            Ok(Ok(())) => {
                tracing::info!(identity = %elector.config.identity, "released leadership")
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "could not release the lease"),
            Err(_) => tracing::warn!("releasing the lease timed out"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_go_defaults_step_down_before_the_lease_expires() {
        let c = ElectionConfig::new("ns".into(), "l".into(), "me".into());
        assert_eq!(
            (c.lease_duration, c.renew_deadline, c.retry_period),
            (Duration::from_secs(15), Duration::from_secs(10), Duration::from_secs(2))
        );
        assert!(c.renew_deadline < c.lease_duration && c.retry_period < c.renew_deadline);
        assert_eq!(c.lease_seconds(), 15);
    }
}
