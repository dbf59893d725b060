//! Workers scaled by a real Redis queue depth on a Docker host: `berth host run` (the real
//! binary and wiring) with a stack whose Worker has `scaling`; the test pushes jobs into the
//! stack's own Redis with `docker exec ... redis-cli`, and the autoscale engine — reading that
//! Redis through its `docker exec` relay, as the Redis publishes no port — adds worker
//! containers, then removes them newest first with SIGTERM once the queue drains.

#[path = "support/docker_host.rs"]
mod docker_host;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use docker_host::*;

const CONVERGE: Duration = Duration::from_secs(120);

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn redis_cli(t: &TestHost, stack: &str, args: &str) -> String {
    let redis = t.group(&format!("{stack}-redis"));
    let name = &redis.first().expect("no redis container").name;
    docker_ok(&[
        "exec",
        name,
        "sh",
        "-c",
        &format!("REDISCLI_AUTH=\"$REDIS_PASSWORD\" redis-cli --no-auth-warning {args}"),
    ])
    .trim()
    .to_string()
}

fn running(t: &TestHost, group: &str) -> Vec<String> {
    let mut names: Vec<String> = t
        .group(group)
        .into_iter()
        .filter(|c| c.state == "running")
        .map(|c| c.name)
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_scaled_by_a_real_redis_queue_depth() {
    let t = TestHost::new("bs");
    let s = format!("{}s", t.instance);
    // The workers pop another list (QUEUE=busy), so the depth of `jobs` is exactly what the
    // test pushes and deletes.
    t.write(
        "stack.yaml",
        &format!(
            "apiVersion: berth.dev/v1alpha1
kind: AppStack
metadata: {{name: {s}}}
spec:
  api:
    image: {api}
    port: 8080
    healthCheck: {{path: /health, intervalSeconds: 1, timeoutSeconds: 1}}
  workers:
    - name: work
      image: {worker}
      env: [{{name: QUEUE, value: busy}}]
      queue: {{type: list, name: jobs}}
      scaling:
        minReplicas: 1
        maxReplicas: 3
        jobsPerReplica: 2
        pollInterval: 1s
        scaleUpStabilization: 0s
        scaleDownStabilization: 2s
      terminationGracePeriodSeconds: 15
  redis: {{image: {redis}}}
",
            api = demo_images::API,
            worker = demo_images::WORKER,
            redis = demo_images::REDIS
        ),
    );
    let mut berth = spawn_berth(&t);
    let workers = format!("{s}-work");

    // Idle: minReplicas, and the queue is read through the relay.
    wait_for("the queue read at depth 0", CONVERGE, || async {
        let w = t.status("Worker", &workers)?;
        let reachable = w["conditions"]
            .as_array()?
            .iter()
            .any(|c| c["type"] == "QueueReachable" && c["status"] == "True");
        (reachable && w["queueDepth"] == 0).then_some(())
    })
    .await;
    wait_for("one running worker", CONVERGE, || async {
        (running(&t, &workers) == vec![format!("{workers}-1")]).then_some(())
    })
    .await;

    // 5 jobs at 2 per replica: 3 replicas (the maximum).
    assert_eq!(redis_cli(&t, &s, "rpush jobs a b c d e"), "5");
    wait_for("3 running workers", CONVERGE, || async {
        (running(&t, &workers).len() == 3).then_some(())
    })
    .await;
    let w = wait_for("status at depth 5", CONVERGE, || async {
        let w = t.status("Worker", &workers)?;
        (w["queueDepth"] == 5 && w["desiredReplicas"] == 3).then_some(w)
    })
    .await;
    assert!(w["lastScaleTime"].is_string(), "{w}");
    // The password never reaches the status.
    let password = redis_cli(&t, &s, "config get requirepass")
        .lines()
        .nth(1)
        .unwrap_or_default()
        .to_string();
    assert!(password.len() >= 8, "no password read back");
    for st in t.statuses() {
        assert!(!st.status.to_string().contains(&password));
    }

    // Partly drained (3 jobs: 2 replicas), then drained (minReplicas): the newest goes first,
    // each with SIGTERM, and exits cleanly (the demo worker finishes its job and exits 0).
    let since = unix_now().saturating_sub(1);
    assert_eq!(redis_cli(&t, &s, "lpop jobs 2"), "a\nb");
    wait_for("2 workers", CONVERGE, || async {
        (t.group(&workers).len() == 2).then_some(())
    })
    .await;
    assert_eq!(
        running(&t, &workers),
        vec![format!("{workers}-1"), format!("{workers}-2")]
    );
    assert_eq!(redis_cli(&t, &s, "del jobs"), "1");
    wait_for("1 worker", CONVERGE, || async {
        (t.group(&workers).len() == 1).then_some(())
    })
    .await;
    assert_eq!(running(&t, &workers), vec![format!("{workers}-1")]);
    let events = docker_ok(&[
        "events",
        "--since",
        &since.to_string(),
        "--until",
        &(unix_now() + 1).to_string(),
        "--filter",
        &format!("label=berth.dev/group={workers}"),
        "--filter",
        "event=kill",
        "--filter",
        "event=die",
        "--format",
        "{{.Action}} {{index .Actor.Attributes \"name\"}} {{index .Actor.Attributes \"signal\"}}{{index .Actor.Attributes \"exitCode\"}}",
    ]);
    let lines: Vec<&str> = events.lines().map(str::trim).collect();
    let (w2, w3) = (format!("{workers}-2"), format!("{workers}-3"));
    assert_eq!(
        lines,
        vec![
            format!("kill {w3} 15").as_str(),
            format!("die {w3} 0").as_str(),
            format!("kill {w2} 15").as_str(),
            format!("die {w2} 0").as_str(),
        ],
        "{events}"
    );
    let w = wait_for("status at depth 0", CONVERGE, || async {
        let w = t.status("Worker", &workers)?;
        (w["queueDepth"] == 0 && w["desiredReplicas"] == 1).then_some(w)
    })
    .await;
    assert_eq!(w["replicas"], 1, "{w}");
    berth.kill();
}
