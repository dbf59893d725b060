//! How the api is exposed: domain, certificate, routes and their limits.

use crate::api::units::parse_quantity;
use crate::api::AppStackSpec;

use super::component::Observed;
use super::names;
use super::types::{Exposure, RateLimitPlan, RoutePlan, TlsSource};
use super::PlanError;

/// The body size limit without `maxBodySize` (1 MiB, the usual reverse-proxy default).
pub const DEFAULT_MAX_BODY_BYTES: u64 = 1024 * 1024;

/// The exposure of a stack, `None` without a domain.
pub fn exposure(
    stack: &str,
    spec: &AppStackSpec,
    observed: &Observed,
) -> Result<Option<Exposure>, PlanError> {
    let Some(domain) = &spec.domain else {
        return Ok(None);
    };
    let tls = match &spec.tls {
        None => None,
        Some(t) => match (&t.certificate_ref, &t.issuer) {
            (Some(cert), _) => {
                let secret = observed
                    .certificate_secrets
                    .get(cert)
                    .ok_or_else(|| PlanError::CertificateNotFound { name: cert.clone() })?;
                Some(TlsSource {
                    certificate: cert.clone(),
                    secret_name: secret.clone(),
                    managed: false,
                })
            }
            (None, Some(_)) => Some(TlsSource {
                certificate: names::child_certificate(stack),
                secret_name: names::child_certificate(stack),
                managed: true,
            }),
            (None, None) => None,
        },
    };
    let max_body_bytes = match &spec.api.max_body_size {
        None => DEFAULT_MAX_BODY_BYTES,
        Some(q) => parse_quantity(q)
            .map(|q| u64::try_from(q.whole_units()).unwrap_or(u64::MAX))
            .map_err(|message| PlanError::Invalid {
                field: "spec.api.maxBodySize".into(),
                message,
            })?,
    };
    Ok(Some(Exposure {
        domain: domain.clone(),
        tls,
        target: "api".into(),
        target_port: spec.api.port,
        max_body_bytes,
        routes: routes(spec),
    }))
}

/// The api's routes, longest path first (ties by path, so the order is total and stable);
/// `/` alone when none are given.
pub fn routes(spec: &AppStackSpec) -> Vec<RoutePlan> {
    let mut routes: Vec<(String, Option<RateLimitPlan>, bool)> = if spec.api.routes.is_empty() {
        vec![("/".into(), None, false)]
    } else {
        spec.api
            .routes
            .iter()
            .map(|r| {
                (
                    r.path.clone(),
                    r.rate_limit.as_ref().map(|l| RateLimitPlan {
                        requests_per_second: l.requests_per_second,
                        burst: l.burst,
                    }),
                    r.websocket,
                )
            })
            .collect()
    };
    routes.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
    let mut taken = Vec::new();
    routes
        .into_iter()
        .map(|(path, rate_limit, websocket)| {
            let slug = names::route_slug(&path, &taken);
            taken.push(slug.clone());
            RoutePlan {
                path,
                rate_limit,
                websocket,
                slug,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(v: serde_json::Value) -> AppStackSpec {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn no_domain_no_exposure() {
        let s = spec(json!({"api": {"image": "a:1"}}));
        assert_eq!(exposure("s", &s, &Observed::default()).unwrap(), None);
    }

    #[test]
    fn routes_longest_first_with_limits() {
        let s = spec(
            json!({"domain": "x.example.com", "api": {"image": "a:1", "routes": [
                {"path": "/"},
                {"path": "/api", "rateLimit": {"requestsPerSecond": 10, "burst": 20}},
                {"path": "/ws", "websocket": true},
                {"path": "/api/generate", "rateLimit": {"requestsPerSecond": 2, "burst": 5}},
            ]}}),
        );
        let got: Vec<_> = routes(&s)
            .into_iter()
            .map(|r| {
                (
                    r.path,
                    r.slug,
                    r.rate_limit.map(|l| (l.requests_per_second, l.burst)),
                    r.websocket,
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (
                    "/api/generate".into(),
                    "api-generate".into(),
                    Some((2, 5)),
                    false
                ),
                ("/api".into(), "api".into(), Some((10, 20)), false),
                ("/ws".into(), "ws".into(), None, true),
                ("/".into(), "root".into(), None, false),
            ]
        );
    }

    #[test]
    fn default_route_is_root() {
        let s = spec(json!({"api": {"image": "a:1"}}));
        let r = routes(&s);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].path, "/");
    }

    #[test]
    fn body_size_in_bytes() {
        let cases = [
            (None, DEFAULT_MAX_BODY_BYTES),
            (Some("500Mi"), 500 * 1024 * 1024),
            (Some("10M"), 10_000_000),
            (Some("1Gi"), 1 << 30),
        ];
        for (q, want) in cases {
            let mut v = json!({"domain": "x.example.com", "api": {"image": "a:1"}});
            if let Some(q) = q {
                v["api"]["maxBodySize"] = json!(q);
            }
            let e = exposure("s", &spec(v), &Observed::default())
                .unwrap()
                .unwrap();
            assert_eq!(e.max_body_bytes, want, "{q:?}");
        }
    }

    #[test]
    fn tls_sources() {
        let issuer = spec(json!({"domain": "x.example.com", "api": {"image": "a:1"},
            "tls": {"issuer": {"selfSigned": {}}}}));
        let by_ref = spec(json!({"domain": "x.example.com", "api": {"image": "a:1"},
            "tls": {"certificateRef": "shared"}}));
        let observed = Observed {
            certificate_secrets: [("shared".to_string(), "shared-secret".to_string())].into(),
        };
        let cases = [
            (
                &issuer,
                Observed::default(),
                Ok(Some(("s-tls", "s-tls", true))),
            ),
            (
                &by_ref,
                observed,
                Ok(Some(("shared", "shared-secret", false))),
            ),
            (
                &by_ref,
                Observed::default(),
                Err(PlanError::CertificateNotFound {
                    name: "shared".into(),
                }),
            ),
        ];
        for (s, obs, want) in cases {
            let got = exposure("s", s, &obs).map(|e| {
                e.unwrap()
                    .tls
                    .map(|t| (t.certificate, t.secret_name, t.managed))
            });
            let want = want
                .map(|w| w.map(|(a, b, c): (&str, &str, bool)| (a.to_string(), b.to_string(), c)));
            assert_eq!(got, want);
        }
    }
}
