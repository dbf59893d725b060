//! The Kubernetes side of backups.
