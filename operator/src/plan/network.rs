//! What the stack's [`NetworkRule`]s mean for a backend that places processes on networks
//! instead of enforcing policies (a Docker host): Kubernetes turns the rules into
//! NetworkPolicies, a Docker host into network membership. Both read them from here.

use super::types::{Component, ComponentKind, NetworkRule, Peer};

/// The kinds that open connections: to the stack's database, cache and services (the rules
/// list them as peers), and out of the stack (an external database or Redis, third-party
/// APIs). PostgreSQL and Redis only answer.
pub const CLIENTS: [ComponentKind; 3] = [
    ComponentKind::Api,
    ComponentKind::Worker,
    ComponentKind::Service,
];

/// The networks a component of a stack joins besides the stack's private one (where every
/// component answers to its host name and nothing has a route out).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placement {
    /// A rule lets the proxy reach it: it joins the network the proxy is on.
    pub edge: bool,
    /// It is a client: it gets a route out.
    pub egress: bool,
}

/// Where `c` sits under `rules` (a worker is the target of no rule: pass the stack's rules or
/// none, the answer is the same).
pub fn placement(c: &Component, rules: &[NetworkRule]) -> Placement {
    Placement {
        edge: rules
            .iter()
            .any(|r| r.to == c.name && r.from.contains(&Peer::Proxy)),
        egress: CLIENTS.contains(&c.kind),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::stack::network_rules;

    #[test]
    fn placement_follows_the_rules() {
        let stack: crate::api::AppStack = serde_json::from_value(serde_json::json!({
            "apiVersion": "berth.dev/v1alpha1", "kind": "AppStack",
            "metadata": {"name": "s", "namespace": "p"},
            "spec": {"domain": "s.example.com",
                "api": {"image": "api:1", "port": 3000},
                "postgres": {"version": "16"}, "redis": {"version": "7"},
                "services": [{"name": "q", "image": "q:1", "port": 6333}]}
        }))
        .unwrap();
        let plan = crate::plan::plan_stack(&stack, &Default::default()).unwrap();
        assert_eq!(plan.network, network_rules(&plan.components, false));
        let at: Vec<(&str, Placement)> = plan
            .components
            .iter()
            .map(|c| (c.name.as_str(), placement(c, &plan.network)))
            .collect();
        let p = |edge, egress| Placement { edge, egress };
        assert_eq!(
            at,
            [
                ("api", p(true, true)),
                ("postgres", p(false, false)),
                ("redis", p(false, false)),
                ("q", p(false, true)),
            ]
        );
    }
}
