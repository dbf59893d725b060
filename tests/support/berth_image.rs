//! The berth image (`make image`) and the images a test needs, in the real cluster's containerd.
//!
//! Include with `#[path = "support/berth_image.rs"] mod berth_image;`. [`ensure_in_cluster`]
//! builds `berth:dev` with `make image` when Docker does not have it (CI's .ci/setup builds it
//! first, so a test never waits for a release build), builds missing `berth-demo/*` images, and
//! imports all of them with ../shared/k8s/import-image.sh (BERTH_K8S_DIR overrides the folder).
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;

/// The berth image the cluster runs: BERTH_E2E_IMAGE, default `berth:dev`.
pub fn image() -> String {
    std::env::var("BERTH_E2E_IMAGE").unwrap_or_else(|_| "berth:dev".into())
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(".."))
}

fn k8s_dir() -> PathBuf {
    std::env::var("BERTH_K8S_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| repo_root().join("../shared/k8s"))
}

fn run(what: &str, cmd: &mut Command) {
    let out = cmd
        .current_dir(repo_root())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn have_image(image: &str) -> bool {
    Command::new("docker")
        .args(["image", "inspect", image])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Builds what is missing (`berth:dev` by `make image`, the rest by tests/images/build.sh
/// TARGETS) and imports `images` into the cluster.
pub fn ensure_in_cluster(build_targets: &[&str], images: &[&str]) {
    let berth = image();
    if !have_image(&berth) {
        assert_eq!(
            berth, "berth:dev",
            "BERTH_E2E_IMAGE={berth} does not exist in Docker"
        );
        run("make image", Command::new("make").arg("image"));
    }
    if !build_targets.is_empty() {
        run(
            "tests/images/build.sh",
            Command::new("bash")
                .arg("tests/images/build.sh")
                .args(build_targets),
        );
    }
    let script = k8s_dir().join("import-image.sh");
    let mut all = vec![berth.as_str()];
    all.extend_from_slice(images);
    run(
        &format!("{} {}", script.display(), all.join(" ")),
        Command::new("bash").arg(&script).args(&all),
    );
}

/// Tags `image` (repo:tag) as repo:`tag` in Docker and returns the new reference.
pub fn retag(image: &str, tag: &str) -> String {
    let repo = image.rsplit_once(':').map_or(image, |(r, _)| r);
    let new = format!("{repo}:{tag}");
    run(
        &format!("docker tag {image} {new}"),
        Command::new("docker").args(["tag", image, &new]),
    );
    new
}

/// Builds missing images by tests/images/build.sh TARGETS, for tests on the Docker host alone.
pub fn ensure_built_for_host(build_targets: &[&str]) {
    run(
        "tests/images/build.sh",
        Command::new("bash")
            .arg("tests/images/build.sh")
            .args(build_targets),
    );
}
