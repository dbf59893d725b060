//! Backups on a Docker host: [`run_in_container`] dumps a stack's PostgreSQL with `pg_dump` run
//! by `docker exec` inside its own container (so its port is never published) and streams the
//! output through the same engine as `berth backup run` (compression, SHA-256,
//! publish-when-complete, manifest, verification, retention). When each Backup is due is
//! decided by [`crate::backup::host::Scheduler`]; [`crate::backup::host::record`] turns the
//! result into the Backup's status.

use std::collections::HashMap;
use std::time::Duration;

use bollard::container::LogOutput;
use bollard::exec::{CreateExecOptions, StartExecResults};
use bollard::Docker;
use bytes::Bytes;
use chrono::{SecondsFormat, Utc};
use futures::StreamExt;
use tokio::io::AsyncWriteExt;
use tracing::{info, warn};

use crate::api::backup::{BackupSpec, Compression, DumpFormat};
use crate::api::units::parse_duration;
use crate::backup::manifest::Manifest;
use crate::backup::pg::{quote_ident, Conn};
use crate::backup::retention::Policy;
use crate::backup::run::{finish_with, publish, RunOutcome};
use crate::backup::store::Store;
use crate::backup::{naming, stream, BackupError};

/// One backup of a stack's in-container PostgreSQL into a host folder (or S3).
#[derive(Clone, Debug)]
pub struct HostJob {
    /// The PostgreSQL container, `<stack>-postgres-1` on a Docker host; its env gives `POSTGRES_USER`,
    /// `POSTGRES_DB` and `POSTGRES_PASSWORD`.
    pub container: String,
    /// A host folder (the backup volume's mountpoint or a bind folder) or `s3://bucket/prefix`.
    pub destination: String,
    /// Start of backup names: the Backup's name.
    pub name_prefix: String,
    pub format: DumpFormat,
    pub compression: Compression,
    pub policy: Policy,
    pub verify: bool,
}

impl HostJob {
    /// The job of Backup `name` with `spec`.
    pub fn from_spec(
        name: &str,
        spec: &BackupSpec,
        container: String,
        destination: String,
    ) -> Result<HostJob, BackupError> {
        let max_age = spec
            .retention
            .max_age
            .as_deref()
            .map(parse_duration)
            .transpose()
            .map_err(|e| BackupError::Retention(format!("maxAge {e}")))?;
        Ok(HostJob {
            container,
            destination,
            name_prefix: name.to_string(),
            format: spec.format,
            compression: spec.compression,
            policy: Policy {
                keep_last: spec.retention.keep_last.map(|n| n.max(1) as usize),
                max_age,
            },
            verify: spec.verify,
        })
    }
}

struct PgEnv {
    user: String,
    db: String,
    password: Option<String>,
}

impl PgEnv {
    fn env(&self) -> Vec<String> {
        self.password
            .iter()
            .map(|p| format!("PGPASSWORD={p}"))
            .collect()
    }
    /// A password-free URL naming the server, for messages.
    fn conn(&self, container: &str) -> Result<Conn, BackupError> {
        Conn::parse(&format!("postgres://{}@{container}/{}", self.user, self.db))
    }
}

fn docker_err(e: bollard::errors::Error) -> BackupError {
    BackupError::Docker(e.to_string())
}

async fn pg_env(docker: &Docker, container: &str) -> Result<PgEnv, BackupError> {
    let info = docker
        .inspect_container(container, None)
        .await
        .map_err(|e| {
            BackupError::Docker(format!(
                "cannot inspect the PostgreSQL container {container}: {e}"
            ))
        })?;
    if !info.state.as_ref().and_then(|s| s.running).unwrap_or(false) {
        return Err(BackupError::Docker(format!(
            "the PostgreSQL container {container} is not running"
        )));
    }
    let env: HashMap<String, String> = info
        .config
        .and_then(|c| c.env)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect();
    let user = env
        .get("POSTGRES_USER")
        .cloned()
        .unwrap_or_else(|| "postgres".into());
    let db = env
        .get("POSTGRES_DB")
        .cloned()
        .unwrap_or_else(|| user.clone());
    Ok(PgEnv {
        user,
        db,
        password: env.get("POSTGRES_PASSWORD").cloned(),
    })
}

/// Runs `cmd` in the container and returns its exit code, stdout and stderr.
async fn exec_capture(
    docker: &Docker,
    container: &str,
    cmd: Vec<String>,
    env: Vec<String>,
) -> Result<(i64, String, String), BackupError> {
    let exec = docker
        .create_exec(
            container,
            CreateExecOptions {
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                cmd: Some(cmd),
                env: Some(env),
                ..CreateExecOptions::default()
            },
        )
        .await
        .map_err(docker_err)?;
    let mut out = String::new();
    let mut err = String::new();
    if let StartExecResults::Attached { mut output, .. } = docker
        .start_exec(&exec.id, None)
        .await
        .map_err(docker_err)?
    {
        while let Some(item) = output.next().await {
            match item.map_err(docker_err)? {
                LogOutput::StdOut { message } => out.push_str(&String::from_utf8_lossy(&message)),
                LogOutput::StdErr { message } => err.push_str(&String::from_utf8_lossy(&message)),
                _ => {}
            }
        }
    }
    let code = exit_code(docker, &exec.id).await?;
    Ok((code, out, err))
}

/// The exit code of a finished exec (the output ends a moment before Docker records it).
async fn exit_code(docker: &Docker, id: &str) -> Result<i64, BackupError> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let i = docker.inspect_exec(id).await.map_err(docker_err)?;
        if i.running != Some(true) {
            if let Some(c) = i.exit_code {
                return Ok(c);
            }
        }
        if tokio::time::Instant::now() > deadline {
            return Err(BackupError::Docker(format!(
                "exec {id} did not report an exit code"
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn psql_cmd(env: &PgEnv, db: &str, sql: &str) -> Vec<String> {
    [
        "psql",
        "-X",
        "-A",
        "-t",
        "-q",
        "-v",
        "ON_ERROR_STOP=1",
        "--no-password",
        "-U",
        &env.user,
        "-d",
        db,
        "-c",
        sql,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

async fn query(
    docker: &Docker,
    container: &str,
    env: &PgEnv,
    db: &str,
    sql: &str,
) -> Result<String, BackupError> {
    let (code, out, err) =
        exec_capture(docker, container, psql_cmd(env, db, sql), env.env()).await?;
    if code == 0 {
        Ok(out.trim().to_string())
    } else {
        Err(env
            .conn(container)?
            .classify("psql", &format!("exit code {code}"), &err))
    }
}

const COUNT_TABLES: &str =
    "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
    WHERE c.relkind IN ('r','p') AND n.nspname NOT IN ('pg_catalog','information_schema') \
    AND n.nspname NOT LIKE 'pg_toast%' AND n.nspname NOT LIKE 'pg_temp%'";

/// Dumps the database of `job.container` through `docker exec pg_dump` into the destination,
/// then verifies (by restoring into a scratch database in the same container) and applies
/// retention, as `berth backup run` does.
pub async fn run_in_container(docker: &Docker, job: &HostJob) -> Result<RunOutcome, BackupError> {
    let env = pg_env(docker, &job.container).await?;
    let conn = env.conn(&job.container)?;
    let store = Store::open(&job.destination)?;
    let tables: u64 = query(docker, &job.container, &env, &env.db, COUNT_TABLES)
        .await?
        .parse()
        .unwrap_or(0);
    let base = naming::sanitize_base(&job.name_prefix);
    let existing = store.names().await?;
    let (started, name) = loop {
        let now = Utc::now();
        let name = naming::backup_name(&base, now, job.format, job.compression);
        if !existing.contains(&name) {
            break (now, name);
        }
        tokio::time::sleep(Duration::from_millis(
            1000 - u64::from(now.timestamp_subsec_millis()).min(999),
        ))
        .await;
    };
    info!(backup = %name, container = %job.container, "dump starting (docker exec)");
    let clock = std::time::Instant::now();
    let mut cmd: Vec<String> = vec!["pg_dump".into(), "--no-password".into()];
    match job.format {
        DumpFormat::Custom => cmd.extend(["--format=custom".into(), "--compress=0".into()]),
        DumpFormat::Plain => cmd.push("--format=plain".into()),
    }
    cmd.extend(["-U".into(), env.user.clone(), "-d".into(), env.db.clone()]);
    let exec = docker
        .create_exec(
            &job.container,
            CreateExecOptions {
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                cmd: Some(cmd),
                env: Some(env.env()),
                ..CreateExecOptions::default()
            },
        )
        .await
        .map_err(docker_err)?;
    let StartExecResults::Attached { mut output, .. } = docker
        .start_exec(&exec.id, None)
        .await
        .map_err(docker_err)?
    else {
        return Err(BackupError::Docker("docker exec did not attach".into()));
    };
    // stdout goes to the compressor through a small bounded channel (back-pressure, no
    // buffering of the dump); stderr is kept for the error message.
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(8);
    let pump = tokio::spawn(async move {
        let mut err = String::new();
        while let Some(item) = output.next().await {
            match item {
                Ok(LogOutput::StdOut { message }) => {
                    if tx.send(Ok(message)).await.is_err() {
                        break;
                    }
                }
                Ok(LogOutput::StdErr { message }) => {
                    if err.len() < 16 * 1024 {
                        err.push_str(&String::from_utf8_lossy(&message));
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    let _ = tx.send(Err(std::io::Error::other(e.to_string()))).await;
                    break;
                }
            }
        }
        err
    });
    let src = tokio_util::io::StreamReader::new(Box::pin(futures::stream::unfold(
        rx,
        |mut rx| async move { rx.recv().await.map(|item| (item, rx)) },
    )));
    let exec_id = exec.id.clone();
    let producer = async {
        let err = pump.await.unwrap_or_default();
        let code = exit_code(docker, &exec_id).await?;
        if code == 0 {
            Ok(())
        } else {
            Err(conn.classify("pg_dump", &format!("exit code {code}"), &err))
        }
    };
    let written = publish(&store, &name, src, job.compression, producer).await?;
    let manifest = Manifest {
        name: name.clone(),
        time: started.to_rfc3339_opts(SecondsFormat::Secs, true),
        size_bytes: written.bytes,
        sha256: written.sha256,
        duration_seconds: clock.elapsed().as_secs_f64(),
        format: job.format,
        compression: job.compression,
        database: env.db.clone(),
        tables,
        verified: false,
        verify_error: None,
        berth_version: env!("CARGO_PKG_VERSION").to_string(),
    };
    let verify = |m: Manifest| {
        let store = store.clone();
        let env = &env;
        async move { verify_in_container(docker, &job.container, env, &store, &m).await }
    };
    if job.verify {
        finish_with(&store, manifest, Some(verify), job.policy, Utc::now()).await
    } else {
        finish_with(
            &store,
            manifest,
            None::<fn(Manifest) -> std::future::Ready<Result<(), BackupError>>>,
            job.policy,
            Utc::now(),
        )
        .await
    }
}

/// Restores `m` into a scratch database inside the container (stdin of `pg_restore`/`psql`
/// through `docker exec`), checks the table count, drops it.
async fn verify_in_container(
    docker: &Docker,
    container: &str,
    env: &PgEnv,
    store: &Store,
    m: &Manifest,
) -> Result<(), BackupError> {
    let suffix: u32 = rand::random();
    let scratch = format!("berth_verify_{suffix:08x}");
    query(
        docker,
        container,
        env,
        "postgres",
        &format!("CREATE DATABASE {}", quote_ident(&scratch)),
    )
    .await?;
    let result = async {
        let cmd: Vec<String> = match m.format {
            DumpFormat::Custom => vec![
                "pg_restore".into(),
                "--exit-on-error".into(),
                "--no-owner".into(),
                "--no-privileges".into(),
                "--no-password".into(),
                "-U".into(),
                env.user.clone(),
                "-d".into(),
                scratch.clone(),
            ],
            DumpFormat::Plain => vec![
                "psql".into(),
                "-X".into(),
                "-q".into(),
                "-v".into(),
                "ON_ERROR_STOP=1".into(),
                "-o".into(),
                "/dev/null".into(),
                "--no-password".into(),
                "-U".into(),
                env.user.clone(),
                "-d".into(),
                scratch.clone(),
            ],
        };
        let exec = docker
            .create_exec(
                container,
                CreateExecOptions {
                    attach_stdin: Some(true),
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    cmd: Some(cmd),
                    env: Some(env.env()),
                    ..CreateExecOptions::default()
                },
            )
            .await
            .map_err(docker_err)?;
        let StartExecResults::Attached {
            mut output,
            mut input,
        } = docker
            .start_exec(&exec.id, None)
            .await
            .map_err(docker_err)?
        else {
            return Err(BackupError::Docker("docker exec did not attach".into()));
        };
        let drain = tokio::spawn(async move {
            let mut err = String::new();
            while let Some(Ok(item)) = output.next().await {
                if let LogOutput::StdErr { message } = item {
                    if err.len() < 16 * 1024 {
                        err.push_str(&String::from_utf8_lossy(&message));
                    }
                }
            }
            err
        });
        let reader = store.reader(&m.name).await?;
        let mut hashing = stream::Hashing::new(reader);
        let copied = {
            let mut plain = stream::decompressor(&mut hashing, m.compression);
            let r = tokio::io::copy(&mut plain, &mut input).await;
            let _ = input.shutdown().await;
            r
        };
        let err = drain.await.unwrap_or_default();
        let code = exit_code(docker, &exec.id).await?;
        if code != 0 {
            return Err(env.conn(container)?.classify(
                "restore",
                &format!("exit code {code}"),
                &err,
            ));
        }
        copied.map_err(crate::backup::io_err(format!("reading {}", m.name)))?;
        let read = hashing.finish();
        if read.sha256 != m.sha256 {
            return Err(BackupError::Checksum {
                name: m.name.clone(),
                expected: m.sha256.clone(),
                actual: read.sha256,
            });
        }
        let tables: u64 = query(docker, container, env, &scratch, COUNT_TABLES)
            .await?
            .parse()
            .unwrap_or(0);
        if tables != m.tables {
            return Err(BackupError::Verify {
                name: m.name.clone(),
                detail: format!(
                    "the restored database has {tables} tables, the source had {}",
                    m.tables
                ),
            });
        }
        Ok(())
    }
    .await;
    if let Err(e) = query(
        docker,
        container,
        env,
        "postgres",
        &format!("DROP DATABASE IF EXISTS {}", quote_ident(&scratch)),
    )
    .await
    {
        warn!(database = %scratch, error = %e, "could not drop the scratch database");
    }
    result
}
