//! A private Pebble ACME server for one test, with pebble-challtestsrv as its DNS so every test
//! domain resolves to 127.0.0.1 and HTTP-01 validation really connects to `http_port` (where
//! berth answers). Its HTTPS certificate comes from a test CA made with rcgen. Stopped on drop;
//! `stop`/`start_again` simulate an outage on the same ports.

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub struct Pebble {
    /// Where the ACME directory listens (127.0.0.1, or the cluster's node IP for pods).
    pub ip: String,
    pub port: u16,
    pub management_port: u16,
    pub dns_port: u16,
    /// Where Pebble validates HTTP-01 challenges (127.0.0.1).
    pub http_port: u16,
    dir: tempfile::TempDir,
    pebble: Option<Child>,
    dns: Option<Child>,
    /// The PEM CA that signed Pebble's own HTTPS certificate.
    pub https_ca_pem: String,
}

/// A port outside Linux's ephemeral range, spread by process id, checked bindable.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let base = 14_000 + (std::process::id() % 300) as u16 * 17;
    loop {
        let port = base + NEXT.fetch_add(1, Ordering::Relaxed) % 5_000;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

fn wait_port(port: u16, what: &str) {
    wait_port_at("127.0.0.1", port, what)
}

fn wait_port_at(ip: &str, port: u16, what: &str) {
    let start = Instant::now();
    while std::net::TcpStream::connect((ip, port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{what} did not listen on {port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Pebble {
    /// Starts Pebble validating HTTP-01 on 127.0.0.1:`http_port`.
    pub fn start(http_port: u16) -> Pebble {
        Pebble::start_at("127.0.0.1", http_port)
    }

    /// Starts Pebble with its ACME directory on `ip` (e.g. the node IP pods reach the host
    /// at), validating HTTP-01 on 127.0.0.1:`http_port` (every test domain resolves there).
    pub fn start_at(ip: &str, http_port: u16) -> Pebble {
        Pebble::start_full(ip, http_port, None)
    }

    /// Starts Pebble issuing certificates valid for `validity_secs` only (Pebble's
    /// `certificateValidityPeriod`), so that renewal comes due within a test.
    #[allow(dead_code)]
    pub fn start_short_lived(http_port: u16, validity_secs: u64) -> Pebble {
        Pebble::start_full("127.0.0.1", http_port, Some(validity_secs))
    }

    fn start_full(ip: &str, http_port: u16, validity_secs: Option<u64>) -> Pebble {
        assert!(
            std::path::Path::new("/usr/bin/pebble").exists(),
            "pebble is not installed: apt-get install pebble (.ci/setup does)"
        );
        let dir = tempfile::tempdir().unwrap();
        // Pebble's own HTTPS certificate for 127.0.0.1/localhost, from a test CA.
        let ca =
            berth::cert::issue::new_ca("pebble test https CA", chrono::Duration::days(2)).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params.subject_alt_names = vec![
            rcgen::SanType::DnsName("localhost".try_into().unwrap()),
            rcgen::SanType::IpAddress("127.0.0.1".parse().unwrap()),
            rcgen::SanType::IpAddress(ip.parse().unwrap()),
        ];
        let ca_key = rcgen::KeyPair::from_pem(&ca.key_pem).unwrap();
        let issuer = rcgen::Issuer::from_ca_cert_pem(&ca.cert_pem, &ca_key).unwrap();
        let cert = params.signed_by(&key, &issuer).unwrap();
        let cert_path = dir.path().join("cert.pem");
        let key_path = dir.path().join("key.pem");
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        std::fs::write(dir.path().join("ca.pem"), &ca.cert_pem).unwrap();
        let port = free_port();
        let management_port = free_port();
        let dns_port = free_port();
        let tls_port = free_port();
        let mut config = serde_json::json!({"pebble": {
            "listenAddress": format!("{ip}:{port}"),
            "managementListenAddress": format!("127.0.0.1:{management_port}"),
            "certificate": cert_path, "privateKey": key_path,
            "httpPort": http_port, "tlsPort": tls_port,
            "ocspResponderURL": "", "externalAccountBindingRequired": false
        }});
        if let Some(v) = validity_secs {
            config["pebble"]["certificateValidityPeriod"] = v.into();
        }
        std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
        let mut p = Pebble {
            ip: ip.to_string(),
            port,
            management_port,
            dns_port,
            http_port,
            dir,
            pebble: None,
            dns: None,
            https_ca_pem: ca.cert_pem,
        };
        p.start_dns();
        p.start_again();
        p
    }

    fn start_dns(&mut self) {
        let child = Command::new("/usr/bin/pebble-challtestsrv")
            .args(["-dns01", &format!("127.0.0.1:{}", self.dns_port)])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-management", &format!("127.0.0.1:{}", free_port())])
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("pebble-challtestsrv starts");
        self.dns = Some(child);
    }

    /// (Re)starts Pebble on the same ports.
    pub fn start_again(&mut self) {
        let log = std::fs::File::create(self.dir.path().join("pebble.log")).unwrap();
        let child = Command::new("/usr/bin/pebble")
            .args([
                "-config",
                self.dir.path().join("config.json").to_str().unwrap(),
            ])
            .args(["-dnsserver", &format!("127.0.0.1:{}", self.dns_port)])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .env("PEBBLE_AUTHZREUSE", "0")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("pebble starts");
        self.pebble = Some(child);
        wait_port_at(&self.ip, self.port, "pebble");
        wait_port(self.management_port, "pebble management");
    }

    /// Stops Pebble (its DNS stays).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.pebble.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn directory(&self) -> String {
        format!("https://{}:{}/dir", self.ip, self.port)
    }

    /// A file with the CA of Pebble's HTTPS certificate (for `--acme-ca-bundle`).
    pub fn https_ca_path(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("pebble.log")).unwrap_or_default()
    }

    /// The root Pebble signs certificates with, from its management endpoint `/roots/0`.
    pub async fn root_pem(&self) -> String {
        let body = https_get(self.management_port, "/roots/0", &self.https_ca_pem).await;
        assert!(
            body.contains("BEGIN CERTIFICATE"),
            "unexpected /roots/0: {body}"
        );
        body
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        self.stop();
        if let Some(mut c) = self.dns.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// GET https://127.0.0.1:port/path trusting only `ca_pem`; the body.
pub async fn https_get(port: u16, path: &str, ca_pem: &str) -> String {
    berth::tls::install_default_provider();
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let cfg = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
        .await
        .unwrap();
    tls.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    let _ = tls.read_to_end(&mut buf).await;
    let text = String::from_utf8_lossy(&buf).to_string();
    text.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or(text)
}
