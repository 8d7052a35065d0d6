//! The crate's layout, held to its rule: each top-level module is one step
//! of an event's path, and imports only the steps before it; no module
//! imports through `lib.rs`; and the files of a folder do not import each
//! other in a circle. Read from the sources, so the rule stays true for the
//! next change (see the README, "Layout").

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The layers, first to last: a module may import the modules of earlier
/// layers only. `lib.rs` only re-exports, and `src/bin/` is the command.
const LAYERS: &[&[&str]] = &[
    // The base: used everywhere, using nothing of the crate.
    &["util", "event", "files", "must_finish", "trace", "trust"],
    // Settings, parsed and checked once.
    &["config"],
    // What the console shows (finished records only); the engine's own
    // alerts, summarised; the WebAssembly side; one delivery (record,
    // policy, attempt, breaker).
    &["activity", "alerts", "sandbox", "delivery"],
    // Where deliveries wait.
    &["queue"],
    // Counters of the layers below; which entry points a gate covers; the
    // archive of accepted events.
    &["metrics", "coverage", "archive"],
    // The loaded hooks; the scheduler that sends what is queued.
    &["hooks", "outbox"],
    // Running hooks on an event, and its verdict.
    &["run"],
    // The one place an event enters.
    &["ingest"],
    // Events the engine fetches itself (XO's event stream).
    &["sources"],
    // The public API's umbrella error.
    &["error"],
    // The engine: builds all of the above; a dry run: one hook, one event.
    &["engine", "dry_run"],
    // A simulation: one hook, dry run over the archived events.
    &["simulate"],
    // The HTTP API.
    &["server"],
];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The Rust files under `dir`, recursively.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out.sort();
    out
}

/// The code of a file without its comments, string and char literals, and
/// without its `#[cfg(test)]` modules (tests may reach anywhere).
fn code(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    let text = match text.find("#[cfg(test)]\nmod tests {") {
        Some(at) => &text[..at],
        None => &text,
    };
    let b = text.as_bytes();
    let mut out = String::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'/' if b.get(i + 1) == Some(&b'/') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                i += 2;
                while i + 1 < b.len() && !(b[i] == b'*' && b[i + 1] == b'/') {
                    i += 1;
                }
                i += 2;
            }
            b'r' if b.get(i + 1) == Some(&b'#') || (b.get(i + 1) == Some(&b'"')) => {
                // A raw string: r"…", r#"…"#, …
                let mut j = i + 1;
                let mut hashes = 0;
                while b.get(j) == Some(&b'#') {
                    hashes += 1;
                    j += 1;
                }
                if b.get(j) != Some(&b'"') || (i > 0 && is_ident(b[i - 1])) {
                    out.push('r');
                    i += 1;
                    continue;
                }
                j += 1;
                let close: Vec<u8> = std::iter::once(b'"')
                    .chain(std::iter::repeat_n(b'#', hashes))
                    .collect();
                while j < b.len() && !b[j..].starts_with(&close) {
                    j += 1;
                }
                i = j + close.len();
                out.push_str("\"\"");
            }
            b'"' => {
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
                out.push_str("\"\"");
            }
            // A char literal, not a lifetime: 'x', '\n', '\''.
            b'\'' if b.get(i + 2) == Some(&b'\'') || b.get(i + 1) == Some(&b'\\') => {
                i += 1;
                while i < b.len() && b[i] != b'\'' {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
            }
            c => {
                out.push(c as char);
                i += 1;
            }
        }
    }
    out
}

fn is_ident(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

/// The identifier `s` starts with (empty if none).
fn ident(s: &str) -> &str {
    let end = s.bytes().position(|c| !is_ident(c)).unwrap_or(s.len());
    &s[..end]
}

/// The first identifier of every path that starts with `prefix` (`crate::`
/// or `super::`), also inside `prefix{a, b::c}` groups.
fn heads(code: &str, prefix: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = code;
    while let Some(at) = rest.find(prefix) {
        let before = rest[..at].bytes().last();
        rest = &rest[at + prefix.len()..];
        if before.is_some_and(|c| is_ident(c) || c == b':') {
            continue; // `foo::crate::` never happens; `super::super::` is handled by the caller
        }
        if let Some(group) = rest.strip_prefix('{') {
            let end = matching_brace(group);
            let items = split_top(&group[..end]);
            out.extend(items.iter().map(|item| ident(item.trim()).to_owned()));
        } else {
            out.insert(ident(rest).to_owned());
        }
    }
    out.remove("");
    out
}

/// Where the group that `s` starts inside ends (the index of its `}`).
fn matching_brace(s: &str) -> usize {
    let mut depth = 0;
    for (i, c) in s.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => return i,
            '}' => depth -= 1,
            _ => {}
        }
    }
    s.len()
}

/// `a, b::{c, d}, e` split at its top-level commas.
fn split_top(s: &str) -> Vec<&str> {
    let (mut out, mut depth, mut start) = (Vec::new(), 0, 0);
    for (i, c) in s.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

/// The top-level module a file of `src/` belongs to (`None`: `lib.rs`, or
/// the command under `src/bin/`).
fn top_module(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).unwrap();
    let first = rel.components().next()?.as_os_str().to_str()?.to_owned();
    match first.as_str() {
        "lib.rs" | "bin" => None,
        _ => Some(first.trim_end_matches(".rs").to_owned()),
    }
}

#[test]
fn each_module_imports_only_the_layers_before_it_and_nothing_through_lib_rs() {
    let src = src();
    let layer_of: BTreeMap<&str, usize> = LAYERS
        .iter()
        .enumerate()
        .flat_map(|(n, modules)| modules.iter().map(move |m| (*m, n)))
        .collect();
    let mut wrong = Vec::new();
    for file in rust_files(&src) {
        let Some(module) = top_module(&src, &file) else {
            continue;
        };
        let Some(&layer) = layer_of.get(module.as_str()) else {
            wrong.push(format!(
                "{}: module `{module}` is in no layer; add it to LAYERS",
                file.display()
            ));
            continue;
        };
        for head in heads(&code(&file), "crate::") {
            if head == module {
                continue;
            }
            match layer_of.get(head.as_str()) {
                None => wrong.push(format!(
                    "{}: `crate::{head}` is not a module: it imports through lib.rs; \
                     import it from its module",
                    file.display()
                )),
                Some(&used) if used >= layer => wrong.push(format!(
                    "{}: `{module}` (layer {layer}) imports `{head}` (layer {used}): \
                     a module imports only the layers before it",
                    file.display()
                )),
                Some(_) => {}
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// The module folders of `src/` (with a `mod.rs`), nested ones too.
fn folders(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.join("mod.rs").is_file() {
            out.push(path.clone());
            out.extend(folders(&path));
        }
    }
    out.sort();
    out
}

/// The names a file defines at its top level (`fn`, `struct`, …, and what
/// it re-exports with `use`).
fn defined(code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in code.lines() {
        let line = line.trim_start();
        let Some(rest) = ["pub(crate) ", "pub(super) ", "pub "]
            .iter()
            .find_map(|p| line.strip_prefix(p))
        else {
            continue;
        };
        let rest = rest
            .trim_start_matches("async ")
            .trim_start_matches("unsafe ");
        for kind in [
            "fn ", "struct ", "enum ", "trait ", "type ", "const ", "static ", "mod ",
        ] {
            if let Some(name) = rest.strip_prefix(kind) {
                out.insert(ident(name).to_owned());
            }
        }
        if let Some(used) = rest.strip_prefix("use ") {
            let last = used.trim_end_matches(';');
            for item in split_top(
                last.rsplit_once("::{")
                    .map_or(last, |(_, g)| g.trim_end_matches('}')),
            ) {
                let item = item.trim();
                let name = item.rsplit(" as ").next().unwrap_or(item);
                let name = name.rsplit("::").next().unwrap_or(name);
                out.insert(name.trim().to_owned());
            }
        }
    }
    out
}

#[test]
fn the_files_of_a_folder_import_each_other_without_circles() {
    let mut circles = Vec::new();
    for folder in folders(&src()) {
        // Each file of the folder (its sub-folders as one file each), but
        // not mod.rs: the folder's face, which every file may use.
        let mut files: BTreeMap<String, PathBuf> = BTreeMap::new();
        for entry in std::fs::read_dir(&folder).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_stem().unwrap().to_str().unwrap().to_owned();
            if name == "mod" || name == "tests" {
                continue;
            }
            if path.join("mod.rs").is_file() {
                files.insert(name, path.join("mod.rs"));
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.insert(name, path);
            }
        }
        // Which file defines each name used through `super::`.
        let mut owner: BTreeMap<String, String> = BTreeMap::new();
        for (name, path) in &files {
            for item in defined(&code(path)) {
                owner.entry(item).or_insert_with(|| name.clone());
            }
            owner.insert(name.clone(), name.clone());
        }
        let folder_path = folder
            .strip_prefix(src())
            .unwrap()
            .to_str()
            .unwrap()
            .replace('/', "::");
        let mut edges: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
        for (name, path) in &files {
            let code = code(path);
            let mut used = heads(&code, "super::");
            used.extend(heads(&code, &format!("crate::{folder_path}::")));
            let targets = used
                .into_iter()
                .filter_map(|u| owner.get(&u).cloned())
                .filter(|t| t != name)
                .collect();
            edges.insert(name, targets);
        }
        if let Some(circle) = find_circle(&edges) {
            circles.push(format!("{}: {}", folder.display(), circle.join(" -> ")));
        }
    }
    assert!(
        circles.is_empty(),
        "files that import each other in a circle:\n{}",
        circles.join("\n")
    );
}

/// A circle in `edges`, if there is one, as the files it goes through.
fn find_circle(edges: &BTreeMap<&str, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        edges: &BTreeMap<&str, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|p| p == node) {
            let mut circle = path[at..].to_vec();
            circle.push(node.to_owned());
            return Some(circle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_owned());
        for next in edges.get(node).into_iter().flatten() {
            if let Some(circle) = visit(next, edges, path, done) {
                return Some(circle);
            }
        }
        path.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    edges
        .keys()
        .find_map(|start| visit(start, edges, &mut Vec::new(), &mut done))
}

#[test]
fn the_layering_check_sees_a_back_import_and_an_import_through_lib_rs() {
    // The checks above pass only if they can fail: the parser must see
    // these.
    let code = "use crate::engine::Engine;\nuse crate::{Config, queue::Queue};\n\
                // use crate::server;\nlet s = \"crate::metrics\";";
    let code = {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("x.rs");
        std::fs::write(&file, code).unwrap();
        self::code(&file)
    };
    let got: Vec<String> = heads(&code, "crate::").into_iter().collect();
    assert_eq!(got, ["Config", "engine", "queue"]);
    let mut edges = BTreeMap::new();
    edges.insert("a", BTreeSet::from(["b".to_owned()]));
    edges.insert("b", BTreeSet::from(["a".to_owned()]));
    assert_eq!(find_circle(&edges).unwrap(), ["a", "b", "a"]);
}
