//! ACME issuance with the HTTP-01 challenge (instant-acme).
//!
//! berth answers the challenge itself: the key authorizations live in [`Http01Tokens`], which
//! [`http01_router`] serves at `/.well-known/acme-challenge/<token>` (the Docker host's proxy
//! forwards that path to berth; on Kubernetes the Job's pod serves it behind a temporary
//! Service and Ingress rule). Before telling the CA a challenge is ready, berth fetches the URL
//! the CA will fetch and compares the answer (the self-check, as cert-manager does), so a
//! domain that does not reach the proxy fails with the URL it tried, not with a CA rate limit.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};
use rcgen::KeyPair;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{issue, CertError, Issued};

/// The path prefix of HTTP-01 challenges.
pub const CHALLENGE_PREFIX: &str = "/.well-known/acme-challenge/";

/// Key authorizations by token, shared with the HTTP server that answers them; with a
/// webroot, also written as files `<dir>/.well-known/acme-challenge/<token>` (0644) for a
/// proxy that serves them statically.
#[derive(Clone, Debug, Default)]
pub struct Http01Tokens {
    map: Arc<RwLock<HashMap<String, String>>>,
    dir: Option<PathBuf>,
}

impl Http01Tokens {
    /// Tokens also published as files under `webroot`.
    pub fn in_dir(webroot: PathBuf) -> Http01Tokens {
        Http01Tokens {
            map: Arc::default(),
            dir: Some(webroot),
        }
    }

    fn file(&self, token: &str) -> Option<PathBuf> {
        // Tokens are base64url; anything else never reaches the filesystem.
        if token.is_empty()
            || !token
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return None;
        }
        Some(
            self.dir
                .as_ref()?
                .join(".well-known/acme-challenge")
                .join(token),
        )
    }

    pub fn insert(&self, token: &str, key_authorization: &str) {
        if let Ok(mut m) = self.map.write() {
            m.insert(token.into(), key_authorization.into());
        }
        if let Some(path) = self.file(token) {
            if let Some(parent) = path.parent() {
                let _ = std::fs::create_dir_all(parent);
                #[cfg(unix)]
                for d in parent.ancestors().take(3) {
                    use std::os::unix::fs::PermissionsExt;
                    let _ = std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755));
                }
            }
            if let Err(e) = std::fs::write(&path, key_authorization) {
                tracing::warn!(error = %e, path = %path.display(), "cannot publish the HTTP-01 answer");
            }
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644));
            }
        }
    }
    pub fn remove(&self, token: &str) {
        if let Ok(mut m) = self.map.write() {
            m.remove(token);
        }
        if let Some(path) = self.file(token) {
            let _ = std::fs::remove_file(path);
        }
    }
    pub fn get(&self, token: &str) -> Option<String> {
        self.map.read().ok()?.get(token).cloned()
    }
    pub fn len(&self) -> usize {
        self.map.read().map(|m| m.len()).unwrap_or(0)
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

async fn answer(
    State(tokens): State<Http01Tokens>,
    Path(token): Path<String>,
) -> (StatusCode, String) {
    match tokens.get(&token) {
        Some(ka) => (StatusCode::OK, ka),
        None => (StatusCode::NOT_FOUND, "no such challenge\n".into()),
    }
}

/// An axum router answering `/.well-known/acme-challenge/<token>` from `tokens`.
pub fn http01_router(tokens: Http01Tokens) -> Router {
    Router::new()
        .route("/.well-known/acme-challenge/{token}", get(answer))
        .with_state(tokens)
}

/// How to reach the challenge URL for the self-check.
#[derive(Clone, Debug, Default)]
pub enum SelfCheck {
    /// `http://<dnsName>/...` through the system resolver, as the CA would.
    #[default]
    Dns,
    /// Connect to this address instead, with the domain in the Host header (a host whose own
    /// name does not resolve to itself, and the tests).
    Via(SocketAddr),
    /// No self-check.
    Off,
}

/// Publishes the route to a challenge answer where the CA will look for it (on Kubernetes, the
/// solver Service and Ingress rule) and removes it once the order is finalised or failed.
pub trait Presenter: Send + Sync + std::fmt::Debug {
    /// Routes `http://<domain>/.well-known/acme-challenge/<token>` to berth's answer; returns
    /// the address the self-check should connect to, when the presenter knows a better one
    /// than the domain's DNS (a Service's ClusterIP).
    fn present<'a>(
        &'a self,
        domain: &'a str,
        token: &'a str,
    ) -> futures::future::BoxFuture<'a, Result<Option<SocketAddr>, CertError>>;
    /// Removes every route `present` made (best effort: failures are logged).
    fn cleanup(&self) -> futures::future::BoxFuture<'_, ()>;
}

/// One ACME issuance.
pub struct AcmeRequest<'a> {
    pub server: &'a str,
    pub email: &'a str,
    pub dns_names: &'a [String],
    /// The certificate's private key.
    pub key: &'a KeyPair,
    /// The stored account credentials (JSON), if any.
    pub account: Option<&'a str>,
    /// A PEM root to trust for the ACME server's own HTTPS (a test CA such as Pebble's).
    pub server_root: Option<PathBuf>,
    pub tokens: &'a Http01Tokens,
    pub self_check: SelfCheck,
    /// How long to wait for the CA to validate and issue.
    pub timeout: Duration,
    /// Routes challenges to berth's answer before the self-check (none: the caller's proxy
    /// already forwards the challenge path).
    pub presenter: Option<&'a dyn Presenter>,
}

impl AcmeRequest<'_> {
    fn clone_ref(&self) -> AcmeRequest<'_> {
        AcmeRequest {
            server: self.server,
            email: self.email,
            dns_names: self.dns_names,
            key: self.key,
            account: self.account,
            server_root: self.server_root.clone(),
            tokens: self.tokens,
            self_check: self.self_check.clone(),
            timeout: self.timeout,
            presenter: self.presenter,
        }
    }
}

/// What an issuance gives back.
pub struct AcmeOutcome {
    pub issued: Issued,
    /// New account credentials (JSON) to store when the account was created now.
    pub new_account: Option<String>,
}

fn acme_err(server: &str) -> impl Fn(instant_acme::Error) -> CertError + '_ {
    move |e| match e {
        instant_acme::Error::Api(p) => CertError::AcmeRejected(p.to_string()),
        other => CertError::Acme {
            server: server.into(),
            detail: other.to_string(),
        },
    }
}

/// GETs `http://host/path` (through `via` when given) and returns status and body. A tiny
/// HTTP/1.1 client: no redirects are followed, as the CA follows none to another scheme.
async fn http_get(
    host: &str,
    via: Option<SocketAddr>,
    path: &str,
) -> Result<(u16, String), String> {
    let connect = async {
        match via {
            Some(a) => tokio::net::TcpStream::connect(a).await,
            None => tokio::net::TcpStream::connect((host, 80)).await,
        }
    };
    let mut s = tokio::time::timeout(Duration::from_secs(10), connect)
        .await
        .map_err(|_| "connection timed out".to_string())?
        .map_err(|e| e.to_string())?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: berth-self-check\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
        .await
        .map_err(|_| "no answer within 10s".to_string())?
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text.split_once("\r\n\r\n").ok_or("malformed HTTP answer")?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or("malformed HTTP status line")?;
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    Ok((code, body))
}

fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || after.len() < n {
            break;
        }
        out.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
    out
}

/// Fetches the challenge URL the CA will fetch, retrying for a short while (a proxy reload may
/// be under way), and checks the answer.
pub async fn self_check(
    domain: &str,
    token: &str,
    expected: &str,
    how: &SelfCheck,
) -> Result<(), CertError> {
    let via = match how {
        SelfCheck::Off => return Ok(()),
        SelfCheck::Via(a) => Some(*a),
        SelfCheck::Dns => None,
    };
    let path = format!("{CHALLENGE_PREFIX}{token}");
    let url = format!("http://{domain}{path}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let mut last;
    loop {
        last = match http_get(domain, via, &path).await {
            Ok((200, body)) if body.trim() == expected => return Ok(()),
            Ok((code, body)) => format!(
                "HTTP {code}, body {:?}",
                body.chars().take(80).collect::<String>()
            ),
            Err(e) => e,
        };
        if tokio::time::Instant::now() >= deadline {
            return Err(CertError::ChallengeUnreachable { url, detail: last });
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn account(req: &AcmeRequest<'_>) -> Result<(Account, Option<String>), CertError> {
    let err = acme_err(req.server);
    let builder = match &req.server_root {
        Some(root) => Account::builder_with_root(root).map_err(&err)?,
        None => Account::builder().map_err(&err)?,
    };
    if let Some(json) = req.account {
        if let Ok(creds) = serde_json::from_str::<AccountCredentials>(json) {
            return Ok((builder.from_credentials(creds).await.map_err(&err)?, None));
        }
    }
    let contact = format!("mailto:{}", req.email);
    let (account, creds) = builder
        .create(
            &NewAccount {
                contact: &[&contact],
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            req.server.to_string(),
            None,
        )
        .await
        .map_err(&err)?;
    let json = serde_json::to_string(&creds).map_err(|e| CertError::Acme {
        server: req.server.into(),
        detail: format!("cannot serialize the account: {e}"),
    })?;
    Ok((account, Some(json)))
}

/// Orders a certificate for `dns_names`, answering HTTP-01 through `tokens`.
pub async fn issue(req: &AcmeRequest<'_>) -> Result<AcmeOutcome, CertError> {
    let err = acme_err(req.server);
    let (account, mut new_account) = account(req).await?;
    let ids: Vec<Identifier> = req
        .dns_names
        .iter()
        .map(|n| Identifier::Dns(n.clone()))
        .collect();
    let mut order = match account.new_order(&NewOrder::new(&ids)).await {
        Ok(o) => o,
        // The CA forgot the stored account (a test CA restarted, an account deactivated):
        // register a new one, once.
        Err(instant_acme::Error::Api(p))
            if req.account.is_some()
                && p.r#type
                    .as_deref()
                    .is_some_and(|t| t.ends_with("accountDoesNotExist")) =>
        {
            let fresh = AcmeRequest {
                account: None,
                ..req.clone_ref()
            };
            let (account, created) = self::account(&fresh).await?;
            new_account = created;
            account
                .new_order(&NewOrder::new(&ids))
                .await
                .map_err(&err)?
        }
        Err(e) => return Err(err(e)),
    };
    let mut presented = Vec::new();
    let result = async {
        let mut authzs = order.authorizations();
        while let Some(a) = authzs.next().await {
            let mut authz = a.map_err(&err)?;
            match authz.status {
                AuthorizationStatus::Valid => continue,
                AuthorizationStatus::Pending => {}
                other => {
                    return Err(CertError::AcmeRejected(format!("authorization is {other:?}")))
                }
            }
            let mut ch = authz.challenge(ChallengeType::Http01).ok_or_else(|| {
                CertError::AcmeRejected("the CA offers no http-01 challenge for this name".into())
            })?;
            let domain = ch.identifier().to_string();
            let ka = ch.key_authorization();
            req.tokens.insert(&ch.token, ka.as_str());
            presented.push(ch.token.clone());
            let mut how = req.self_check.clone();
            if let Some(p) = req.presenter {
                let via = p.present(&domain, &ch.token).await?;
                if let (SelfCheck::Dns, Some(addr)) = (&how, via) {
                    how = SelfCheck::Via(addr);
                }
            }
            self_check(&domain, &ch.token, ka.as_str(), &how).await?;
            ch.set_ready().await.map_err(&err)?;
        }
        let retry = RetryPolicy::new().timeout(req.timeout);
        let status = order.poll_ready(&retry).await.map_err(&err)?;
        if status != OrderStatus::Ready {
            return Err(CertError::AcmeRejected(format!(
                "the order is {status:?}: the CA could not validate the challenge (see its logs or the authorization)"
            )));
        }
        let csr = issue::csr_der(req.dns_names, req.key)?;
        order.finalize_csr(&csr).await.map_err(&err)?;
        order.poll_certificate(&retry).await.map_err(&err)
    }
    .await;
    for t in &presented {
        req.tokens.remove(t);
    }
    if let (Some(p), false) = (req.presenter, presented.is_empty()) {
        p.cleanup().await;
    }
    let chain = result?;
    Ok(AcmeOutcome {
        issued: Issued {
            cert_pem: chain,
            key_pem: req.key.serialize_pem(),
            ca_pem: None,
        },
        new_account,
    })
}

#[cfg(test)]
mod tests {
    use super::dechunk;

    #[test]
    fn dechunks() {
        assert_eq!(dechunk("5\r\nhello\r\n3\r\n.ab\r\n0\r\n\r\n"), "hello.ab");
    }
}
