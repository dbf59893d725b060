//! Leader election with a `coordination.k8s.io/v1` Lease, as client-go does it: only the holder
//! runs the controllers, so two replicas are safe.
//!
//! Expiry is judged by the local clock: a lease is free when its record (holder, renew time)
//! has not changed for `lease_duration` since this process first saw it, so clock skew between
//! nodes does not matter. Writes use the Lease's resourceVersion (optimistic locking): of two
//! candidates only one update succeeds.
//!
//! Every attempt (read and write of the Lease) is bounded by half the renew deadline, so a
//! hanging API server cannot hold the leader past its deadline; the leader's controllers write
//! through a [`Fence`] that this elector keeps open only until the start of the last successful
//! renewal plus the renew deadline (shorter than the lease duration a standby waits).

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use kube::Client;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::fence::Fence;

/// Lease name and timing (client-go's defaults: 15 s lease, 10 s renew deadline, 2 s retry).
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    pub name: String,
    pub namespace: String,
    /// This candidate (the pod name).
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
}

impl LeaseConfig {
    /// The bound of one attempt (a read and a write of the Lease): half the renew deadline.
    pub fn attempt_timeout(&self) -> Duration {
        (self.renew_deadline / 2).max(Duration::from_millis(100))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    #[error("leader election Lease {namespace}/{name}: {source}; the operator needs get, create and update on leases in its namespace")]
    Api {
        namespace: String,
        name: String,
        source: kube::Error,
    },
    #[error("leader election Lease {namespace}/{name}: the API server did not answer within {timeout:?}")]
    Timeout {
        namespace: String,
        name: String,
        timeout: Duration,
    },
}

/// A candidate for the lease.
pub struct Elector {
    api: Api<Lease>,
    cfg: LeaseConfig,
    /// The last record seen (holder and renew time) and when it was first seen.
    observed: Option<(String, Instant)>,
    /// Opened while this candidate holds a fresh lease.
    fence: Arc<Fence>,
}

impl Elector {
    pub fn new(client: Client, cfg: LeaseConfig) -> Self {
        Elector {
            api: Api::namespaced(client, &cfg.namespace),
            cfg,
            observed: None,
            fence: Fence::closed(),
        }
    }

    /// Keeps `fence` open while this candidate holds a freshly renewed lease.
    pub fn with_fence(mut self, fence: Arc<Fence>) -> Self {
        self.fence = fence;
        self
    }

    fn timeout(&self) -> LeaderError {
        LeaderError::Timeout {
            namespace: self.cfg.namespace.clone(),
            name: self.cfg.name.clone(),
            timeout: self.cfg.attempt_timeout(),
        }
    }

    fn err(&self, source: kube::Error) -> LeaderError {
        LeaderError::Api {
            namespace: self.cfg.namespace.clone(),
            name: self.cfg.name.clone(),
            source,
        }
    }

    /// One attempt to take or renew the lease, bounded by [`LeaseConfig::attempt_timeout`];
    /// `Ok(true)` when this candidate holds it now (then the fence is open until the start of
    /// the attempt plus the renew deadline).
    pub async fn try_acquire_or_renew(&mut self) -> Result<bool, LeaderError> {
        let start = Instant::now();
        let result = tokio::time::timeout(self.cfg.attempt_timeout(), self.attempt()).await;
        match result {
            Ok(Ok(true)) => {
                self.fence.extend_until(start + self.cfg.renew_deadline);
                Ok(true)
            }
            Ok(Ok(false)) => {
                self.fence.close();
                Ok(false)
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err(self.timeout()),
        }
    }

    async fn attempt(&mut self) -> Result<bool, LeaderError> {
        let now = MicroTime(Timestamp::now());
        let secs = i32::try_from(self.cfg.lease_duration.as_secs()).unwrap_or(i32::MAX);
        let current = self
            .api
            .get_opt(&self.cfg.name)
            .await
            .map_err(|e| self.err(e))?;
        let Some(lease) = current else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.cfg.name.clone()),
                    namespace: Some(self.cfg.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.cfg.identity.clone()),
                    lease_duration_seconds: Some(secs),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(self.err(e)),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let record = format!(
            "{holder}@{:?}",
            spec.renew_time.as_ref().map(|t| t.0.as_microsecond())
        );
        let seen_since = match &self.observed {
            Some((r, since)) if *r == record => *since,
            _ => {
                let now = Instant::now();
                self.observed = Some((record, now));
                now
            }
        };
        let duration = spec
            .lease_duration_seconds
            .map(|s| Duration::from_secs(s.max(0) as u64))
            .unwrap_or(self.cfg.lease_duration);
        let mine = holder == self.cfg.identity;
        let free = holder.is_empty() || seen_since.elapsed() > duration;
        if !mine && !free {
            return Ok(false);
        }
        let mut next = lease.clone();
        let mut s = spec;
        if !mine {
            s.acquire_time = Some(now.clone());
            s.lease_transitions = Some(s.lease_transitions.unwrap_or(0) + 1);
        }
        s.holder_identity = Some(self.cfg.identity.clone());
        s.lease_duration_seconds = Some(secs);
        s.renew_time = Some(now);
        next.spec = Some(s);
        // `replace` sends the resourceVersion we read: a concurrent writer makes this a 409.
        match self
            .api
            .replace(&self.cfg.name, &PostParams::default(), &next)
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(self.err(e)),
        }
    }

    /// Gives the lease up (on shutdown) so a standby takes over at once; closes the fence first.
    /// Bounded by [`LeaseConfig::attempt_timeout`].
    pub async fn release(&mut self) -> Result<(), LeaderError> {
        self.fence.close();
        match tokio::time::timeout(self.cfg.attempt_timeout(), self.clear_holder()).await {
            Ok(r) => r,
            Err(_) => Err(self.timeout()),
        }
    }

    async fn clear_holder(&mut self) -> Result<(), LeaderError> {
        let Some(lease) = self
            .api
            .get_opt(&self.cfg.name)
            .await
            .map_err(|e| self.err(e))?
        else {
            return Ok(());
        };
        let mut next = lease.clone();
        let mut spec = lease.spec.unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(self.cfg.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        next.spec = Some(spec);
        match self
            .api
            .replace(&self.cfg.name, &PostParams::default(), &next)
            .await
        {
            Ok(_) | Err(kube::Error::Api(_)) => Ok(()),
            Err(e) => Err(self.err(e)),
        }
    }

    /// Waits until this candidate leads; `false` when `shutdown` came first.
    pub async fn acquire(&mut self, shutdown: &CancellationToken) -> bool {
        loop {
            let attempt = tokio::select! {
                _ = shutdown.cancelled() => return false,
                r = self.try_acquire_or_renew() => r,
            };
            match attempt {
                Ok(true) => {
                    info!(identity = %self.cfg.identity, lease = %self.cfg.name, "became the leader");
                    return true;
                }
                Ok(false) => {}
                Err(e) => warn!(error = %e, "leader election attempt failed"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return false,
                _ = tokio::time::sleep(self.cfg.retry_period) => {}
            }
        }
    }

    /// Renews until `shutdown` (then releases) or until the lease is lost; `lost` is cancelled
    /// when renewing failed for longer than the renew deadline or someone else took it. A
    /// process that was frozen past its renew deadline gives up at once when it resumes.
    pub async fn keep(mut self, shutdown: CancellationToken, lost: CancellationToken) {
        // The acquiring attempt started at most one attempt timeout ago.
        let mut renewed = Instant::now()
            .checked_sub(self.cfg.attempt_timeout())
            .unwrap_or_else(Instant::now);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => {
                    self.stop().await;
                    return;
                }
                _ = tokio::time::sleep(self.cfg.retry_period) => {}
            }
            if renewed.elapsed() > self.cfg.renew_deadline {
                self.fence.close();
                warn!(since = ?renewed.elapsed(), "the lease was not renewed within the renew deadline (was this process frozen?): stopping");
                lost.cancel();
                return;
            }
            let start = Instant::now();
            let attempt = tokio::select! {
                _ = shutdown.cancelled() => {
                    self.stop().await;
                    return;
                }
                r = self.try_acquire_or_renew() => r,
            };
            match attempt {
                Ok(true) => renewed = start,
                Ok(false) => {
                    warn!("another replica took the lease: stopping");
                    lost.cancel();
                    return;
                }
                Err(e) => {
                    warn!(error = %e, "cannot renew the lease");
                    if renewed.elapsed() > self.cfg.renew_deadline {
                        self.fence.close();
                        lost.cancel();
                        return;
                    }
                }
            }
        }
    }

    async fn stop(&mut self) {
        match self.release().await {
            Ok(()) => info!(lease = %self.cfg.name, "released the lease"),
            Err(e) => warn!(error = %e, "cannot release the lease"),
        }
    }
}
