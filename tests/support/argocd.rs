//! The Argo CD health checks of charts/berth/files/argocd/health.yaml run by a real Lua
//! interpreter (Debian's lua5.4), for tests/argocd_health.rs (recorded objects) and the
//! real-cluster e2e (live objects).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

pub fn checks() -> BTreeMap<String, String> {
    let text =
        std::fs::read_to_string(repo().join("charts/berth/files/argocd/health.yaml")).unwrap();
    serde_norway::from_str(&text).unwrap()
}

/// A JSON value as a Lua table constructor (null fields are left out, as gopher-lua sees them).
pub fn lua(v: &Value) -> String {
    match v {
        Value::Null => "nil".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => {
            let mut out = String::from("\"");
            for ch in s.chars() {
                match ch {
                    '\\' => out.push_str("\\\\"),
                    '"' => out.push_str("\\\""),
                    '\n' => out.push_str("\\n"),
                    c => out.push(c),
                }
            }
            out.push('"');
            out
        }
        Value::Array(a) => format!("{{{}}}", a.iter().map(lua).collect::<Vec<_>>().join(", ")),
        Value::Object(o) => format!(
            "{{{}}}",
            o.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| format!("[{}] = {}", lua(&Value::String(k.clone())), lua(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Runs the health script of `obj`'s kind with lua5.4; returns (status, message).
pub fn health(obj: &Value) -> (String, String) {
    let key = format!(
        "resource.customizations.health.berth.dev_{}",
        obj["kind"].as_str().unwrap()
    );
    let script = checks()
        .get(&key)
        .cloned()
        .unwrap_or_else(|| panic!("no {key}"));
    let program = format!(
        "obj = {}\nlocal function check()\n{}\nend\nlocal hs = check()\nio.write(hs.status, \"\\n\", hs.message or \"\")\n",
        lua(obj),
        script
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("health.lua");
    std::fs::write(&file, program).unwrap();
    let bin = std::env::var("LUA").unwrap_or_else(|_| "lua5.4".into());
    let out = Command::new(&bin)
        .arg(&file)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {bin} (apt-get install lua5.4): {e}"));
    assert!(
        out.status.success(),
        "lua: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (status, message) = text.split_once('\n').unwrap_or((&text, ""));
    (status.to_string(), message.to_string())
}
