//! A private redis-server for one test: a free 127.0.0.1 port, a temp dir, optionally a
//! password and TLS (certificates from rcgen). Stopped on drop; `stop`/`start` simulate an
//! outage on the same port.

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisServer {
    pub port: u16,
    pub password: Option<String>,
    dir: tempfile::TempDir,
    child: Option<Child>,
    tls: Option<TlsFiles>,
    also_bind: Vec<String>,
    args: Vec<String>,
}

struct TlsFiles {
    ca_pem: String,
    cert: PathBuf,
    key: PathBuf,
    ca: PathBuf,
}

#[derive(Default)]
pub struct Options {
    pub password: Option<String>,
    pub tls: bool,
    /// Addresses to listen on besides 127.0.0.1 (e.g. the cluster's node IP, for pods).
    pub also_bind: Vec<String>,
    /// More redis-server arguments, e.g. `["--rename-command", "CONFIG", ""]`.
    pub args: Vec<String>,
}

/// A port outside Linux's ephemeral range (32768-60999), so no outgoing connection of a
/// parallel test can hold it; spread by process id and a counter, checked bindable.
fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let base = 20_000 + (std::process::id() % 400) as u16 * 25;
    loop {
        let port = base + NEXT.fetch_add(1, Ordering::Relaxed) % 10_000;
        let port = 20_000 + (port - 20_000) % 12_000;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

impl RedisServer {
    /// A plain redis-server without a password.
    pub fn start_plain() -> RedisServer {
        RedisServer::start_with(Options::default())
    }

    pub fn start_with(opts: Options) -> RedisServer {
        if Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_err()
        {
            panic!("redis-server is not installed: apt-get install redis-server (CI does it in .ci/run)");
        }
        let dir = tempfile::tempdir().unwrap();
        let tls = opts.tls.then(|| write_certs(dir.path()));
        let mut s = RedisServer {
            port: free_port(),
            password: opts.password,
            dir,
            child: None,
            tls,
            also_bind: opts.also_bind,
            args: opts.args,
        };
        // Another process may take the port between the check and the start: try others.
        for _ in 0..20 {
            if s.try_start() {
                return s;
            }
            s.port = free_port();
        }
        panic!("redis-server could not start on any port (see its log in the temp dir)");
    }

    /// Starts again on the same port and waits until it serves.
    pub fn start(&mut self) {
        assert!(
            self.try_start(),
            "redis-server did not start again on port {}",
            self.port
        );
    }

    /// Starts on `self.port`; false when the server exited (the port was taken).
    fn try_start(&mut self) -> bool {
        assert!(self.child.is_none(), "already running");
        let mut cmd = Command::new("redis-server");
        cmd.current_dir(self.dir.path())
            .args(["--bind", "127.0.0.1"])
            .args(&self.also_bind)
            .args(["--save", "", "--appendonly", "no"])
            .args(["--dir", self.dir.path().to_str().unwrap()]);
        match &self.tls {
            Some(t) => {
                cmd.args(["--port", "0", "--tls-port", &self.port.to_string()])
                    .args(["--tls-cert-file", t.cert.to_str().unwrap()])
                    .args(["--tls-key-file", t.key.to_str().unwrap()])
                    .args(["--tls-ca-cert-file", t.ca.to_str().unwrap()])
                    .args(["--tls-auth-clients", "no"]);
            }
            None => {
                cmd.args(["--port", &self.port.to_string()]);
            }
        }
        if let Some(pw) = &self.password {
            cmd.args(["--requirepass", pw]);
        }
        if !self.also_bind.is_empty() {
            // Reachable from pods without a password: protected mode would refuse them.
            cmd.args(["--protected-mode", "no"]);
        }
        cmd.args(&self.args);
        let log = std::fs::File::create(self.dir.path().join("redis.log")).unwrap();
        let child = cmd
            .stdout(log)
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        self.child = Some(child);
        // Ready when our own process is alive and its port answers (redis-server listens
        // only once it is ready to serve); checking the child after the connect makes sure
        // the answer did not come from some other process on the port.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let answered = std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok();
            if self.child.as_mut().unwrap().try_wait().unwrap().is_some() {
                self.child = None;
                return false;
            }
            if answered && self.serves_ping() {
                return true;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server did not listen on {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A raw PING (plain TCP only; a TLS server is taken as ready once it listens).
    fn serves_ping(&self) -> bool {
        use std::io::{Read, Write};
        if self.tls.is_some() {
            return true;
        }
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
        let mut buf = [0u8; 64];
        // +PONG, or -NOAUTH with a password: either way a Redis answers.
        s.write_all(b"PING\r\n").is_ok() && s.read(&mut buf).is_ok_and(|n| n > 0)
    }

    /// Kills the server and waits until the port is closed.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The URL a client uses (`rediss://` with TLS, the password in it when set).
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        match &self.password {
            Some(pw) => format!("{scheme}://:{pw}@127.0.0.1:{}/0", self.port),
            None => format!("{scheme}://127.0.0.1:{}/0", self.port),
        }
    }

    /// The CA certificate (PEM) of a TLS server.
    pub fn ca_pem(&self) -> Option<Vec<u8>> {
        self.tls.as_ref().map(|t| t.ca_pem.clone().into_bytes())
    }

    /// A client connection for writing test keys.
    pub async fn conn(&self) -> redis::aio::MultiplexedConnection {
        let client = match self.ca_pem() {
            Some(ca) => redis::Client::build_with_tls(
                self.url(),
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(ca),
                },
            )
            .unwrap(),
            None => redis::Client::open(self.url()).unwrap(),
        };
        client.get_multiplexed_async_connection().await.unwrap()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn write_certs(dir: &std::path::Path) -> TlsFiles {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "berth test CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let params =
        CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    let files = TlsFiles {
        ca_pem: ca_cert.pem(),
        cert: dir.join("server.crt"),
        key: dir.join("server.key"),
        ca: dir.join("ca.crt"),
    };
    std::fs::write(&files.cert, cert.pem()).unwrap();
    std::fs::write(&files.key, key.serialize_pem()).unwrap();
    std::fs::write(&files.ca, &files.ca_pem).unwrap();
    files
}
