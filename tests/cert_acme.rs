//! ACME against a real Pebble (with pebble-challtestsrv as its DNS, so the test domains resolve
//! to 127.0.0.1 and Pebble's HTTP-01 validation really connects to berth's responder):
//! issuance from nothing to a chain that verifies against Pebble's root for every dnsName; a
//! renewal with a new serial; Pebble stopped → failedAttempts grows, backoff, the old
//! certificate stays, Ready stays True with RenewalFailing; renew-now makes one attempt; an
//! unreachable challenge names the URL the self-check tried.

#[path = "support/pebble.rs"]
mod pebble;
#[path = "support/tls.rs"]
mod tls;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use berth::api::CertificateSpec;
use berth::cert::acme::{http01_router, Http01Tokens, SelfCheck};
use berth::cert::run::{run, RunOptions};
use berth::cert::timing::Decision;
use chrono::Utc;
use pebble::{free_port, Pebble};

fn spec(server: &str, names: &[&str]) -> CertificateSpec {
    serde_json::from_value(serde_json::json!({
        "secretName": "shop-tls", "dnsNames": names,
        "issuer": {"acme": {"server": server, "email": "ops@berth.test", "http01": {}}}
    }))
    .unwrap()
}

fn read(dir: &Path) -> (String, String) {
    (
        std::fs::read_to_string(dir.join("shop-tls/tls.crt")).unwrap(),
        std::fs::read_to_string(dir.join("shop-tls/tls.key")).unwrap(),
    )
}

fn ready(st: &berth::api::CertificateStatus) -> (&str, &str, &str) {
    let c = st.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
    (&c.status, &c.reason, &c.message)
}

/// berth's HTTP-01 responder on 127.0.0.1:port.
async fn responder(tokens: Http01Tokens) -> u16 {
    let port = free_port();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    tokio::spawn(async move { axum::serve(listener, http01_router(tokens)).await });
    port
}

#[tokio::test]
async fn issues_renews_and_keeps_serving_through_an_outage() {
    berth::tls::install_default_provider();
    let tokens = Http01Tokens::default();
    let http_port = responder(tokens.clone()).await;
    let mut pebble = Pebble::start(http_port);
    let dir = tempfile::tempdir().unwrap();
    let names = ["shop.berth.test", "www.shop.berth.test"];
    let s = spec(&pebble.directory(), &names);
    let opts = RunOptions {
        acme_server_root: Some(pebble.https_ca_path()),
        tokens: tokens.clone(),
        self_check: SelfCheck::Via(SocketAddr::from(([127, 0, 0, 1], http_port))),
        acme_timeout: Some(Duration::from_secs(60)),
        ..RunOptions::default()
    };

    // From nothing to a certificate whose chain verifies against Pebble's root.
    let first = run(dir.path(), &s, Some(1), &opts, Utc::now())
        .await
        .unwrap();
    assert!(first.stored_new, "{:?}\n{}", first.status, pebble.log());
    assert_eq!(ready(&first.status).0, "True");
    let root = pebble.root_pem().await;
    let (crt, key) = read(dir.path());
    for n in names {
        tls::verify_tls(&crt, &key, &root, n)
            .await
            .unwrap_or_else(|e| panic!("{n}: {e}"));
    }
    assert!(tls::verify_tls(&crt, &key, &root, "other.berth.test")
        .await
        .is_err());
    assert!(
        tokens.is_empty(),
        "challenge answers are removed afterwards"
    );
    let accounts = std::fs::read_dir(dir.path().join(berth::cert::run::ACCOUNTS_DIR))
        .unwrap()
        .count();
    assert_eq!(accounts, 1, "the ACME account key is kept in the state dir");

    // Not due: nothing happens.
    let idle = run(dir.path(), &s, Some(1), &opts, Utc::now())
        .await
        .unwrap();
    assert!(matches!(
        idle.decision,
        Decision::Wait {
            backing_off: None,
            ..
        }
    ));

    // At the renewal time: a new certificate with a new serial and a new key.
    let serial1 = first.status.serial_number.clone().unwrap();
    let renewal = first
        .status
        .renewal_time
        .as_ref()
        .map(berth::cert::status::from_time)
        .unwrap();
    let second = run(
        dir.path(),
        &s,
        Some(1),
        &opts,
        renewal + chrono::Duration::seconds(1),
    )
    .await
    .unwrap();
    assert!(second.stored_new, "{:?}", second.status);
    let serial2 = second.status.serial_number.clone().unwrap();
    assert_ne!(serial1, serial2);
    let (crt2, key2) = read(dir.path());
    assert_ne!(key, key2, "a new private key on renewal");
    tls::verify_tls(&crt2, &key2, &root, names[0])
        .await
        .unwrap();

    // Pebble stops: the attempt fails, the old certificate stays and is still Ready.
    pebble.stop();
    let now = Utc::now();
    let with = |v: &str| RunOptions {
        renew_now: Some(v.into()),
        ..opts.clone()
    };
    let failed = run(dir.path(), &s, Some(1), &with("outage-1"), now)
        .await
        .unwrap();
    assert!(!failed.stored_new);
    assert_eq!(failed.status.failed_attempts, 1);
    assert_eq!(
        failed.status.serial_number.as_deref(),
        Some(serial2.as_str())
    );
    let (st, reason, msg) = ready(&failed.status);
    assert_eq!((st, reason), ("True", "RenewalFailing"), "{msg}");
    let issuing = failed
        .status
        .conditions
        .iter()
        .find(|c| c.type_ == "Issuing")
        .unwrap();
    assert_eq!(issuing.reason, "AcmeUnavailable", "{}", issuing.message);
    assert_eq!(
        read(dir.path()),
        (crt2.clone(), key2.clone()),
        "old pair untouched"
    );

    // The same renew-now value does not retry; the backoff holds.
    let held = run(
        dir.path(),
        &s,
        Some(1),
        &with("outage-1"),
        now + chrono::Duration::minutes(1),
    )
    .await
    .unwrap();
    assert!(
        matches!(held.decision, Decision::Wait { .. }),
        "{:?}",
        held.decision
    );
    assert_eq!(held.status.failed_attempts, 1);
    // A new value makes exactly one more attempt.
    let again = run(
        dir.path(),
        &s,
        Some(1),
        &with("outage-2"),
        now + chrono::Duration::minutes(2),
    )
    .await
    .unwrap();
    assert_eq!(again.status.failed_attempts, 2);
    assert_eq!(ready(&again.status).0, "True");

    // Pebble is back (with a new root and no memory of the account): the next attempt succeeds.
    pebble.start_again();
    let back = run(
        dir.path(),
        &s,
        Some(1),
        &with("back"),
        now + chrono::Duration::minutes(3),
    )
    .await
    .unwrap();
    assert!(back.stored_new, "{:?}\n{}", back.status, pebble.log());
    assert_eq!(back.status.failed_attempts, 0);
    assert_eq!(ready(&back.status).1, "Ready");
    let root2 = pebble.root_pem().await;
    let (crt3, key3) = read(dir.path());
    tls::verify_tls(&crt3, &key3, &root2, names[1])
        .await
        .unwrap();
}

#[tokio::test]
async fn an_unreachable_challenge_names_the_url_the_self_check_tried() {
    berth::tls::install_default_provider();
    let closed = free_port();
    let pebble = Pebble::start(closed);
    let dir = tempfile::tempdir().unwrap();
    let s = spec(&pebble.directory(), &["lost.berth.test"]);
    let opts = RunOptions {
        acme_server_root: Some(pebble.https_ca_path()),
        self_check: SelfCheck::Via(SocketAddr::from(([127, 0, 0, 1], closed))),
        acme_timeout: Some(Duration::from_secs(30)),
        ..RunOptions::default()
    };
    let r = run(dir.path(), &s, Some(1), &opts, Utc::now())
        .await
        .unwrap();
    assert!(!r.stored_new);
    let (st, reason, msg) = ready(&r.status);
    assert_eq!((st, reason), ("False", "ChallengeUnreachable"), "{msg}");
    assert!(
        msg.contains("http://lost.berth.test/.well-known/acme-challenge/"),
        "{msg}"
    );
    assert_eq!(r.status.failed_attempts, 1);
}
