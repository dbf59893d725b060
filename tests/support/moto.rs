//! An S3-compatible server for one test: moto's server mode (`pip install 'moto[server]'`) on a
//! free 127.0.0.1 port, killed on drop. Include with `#[path = "support/moto.rs"] mod moto;`.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Moto {
    pub port: u16,
    child: Child,
}

impl Moto {
    /// Starts moto_server; panics with how to install it when it is missing.
    pub fn start() -> Moto {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start moto_server ({e}): pip install 'moto[server]' (.ci/run does)")
            });
        let mut m = Moto { port, child };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = m.child.try_wait() {
                panic!("moto_server exited at start ({status})");
            }
            if m.request("GET", "/")
                .is_ok_and(|r| r.starts_with("HTTP/1.1 200"))
            {
                return m;
            }
            assert!(
                Instant::now() < deadline,
                "moto_server did not answer on port {port}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// One plain HTTP request (moto accepts unsigned ones); returns the whole response.
    pub fn request(&self, method: &str, path: &str) -> std::io::Result<String> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.port
        )?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    }

    /// Creates a bucket.
    pub fn create_bucket(&self, bucket: &str) {
        let r = self
            .request("PUT", &format!("/{bucket}"))
            .expect("create bucket");
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    }

    /// Object keys under `prefix` (from the ListObjectsV2 XML).
    pub fn keys(&self, bucket: &str, prefix: &str) -> Vec<String> {
        let r = self
            .request("GET", &format!("/{bucket}?list-type=2&prefix={prefix}"))
            .expect("list");
        r.split("<Key>")
            .skip(1)
            .filter_map(|p| p.split("</Key>").next())
            .map(str::to_string)
            .collect()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
