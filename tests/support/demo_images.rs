//! The `berth-demo/*` images for tests that run containers on the real Docker engine.
//!
//! Include with `#[path = "support/demo_images.rs"] mod demo_images;` and call
//! [`ensure_built`] before creating containers: it runs `tests/images/build.sh` once per test
//! process, which keeps images whose tag already exists (`FORCE=1 make demo-images` rebuilds).
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

pub const API: &str = "berth-demo/api:latest";
/// Same program as [`API`] with `APP_VERSION=2`: a distinct image to roll out to.
pub const API_V2: &str = "berth-demo/api:v2";
/// Serves, but `/health` always answers 503: a rollout to it must never complete.
pub const API_BROKEN: &str = "berth-demo/api:broken";
pub const WORKER: &str = "berth-demo/worker:latest";
pub const POSTGRES: &str = "berth-demo/postgres:latest";
pub const REDIS: &str = "berth-demo/redis:latest";
pub const NGINX: &str = "berth-demo/nginx:latest";

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(".."))
}

/// Builds the missing demo images, once per process. Panics with what to install when the build
/// cannot run, so a test never passes without the images it needs.
pub fn ensure_built() {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    let result = BUILT.get_or_init(|| {
        let script = repo_root().join("tests/images/build.sh");
        let out = Command::new("bash")
            .arg(&script)
            .current_dir(repo_root())
            .output()
            .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{} failed ({}); it needs docker.io, busybox-static, postgresql-15, redis-server, \
                 redis-tools and nginx (apt-get install -y ...). Its output:\n{}{}",
                script.display(),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}
