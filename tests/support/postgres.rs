//! A private PostgreSQL cluster for one test: `initdb` in a temp dir, the server on a free
//! 127.0.0.1 port with password (scram) authentication, stopped and removed on drop. As root the
//! server runs as the `postgres` user (via `runuser`), as PostgreSQL refuses to run as root.
//!
//! Include with `#[path = "support/postgres.rs"] mod postgres;`. Needs Debian's `postgresql`
//! package (the server binaries under /usr/lib/postgresql/<major>/bin) and `postgresql-client`.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// The superuser password of every test cluster.
pub const PASSWORD: &str = "test-pw-7f3a";

pub struct PgServer {
    pub port: u16,
    dir: tempfile::TempDir,
    bin: PathBuf,
    stopped: bool,
}

fn bin_dir() -> PathBuf {
    let root = Path::new("/usr/lib/postgresql");
    let mut majors: Vec<u32> = std::fs::read_dir(root)
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    majors.sort_unstable();
    let Some(major) = majors
        .into_iter()
        .rev()
        .find(|m| root.join(format!("{m}/bin/initdb")).exists())
    else {
        panic!("PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin: apt-get install -y postgresql postgresql-client (.ci/run does)");
    };
    root.join(format!("{major}/bin"))
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn as_server_user(program: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn check(what: &str, out: std::io::Result<Output>) -> Output {
    let out = out.unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl PgServer {
    /// Starts a fresh cluster; panics with what is missing when it cannot.
    pub fn start() -> PgServer {
        let bin = bin_dir();
        let dir = tempfile::Builder::new()
            .prefix("berth-pg-")
            .tempdir()
            .expect("temp dir");
        if is_root() {
            check(
                "chown the cluster dir",
                Command::new("chown")
                    .args(["-R", "postgres:postgres"])
                    .arg(dir.path())
                    .output(),
            );
        }
        let pwfile = dir.path().join("pw");
        std::fs::write(&pwfile, PASSWORD).expect("pwfile");
        if is_root() {
            let _ = Command::new("chown")
                .args(["postgres:postgres"])
                .arg(&pwfile)
                .output();
        }
        check(
            "initdb",
            as_server_user(&bin.join("initdb"))
                .arg("-D")
                .arg(dir.path().join("data"))
                .args([
                    "-U",
                    "postgres",
                    "--auth=scram-sha-256",
                    "-E",
                    "UTF8",
                    "--no-sync",
                    "--locale=C",
                ])
                .arg(format!("--pwfile={}", pwfile.display()))
                .output(),
        );
        let mut last = String::new();
        for _ in 0..5 {
            let port = free_port();
            let out = as_server_user(&bin.join("pg_ctl"))
                .arg("-D")
                .arg(dir.path().join("data"))
                .arg("-l")
                .arg(dir.path().join("log"))
                .arg("-o")
                .arg(format!(
                    "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off -c synchronous_commit=off",
                    dir.path().display()
                ))
                .args(["-w", "-t", "60", "start"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .output()
                .expect("pg_ctl");
            if out.status.success() {
                return PgServer {
                    port,
                    dir,
                    bin,
                    stopped: false,
                };
            }
            last = format!(
                "{}{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                std::fs::read_to_string(dir.path().join("log")).unwrap_or_default()
            );
        }
        panic!("PostgreSQL did not start: {last}");
    }

    /// URL of database `db` as the superuser.
    pub fn url(&self, db: &str) -> String {
        format!(
            "postgres://postgres:{PASSWORD}@127.0.0.1:{}/{db}",
            self.port
        )
    }

    /// URL with a wrong password.
    pub fn url_with_password(&self, db: &str, password: &str) -> String {
        format!(
            "postgres://postgres:{password}@127.0.0.1:{}/{db}",
            self.port
        )
    }

    /// Runs SQL (possibly several statements) with psql and returns the unaligned output.
    pub fn sql(&self, db: &str, sql: &str) -> String {
        let out = check(
            &format!("psql {sql:.80}"),
            Command::new("psql")
                .env("PGPASSWORD", PASSWORD)
                .args([
                    "-X",
                    "-A",
                    "-t",
                    "-q",
                    "-v",
                    "ON_ERROR_STOP=1",
                    "-h",
                    "127.0.0.1",
                    "-U",
                    "postgres",
                ])
                .arg("-p")
                .arg(self.port.to_string())
                .arg("-d")
                .arg(db)
                .arg("-c")
                .arg(sql)
                .output(),
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// A psql session on `db` reading statements from its stdin (kept open by the caller).
    pub fn session(&self, db: &str) -> std::process::Child {
        Command::new("psql")
            .env("PGPASSWORD", PASSWORD)
            .args([
                "-X",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
            ])
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-d")
            .arg(db)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("psql session")
    }

    /// Stops the server at once, as a crash would (`pg_ctl stop -m immediate`).
    pub fn kill(&mut self) {
        if !self.stopped {
            let _ = as_server_user(&self.bin.join("pg_ctl"))
                .arg("-D")
                .arg(self.dir.path().join("data"))
                .args(["-m", "immediate", "-w", "stop"])
                .output();
            self.stopped = true;
        }
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.kill();
    }
}
