//! Health checks run by berth itself, and the hardening of the containers, on the real Docker
//! engine (issue 13): an api image without wget, curl or nc is checked over HTTP from berth
//! (Docker's HEALTHCHECK is off) and serves; a broken /health keeps a rollout from replacing
//! the healthy replica; `docker inspect` shows the hardening the plan carries for pods (user,
//! read-only root with tmpfs scratch paths, no-new-privileges, every capability dropped).

#[path = "support/docker_host.rs"]
mod docker_host;

use std::process::{Command, Stdio};
use std::time::Duration;

use docker_host::*;

const CONVERGE: Duration = Duration::from_secs(180);
/// The demo api without busybox: no shell, no wget, curl or nc (busybox's shell would run its
/// wget applet even without the `wget` link).
const NO_WGET: &str = "berth-demo/api:no-tools";

/// Builds [`NO_WGET`] from the local demo api image once (no registry involved).
fn ensure_no_wget_image() {
    let have = Command::new("docker")
        .args(["image", "inspect", NO_WGET])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if have {
        return;
    }
    let dockerfile = format!(
        "FROM {}\nUSER root\nRUN [\"/bin/busybox\", \"sh\", \"-c\", \"for f in $(/bin/busybox find / -xdev -type l); do case $(/bin/busybox readlink $f) in *busybox) /bin/busybox rm -f $f;; esac; done; /bin/busybox rm -f /bin/busybox /usr/bin/curl\"]\nUSER 10001\n",
        demo_images::API
    );
    let mut child = Command::new("docker")
        .args(["build", "-q", "-t", NO_WGET, "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("docker build");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(dockerfile.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success(), "cannot build {NO_WGET}");
}

fn inspect(container: &str, format: &str) -> String {
    docker_ok(&["inspect", "-f", format, container])
        .trim()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn berth_checks_health_itself_and_containers_are_hardened() {
    ensure_no_wget_image();
    let t = TestHost::new("bh");
    let s = format!("{}s", t.instance);
    // The image really has no HTTP client (nor a shell to run one).
    for tool in ["wget", "curl", "nc", "sh", "busybox"] {
        let out = Command::new("docker")
            .args(["run", "--rm", "--entrypoint", tool, NO_WGET, "--help"])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{NO_WGET} still has {tool}");
    }

    t.write("stack.yaml", &stack_yaml(&s, NO_WGET, 2, true));
    let host = t.host().await;
    wait_for("the stack Ready", CONVERGE, || async {
        let _ = host.pass().await;
        (t.phase(&s)? == "Ready").then_some(())
    })
    .await;
    wait_for("served through the proxy", CONVERGE, || async {
        let _ = host.pass().await;
        (t.get(&format!("{s}.test"), "/health").await.ok()?.0 == 200).then_some(())
    })
    .await;

    // Docker's own HEALTHCHECK is off for HTTP/TCP checks: berth's verdict gates.
    let api = format!("{s}-api-1");
    assert_eq!(
        inspect(&api, "{{json .Config.Healthcheck.Test}}"),
        r#"["NONE"]"#
    );

    // The hardening of the pods, on the Docker host.
    for c in [
        api.clone(),
        format!("{s}-postgres-1"),
        format!("{s}-redis-1"),
    ] {
        assert_eq!(inspect(&c, "{{.HostConfig.ReadonlyRootfs}}"), "true", "{c}");
        assert_eq!(
            inspect(&c, "{{json .HostConfig.CapDrop}}"),
            r#"["ALL"]"#,
            "{c}"
        );
        assert_eq!(
            inspect(&c, "{{json .HostConfig.SecurityOpt}}"),
            r#"["no-new-privileges:true"]"#,
            "{c}"
        );
        assert!(
            inspect(&c, "{{json .HostConfig.Tmpfs}}").contains(r#""/tmp":"#),
            "{c}"
        );
        // Nothing can be written outside the scratch paths and the data volume (the api has
        // no shell to try with).
        if c != api {
            let out = Command::new("docker")
                .args(["exec", &c, "sh", "-c", "touch /etc/x"])
                .output()
                .unwrap();
            assert!(!out.status.success(), "{c}: root filesystem writable");
            docker_ok(&["exec", &c, "sh", "-c", "touch /tmp/x"]);
        }
    }
    let pg = format!("{s}-postgres-1");
    assert_eq!(inspect(&pg, "{{.Config.User}}"), "999:999");
    assert!(inspect(&pg, "{{json .HostConfig.Tmpfs}}").contains("/var/run/postgresql"));
    assert_eq!(docker_ok(&["exec", &pg, "id", "-u"]).trim(), "999");

    // A new version whose /health fails: berth's check holds the rollout, the healthy
    // replicas keep serving, and the stack says why.
    let before: Vec<String> = t
        .group(&format!("{s}-api"))
        .into_iter()
        .map(|c| c.id)
        .collect();
    t.write(
        "stack.yaml",
        &stack_yaml(&s, demo_images::API_BROKEN, 2, true),
    );
    wait_for("the rollout held (Degraded)", CONVERGE, || async {
        let _ = host.pass().await;
        (t.phase(&s)? == "Degraded").then_some(())
    })
    .await;
    for _ in 0..5 {
        let _ = host.pass().await;
        let (code, _) = t.get(&format!("{s}.test"), "/health").await.unwrap();
        assert_eq!(
            code, 200,
            "a healthy replica serves during the held rollout"
        );
    }
    let still: Vec<String> = t
        .group(&format!("{s}-api"))
        .into_iter()
        .filter(|c| before.contains(&c.id))
        .map(|c| c.id)
        .collect();
    assert!(!still.is_empty(), "every healthy replica was replaced");
}
