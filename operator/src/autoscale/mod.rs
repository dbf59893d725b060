//! Queue-depth autoscaling, shared by the Kubernetes and Docker host backends.
//!
//! - [`probe`]: which Redis keys hold a framework's jobs (BullMQ, Celery, Sidekiq, RQ, list,
//!   stream) and how their counts add up to a depth: jobs waiting plus jobs in flight.
//! - [`pool`]: one multiplexed connection per Redis URL, shared by all Workers; URLs are
//!   secret and only ever shown redacted.
//! - [`decision`]: the pure decision `(depth, current, policy, history, now) -> desired`.
//! - [`driver`]: the polling loop.
//!
//! A backend uses it like this:
//!
//! ```ignore
//! struct MyBackend { /* ... */ }
//! impl ScaleTarget for MyBackend {
//!     async fn current_replicas(&self, id: &WorkerId) -> Result<i32, TargetError> { /* running replicas */ }
//!     async fn scale(&self, id: &WorkerId, c: &ScaleChange) -> Result<(), TargetError> { /* set c.to */ }
//!     async fn observed(&self, id: &WorkerId, o: &PollOutcome) { /* status, events, metrics */ }
//! }
//! let driver = Driver::new(MyBackend { .. });
//! // for every Worker with `scaling` (and again whenever its spec or Redis URL changes):
//! driver.upsert(WorkerEntry {
//!     id: "vidgen-render".into(),
//!     policy: Policy::from_spec(spec.scaling.as_ref().unwrap())?,
//!     probe: QueueProbe::new(&spec.queue)?,
//!     redis: RedisTarget::new(url_from_secret, None),
//! });
//! // when it is deleted or loses `scaling`: driver.remove("vidgen-render");
//! tokio::spawn({ let d = driver.clone(); async move { d.run(shutdown).await } });
//! ```
//!
//! The driver never scales down because a read failed: the decision holds (or applies
//! `onQueueUnavailable: {replicas: N}` as a floor) and `observed` gets the error.

pub mod decision;
pub mod driver;
mod listener;
pub mod notify;
pub mod pool;
pub mod probe;

pub use decision::{decide, step, Decision, History, Observation, Policy, PolicyError, Reason};
pub use driver::{
    read_probes, Driver, PollOutcome, ScaleChange, ScaleTarget, TargetError, WorkerEntry, WorkerId,
};
pub use notify::{KeyspaceState, NotifyError};
pub use pool::{redact, Pool, PoolError, RedisTarget};
pub use probe::{Depth, Part, ProbeError, QueueProbe};
