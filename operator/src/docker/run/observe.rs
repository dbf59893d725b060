//! The observation step of a pass: each group's replicas with the health the decisions use,
//! from the engine's state and berth's own checks ([`super::super::probe`]).

use std::collections::{HashMap, HashSet};

use tracing::info;

use super::super::converge::{Health, Replica};
use super::super::desired::DesiredHost;
use super::super::engine::ContainerInfo;
use super::super::labels;
use super::super::probe::{self, Target};
use super::Host;

impl Host {
    /// The replicas of every desired group, by group name.
    pub(super) async fn observe(
        &self,
        desired: &DesiredHost,
        by_group: &HashMap<&str, Vec<&ContainerInfo>>,
    ) -> HashMap<String, Vec<Replica>> {
        // Berth's own health checks: HTTP and TCP of running replicas, `exec` of replicas whose
        // Docker health check has not passed yet.
        let mut targets = Vec::new();
        let mut probed_groups: HashSet<&str> = HashSet::new();
        let mut exec_groups: HashSet<&str> = HashSet::new();
        for g in desired.groups() {
            let Some(h) = g.component.health.as_ref() else {
                continue;
            };
            let exec = probe::exec_while_starting(&h.check);
            if exec {
                exec_groups.insert(g.name());
            } else if probe::probed_by_berth(&h.check) {
                probed_groups.insert(g.name());
            } else {
                continue;
            }
            for c in by_group.get(g.name()).into_iter().flatten() {
                let ip = g
                    .networks
                    .iter()
                    .find_map(|(n, _)| c.ips.get(n))
                    .or_else(|| c.ips.values().next());
                let wanted = c.state == "running"
                    && (!exec || Health::from_engine(&c.state, &c.status) == Health::Starting);
                if let (true, Some(ip)) = (wanted, ip) {
                    targets.push(Target {
                        id: c.id.clone(),
                        name: c.name.clone(),
                        ip: ip.clone(),
                        check: h.check.clone(),
                        timing: h.clone(),
                    });
                }
            }
        }
        let probed = self.prober.sync(targets).await;
        let mut out = HashMap::new();
        for g in desired.groups() {
            let group = g.name();
            // A replica that lost one of its networks (it was removed and recreated) is
            // replaced: reconnecting it would leave its open connections hanging on the old one.
            let nets: Vec<&str> = g.networks.iter().map(|n| n.0.as_str()).collect();
            let replicas = by_group
                .get(group)
                .into_iter()
                .flatten()
                .map(|c| {
                    let mut health = Health::from_engine(&c.state, &c.status);
                    if probed_groups.contains(group) && health != Health::Stopped {
                        health = probed.get(&c.id).copied().unwrap_or(Health::Starting);
                    }
                    if exec_groups.contains(group)
                        && health == Health::Starting
                        && probed.get(&c.id) == Some(&Health::Ready)
                    {
                        health = Health::Ready;
                    }
                    if health != Health::Stopped
                        && nets
                            .iter()
                            .any(|n| !c.networks.iter().any(|have| have == n))
                    {
                        info!(container = %c.name, "lost a network; replacing it");
                        health = Health::Stopped;
                    }
                    Replica {
                        name: c.name.clone(),
                        replica: c
                            .label(labels::REPLICA)
                            .and_then(|r| r.parse().ok())
                            .unwrap_or(0),
                        hash: c.label(labels::SPEC_HASH).unwrap_or_default().to_string(),
                        health,
                        image: c.image.clone(),
                    }
                })
                .collect();
            out.insert(group.to_string(), replicas);
        }
        out
    }
}
