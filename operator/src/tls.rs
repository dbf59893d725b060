//! The process-wide TLS crypto provider.
//!
//! berth's dependencies enable two rustls providers (ring through kube, aws-lc-rs through
//! object_store's HTTP client), so rustls cannot choose one by itself and would panic on the
//! first TLS connection that relies on the process default (the Kubernetes client, `rediss://`).
//! Every entry point installs ring first; later calls do nothing.

/// Installs ring as the process-wide rustls provider unless one is installed already.
pub fn install_default_provider() {
    // `Err` only means a provider is already installed, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}
