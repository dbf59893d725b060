//! HTTPS on the Docker host with a real Pebble: Pebble validates HTTP-01 through the proxy
//! berth publishes on 127.0.0.1 (pebble-challtestsrv resolves the test domain to 127.0.0.1),
//! the certificate is issued from nothing and served on the HTTPS port with a chain that
//! verifies against Pebble's root, port 80 redirects, `berth host status` shows the
//! Certificate, and, Pebble issuing 45-second certificates, the renewal that comes due (default
//! renewBefore: one third of the lifetime) changes the served serial under load with no failed
//! request.
//! Prints the time from manifest to HTTPS and the failed requests during the reload.

#[path = "support/docker_host.rs"]
mod docker_host;
#[path = "support/pebble.rs"]
mod pebble;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth::cert::acme::SelfCheck;
use berth::docker::certs::CertHook;
use docker_host::*;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CONVERGE: Duration = Duration::from_secs(120);
/// The lifetime Pebble gives the certificates of this test.
const VALIDITY: Duration = Duration::from_secs(45);

/// GET https://domain/health (the demo api's health path) through 127.0.0.1:port trusting only `root`: status and the served
/// certificate's serial.
async fn https_get(port: u16, domain: &str, root: &str) -> Result<(u16, String), String> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(root.as_bytes()) {
        roots
            .add(c.map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    }
    let cfg = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| e.to_string())?;
    let name = ServerName::try_from(domain.to_string()).map_err(|e| e.to_string())?;
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let serial = {
        let (_, conn) = tls.get_ref();
        let leaf = conn
            .peer_certificates()
            .and_then(|c| c.first())
            .ok_or("no peer certificate")?;
        berth::cert::inspect::inspect_der(leaf)
            .map_err(|e| e.to_string())?
            .serial_number
    };
    tls.write_all(
        format!("GET /health HTTP/1.1\r\nHost: {domain}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    let _ = tls.read_to_end(&mut buf).await;
    let text = String::from_utf8_lossy(&buf);
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or(format!("bad answer {text:?}"))?;
    Ok((code, serial))
}

fn manifests(stack: &str, server: &str, renew_now: &str) -> String {
    let stack_yaml = stack_yaml(stack, demo_images::API, 1, false).replace(
        "spec:\n",
        &format!("spec:\n  tls: {{certificateRef: {stack}-cert}}\n"),
    );
    format!(
        "{stack_yaml}---
apiVersion: berth.dev/v1alpha1
kind: Certificate
metadata: {{name: {stack}-cert, annotations: {{berth.dev/renew-now: \"{renew_now}\"}}}}
spec:
  secretName: {stack}-tls
  dnsNames: [{stack}.test]
  issuer: {{acme: {{server: \"{server}\", email: ops@berth.test}}}}
"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn https_from_nothing_with_pebble_and_a_renewal_under_load() {
    berth::tls::install_default_provider();
    let t = TestHost::new("bc");
    let s = format!("{}s", t.instance);
    let domain = format!("{s}.test");
    let http_port: u16 = t.http.rsplit(':').next().unwrap().parse().unwrap();
    let https_port = free_port();
    // Certificates valid for VALIDITY only: renewal (at one third of the lifetime before
    // expiry, the default renewBefore) comes due during the test, with no renew-now.
    let pebble = pebble::Pebble::start_short_lived(http_port, VALIDITY.as_secs());

    let started = Instant::now();
    t.write("stack.yaml", &manifests(&s, &pebble.directory(), ""));
    let mut opts = t.options();
    opts.https = Some(format!("127.0.0.1:{https_port}"));
    let host = berth::docker::run::Host::new(opts.clone()).await.unwrap();
    let hook = CertHook::new(
        &opts.manifests,
        Some(pebble.https_ca_path()),
        SelfCheck::Via(SocketAddr::from(([127, 0, 0, 1], http_port))),
        Some(host.waker()),
    );
    let mut host = host.with_hook(Arc::new(hook));
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let handle = tokio::spawn(async move {
        host.run(async {
            let _ = rx.await;
        })
        .await
        .unwrap();
    });

    // Issued from nothing: HTTPS with a chain that verifies against Pebble's root.
    let root = pebble.root_pem().await;
    let (code, serial1) = wait_for(
        "HTTPS served with Pebble's certificate",
        CONVERGE,
        || async {
            let r = https_get(https_port, &domain, &root).await;
            r.ok().filter(|(c, _)| *c == 200)
        },
    )
    .await;
    assert_eq!(code, 200);
    println!(
        "figure: manifest to HTTPS served (Pebble, Docker host): {:.2}s",
        started.elapsed().as_secs_f64()
    );

    // Port 80 redirects to HTTPS (once the old nginx workers of the reload have stopped
    // accepting); the challenge path is not redirected.
    wait_for("port 80 redirects", CONVERGE, || async {
        matches!(t.get(&domain, "/").await, Ok((308, _))).then_some(())
    })
    .await;
    let (code, _) = t
        .get(&domain, "/.well-known/acme-challenge/none")
        .await
        .unwrap();
    assert_eq!(code, 404);

    // `berth host status` shows the Certificate.
    let st = wait_for("Certificate status Ready", CONVERGE, || async {
        let st = t.status("Certificate", &format!("{s}-cert"))?;
        let ready = st["conditions"]
            .as_array()?
            .iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True");
        ready.then_some(st)
    })
    .await;
    assert_eq!(st["serialNumber"], serial1.as_str());
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_berth"))
        .args([
            "host",
            "status",
            "--state-dir",
            t.state.path().to_str().unwrap(),
            "--instance",
            &t.instance,
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Certificate"), "{text}");

    // Renewal under load, when it comes due (the short lifetime), while requests keep
    // succeeding through nginx's reload.
    let failed = Arc::new(AtomicUsize::new(0));
    let total = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (failed, total, done, root, domain) = (
            failed.clone(),
            total.clone(),
            done.clone(),
            root.clone(),
            domain.clone(),
        );
        load.push(tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) {
                match https_get(https_port, &domain, &root).await {
                    Ok((200, _)) => {}
                    other => {
                        eprintln!("failed request: {other:?}");
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
                total.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let renewed_at = Instant::now();
    let renewal_time = st["renewalTime"].as_str().unwrap_or_default().to_string();
    let not_after = st["notAfter"].as_str().unwrap_or_default().to_string();
    let at = |k: &str| {
        chrono::DateTime::parse_from_rfc3339(st[k].as_str().unwrap_or_default())
            .unwrap_or_else(|e| panic!("status {k}: {e}: {st}"))
    };
    // Renewal is due one third of the lifetime before expiry.
    let lifetime = at("notAfter") - at("notBefore");
    let before_expiry = at("notAfter") - at("renewalTime");
    assert!(
        (before_expiry.num_milliseconds() - lifetime.num_milliseconds() / 3).abs() <= 1_000,
        "renewalTime is one third of the lifetime before notAfter: {st}"
    );
    let serial2 = wait_for("a renewed certificate served", CONVERGE, || async {
        let (_, serial) = https_get(https_port, &domain, &root).await.ok()?;
        (serial != serial1).then_some(serial)
    })
    .await;
    // Keep the load a moment after the switch, then stop it.
    let until = total.load(Ordering::Relaxed) + 50;
    wait_for("more requests after the reload", CONVERGE, || async {
        (total.load(Ordering::Relaxed) >= until).then_some(())
    })
    .await;
    done.store(true, Ordering::Relaxed);
    for l in load {
        let _ = l.await;
    }
    println!(
        "figure: renewal due at {renewal_time} (notAfter {not_after}, lifetime {}s) served a new \
         serial {:.2}s after the first was Ready; requests during rotation {}, failed {}",
        VALIDITY.as_secs(),
        renewed_at.elapsed().as_secs_f64(),
        total.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed)
    );
    assert_ne!(serial1, serial2);
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "no failed request during the reload"
    );

    let _ = stop.send(());
    let _ = handle.await;
    // TestHost's drop removes the containers and networks of this instance.
}
