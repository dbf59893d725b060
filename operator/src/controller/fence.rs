//! The write fence of the leader: a layer of the controllers' kube client that refuses every
//! write (anything but GET) unless this replica's Lease was renewed recently enough.
//!
//! The elector extends the fence after each successful renewal to the start of that attempt
//! plus the renew deadline, which is shorter than the lease duration after which a standby may
//! take over. A leader that was frozen (SIGSTOP, a paused VM, a long GC) therefore finds its
//! fence expired when it resumes and writes nothing, whatever its controllers had queued,
//! before its elector notices that another replica leads and stops the process.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use http::{Method, Request};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use tracing::{debug, warn};

use super::requests::Requests;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The log target of every write the fence lets through (at debug) or refuses (at warn).
pub const TARGET: &str = "berth::fence";

/// Until when writes are allowed.
#[derive(Debug)]
pub struct Fence {
    base: Instant,
    /// Milliseconds since `base` until which writes pass; `u64::MAX`: always.
    until_ms: AtomicU64,
    pub sent: Counter,
    pub refused: Counter,
    /// Every request that passes, by verb and resource.
    pub requests: Requests,
}

/// A write refused because this replica does not hold a fresh Lease.
#[derive(Debug, thiserror::Error)]
#[error("refused {method} {path}: this replica's leader Lease was not renewed in time, another replica may lead now")]
pub struct NotLeading {
    pub method: Method,
    pub path: String,
}

impl Fence {
    fn with(until_ms: u64) -> Arc<Fence> {
        Arc::new(Fence {
            base: Instant::now(),
            until_ms: AtomicU64::new(until_ms),
            sent: Counter::default(),
            refused: Counter::default(),
            requests: Requests::default(),
        })
    }

    /// Always open: a single replica without leader election.
    pub fn open() -> Arc<Fence> {
        Fence::with(u64::MAX)
    }

    /// Closed until [`Fence::extend_until`].
    pub fn closed() -> Arc<Fence> {
        Fence::with(0)
    }

    /// Registers `berth_api_writes_total`, `berth_api_writes_refused_total` and
    /// `berth_kube_requests_total`.
    pub fn register(self: &Arc<Self>, registry: &mut Registry) {
        self.requests.register(registry);
        registry.register(
            "berth_api_writes",
            "Write requests the controllers sent to the API server",
            self.sent.clone(),
        );
        registry.register(
            "berth_api_writes_refused",
            "Write requests refused because this replica's Lease was not renewed in time",
            self.refused.clone(),
        );
    }

    fn ms(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.base).as_millis()).unwrap_or(u64::MAX - 1)
    }

    /// Allows writes until `t`.
    pub fn extend_until(&self, t: Instant) {
        self.until_ms.store(self.ms(t), Ordering::SeqCst);
    }

    /// Refuses writes from now on.
    pub fn close(&self) {
        self.until_ms.store(0, Ordering::SeqCst);
    }

    pub fn allows(&self) -> bool {
        let until = self.until_ms.load(Ordering::SeqCst);
        until == u64::MAX || self.ms(Instant::now()) < until
    }
}

/// The [`tower::Layer`] to put on a `kube::client::ClientBuilder`.
#[derive(Clone)]
pub struct FenceLayer(pub Arc<Fence>);

impl<S> tower::Layer<S> for FenceLayer {
    type Service = FenceService<S>;
    fn layer(&self, inner: S) -> FenceService<S> {
        FenceService {
            inner,
            fence: self.0.clone(),
        }
    }
}

#[derive(Clone)]
pub struct FenceService<S> {
    inner: S,
    fence: Arc<Fence>,
}

impl<S, B> tower::Service<Request<B>> for FenceService<S>
where
    S: tower::Service<Request<B>>,
    S::Error: Into<BoxError>,
    S::Response: Send + 'static,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let method = req.method().clone();
        if method != Method::GET && method != Method::HEAD {
            let path = req.uri().path().to_string();
            if !self.fence.allows() {
                self.fence.refused.inc();
                warn!(target: TARGET, %method, path, "write refused: the leader Lease is not fresh");
                return Box::pin(std::future::ready(Err(
                    Box::new(NotLeading { method, path }) as BoxError,
                )));
            }
            self.fence.sent.inc();
            debug!(target: TARGET, %method, path, "write sent");
        }
        self.fence.requests.observe(&req);
        let fut = self.inner.call(req);
        Box::pin(async move { fut.await.map_err(Into::into) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn open_closed_and_expiring() {
        assert!(Fence::open().allows());
        let f = Fence::closed();
        assert!(!f.allows());
        f.extend_until(Instant::now() + Duration::from_secs(60));
        assert!(f.allows());
        f.extend_until(Instant::now());
        assert!(!f.allows());
        f.extend_until(Instant::now() + Duration::from_secs(60));
        f.close();
        assert!(!f.allows());
    }
}
