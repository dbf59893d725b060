//! The certificate engine with real TLS: certificates from `selfSigned` and `ca` are served by a
//! rustls server and verified by a rustls client for every dnsName; a CA Secret with a wrong
//! key fails with a clear error; `berth cert renew` keeps the old pair on failure and a
//! renew-now value makes exactly one attempt.

#[path = "support/tls.rs"]
mod tls;

use std::path::Path;

use berth::api::CertificateSpec;
use berth::cert::files::FileStore;
use berth::cert::issue::new_ca;
use berth::cert::run::{run, RunOptions};
use berth::cert::timing::Decision;
use tls::verify_tls;

fn spec(v: serde_json::Value) -> CertificateSpec {
    serde_json::from_value(v).unwrap()
}

fn read(dir: &Path, secret: &str) -> (String, String, String) {
    let d = dir.join(secret);
    (
        std::fs::read_to_string(d.join("tls.crt")).unwrap(),
        std::fs::read_to_string(d.join("tls.key")).unwrap(),
        std::fs::read_to_string(d.join("ca.crt")).unwrap(),
    )
}

#[tokio::test]
async fn self_signed_chain_verifies_for_every_dns_name() {
    let dir = tempfile::tempdir().unwrap();
    let names = ["web.example.test", "www.example.test"];
    let s = spec(serde_json::json!({
        "secretName": "web-tls", "dnsNames": names, "issuer": {"selfSigned": {}}, "duration": "24h"
    }));
    let r = run(
        dir.path(),
        &s,
        Some(1),
        &RunOptions::default(),
        chrono::Utc::now(),
    )
    .await
    .unwrap();
    assert!(r.stored_new);
    let (crt, key, ca) = read(dir.path(), "web-tls");
    for n in names {
        verify_tls(&crt, &key, &ca, n)
            .await
            .unwrap_or_else(|e| panic!("{n}: {e}"));
    }
    // A name the certificate is not for is refused: the check can fail.
    let e = verify_tls(&crt, &key, &ca, "other.example.test")
        .await
        .unwrap_err();
    assert!(
        e.contains("NotValidForName") || e.to_lowercase().contains("name"),
        "{e}"
    );
    // Files are private.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for f in ["tls.crt", "tls.key", "ca.crt", "status.json"] {
            let mode = std::fs::metadata(dir.path().join("web-tls").join(f))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{f}");
        }
    }
}

#[tokio::test]
async fn ca_chain_verifies_against_the_ca_for_every_dns_name() {
    let dir = tempfile::tempdir().unwrap();
    let ca = new_ca("berth test CA", chrono::Duration::days(30)).unwrap();
    FileStore::new(dir.path(), "internal-ca").save(&ca).unwrap();
    let names = ["api.internal.test", "db.internal.test", "x.internal.test"];
    let s = spec(serde_json::json!({
        "secretName": "api-tls", "dnsNames": names, "issuer": {"ca": {"secretName": "internal-ca"}},
        "privateKey": {"algorithm": "RSA"}
    }));
    let r = run(
        dir.path(),
        &s,
        Some(1),
        &RunOptions::default(),
        chrono::Utc::now(),
    )
    .await
    .unwrap();
    assert!(r.stored_new, "{:?}", r.status);
    let (crt, key, ca_crt) = read(dir.path(), "api-tls");
    assert_eq!(ca_crt.trim(), ca.cert_pem.trim());
    for n in names {
        verify_tls(&crt, &key, &ca.cert_pem, n)
            .await
            .unwrap_or_else(|e| panic!("{n}: {e}"));
    }
    // Another CA does not vouch for it.
    let other = new_ca("other CA", chrono::Duration::days(1)).unwrap();
    assert!(verify_tls(&crt, &key, &other.cert_pem, names[0])
        .await
        .is_err());
}

#[tokio::test]
async fn ca_with_a_wrong_key_is_a_clear_error_and_renew_now_makes_one_attempt() {
    let dir = tempfile::tempdir().unwrap();
    let ca = new_ca("berth test CA", chrono::Duration::days(30)).unwrap();
    let wrong = new_ca("another CA", chrono::Duration::days(30)).unwrap();
    let mut bad = ca.clone();
    bad.key_pem = wrong.key_pem.clone();
    FileStore::new(dir.path(), "internal-ca")
        .save(&bad)
        .unwrap();
    let s = spec(serde_json::json!({
        "secretName": "api-tls", "dnsNames": ["api.internal.test"], "issuer": {"ca": {"secretName": "internal-ca"}}
    }));
    // Simulated time runs in the past so every certificate is already valid when checked.
    let now = chrono::Utc::now() - chrono::Duration::minutes(10);
    let r = run(dir.path(), &s, Some(1), &RunOptions::default(), now)
        .await
        .unwrap();
    assert!(!r.stored_new);
    assert_eq!(r.status.failed_attempts, 1);
    let ready = r
        .status
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .unwrap();
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "InvalidCA")
    );
    assert!(
        ready.message.contains("wrong key for this CA"),
        "{}",
        ready.message
    );
    assert!(
        !ready.message.contains("PRIVATE KEY"),
        "no key material in messages"
    );
    assert!(!dir.path().join("api-tls/tls.crt").exists());

    // Backing off: a second round does nothing.
    let r = run(
        dir.path(),
        &s,
        Some(1),
        &RunOptions::default(),
        now + chrono::Duration::minutes(5),
    )
    .await
    .unwrap();
    assert!(
        matches!(
            r.decision,
            Decision::Wait {
                backing_off: Some(_),
                ..
            }
        ),
        "{:?}",
        r.decision
    );
    assert_eq!(r.status.failed_attempts, 1);

    // The CA is fixed; renew-now makes one attempt at once, and the same value no second one.
    FileStore::new(dir.path(), "internal-ca").save(&ca).unwrap();
    let opts = RunOptions {
        renew_now: Some("fix-1".into()),
        ..RunOptions::default()
    };
    let later = now + chrono::Duration::minutes(6);
    let r = run(dir.path(), &s, Some(1), &opts, later).await.unwrap();
    assert!(r.stored_new);
    assert_eq!(r.status.failed_attempts, 0);
    assert_eq!(r.status.last_renew_now.as_deref(), Some("fix-1"));
    let serial = r.status.serial_number.clone();
    let r = run(dir.path(), &s, Some(1), &opts, later).await.unwrap();
    assert!(!r.stored_new);
    assert_eq!(r.status.serial_number, serial);

    // Renewal keeps serving the old pair until the new one is stored, and rotates the key.
    let (_, old_key, _) = read(dir.path(), "api-tls");
    let opts = RunOptions {
        renew_now: Some("fix-2".into()),
        ..RunOptions::default()
    };
    let r = run(dir.path(), &s, Some(1), &opts, later).await.unwrap();
    assert!(r.stored_new);
    assert_ne!(r.status.serial_number, serial);
    let (crt, key, _) = read(dir.path(), "api-tls");
    assert_ne!(
        key, old_key,
        "a new private key on every renewal by default"
    );
    verify_tls(&crt, &key, &ca.cert_pem, "api.internal.test")
        .await
        .unwrap();
}
