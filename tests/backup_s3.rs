//! The backup engine with an S3-compatible destination: moto's server, a real PostgreSQL.

#[path = "support/moto.rs"]
mod moto;
#[path = "support/postgres.rs"]
mod postgres;

use berth::api::backup::{Compression, DumpFormat};
use berth::backup::{self, naming, RestoreOptions, RunOptions, Selection, Store};

const FINGERPRINT: &str =
    "SELECT (SELECT md5(string_agg(t::text, ',' ORDER BY id)) FROM big t) || ' ' || \
    (SELECT md5(string_agg(t::text, ',' ORDER BY id)) FROM docs t)";

#[tokio::test(flavor = "multi_thread")]
async fn s3_round_trip_with_multipart_upload_and_retention() {
    let s3 = moto::Moto::start();
    s3.create_bucket("backups");
    // This test binary is the only user of these variables.
    std::env::set_var("AWS_ACCESS_KEY_ID", "test");
    std::env::set_var("AWS_SECRET_ACCESS_KEY", "test");
    std::env::set_var("AWS_REGION", "us-east-1");
    std::env::set_var("AWS_ENDPOINT_URL", s3.endpoint());

    let pg = postgres::PgServer::start();
    pg.sql("postgres", "CREATE DATABASE app");
    // About 30 MB uncompressed: more than one multipart part (10 MB).
    pg.sql(
        "app",
        "CREATE TABLE big(id int PRIMARY KEY, a text, b text);
         INSERT INTO big SELECT g, md5(g::text) || md5((g*7)::text), md5((g*3)::text) FROM generate_series(1, 300000) g;
         CREATE TABLE docs(id int PRIMARY KEY, body jsonb);
         INSERT INTO docs SELECT g, jsonb_build_object('g', g) FROM generate_series(1, 1000) g;",
    );
    let want = pg.sql("app", FINGERPRINT);
    let to = "s3://backups/team/app".to_string();
    let mut o = RunOptions {
        database_url: pg.url("app"),
        to: to.clone(),
        format: DumpFormat::Custom,
        compression: Compression::None,
        keep_last: Some(2),
        max_age: None,
        verify: true,
        name_prefix: None,
    };
    let first = backup::run(&o).await.unwrap();
    assert!(
        first.backup.size_bytes > 20_000_000,
        "{}",
        first.backup.size_bytes
    );
    assert!(first.backup.verified);
    o.compression = Compression::Zstd;
    o.verify = false;
    let second = backup::run(&o).await.unwrap();
    let third = backup::run(&o).await.unwrap();
    assert_eq!(third.deleted, vec![first.backup.name.clone()]);

    let store = Store::open(&to).unwrap();
    let names: Vec<String> = backup::list(&store)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.name)
        .collect();
    assert_eq!(
        names,
        vec![third.backup.name.clone(), second.backup.name.clone()]
    );
    let mut keys = s3.keys("backups", "team/app/");
    keys.sort();
    let mut want_keys: Vec<String> = [&second.backup.name, &third.backup.name]
        .iter()
        .flat_map(|n| {
            [
                format!("team/app/{n}"),
                format!("team/app/{}", naming::manifest_name(n)),
            ]
        })
        .collect();
    want_keys.sort();
    assert_eq!(
        keys, want_keys,
        "no partial uploads or leftovers in the bucket"
    );

    backup::restore(&RestoreOptions {
        from: to.clone(),
        selection: Selection::Name(second.backup.name.clone()),
        database_url: pg.url("copy"),
        clean: false,
        yes: true,
    })
    .await
    .unwrap();
    assert_eq!(pg.sql("copy", FINGERPRINT), want);

    // A failed dump leaves nothing in the bucket.
    let mut bad = o.clone();
    bad.database_url = pg.url_with_password("app", "wrong");
    assert!(backup::run(&bad).await.is_err());
    assert_eq!(s3.keys("backups", "team/app/").len(), 4);
}
