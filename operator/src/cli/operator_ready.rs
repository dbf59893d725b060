//! What `berth operator` serves and checks besides its controllers: /healthz (liveness),
//! /readyz (CRDs served and current, caches synced), /metrics, and the CRD check that feeds
//! /readyz, the `berth_crd_*` metrics and the start of the controllers.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::controller::crd_check;
use crate::controller::metrics::CrdMetrics;
use crate::controller::synced::{Synced, WATCH_TROUBLE};

/// One CRD check may take this long.
const CHECK_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the CRDs are checked while they are fine, and while they are not. The leader's
/// controllers watch berth's kinds: a CRD deleted under them fails a watch, which wakes the
/// check at once ([`WATCH_TROUBLE`]), so the leader rechecks on its own only every 10 minutes
/// (for a CRD replaced by an older schema); an idle leader sends no request for this.
const CRD_RECHECK_OK: Duration = Duration::from_secs(15);
const CRD_RECHECK_OK_LEADING: Duration = Duration::from_secs(600);
const CRD_RECHECK_PROBLEM: Duration = Duration::from_secs(3);
/// A missing CRD is logged at most this often.
const CRD_REPORT_EVERY: Duration = Duration::from_secs(60);

/// What /readyz and /metrics serve.
pub struct HttpState {
    pub registry: Registry,
    pub stopping: AtomicBool,
    /// Why the CRDs are not usable (empty: fine); `None` before the first check.
    pub crd_problems: Mutex<Option<Vec<String>>>,
    pub leading: AtomicBool,
    /// One per controller, raised when its caches are synced.
    pub synced: Vec<(&'static str, Synced)>,
}

impl HttpState {
    /// `Ok` when ready, else why not.
    pub fn readiness(&self) -> Result<(), String> {
        if self.stopping.load(Ordering::SeqCst) {
            return Err("stopping".into());
        }
        match &*self.crd_problems.lock().unwrap_or_else(|p| p.into_inner()) {
            None => return Err("checking the CRDs".into()),
            Some(p) if !p.is_empty() => return Err(p.join("\n")),
            Some(_) => {}
        }
        if self.leading.load(Ordering::SeqCst) {
            let waiting: Vec<&str> = self
                .synced
                .iter()
                .filter(|(_, s)| !s.is_set())
                .map(|(n, _)| *n)
                .collect();
            if !waiting.is_empty() {
                return Err(format!(
                    "caches of the {} controller(s) not synced yet",
                    waiting.join(", ")
                ));
            }
        }
        Ok(())
    }
}

/// Liveness only: the process serves requests.
pub async fn healthz() -> &'static str {
    "ok"
}

/// Ready when the CRDs are served and current and, on the leader, every cache is synced.
pub async fn readyz(State(s): State<Arc<HttpState>>) -> impl IntoResponse {
    match s.readiness() {
        Ok(()) => (StatusCode::OK, "ok".to_string()),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, why),
    }
}

pub async fn metrics(State(s): State<Arc<HttpState>>) -> impl IntoResponse {
    crate::heap::publish();
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &s.registry) {
        Ok(()) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

/// Checks the CRDs until `shutdown`: updates /readyz, the metrics and `ok`, and logs each
/// problem as an error at most once a minute (and once when it is fixed).
pub async fn watch_crds(
    client: kube::Client,
    state: Arc<HttpState>,
    metrics: CrdMetrics,
    ok: tokio::sync::watch::Sender<bool>,
    shutdown: CancellationToken,
) {
    let mut reported: HashMap<String, Instant> = HashMap::new();
    let mut unreachable_reported: Option<Instant> = None;
    loop {
        let checked = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = tokio::time::timeout(CHECK_TIMEOUT, crd_check::check(&client)) => r,
        };
        let problems: Vec<String> = match checked {
            Ok(Ok(problems)) => {
                unreachable_reported = None;
                for p in &problems {
                    let crd = p.crd().to_string();
                    metrics
                        .unavailable
                        .get_or_create(&CrdMetrics::labels(&crd))
                        .set(1);
                    if reported
                        .get(&crd)
                        .is_none_or(|t| t.elapsed() >= CRD_REPORT_EVERY)
                    {
                        error!(crd, "{p}");
                        metrics
                            .problems
                            .get_or_create(&CrdMetrics::labels(&crd))
                            .inc();
                        reported.insert(crd, Instant::now());
                    }
                }
                let fixed: Vec<String> = reported
                    .keys()
                    .filter(|c| !problems.iter().any(|p| p.crd() == c.as_str()))
                    .cloned()
                    .collect();
                for crd in fixed {
                    info!(crd, "CRD {crd} is served and current now");
                    metrics
                        .unavailable
                        .get_or_create(&CrdMetrics::labels(&crd))
                        .set(0);
                    reported.remove(&crd);
                }
                problems.iter().map(ToString::to_string).collect()
            }
            Ok(Err(e)) => {
                if unreachable_reported.is_none_or(|t| t.elapsed() >= CRD_REPORT_EVERY) {
                    warn!(error = %e, "cannot check berth's CRDs");
                    unreachable_reported = Some(Instant::now());
                }
                vec![e.to_string()]
            }
            Err(_) => {
                if unreachable_reported.is_none_or(|t| t.elapsed() >= CRD_REPORT_EVERY) {
                    warn!("cannot check berth's CRDs: the API server did not answer in time");
                    unreachable_reported = Some(Instant::now());
                }
                vec!["the API server did not answer the CRD check in time".into()]
            }
        };
        let fine = problems.is_empty();
        *state.crd_problems.lock().unwrap_or_else(|p| p.into_inner()) = Some(problems);
        ok.send_replace(fine);
        let leading = state.leading.load(Ordering::SeqCst);
        let pause = match (fine, leading) {
            (true, true) => CRD_RECHECK_OK_LEADING,
            (true, false) => CRD_RECHECK_OK,
            (false, _) => CRD_RECHECK_PROBLEM,
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(pause) => {}
            // Only while leading (the watches run), and only once the CRDs were fine: a
            // failing watch while they are not would recheck in a tight loop.
            _ = WATCH_TROUBLE.notified(), if fine && leading => {}
        }
    }
}
