//! The exec relay to a stack's own Redis: its internal network publishes no port, so a probe
//! reaches it through `docker exec` in the Redis container, with AUTH, the probe pipeline and
//! QUIT on the relay's stdin (never on a command line).

use std::collections::HashSet;
use std::io::Cursor;
use std::time::Duration;

use bollard::exec::{CreateExecOptions, StartExecResults};
use futures::StreamExt;
use redis::{IntoConnectionInfo, Pipeline, Value};
use tokio::io::AsyncWriteExt;

use super::super::labels;
use super::HostTarget;

/// How long one relayed round trip may take.
pub const RELAY_TIMEOUT: Duration = Duration::from_secs(5);

/// The relay run in the Redis container; the port is its only argument. Nothing secret.
pub(super) const RELAY_SCRIPT: &str = "if command -v nc >/dev/null 2>&1; then exec nc 127.0.0.1 \"$1\"; \
elif command -v bash >/dev/null 2>&1; then exec bash -c 'exec 3<>/dev/tcp/127.0.0.1/'\"$1\"' && { cat <&3 & cat >&3; wait; }'; \
else echo 'no relay: the Redis image has neither nc nor bash' >&2; exit 127; fi";

/// A stack's Redis, reached through `docker exec` in its container.
#[derive(Clone, Debug)]
pub(super) struct Relay {
    pub(super) group: String,
    pub(super) port: u16,
    pub(super) username: Option<String>,
    pub(super) password: Option<String>,
    pub(super) db: i64,
}

impl HostTarget {
    /// One round trip to a stack's Redis through `docker exec`.
    pub(super) async fn exec_relay(
        &self,
        relay: &Relay,
        pipe: &Pipeline,
    ) -> Result<Vec<Value>, String> {
        let container = self
            .engine
            .containers()
            .await
            .map_err(|e| e.to_string())?
            .into_iter()
            .find(|c| c.label(labels::GROUP) == Some(relay.group.as_str()) && c.state == "running")
            .map(|c| c.name)
            .ok_or_else(|| format!("the Redis container of {} is not running", relay.group))?;
        let (mut input, extra) = relay_input(relay, pipe);
        let docker = &self.engine.docker;
        let port = relay.port.to_string();
        let exec = docker
            .create_exec(
                &container,
                CreateExecOptions {
                    cmd: Some(vec![
                        "sh".to_string(),
                        "-c".to_string(),
                        RELAY_SCRIPT.to_string(),
                        "relay".to_string(),
                        port,
                    ]),
                    attach_stdin: Some(true),
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| format!("docker exec in {container}: {e}"))?;
        let started = docker
            .start_exec(&exec.id, None::<bollard::exec::StartExecOptions>)
            .await
            .map_err(|e| format!("docker exec in {container}: {e}"))?;
        let StartExecResults::Attached {
            mut output,
            input: mut stdin,
        } = started
        else {
            return Err(format!("docker exec in {container} did not attach"));
        };
        let round_trip = async {
            stdin
                .write_all(&input)
                .await
                .map_err(|e| format!("writing to the relay in {container}: {e}"))?;
            stdin.flush().await.ok();
            let mut out = Vec::new();
            let mut err = Vec::new();
            while let Some(chunk) = output.next().await {
                match chunk {
                    Ok(bollard::container::LogOutput::StdOut { message }) => {
                        out.extend_from_slice(&message)
                    }
                    Ok(bollard::container::LogOutput::StdErr { message }) => {
                        err.extend_from_slice(&message)
                    }
                    Ok(_) => {}
                    Err(e) => return Err(format!("reading the relay in {container}: {e}")),
                }
            }
            Ok((out, err))
        };
        let result = tokio::time::timeout(RELAY_TIMEOUT, round_trip).await;
        // The bytes held the password.
        input.fill(0);
        let (out, err) = result.map_err(|_| {
            format!("the relay in {container} did not answer within {RELAY_TIMEOUT:?}")
        })??;
        parse_replies(&out, pipe.len(), extra).map_err(|m| {
            let stderr = String::from_utf8_lossy(&err).trim().to_string();
            if stderr.is_empty() {
                format!("relay in {container}: {m}")
            } else {
                format!("relay in {container}: {stderr}")
            }
        })
    }
}

/// AUTH (and SELECT), the pipeline, QUIT: the bytes sent to the relay, and how many replies
/// come before the pipeline's.
fn relay_input(relay: &Relay, pipe: &Pipeline) -> (Vec<u8>, usize) {
    let mut bytes = Vec::new();
    let mut extra = 0;
    if let Some(pw) = &relay.password {
        let mut auth = redis::cmd("AUTH");
        if let Some(u) = &relay.username {
            auth.arg(u);
        }
        auth.arg(pw);
        bytes.extend(auth.get_packed_command());
        extra += 1;
    }
    if relay.db != 0 {
        bytes.extend(redis::cmd("SELECT").arg(relay.db).get_packed_command());
        extra += 1;
    }
    bytes.extend(pipe.get_packed_pipeline());
    bytes.extend(redis::cmd("QUIT").get_packed_command());
    (bytes, extra)
}

/// Splits the relay's output into the pipeline's `n` replies (after `extra` set-up replies,
/// which must be OK; QUIT's reply may be missing).
pub fn parse_replies(out: &[u8], n: usize, extra: usize) -> Result<Vec<Value>, String> {
    let mut parser = redis::Parser::new();
    let mut cursor = Cursor::new(out);
    for i in 0..extra {
        match parser.parse_value(&mut cursor) {
            Ok(Value::Okay) | Ok(Value::SimpleString(_)) => {}
            Ok(Value::ServerError(e)) => {
                let what = if i == 0 { "authentication" } else { "SELECT" };
                return Err(format!(
                    "{what} failed: {} (is REDIS_URL's password the one the Redis uses?)",
                    e.code()
                ));
            }
            Ok(other) => return Err(format!("unexpected reply to set-up: {other:?}")),
            Err(_) if out.is_empty() => return Err("no answer from Redis".into()),
            Err(e) => return Err(format!("unreadable reply: {}", e.kind_str())),
        }
    }
    let mut values = Vec::with_capacity(n);
    for _ in 0..n {
        match parser.parse_value(&mut cursor) {
            Ok(v) => values.push(v),
            Err(e) => {
                return Err(format!(
                    "{} of {n} replies, then: {}",
                    values.len(),
                    e.kind_str()
                ))
            }
        }
    }
    Ok(values)
}

trait KindStr {
    fn kind_str(&self) -> String;
}

impl KindStr for redis::RedisError {
    fn kind_str(&self) -> String {
        format!("{:?}", self.kind())
    }
}

/// A relay when the URL's host is a group of the host (a stack's own Redis).
pub(super) fn in_stack_relay(url: &str, groups: &HashSet<&str>) -> Option<Relay> {
    let info = url.into_connection_info().ok()?;
    let (host, port) = match info.addr() {
        redis::ConnectionAddr::Tcp(h, p) => (h.clone(), *p),
        _ => return None,
    };
    if !groups.contains(host.as_str()) {
        return None;
    }
    let r = info.redis_settings();
    Some(Relay {
        group: host,
        port,
        username: r.username().map(str::to_string),
        password: r.password().map(str::to_string),
        db: r.db(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stack_redis_is_relayed_and_others_are_not() {
        let groups: HashSet<&str> = ["s-redis", "s-api"].into();
        let r = in_stack_relay("redis://default:pw%40x@s-redis:6379/2", &groups).unwrap();
        assert_eq!(r.group, "s-redis");
        assert_eq!(r.port, 6379);
        assert_eq!(r.username.as_deref(), Some("default"));
        assert_eq!(r.password.as_deref(), Some("pw@x"));
        assert_eq!(r.db, 2);
        assert!(in_stack_relay("redis://:pw@cache.example.com:6379/0", &groups).is_none());
        assert!(in_stack_relay("rediss://:pw@s-redis:6380/0", &groups).is_none());
    }

    #[test]
    fn relay_input_sends_auth_on_stdin_and_ends_with_quit() {
        let relay = Relay {
            group: "s-redis".into(),
            port: 6379,
            username: Some("default".into()),
            password: Some("hunter2".into()),
            db: 0,
        };
        let mut pipe = Pipeline::new();
        pipe.cmd("LLEN").arg("jobs");
        let (bytes, extra) = relay_input(&relay, &pipe);
        assert_eq!(extra, 1);
        let text = String::from_utf8(bytes).unwrap();
        assert!(text.starts_with("*3\r\n$4\r\nAUTH\r\n$7\r\ndefault\r\n$7\r\nhunter2\r\n"));
        assert!(text.contains("LLEN"));
        assert!(text.ends_with("*1\r\n$4\r\nQUIT\r\n"));
        // The command line carries the port only.
        assert!(!RELAY_SCRIPT.contains("hunter2"));
    }

    #[test]
    fn replies_are_split_after_auth() {
        let out = b"+OK\r\n:7\r\n-WRONGTYPE bad\r\n+OK\r\n";
        let v = parse_replies(out, 2, 1).unwrap();
        assert_eq!(v[0], Value::Int(7));
        assert!(matches!(v[1], Value::ServerError(_)));
        let e = parse_replies(b"-WRONGPASS invalid username-password pair\r\n", 1, 1).unwrap_err();
        assert!(e.starts_with("authentication failed: WRONGPASS"), "{e}");
        assert_eq!(
            parse_replies(b"", 1, 1).unwrap_err(),
            "no answer from Redis"
        );
        assert!(parse_replies(b":1\r\n", 2, 0)
            .unwrap_err()
            .starts_with("1 of 2"));
    }
}
