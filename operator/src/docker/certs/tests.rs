use super::*;
use crate::cert::issue::{new_key, self_signed};
use crate::plan::{Exposure, RoutePlan, TlsSource};

fn exposure(tls: bool) -> Exposure {
    Exposure {
        domain: "shop.example.test".into(),
        tls: tls.then(|| TlsSource {
            certificate: "shop-tls".into(),
            secret_name: "shop-tls".into(),
            managed: true,
        }),
        target: "api".into(),
        target_port: 8080,
        max_body_bytes: 1024,
        routes: vec![RoutePlan {
            path: "/".into(),
            rate_limit: None,
            websocket: false,
            slug: "root".into(),
        }],
    }
}

fn store_pair(root: &Path, expired: bool) -> String {
    let spec: crate::api::CertificateSpec = serde_json::from_value(serde_json::json!({
        "secretName": "shop-tls", "dnsNames": ["shop.example.test"], "issuer": {"selfSigned": {}}, "duration": "24h"
    }))
    .unwrap();
    let key = new_key(Default::default()).unwrap();
    let at = if expired {
        Utc::now() - chrono::Duration::hours(48)
    } else {
        Utc::now()
    };
    let issued = self_signed(&spec, &key, at).unwrap();
    FileStore::new(root, "shop-tls").save(&issued).unwrap();
    crate::cert::inspect::inspect(&issued.cert_pem)
        .unwrap()
        .serial_number
}

fn site(e: &Exposure) -> Site<'_> {
    Site {
        stack: "shop",
        exposure: e,
        servers: vec!["shop-api-1".into()],
        health_path: None,
    }
}

#[test]
fn without_a_certificate_the_site_stays_on_http_and_answers_challenges() {
    let dir = tempfile::tempdir().unwrap();
    let e = exposure(true);
    let files = render(&[site(&e)], dir.path());
    let conf = &files["shop.conf"];
    assert!(!conf.contains("listen 443"), "{conf}");
    assert!(
        !conf.contains("ssl_certificate"),
        "never a TLS config without a pair"
    );
    assert!(conf.contains("location ^~ /.well-known/acme-challenge/ {"));
    assert!(
        conf.contains("proxy_pass http://berth_shop_api;"),
        "still served on HTTP"
    );
}

#[test]
fn with_a_certificate_port_80_redirects_and_443_serves() {
    let dir = tempfile::tempdir().unwrap();
    let serial = store_pair(dir.path(), false);
    let e = exposure(true);
    let files = render(&[site(&e)], dir.path());
    let conf = &files["shop.conf"];
    let (http, https) = conf.split_once("listen 443 ssl;").unwrap();
    assert!(http.contains("listen 80;"));
    assert!(http.contains("location ^~ /.well-known/acme-challenge/ {"));
    assert!(http.contains("return 308 https://$host$request_uri;"));
    assert!(!http.contains("proxy_pass"), "port 80 only redirects");
    assert!(https.contains("ssl_certificate /etc/nginx/conf.d/certs/shop-tls/tls.crt;"));
    assert!(https.contains("ssl_certificate_key /etc/nginx/conf.d/certs/shop-tls/tls.key;"));
    assert!(https.contains("proxy_pass http://berth_shop_api;"));
    assert!(
        conf.contains(&format!("# certificate serial {serial}")),
        "a new serial reloads"
    );
    assert_eq!(conf.matches("upstream berth_shop_api").count(), 1);
}

#[test]
fn an_expired_or_broken_pair_is_not_served() {
    let dir = tempfile::tempdir().unwrap();
    store_pair(dir.path(), true);
    let e = exposure(true);
    assert!(!render(&[site(&e)], dir.path())["shop.conf"].contains("listen 443"));
    std::fs::write(dir.path().join("shop-tls/tls.key"), "garbage").unwrap();
    assert!(!render(&[site(&e)], dir.path())["shop.conf"].contains("listen 443"));
}

#[test]
fn challenge_answers_are_files_nginx_can_read() {
    let dir = tempfile::tempdir().unwrap();
    let t = Http01Tokens::in_dir(dir.path().join("acme"));
    t.insert("abc-DEF_1", "abc-DEF_1.thumb");
    let f = dir.path().join("acme/.well-known/acme-challenge/abc-DEF_1");
    assert_eq!(std::fs::read_to_string(&f).unwrap(), "abc-DEF_1.thumb");
    t.insert("../evil", "x");
    assert!(!dir.path().join("evil").exists());
    t.remove("abc-DEF_1");
    assert!(!f.exists());
}
