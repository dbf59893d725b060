//! `berth_kube_requests_total{verb,resource}`: every request the controllers' client sends to
//! the API server, counted by the client itself (the API server's own
//! `apiserver_request_total` has no client label). Verbs are Kubernetes' (`watch`, `list`,
//! `get`, `create`, `update`, `patch`, `delete`, `deletecollection`); `resource` is the plural
//! name, with `/subresource` (`appstacks/status`).

use http::{Method, Request};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub verb: String,
    pub resource: String,
}

/// The request counter, shared by the client's layer and /metrics.
#[derive(Clone, Debug, Default)]
pub struct Requests {
    pub counts: Family<RequestLabels, Counter>,
}

impl Requests {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "berth_kube_requests",
            "Requests the controllers sent to the Kubernetes API server, by verb and resource",
            self.counts.clone(),
        );
    }

    /// Counts one request.
    pub fn observe<B>(&self, req: &Request<B>) {
        let (verb, resource) = classify(req.method(), req.uri().path(), req.uri().query());
        self.counts
            .get_or_create(&RequestLabels {
                verb: verb.into(),
                resource,
            })
            .inc();
    }

    /// The count of one verb over every resource (for tests and benchmarks).
    pub fn verb_total(&self, verb: &str) -> u64 {
        let mut total = 0;
        // Family has no iterator: read the known resources through the encoder instead.
        let mut text = String::new();
        let mut registry = Registry::default();
        self.register(&mut registry);
        if prometheus_client::encoding::text::encode(&mut text, &registry).is_ok() {
            let needle = format!("verb=\"{verb}\"");
            for line in text.lines().filter(|l| l.contains(&needle)) {
                total += line
                    .rsplit(' ')
                    .next()
                    .and_then(|n| n.parse::<u64>().ok())
                    .unwrap_or(0);
            }
        }
        total
    }
}

/// The Kubernetes verb and resource of a request path such as
/// `/apis/apps/v1/namespaces/ns/deployments/web` or `/api/v1/secrets?watch=true`.
pub fn classify(method: &Method, path: &str, query: Option<&str>) -> (&'static str, String) {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let rest = match segments.as_slice() {
        ["api", _version, rest @ ..] => rest,
        ["apis", _group, _version, rest @ ..] => rest,
        _ => &[][..],
    };
    let rest = match rest {
        ["namespaces", _ns, more @ ..] if !more.is_empty() => more,
        _ => rest,
    };
    let resource = match rest {
        [] => "other".to_string(),
        [r] | [r, _] => r.to_string(),
        [r, _, sub, ..] => format!("{r}/{sub}"),
    };
    let named = rest.len() >= 2;
    let watch = query.is_some_and(|q| q.split('&').any(|kv| kv == "watch=true" || kv == "watch=1"));
    let verb = match *method {
        Method::GET if watch => "watch",
        Method::GET if named => "get",
        Method::GET => "list",
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE if named => "delete",
        Method::DELETE => "deletecollection",
        _ => "other",
    };
    (verb, resource)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verbs_and_resources() {
        let c = |m: Method, p: &str, q: Option<&str>| {
            let (v, r) = classify(&m, p, q);
            (v, r)
        };
        assert_eq!(
            c(
                Method::GET,
                "/apis/berth.dev/v1alpha1/appstacks",
                Some("watch=true&resourceVersion=1")
            ),
            ("watch", "appstacks".into())
        );
        assert_eq!(
            c(Method::GET, "/api/v1/namespaces/a/secrets/db", None),
            ("get", "secrets".into())
        );
        assert_eq!(
            c(
                Method::GET,
                "/apis/apps/v1/namespaces/a/deployments",
                Some("limit=1")
            ),
            ("list", "deployments".into())
        );
        assert_eq!(
            c(
                Method::PATCH,
                "/apis/berth.dev/v1alpha1/namespaces/a/appstacks/s/status",
                None
            ),
            ("patch", "appstacks/status".into())
        );
        assert_eq!(
            c(Method::GET, "/api/v1/namespaces/a", None),
            ("get", "namespaces".into())
        );
        assert_eq!(
            c(Method::POST, "/api/v1/namespaces/a/events", None),
            ("create", "events".into())
        );
        let r = Requests::default();
        r.observe(&Request::get("/api/v1/secrets?watch=1").body(()).unwrap());
        r.observe(
            &Request::get("/api/v1/namespaces/a/secrets/x")
                .body(())
                .unwrap(),
        );
        assert_eq!((r.verb_total("watch"), r.verb_total("get")), (1, 1));
    }
}
