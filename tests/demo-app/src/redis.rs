//! A minimal RESP2 client: enough for PING, AUTH, SELECT, BLPOP and INCR.

use std::fmt;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::time::timeout;

use crate::percent_decode;

/// Where and how to connect, parsed from `redis://[[user]:password@]host[:port][/db]`.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisUrl {
    pub host: String,
    pub port: u16,
    pub username: Option<String>,
    pub password: Option<String>,
    pub db: u32,
}

// Hand-written so a password never reaches a log line through `{:?}`.
impl fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisUrl")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("db", &self.db)
            .finish()
    }
}

impl RedisUrl {
    pub fn parse(url: &str) -> Result<Self, String> {
        let rest = url.strip_prefix("redis://").ok_or_else(|| {
            "REDIS_URL must start with redis:// (TLS is not supported)".to_string()
        })?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, ""),
        };
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let (username, password) = match userinfo {
            None => (None, None),
            Some(u) => match u.split_once(':') {
                Some((user, pw)) => (
                    (!user.is_empty()).then(|| percent_decode(user)),
                    Some(percent_decode(pw)),
                ),
                // `redis://secret@host` is how some clients spell a password-only URL.
                None => (None, Some(percent_decode(u))),
            },
        };
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) => (
                h,
                p.parse::<u16>()
                    .map_err(|_| format!("bad port {p:?} in REDIS_URL"))?,
            ),
            None => (hostport, 6379),
        };
        if host.is_empty() {
            return Err("REDIS_URL has no host".into());
        }
        let db = path
            .split('?')
            .next()
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.parse::<u32>()
                    .map_err(|_| format!("bad database {s:?} in REDIS_URL"))
            })
            .transpose()?
            .unwrap_or(0);
        Ok(Self {
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string(),
            port,
            username,
            password,
            db,
        })
    }
}

/// A reply, as RESP2 spells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Status(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Reply>>),
}

impl Reply {
    pub fn as_text(&self) -> String {
        match self {
            Reply::Status(s) | Reply::Error(s) => s.clone(),
            Reply::Int(i) => i.to_string(),
            Reply::Bulk(Some(b)) => String::from_utf8_lossy(b).into_owned(),
            Reply::Bulk(None) | Reply::Array(None) => "(nil)".into(),
            Reply::Array(Some(items)) => items
                .iter()
                .map(Reply::as_text)
                .collect::<Vec<_>>()
                .join(" "),
        }
    }
}

pub struct Connection {
    stream: BufReader<TcpStream>,
}

const IO_TIMEOUT: Duration = Duration::from_secs(5);

impl Connection {
    /// Connects, authenticates and selects the database; errors are safe to show (no password).
    pub async fn open(url: &RedisUrl) -> Result<Self, String> {
        let addr = format!("{}:{}", url.host, url.port);
        let tcp = timeout(IO_TIMEOUT, TcpStream::connect(&addr))
            .await
            .map_err(|_| format!("connect to {addr} timed out"))?
            .map_err(|e| format!("connect to {addr}: {e}"))?;
        tcp.set_nodelay(true).ok();
        let mut conn = Connection {
            stream: BufReader::new(tcp),
        };
        if let Some(pw) = &url.password {
            let reply = match &url.username {
                Some(user) => conn.command(&["AUTH", user, pw]).await?,
                None => conn.command(&["AUTH", pw]).await?,
            };
            if let Reply::Error(e) = reply {
                return Err(format!("AUTH refused: {e}"));
            }
        }
        if url.db != 0 {
            let db = url.db.to_string();
            if let Reply::Error(e) = conn.command(&["SELECT", &db]).await? {
                return Err(format!("SELECT {db} refused: {e}"));
            }
        }
        Ok(conn)
    }

    /// Sends one command and reads its reply, with the default I/O timeout.
    pub async fn command(&mut self, args: &[&str]) -> Result<Reply, String> {
        self.command_with_timeout(args, IO_TIMEOUT).await
    }

    pub async fn command_with_timeout(
        &mut self,
        args: &[&str],
        limit: Duration,
    ) -> Result<Reply, String> {
        let mut buf = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            buf.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            buf.extend_from_slice(a.as_bytes());
            buf.extend_from_slice(b"\r\n");
        }
        let name = args.first().copied().unwrap_or("");
        timeout(limit, async {
            self.stream.get_mut().write_all(&buf).await?;
            read_reply(&mut self.stream).await
        })
        .await
        .map_err(|_| format!("{name} timed out"))?
        .map_err(|e| format!("{name}: {e}"))
    }
}

fn protocol_error(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string())
}

async fn read_line(r: &mut BufReader<TcpStream>) -> std::io::Result<String> {
    let mut line = String::new();
    if r.read_line(&mut line).await? == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "connection closed by server",
        ));
    }
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}

fn read_reply(
    r: &mut BufReader<TcpStream>,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = std::io::Result<Reply>> + Send + '_>> {
    Box::pin(async move {
        let line = read_line(r).await?;
        let (kind, rest) = line.split_at(line.len().min(1));
        let num = || {
            rest.parse::<i64>()
                .map_err(|_| protocol_error("bad length"))
        };
        Ok(match kind {
            "+" => Reply::Status(rest.to_string()),
            "-" => Reply::Error(rest.to_string()),
            ":" => Reply::Int(num()?),
            "$" => {
                let n = num()?;
                if n < 0 {
                    Reply::Bulk(None)
                } else {
                    let mut data = vec![0; n as usize + 2];
                    r.read_exact(&mut data).await?;
                    data.truncate(n as usize);
                    Reply::Bulk(Some(data))
                }
            }
            "*" => {
                let n = num()?;
                if n < 0 {
                    Reply::Array(None)
                } else {
                    let mut items = Vec::with_capacity(n as usize);
                    for _ in 0..n {
                        items.push(read_reply(r).await?);
                    }
                    Reply::Array(Some(items))
                }
            }
            _ => return Err(protocol_error("unexpected reply type")),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        let u = RedisUrl::parse("redis://:p%40ss@cache:6380/2").unwrap();
        assert_eq!(
            (
                u.host.as_str(),
                u.port,
                u.username,
                u.password.as_deref(),
                u.db
            ),
            ("cache", 6380, None, Some("p@ss"), 2)
        );
        let u = RedisUrl::parse("redis://app:pw@cache").unwrap();
        assert_eq!((u.username.as_deref(), u.port), (Some("app"), 6379));
        let u = RedisUrl::parse("redis://cache:6379").unwrap();
        assert_eq!((u.password, u.db), (None, 0));
        assert!(RedisUrl::parse("rediss://cache").is_err());
        assert!(RedisUrl::parse("redis://:pw@").is_err());
        assert!(RedisUrl::parse("redis://cache:x").is_err());
    }

    #[test]
    fn debug_hides_password() {
        let u = RedisUrl::parse("redis://:topsecret@cache").unwrap();
        assert!(!format!("{u:?}").contains("topsecret"));
    }
}
