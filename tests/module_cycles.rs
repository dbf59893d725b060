//! No import cycle between the files of operator/src.
//!
//! Reads every `.rs` file below operator/src (test modules left out: files named `tests.rs`,
//! folders named `tests` and everything from `#[cfg(test)] mod tests {`), takes each path that
//! starts with `crate::`, `super::` or `self::` (in `use` trees, braces expanded, and inline in
//! code), resolves it to
//! the longest module that is a file, and draws an edge from the file to that file. Edges
//! between a module and its own ancestors or descendants are left out: a parent re-exporting its
//! children and children using the parent's shared types (`super::Error`) is Rust's facade
//! pattern, not a cycle. Any strongly connected group of two or more files fails the test with
//! the lines that make it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The module path of a file below src: `a/b.rs` and `a/b/mod.rs` are `a::b`, `lib.rs` is ``.
fn module_of(rel: &str) -> Option<String> {
    let rel = rel.strip_suffix(".rs")?;
    if rel == "main" {
        return None;
    }
    let rel = rel.strip_suffix("/mod").unwrap_or(rel);
    let rel = if rel == "lib" { "" } else { rel };
    Some(rel.replace('/', "::"))
}

/// The code of a file without comments and without its test module.
fn code(text: &str) -> String {
    let mut out = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let t = line.trim();
        if t == "#[cfg(test)]" {
            let next = lines.peek().map(|l| l.trim()).unwrap_or("");
            if next.starts_with("mod ") && next.ends_with('{') {
                break;
            }
        }
        if !t.starts_with("//") {
            out.push_str(line);
        }
        out.push('\n');
    }
    out
}

/// The full paths of one `use` tree such as `super::{a::{self, B}, c}`.
fn expand(tree: &str) -> Vec<String> {
    let tree: String = tree.chars().filter(|c| !c.is_whitespace()).collect();
    let Some(open) = tree.find('{') else {
        let path = tree.split(" as ").next().unwrap_or("").to_string();
        return vec![path.trim_end_matches("::self").to_string()];
    };
    let prefix = &tree[..open];
    let inner = tree[open + 1..]
        .strip_suffix('}')
        .unwrap_or(&tree[open + 1..]);
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&inner[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&inner[start..]);
    parts
        .into_iter()
        .filter(|p| !p.is_empty())
        .flat_map(|p| {
            expand(p)
                .into_iter()
                .map(|s| {
                    if s == "self" {
                        prefix.trim_end_matches("::").to_string()
                    } else {
                        format!("{prefix}{s}")
                    }
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Every path a file names: `use` trees expanded, and `crate::`/`super::`/`self::` chains in
/// its code, each with the line it stands on.
fn paths(code: &str) -> Vec<(String, usize)> {
    let mut out = Vec::new();
    let mut stmt: Option<(String, usize)> = None;
    for (n, line) in code.lines().enumerate() {
        let t = line.trim_start();
        let t = t
            .strip_prefix("pub(crate) ")
            .or_else(|| t.strip_prefix("pub(super) "))
            .or_else(|| t.strip_prefix("pub "))
            .unwrap_or(t);
        if stmt.is_none() {
            if let Some(rest) = t.strip_prefix("use ") {
                stmt = Some((String::new(), n + 1));
                let s = stmt.as_mut().map(|(s, _)| s);
                if let Some(s) = s {
                    s.push_str(rest);
                }
            } else {
                out.extend(inline(line).into_iter().map(|p| (p, n + 1)));
                continue;
            }
        } else if let Some((s, _)) = stmt.as_mut() {
            s.push_str(line);
        }
        if let Some((s, at)) = stmt.take() {
            if let Some(end) = s.find(';') {
                out.extend(expand(&s[..end]).into_iter().map(|p| (p, at)));
            } else {
                stmt = Some((s, at));
            }
        }
    }
    out
}

/// `crate::a::b`, `super::super::c` and `self::d` chains in a line of code.
fn inline(line: &str) -> Vec<String> {
    let bytes = line.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < line.len() {
        let rest = &line[i..];
        let boundary = i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_');
        let starts = ["crate::", "super::", "self::"]
            .iter()
            .any(|p| rest.starts_with(p));
        if boundary && starts {
            let len = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
                .unwrap_or(rest.len());
            out.push(rest[..len].trim_end_matches(':').to_string());
            i += len.max(1);
        } else {
            i += rest.chars().next().map_or(1, char::len_utf8);
        }
    }
    out
}

/// The module file a path names, from the module `from`.
fn resolve(path: &str, from: &str, modules: &BTreeSet<String>) -> Option<String> {
    let mut base: Vec<&str> = if from.is_empty() {
        Vec::new()
    } else {
        from.split("::").collect()
    };
    let mut segs = path.split("::").peekable();
    match segs.peek().copied() {
        Some("crate") => {
            base.clear();
            segs.next();
        }
        Some("self") => {
            segs.next();
        }
        Some("super") => {
            while segs.peek() == Some(&"super") {
                segs.next();
                base.pop()?;
            }
        }
        _ => return None,
    }
    let mut best = base.join("::");
    let mut cur = base.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    for s in segs {
        cur.push(s.to_string());
        let m = cur.join("::");
        if modules.contains(&m) {
            best = m;
        } else {
            break;
        }
    }
    Some(best)
}

fn lineal(a: &str, b: &str) -> bool {
    let under = |x: &str, y: &str| y.is_empty() || x == y || x.starts_with(&format!("{y}::"));
    under(a, b) || under(b, a)
}

/// Groups of files that import each other, each with the imports that tie it.
fn cycles(files: &[(String, String)]) -> Vec<Vec<String>> {
    let modules: BTreeMap<String, &str> = files
        .iter()
        .filter(|(rel, _)| {
            !rel.split('/')
                .any(|seg| seg == "tests" || seg == "tests.rs")
        })
        .filter_map(|(rel, text)| Some((module_of(rel)?, text.as_str())))
        .collect();
    let names: BTreeSet<String> = modules.keys().cloned().collect();
    let mut edges: BTreeMap<&str, BTreeMap<&str, (String, usize)>> = BTreeMap::new();
    for (m, text) in &modules {
        for (p, line) in paths(&code(text)) {
            let Some(to) = resolve(&p, m, &names) else {
                continue;
            };
            if lineal(m, &to) {
                continue;
            }
            let to = names.get(&to).map(String::as_str).unwrap_or_default();
            edges
                .entry(m.as_str())
                .or_default()
                .entry(to)
                .or_insert((p, line));
        }
    }
    // Tarjan's strongly connected components.
    struct T<'a> {
        edges: &'a BTreeMap<&'a str, BTreeMap<&'a str, (String, usize)>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on: BTreeSet<&'a str>,
        out: Vec<Vec<&'a str>>,
    }
    fn visit<'a>(t: &mut T<'a>, v: &'a str) {
        let i = t.index.len();
        t.index.insert(v, i);
        t.low.insert(v, i);
        t.stack.push(v);
        t.on.insert(v);
        let next: Vec<&str> = t
            .edges
            .get(v)
            .map(|e| e.keys().copied().collect())
            .unwrap_or_default();
        for w in next {
            if !t.index.contains_key(w) {
                visit(t, w);
                let l = t.low[w].min(t.low[v]);
                t.low.insert(v, l);
            } else if t.on.contains(w) {
                let l = t.index[w].min(t.low[v]);
                t.low.insert(v, l);
            }
        }
        if t.low[v] == t.index[v] {
            let mut group = Vec::new();
            while let Some(w) = t.stack.pop() {
                t.on.remove(w);
                group.push(w);
                if w == v {
                    break;
                }
            }
            t.out.push(group);
        }
    }
    let mut t = T {
        edges: &edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        out: Vec::new(),
    };
    for m in modules.keys() {
        if !t.index.contains_key(m.as_str()) {
            visit(&mut t, m);
        }
    }
    t.out
        .into_iter()
        .filter(|g| g.len() > 1)
        .map(|g| {
            let set: BTreeSet<&str> = g.iter().copied().collect();
            let mut lines = Vec::new();
            for from in &set {
                for (to, (p, line)) in edges.get(from).into_iter().flatten() {
                    if set.contains(to) {
                        lines.push(format!("{from} -> {to} (line {line}: {p})"));
                    }
                }
            }
            lines
        })
        .collect()
}

fn read_tree(dir: &Path, root: &Path, out: &mut Vec<(String, String)>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            read_tree(&p, root, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            let rel = p.strip_prefix(root).unwrap_or(&p).to_string_lossy();
            let text = std::fs::read_to_string(&p).unwrap_or_default();
            out.push((rel.replace('\\', "/"), text));
        }
    }
}

#[test]
fn operator_src_has_no_import_cycle() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    read_tree(&root, &root, &mut files);
    assert!(
        files.len() > 50,
        "read only {} files from {root:?}",
        files.len()
    );
    let found = cycles(&files);
    assert!(
        found.is_empty(),
        "import cycles between files of operator/src (move what both sides need into a module both use):\n{}",
        found
            .iter()
            .map(|g| g.join("\n  "))
            .collect::<Vec<_>>()
            .join("\n\n")
    );
}

#[test]
fn the_check_finds_a_cycle_and_passes_a_facade() {
    let file = |p: &str, t: &str| (p.to_string(), t.to_string());
    let cyclic = [
        file("lib.rs", "pub mod plan;\n"),
        file("plan/mod.rs", "pub mod a;\npub mod b;\npub use a::X;\n"),
        file(
            "plan/a.rs",
            "use super::{b::{self, Y}, PlanError};\npub struct X;\n",
        ),
        file(
            "plan/b.rs",
            "pub struct Y;\nfn f() { let _ = crate::plan::a::X; }\n",
        ),
    ];
    let found = cycles(&cyclic);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].iter().any(|l| l.starts_with("plan::a -> plan::b")),
        "{found:?}"
    );
    assert!(
        found[0].iter().any(|l| l.starts_with("plan::b -> plan::a")),
        "{found:?}"
    );

    // The same files with b's use of a moved to a test module, and a parent/child pair: no cycle.
    let fine = [
        file("lib.rs", "pub mod plan;\n"),
        file(
            "plan/mod.rs",
            "pub mod a;\npub mod b;\npub use a::X;\npub struct PlanError;\n",
        ),
        file(
            "plan/a.rs",
            "use super::{b::{self, Y}, PlanError};\npub struct X;\n",
        ),
        file(
            "plan/b.rs",
            "pub struct Y;\n#[cfg(test)]\nmod tests {\n    use crate::plan::a::X;\n}\n",
        ),
        file("plan/tests.rs", "use super::a::X;\nuse super::b::Y;\n"),
    ];
    assert!(cycles(&fine).is_empty(), "{:?}", cycles(&fine));
}
