//! How components find the database and the cache: generated credentials for in-stack servers,
//! the user's Secret for external ones, `DATABASE_URL`/`REDIS_URL`, and the start-up wait.

use crate::api::common::SecretKeyRef;
use crate::api::AppStackSpec;

use super::names::{self, keys};
use super::types::{Dependency, Env, EnvValue, GeneratedSecret, SecretEntry, SecretValue};

/// The role berth creates in the in-stack PostgreSQL.
pub const POSTGRES_USER: &str = "berth";
/// Port of the in-stack PostgreSQL.
pub const POSTGRES_PORT: i32 = 5432;
/// Port of the in-stack Redis.
pub const REDIS_PORT: i32 = 6379;
/// Random bytes in each generated password (hex-encoded: 64 characters).
pub const PASSWORD_BYTES: usize = 32;
/// Default images (official images) and the client tools the start-up wait uses.
pub const DEFAULT_POSTGRES_VERSION: &str = "16";
pub const DEFAULT_REDIS_VERSION: &str = "7";

/// Where a connection URL comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UrlSource {
    /// The env value (`Generated` for in-stack, `Secret` for external).
    pub value: EnvValue,
    /// Whether the server runs in the stack.
    pub in_stack: bool,
    /// An image holding the client tool to check it.
    pub tool_image: String,
}

/// The URLs of a stack's database and cache, if it has them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StackUrls {
    pub database: Option<UrlSource>,
    pub redis: Option<UrlSource>,
}

/// The image of the in-stack PostgreSQL: `image`, or `postgres:<version>`.
pub fn postgres_image(pg: &crate::api::appstack::PostgresSpec) -> String {
    pg.image.clone().unwrap_or_else(|| {
        format!(
            "postgres:{}",
            pg.version.as_deref().unwrap_or(DEFAULT_POSTGRES_VERSION)
        )
    })
}

/// The image of the in-stack Redis: `image`, or `redis:<version>`.
pub fn redis_image(r: &crate::api::appstack::RedisSpec) -> String {
    r.image.clone().unwrap_or_else(|| {
        format!(
            "redis:{}",
            r.version.as_deref().unwrap_or(DEFAULT_REDIS_VERSION)
        )
    })
}

/// The database name of the in-stack PostgreSQL: `database`, or the stack's name as an
/// identifier (`-` becomes `_`).
pub fn database_name(stack: &str, pg: &crate::api::appstack::PostgresSpec) -> String {
    pg.database
        .clone()
        .unwrap_or_else(|| stack.replace('-', "_"))
}

/// Where `DATABASE_URL` and `REDIS_URL` of a stack come from.
pub fn stack_urls(stack: &str, spec: &AppStackSpec) -> StackUrls {
    let database = spec.postgres.as_ref().map(|pg| match &pg.external {
        Some(ext) => UrlSource {
            value: EnvValue::Secret(ext.url_secret_ref.clone()),
            in_stack: false,
            tool_image: format!("postgres:{DEFAULT_POSTGRES_VERSION}"),
        },
        None => UrlSource {
            value: EnvValue::Generated(SecretKeyRef {
                name: names::postgres_secret(stack),
                key: keys::URL.into(),
            }),
            in_stack: true,
            tool_image: postgres_image(pg),
        },
    });
    let redis = spec.redis.as_ref().map(|r| match &r.external {
        Some(ext) => UrlSource {
            value: EnvValue::Secret(ext.url_secret_ref.clone()),
            in_stack: false,
            tool_image: format!("redis:{DEFAULT_REDIS_VERSION}"),
        },
        None => UrlSource {
            value: EnvValue::Generated(SecretKeyRef {
                name: names::redis_secret(stack),
                key: keys::URL.into(),
            }),
            in_stack: true,
            tool_image: redis_image(r),
        },
    });
    StackUrls { database, redis }
}

/// Secrets to generate for the stack's in-stack servers.
pub fn generated_secrets(stack: &str, spec: &AppStackSpec) -> Vec<GeneratedSecret> {
    let mut out = Vec::new();
    if let Some(pg) = spec.postgres.as_ref().filter(|p| p.external.is_none()) {
        let host = names::component_host(stack, "postgres");
        let db = database_name(stack, pg);
        out.push(GeneratedSecret {
            name: names::postgres_secret(stack),
            component: "postgres".into(),
            entries: vec![
                entry(keys::USERNAME, SecretValue::Literal(POSTGRES_USER.into())),
                entry(
                    keys::PASSWORD,
                    SecretValue::Random {
                        bytes: PASSWORD_BYTES,
                    },
                ),
                entry(keys::DATABASE, SecretValue::Literal(db.clone())),
                entry(
                    keys::URL,
                    SecretValue::Template(format!(
                        "postgres://{{username}}:{{password}}@{host}:{POSTGRES_PORT}/{{database}}"
                    )),
                ),
            ],
        });
    }
    if spec.redis.as_ref().is_some_and(|r| r.external.is_none()) {
        let host = names::component_host(stack, "redis");
        out.push(GeneratedSecret {
            name: names::redis_secret(stack),
            component: "redis".into(),
            entries: vec![
                entry(
                    keys::PASSWORD,
                    SecretValue::Random {
                        bytes: PASSWORD_BYTES,
                    },
                ),
                entry(
                    keys::URL,
                    SecretValue::Template(format!(
                        "redis://default:{{password}}@{host}:{REDIS_PORT}/0"
                    )),
                ),
            ],
        });
    }
    out
}

fn entry(key: &str, value: SecretValue) -> SecretEntry {
    SecretEntry {
        key: key.into(),
        value,
    }
}

/// `DATABASE_URL` and `REDIS_URL` for a component of the stack (those the stack has).
pub fn url_env(urls: &StackUrls) -> Vec<Env> {
    let mut env = Vec::new();
    if let Some(db) = &urls.database {
        env.push(Env {
            name: "DATABASE_URL".into(),
            value: db.value.clone(),
        });
    }
    if let Some(r) = &urls.redis {
        env.push(Env {
            name: "REDIS_URL".into(),
            value: r.value.clone(),
        });
    }
    env
}

/// What a component waits for before starting: the stack's database and cache. The checks read
/// the URL from the environment through `sh -c` so no credential is ever part of an object.
pub fn dependencies(urls: &StackUrls) -> Vec<Dependency> {
    let mut deps = Vec::new();
    if let Some(db) = &urls.database {
        deps.push(Dependency {
            name: "postgres".into(),
            in_stack: db.in_stack,
            image: db.tool_image.clone(),
            check: vec![
                "sh".into(),
                "-c".into(),
                r#"pg_isready -q -t 2 -d "$DATABASE_URL""#.into(),
            ],
            env: vec![Env {
                name: "DATABASE_URL".into(),
                value: db.value.clone(),
            }],
            user: Some(super::types::OFFICIAL_IMAGE_USER),
        });
    }
    if let Some(r) = &urls.redis {
        deps.push(Dependency {
            name: "redis".into(),
            in_stack: r.in_stack,
            image: r.tool_image.clone(),
            check: vec![
                "sh".into(),
                "-c".into(),
                r#"redis-cli --no-auth-warning -u "$REDIS_URL" ping | grep -q PONG"#.into(),
            ],
            env: vec![Env {
                name: "REDIS_URL".into(),
                value: r.value.clone(),
            }],
            user: Some(super::types::OFFICIAL_IMAGE_USER),
        });
    }
    deps
}

/// Why a generated secret could not be filled in.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MaterializeError {
    #[error(
        "secret {secret}: template of key {key} refers to {missing}, which is not an earlier key"
    )]
    UnknownPlaceholder {
        secret: String,
        key: String,
        missing: String,
    },
}

/// Fills in a generated secret: random keys from `random`, templates from earlier keys. Keys
/// already present in `existing` are kept as they are (credentials are never rotated), and
/// templates use the existing values.
pub fn materialize(
    secret: &GeneratedSecret,
    existing: &super::types::SecretData,
    mut random: impl FnMut(usize) -> String,
) -> Result<super::types::SecretData, MaterializeError> {
    let mut out = super::types::SecretData::new();
    for e in &secret.entries {
        let value = if let Some(v) = existing.get(&e.key) {
            v.clone()
        } else {
            match &e.value {
                SecretValue::Literal(v) => v.clone(),
                SecretValue::Random { bytes } => random(*bytes),
                SecretValue::Template(t) => {
                    fill(t, &out).map_err(|missing| MaterializeError::UnknownPlaceholder {
                        secret: secret.name.clone(),
                        key: e.key.clone(),
                        missing,
                    })?
                }
            }
        };
        out.insert(e.key.clone(), value);
    }
    Ok(out)
}

/// Replaces `{key}` by `values[key]`; the first unknown key is the error.
fn fill(template: &str, values: &super::types::SecretData) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        let Some(end) = after.find('}') else {
            out.push_str(&rest[start..]);
            return Ok(out);
        };
        let key = &after[..end];
        match values.get(key) {
            Some(v) => out.push_str(v),
            None => return Err(key.to_string()),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// `bytes` random bytes from the OS generator, hex-encoded.
pub fn random_hex(bytes: usize) -> String {
    use rand::RngCore;
    let mut buf = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut buf);
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// A stand-in for a random value, for offline rendering: says what would be there.
pub fn placeholder(bytes: usize) -> String {
    format!("<generated: {bytes} random bytes, hex>")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::appstack::{PostgresSpec, RedisSpec};
    use crate::api::common::ExternalUrl;

    fn spec(pg: Option<PostgresSpec>, redis: Option<RedisSpec>) -> AppStackSpec {
        serde_json::from_value::<AppStackSpec>(serde_json::json!({"api": {"image": "a:1"}}))
            .map(|mut s| {
                s.postgres = pg;
                s.redis = redis;
                s
            })
            .unwrap()
    }

    fn ext(name: &str) -> Option<ExternalUrl> {
        Some(ExternalUrl {
            url_secret_ref: SecretKeyRef {
                name: name.into(),
                key: "url".into(),
            },
        })
    }

    #[test]
    fn url_sources() {
        let in_stack = spec(Some(PostgresSpec::default()), Some(RedisSpec::default()));
        let external = spec(
            Some(PostgresSpec {
                external: ext("db"),
                ..Default::default()
            }),
            Some(RedisSpec {
                external: ext("cache"),
                ..Default::default()
            }),
        );
        let cases = [
            (
                &in_stack,
                EnvValue::Generated(SecretKeyRef {
                    name: "s-postgres-credentials".into(),
                    key: "url".into(),
                }),
                EnvValue::Generated(SecretKeyRef {
                    name: "s-redis-credentials".into(),
                    key: "url".into(),
                }),
            ),
            (
                &external,
                EnvValue::Secret(SecretKeyRef {
                    name: "db".into(),
                    key: "url".into(),
                }),
                EnvValue::Secret(SecretKeyRef {
                    name: "cache".into(),
                    key: "url".into(),
                }),
            ),
        ];
        for (spec, db, redis) in cases {
            let urls = stack_urls("s", spec);
            assert_eq!(urls.database.unwrap().value, db);
            assert_eq!(urls.redis.unwrap().value, redis);
        }
        assert_eq!(stack_urls("s", &spec(None, None)), StackUrls::default());
    }

    #[test]
    fn external_servers_get_no_generated_secret() {
        let external = spec(
            Some(PostgresSpec {
                external: ext("db"),
                ..Default::default()
            }),
            Some(RedisSpec {
                external: ext("cache"),
                ..Default::default()
            }),
        );
        assert!(generated_secrets("s", &external).is_empty());
        let names: Vec<_> = generated_secrets(
            "s",
            &spec(Some(PostgresSpec::default()), Some(RedisSpec::default())),
        )
        .into_iter()
        .map(|s| s.name)
        .collect();
        assert_eq!(names, ["s-postgres-credentials", "s-redis-credentials"]);
    }

    #[test]
    fn materialized_postgres_secret_has_a_url_with_the_password() {
        let s = spec(
            Some(PostgresSpec {
                database: Some("shop".into()),
                ..Default::default()
            }),
            None,
        );
        let secret = &generated_secrets("my-stack", &s)[0];
        let data = materialize(secret, &Default::default(), |n| "x".repeat(n)).unwrap();
        let pw = "x".repeat(32);
        assert_eq!(data["username"], "berth");
        assert_eq!(data["database"], "shop");
        assert_eq!(
            data["url"],
            format!("postgres://berth:{pw}@my-stack-postgres:5432/shop")
        );
    }

    #[test]
    fn existing_values_are_never_replaced() {
        let s = spec(None, Some(RedisSpec::default()));
        let secret = &generated_secrets("s", &s)[0];
        let existing = [("password".to_string(), "old".to_string())].into();
        let data = materialize(secret, &existing, |_| unreachable!("no new password")).unwrap();
        assert_eq!(data["password"], "old");
        assert_eq!(data["url"], "redis://default:old@s-redis:6379/0");
    }

    #[test]
    fn random_passwords_are_long_and_distinct() {
        let a = random_hex(PASSWORD_BYTES);
        let b = random_hex(PASSWORD_BYTES);
        assert_eq!(a.len(), 64);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }

    #[test]
    fn template_errors_name_the_key() {
        let secret = GeneratedSecret {
            name: "x".into(),
            component: "c".into(),
            entries: vec![entry("url", SecretValue::Template("a{nope}".into()))],
        };
        assert_eq!(
            materialize(&secret, &Default::default(), |_| String::new()),
            Err(MaterializeError::UnknownPlaceholder {
                secret: "x".into(),
                key: "url".into(),
                missing: "nope".into()
            })
        );
    }

    #[test]
    fn waits_use_the_env_not_the_command_line() {
        let urls = stack_urls(
            "s",
            &spec(Some(PostgresSpec::default()), Some(RedisSpec::default())),
        );
        let deps = dependencies(&urls);
        assert_eq!(deps.len(), 2);
        assert_eq!(deps[0].image, "postgres:16");
        assert!(deps[0].check[2].contains("pg_isready"));
        assert_eq!(deps[0].env[0].name, "DATABASE_URL");
        assert_eq!(deps[1].image, "redis:7");
        assert!(deps[1].check[2].contains("redis-cli"));
        assert_eq!(deps[1].env[0].name, "REDIS_URL");
    }
}
