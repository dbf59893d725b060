//! Names berth gives to what it creates. Both backends use exactly these, so a stack keeps its
//! names when it moves between a Docker host and a cluster.

/// `<stack>-<component>`: the host name (Service name, network alias) of a component.
pub fn component_host(stack: &str, component: &str) -> String {
    format!("{stack}-{component}")
}

/// The generated credentials of the in-stack PostgreSQL.
pub fn postgres_secret(stack: &str) -> String {
    format!("{stack}-postgres-credentials")
}

/// The generated credentials of the in-stack Redis.
pub fn redis_secret(stack: &str) -> String {
    format!("{stack}-redis-credentials")
}

/// A child Worker of a stack.
pub fn child_worker(stack: &str, worker: &str) -> String {
    format!("{stack}-{worker}")
}

/// The child Certificate of the `tls.issuer` shorthand (and its secret).
pub fn child_certificate(stack: &str) -> String {
    format!("{stack}-tls")
}

/// The child Backup of a stack.
pub fn child_backup(stack: &str) -> String {
    stack.to_string()
}

/// The Ingress of one route (`slug` from [`route_slug`]).
pub fn route_ingress(stack: &str, slug: &str) -> String {
    format!("{stack}-{slug}")
}

/// The NetworkPolicy that denies every connection into the stack's pods.
pub fn default_deny_policy(stack: &str) -> String {
    format!("{stack}-default-deny")
}

/// The NetworkPolicy that allows connections into one component.
pub fn ingress_policy(stack: &str, component: &str) -> String {
    format!("{stack}-{component}-ingress")
}

/// Label with a Worker's name on its processes; `status.selector` of the Worker.
pub const WORKER_LABEL: &str = "berth.dev/worker";

/// `berth.dev/worker=<name>`: the Worker's `status.selector` (scale subresource).
pub fn worker_selector(worker: &str) -> String {
    format!("{WORKER_LABEL}={worker}")
}

/// The stack's private network on a Docker host: every component, no route out of the host.
pub fn private_network(stack: &str) -> String {
    format!("{stack}-private")
}

/// The network between the proxy and the components it reaches on a Docker host.
pub fn edge_network(stack: &str) -> String {
    format!("{stack}-edge")
}

/// The network that gives a stack's clients (api, workers, services) a route out of a Docker
/// host (an external database or Redis, third-party APIs).
pub fn egress_network(stack: &str) -> String {
    format!("{stack}-egress")
}

/// A standalone Worker's own network on a Docker host (a route out to reach its Redis).
pub fn worker_network(worker: &str) -> String {
    format!("{worker}-net")
}

/// The data volume of a component on a Docker host.
pub fn volume_name(host: &str) -> String {
    format!("{host}-data")
}

/// Keys of the generated secrets.
pub mod keys {
    /// The full connection URL (`postgres://…`, `redis://…`), what `DATABASE_URL`/`REDIS_URL` hold.
    pub const URL: &str = "url";
    /// The password alone, for the server's own configuration.
    pub const PASSWORD: &str = "password";
    /// The PostgreSQL role.
    pub const USERNAME: &str = "username";
    /// The PostgreSQL database.
    pub const DATABASE: &str = "database";
}

/// A DNS-label slug for a route path, unique among `taken`: `/` → `root`, `/api/v1` → `api-v1`.
pub fn route_slug(path: &str, taken: &[String]) -> String {
    let mut slug: String = path
        .trim_matches('/')
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    while slug.contains("--") {
        slug = slug.replace("--", "-");
    }
    let mut slug = slug.trim_matches('-').to_string();
    if slug.is_empty() {
        slug = "root".into();
    }
    slug.truncate(20);
    let slug = slug.trim_end_matches('-').to_string();
    let mut candidate = slug.clone();
    let mut n = 2;
    while taken.contains(&candidate) {
        candidate = format!("{slug}-{n}");
        n += 1;
    }
    candidate
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs() {
        let cases = [
            ("/", vec![], "root"),
            ("/api/generate", vec![], "api-generate"),
            ("/API_v1/", vec![], "api-v1"),
            ("/a//b", vec![], "a-b"),
            ("/a-b", vec!["a-b".to_string()], "a-b-2"),
            (
                "/a/b",
                vec!["a-b".to_string(), "a-b-2".to_string()],
                "a-b-3",
            ),
            (
                "/a-very-long-path/that-goes-on",
                vec![],
                "a-very-long-path-tha",
            ),
        ];
        for (path, taken, want) in cases {
            assert_eq!(route_slug(path, &taken), want, "{path}");
        }
    }

    #[test]
    fn child_names() {
        assert_eq!(child_worker("vidgen", "render"), "vidgen-render");
        assert_eq!(child_certificate("vidgen"), "vidgen-tls");
        assert_eq!(child_backup("vidgen"), "vidgen");
        assert_eq!(postgres_secret("v"), "v-postgres-credentials");
        assert_eq!(component_host("v", "qdrant"), "v-qdrant");
        assert_eq!(route_ingress("v", "api"), "v-api");
        assert_eq!(default_deny_policy("v"), "v-default-deny");
        assert_eq!(ingress_policy("v", "redis"), "v-redis-ingress");
        assert_eq!(worker_selector("v-render"), "berth.dev/worker=v-render");
        assert_eq!(private_network("v"), "v-private");
        assert_eq!(egress_network("v"), "v-egress");
        assert_eq!(edge_network("v"), "v-edge");
        assert_eq!(worker_network("w"), "w-net");
        assert_eq!(volume_name("v-postgres"), "v-postgres-data");
    }
}
