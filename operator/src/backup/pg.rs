//! The PostgreSQL client programs (`pg_dump`, `pg_restore`, `psql`) as child processes.
//!
//! The password never goes on a command line (where `ps` shows it): it is taken out of the URL
//! and handed over in `PGPASSWORD`. Errors name the URL with the password replaced by `***`.

use std::process::Stdio;

use tokio::io::AsyncReadExt;
use tokio::process::{Child, ChildStderr, Command};
use url::Url;

use super::BackupError;
use crate::api::backup::DumpFormat;

/// A `postgres://` URL split into what the client programs need.
#[derive(Clone)]
pub struct Conn {
    url: Url,
    password: Option<String>,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// Replaces the password of any URL-like string with `***` (for logs and errors).
pub fn redact(url: &str) -> String {
    match Url::parse(url) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("***"));
            }
            u.to_string()
        }
        Err(_) => "<unparsable URL>".into(),
    }
}

impl Conn {
    /// Parses `postgres://user:password@host:port/database?options` (or `postgresql://`).
    pub fn parse(url: &str) -> Result<Conn, BackupError> {
        let invalid = |reason: &str| BackupError::InvalidUrl {
            url: redact(url),
            reason: reason.to_string(),
        };
        let mut u = Url::parse(url).map_err(|e| invalid(&e.to_string()))?;
        if !matches!(u.scheme(), "postgres" | "postgresql") {
            return Err(invalid("the scheme must be postgres:// or postgresql://"));
        }
        let password = u.password().map(percent_decode);
        let _ = u.set_password(None);
        let conn = Conn { url: u, password };
        if conn.database().is_empty() {
            return Err(invalid(
                "name the database in the path, e.g. postgres://user@host/mydb",
            ));
        }
        Ok(conn)
    }

    /// The URL with the password replaced by `***`.
    pub fn redacted(&self) -> String {
        let mut u = self.url.clone();
        if self.password.is_some() {
            let _ = u.set_password(Some("***"));
        }
        u.to_string()
    }

    /// The database the URL names.
    pub fn database(&self) -> String {
        percent_decode(self.url.path().trim_start_matches('/'))
    }

    /// The same server and credentials, another database.
    pub fn with_database(&self, db: &str) -> Conn {
        let mut u = self.url.clone();
        u.set_path(&format!("/{}", utf8_percent_encode(db)));
        Conn {
            url: u,
            password: self.password.clone(),
        }
    }

    /// The URL without password, for `--dbname`.
    fn dbname_arg(&self) -> String {
        self.url.to_string()
    }

    fn command(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.env_remove("PGPASSWORD");
        if let Some(p) = &self.password {
            c.env("PGPASSWORD", p);
        }
        // Never prompt: a missing password is an error, not a hang.
        c.arg("--no-password");
        c.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        c
    }

    /// `pg_dump` writing the database to stdout. Custom archives are not compressed by pg_dump
    /// (`-Z0`): berth compresses the stream itself.
    pub fn pg_dump(&self, format: DumpFormat) -> Result<Child, BackupError> {
        let mut c = self.command("pg_dump");
        match format {
            DumpFormat::Custom => c.args(["--format=custom", "--compress=0"]),
            DumpFormat::Plain => c.args(["--format=plain"]),
        };
        c.arg(format!("--dbname={}", self.dbname_arg()));
        spawn(c, "pg_dump")
    }

    /// A restore reading the dump on stdin: `pg_restore` for custom archives, `psql` for SQL.
    pub fn restore_process(&self, format: DumpFormat) -> Result<Child, BackupError> {
        let (mut c, program) = match format {
            DumpFormat::Custom => {
                let mut c = self.command("pg_restore");
                c.args(["--exit-on-error", "--no-owner", "--no-privileges"]);
                c.arg(format!("--dbname={}", self.dbname_arg()));
                (c, "pg_restore")
            }
            DumpFormat::Plain => {
                let mut c = self.command("psql");
                c.args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-o", "/dev/null"]);
                c.arg(format!("--dbname={}", self.dbname_arg()));
                (c, "psql")
            }
        };
        c.stdin(Stdio::piped());
        spawn(c, program)
    }

    /// Runs one SQL statement with psql and returns its unaligned output.
    pub async fn query(&self, sql: &str) -> Result<String, BackupError> {
        let mut c = self.command("psql");
        c.args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-c", sql]);
        c.arg(format!("--dbname={}", self.dbname_arg()));
        let child = spawn(c, "psql")?;
        let out = child
            .wait_with_output()
            .await
            .map_err(super::io_err("waiting for psql"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(self.classify(
                "psql",
                &out.status.to_string(),
                &String::from_utf8_lossy(&out.stderr),
            ))
        }
    }

    /// The number of user tables and large objects: what an empty database has none of.
    pub async fn count_objects(&self) -> Result<(u64, u64), BackupError> {
        let out = self
            .query(
                "SELECT (SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE c.relkind IN ('r','p','v','m','S','f') AND n.nspname NOT IN ('pg_catalog','information_schema') \
                 AND n.nspname NOT LIKE 'pg_toast%' AND n.nspname NOT LIKE 'pg_temp%') || ',' || \
                 (SELECT count(*) FROM pg_largeobject_metadata)",
            )
            .await?;
        let (a, b) = out.split_once(',').unwrap_or(("0", "0"));
        Ok((a.trim().parse().unwrap_or(0), b.trim().parse().unwrap_or(0)))
    }

    /// The number of user tables (relkind r/p), as verification compares them.
    pub async fn count_tables(&self) -> Result<u64, BackupError> {
        let out = self
            .query(
                "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE c.relkind IN ('r','p') AND n.nspname NOT IN ('pg_catalog','information_schema') \
                 AND n.nspname NOT LIKE 'pg_toast%' AND n.nspname NOT LIKE 'pg_temp%'",
            )
            .await?;
        Ok(out.trim().parse().unwrap_or(0))
    }

    /// A connection to the server's maintenance database (`postgres`), for CREATE/DROP DATABASE.
    pub fn maintenance(&self) -> Conn {
        self.with_database("postgres")
    }

    pub async fn database_exists(&self, name: &str) -> Result<bool, BackupError> {
        let out = self
            .maintenance()
            .query(&format!(
                "SELECT count(*) FROM pg_database WHERE datname = {}",
                quote_literal(name)
            ))
            .await?;
        Ok(out.trim() != "0")
    }

    pub async fn create_database(&self, name: &str) -> Result<(), BackupError> {
        self.maintenance()
            .query(&format!("CREATE DATABASE {}", quote_ident(name)))
            .await
            .map(drop)
    }

    pub async fn drop_database(&self, name: &str) -> Result<(), BackupError> {
        self.maintenance()
            .query(&format!("DROP DATABASE IF EXISTS {}", quote_ident(name)))
            .await
            .map(drop)
    }

    /// Turns a failed client program's stderr into an error a person can act on.
    pub fn classify(&self, program: &str, status: &str, stderr: &str) -> BackupError {
        let detail = last_lines(stderr);
        if stderr.contains("password authentication failed")
            || stderr.contains("no password supplied")
            || stderr.contains("authentication failed")
        {
            BackupError::Authentication {
                url: self.redacted(),
            }
        } else if stderr.contains("could not connect")
            || stderr.contains("Connection refused")
            || stderr.contains("could not translate host name")
            || (stderr.contains("connection to server") && stderr.contains("failed"))
        {
            BackupError::Connection {
                url: self.redacted(),
                detail,
            }
        } else {
            BackupError::Tool {
                program: program.to_string(),
                status: status.to_string(),
                detail,
            }
        }
    }
}

fn spawn(mut c: Command, program: &str) -> Result<Child, BackupError> {
    c.spawn().map_err(|source| BackupError::Spawn {
        program: program.to_string(),
        source,
    })
}

/// Reads a child's stderr to the end, keeping the last 16 KiB.
pub async fn read_stderr(mut err: ChildStderr) -> String {
    let mut kept: Vec<u8> = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match err.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                kept.extend_from_slice(&buf[..n]);
                if kept.len() > 16 * 1024 {
                    let cut = kept.len() - 16 * 1024;
                    kept.drain(..cut);
                }
            }
        }
    }
    String::from_utf8_lossy(&kept).into_owned()
}

/// The last few non-empty lines of a program's error output, on one line.
fn last_lines(stderr: &str) -> String {
    let lines: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    // The tools' own error lines say what went wrong; the rest is context.
    let errors: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| l.contains("error:") || l.contains("FATAL:"))
        .collect();
    let chosen = if errors.is_empty() { &lines } else { &errors };
    let start = chosen.len().saturating_sub(3);
    let s = chosen[start..].join(" / ");
    if s.is_empty() {
        "no error output".into()
    } else {
        s
    }
}

pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

pub fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn utf8_percent_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_redact() {
        let c = Conn::parse("postgres://app:s%40cret@db:5432/vid%20gen?sslmode=disable").unwrap();
        assert_eq!(c.password.as_deref(), Some("s@cret"));
        assert_eq!(c.database(), "vid gen");
        assert!(!c.redacted().contains("cret"));
        assert!(c.redacted().contains("***"));
        assert!(!c.dbname_arg().contains("cret"));
        let other = c.with_database("scratch");
        assert_eq!(other.database(), "scratch");
        assert!(other.dbname_arg().contains("sslmode=disable"));
        assert!(Conn::parse("mysql://x@y/z").is_err());
        assert!(Conn::parse("postgres://x@y").is_err());
        let e = Conn::parse("postgres://u:topsecret@h")
            .unwrap_err()
            .to_string();
        assert!(!e.contains("topsecret"), "{e}");
        assert_eq!(redact("redis://:pw@h:6379"), "redis://:***@h:6379");
    }

    #[test]
    fn classify_errors() {
        let c = Conn::parse("postgres://u:pw@h/db").unwrap();
        assert!(matches!(
            c.classify("pg_dump", "1", "pg_dump: error: connection to server at \"h\" failed: FATAL:  password authentication failed for user \"u\""),
            BackupError::Authentication { .. }
        ));
        assert!(matches!(
            c.classify(
                "pg_dump",
                "1",
                "connection to server at \"h\" (127.0.0.1), port 5432 failed: Connection refused"
            ),
            BackupError::Connection { .. }
        ));
        assert!(matches!(
            c.classify("pg_dump", "1", "pg_dump: error: query failed"),
            BackupError::Tool { .. }
        ));
    }
}
