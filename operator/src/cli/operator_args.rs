//! The arguments of `berth operator`, shared by the operator itself and its `--check`.

use std::net::SocketAddr;

use clap::{Args, ValueEnum};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Args)]
pub struct OperatorArgs {
    /// Watch only this namespace (default: all namespaces).
    #[arg(long, env = "BERTH_NAMESPACE")]
    pub namespace: Option<String>,
    /// `ingressClassName` of the Ingresses berth creates (ingress-nginx annotations are used).
    #[arg(long, default_value = "nginx")]
    pub ingress_class: String,
    /// Namespace of the ingress controller's pods, allowed to reach the api by NetworkPolicy.
    #[arg(long, default_value = "ingress-nginx")]
    pub ingress_namespace: String,
    /// Address of /healthz, /readyz and /metrics.
    #[arg(long, default_value = "0.0.0.0:8080")]
    pub http_addr: SocketAddr,
    /// Log lines as text or JSON (level from RUST_LOG, default info).
    #[arg(long, value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Elect a leader with a Lease so several replicas are safe; off only for a single replica
    /// or local development.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_elect: bool,
    /// Name of the Lease.
    #[arg(long, default_value = "berth-operator")]
    pub leader_election_id: String,
    /// Namespace of the Lease (default: the pod's namespace from POD_NAMESPACE, else `default`).
    #[arg(long, env = "POD_NAMESPACE")]
    pub leader_election_namespace: Option<String>,
    /// This replica's identity in the Lease (default: POD_NAME, else the host name).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// Seconds a Lease stays valid without renewal.
    #[arg(long, default_value_t = 15)]
    pub lease_duration_seconds: u64,
    /// Seconds the leader keeps trying to renew before it gives up leading.
    #[arg(long, default_value_t = 10)]
    pub renew_deadline_seconds: u64,
    /// Seconds between attempts to acquire or renew.
    #[arg(long, default_value_t = 2)]
    pub retry_period_seconds: u64,
    /// Seconds SIGTERM or SIGINT may take to stop the process, in every state: reconciles
    /// still running are cancelled and the Lease is released within it.
    #[arg(long, default_value_t = 10)]
    pub shutdown_timeout_seconds: u64,
    /// Check what the operator needs (API server reachable, CRDs served and current, RBAC
    /// verbs granted to this identity), print it, and exit non-zero when something is missing.
    #[arg(long)]
    pub check: bool,
    /// Wake the autoscaler on Redis keyspace notifications (sets notify-keyspace-events;
    /// polling only where CONFIG is refused). See docs/autoscaling.md.
    #[arg(long, env = "BERTH_REDIS_KEYSPACE_NOTIFICATIONS")]
    pub redis_keyspace_notifications: bool,
}
