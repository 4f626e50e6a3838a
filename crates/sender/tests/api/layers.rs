//! The sender's three layers keep their one rule: `http → store, workers::Wake`; `workers → store`;
//! `store → accrual_core`. Read from the sources: every path into the crate that a file of a layer
//! names (`crate::…`, or `super::…` climbing out of its layer), in `use` lines or inline, outside
//! comments. The top of the crate (`startup`, `settings`, `metrics`) wires the layers and may name
//! any of them; `metrics` is shared by all.

use std::path::{Path, PathBuf};

/// The crate's sources.
const SRC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/src");

/// A module a layer may not name, with the one path of it let through, if any.
type Forbidden = (&'static str, Option<&'static str>);

/// The layers, each with the paths (below the crate root) it may not name; `Some(allowed)` lets
/// one path of a forbidden module through.
const RULES: &[(&str, &[Forbidden])] = &[
    ("http", &[("workers", Some("workers::Wake"))]),
    ("workers", &[("http", None)]),
    ("store", &[("http", None), ("workers", None)]),
];

#[test]
fn each_layer_names_only_the_layers_below_it() {
    let mut problems = Vec::new();
    let mut files = 0;
    for (layer, forbidden) in RULES {
        for file in rust_files(&Path::new(SRC).join(layer)) {
            files += 1;
            let module = module_of(&file);
            let text = std::fs::read_to_string(&file).unwrap();
            for path in crate_paths(&strip_comments(&text), &module) {
                for (below, allowed) in *forbidden {
                    let named = path == *below || path.starts_with(&format!("{below}::"));
                    let let_through =
                        allowed.is_some_and(|a| path == a || path.starts_with(&format!("{a}::")));
                    if named && !let_through {
                        let shown = file.strip_prefix(SRC).unwrap().display();
                        problems.push(format!("{shown} ({layer}) names crate::{path}"));
                    }
                }
            }
        }
    }
    assert!(files > 30, "only {files} files read under {SRC}");
    assert!(
        problems.is_empty(),
        "the layer rule is broken:\n{}",
        problems.join("\n")
    );
}

#[test]
fn the_reader_sees_grouped_inline_and_super_paths() {
    let module = ["store".to_owned(), "jobs".to_owned()];
    let text = "use crate::{metrics::M, workers::{Wake, dispatch::X}};\n\
                fn f() -> crate::http::state::AppState { todo!() }\n\
                use super::super::http::error;\n\
                use super::members;";
    let paths = crate_paths(&strip_comments(text), &module);
    assert_eq!(
        paths,
        [
            "metrics::M",
            "workers::Wake",
            "workers::dispatch::X",
            "http::state::AppState",
            "http::error",
            "store::members",
        ]
    );
    assert!(
        crate_paths(
            &strip_comments("// crate::http\n/// [`crate::workers`]\n"),
            &module
        )
        .is_empty()
    );
}

/// Every `.rs` file under `dir`, and the file that declares `dir` as a module, if there is one.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let beside = dir.with_extension("rs");
    if beside.is_file() {
        found.push(beside);
    }
    let mut stack = vec![dir.to_path_buf()];
    while let Some(at) = stack.pop() {
        for entry in std::fs::read_dir(&at).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                found.push(path);
            }
        }
    }
    found.sort();
    found
}

/// The module a file is: `src/http/accruals/body.rs` is `http::accruals::body`, `src/http/mod.rs`
/// is `http`.
fn module_of(file: &Path) -> Vec<String> {
    let relative = file.strip_prefix(SRC).unwrap().with_extension("");
    let mut parts: Vec<String> = relative
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    parts
}

/// The text with `//` comments (and so doc comments) removed; string literals are kept, and a
/// `//` inside one (a URL) ends nothing.
fn strip_comments(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let mut in_string = false;
        let mut previous = ' ';
        let mut kept = String::new();
        let mut chars = line.chars().peekable();
        while let Some(c) = chars.next() {
            if c == '"' && previous != '\\' {
                in_string = !in_string;
            }
            if !in_string && c == '/' && chars.peek() == Some(&'/') {
                break;
            }
            kept.push(c);
            previous = c;
        }
        out.push_str(&kept);
        out.push('\n');
    }
    out
}

/// Every path into the crate the text names, below the crate root (`crate::a::{b, c::d}` is
/// `a::b` and `a::c::d`; `super::` is resolved from `module`, ignoring inline modules).
fn crate_paths(text: &str, module: &[String]) -> Vec<String> {
    let tokens = tokenize(text);
    let mut paths = Vec::new();
    let mut i = 0;
    while i < tokens.len() {
        let start = i;
        let mut prefix: Vec<String> = Vec::new();
        if tokens[i] == "crate" {
            i += 1;
        } else if tokens[i] == "super" && (i == 0 || tokens[i - 1] != "::") {
            let mut depth = module.len();
            while i < tokens.len() && tokens[i] == "super" {
                depth = depth.saturating_sub(1);
                i += 1;
                if tokens.get(i).is_some_and(|t| t == "::")
                    && tokens.get(i + 1).is_some_and(|t| t == "super")
                {
                    i += 1;
                }
            }
            prefix = module[..depth].to_vec();
        } else {
            i += 1;
            continue;
        }
        if tokens.get(i).is_some_and(|t| t == "::") {
            i += 1;
            i = read_tree(&tokens, i, prefix, &mut paths);
        } else {
            i = start + 1;
        }
    }
    paths
}

/// Reads one use-tree at `tokens[i]` (a path, maybe ending in a `{…}` group or `*`) under
/// `prefix`, pushing each full path; returns where it ended.
fn read_tree(
    tokens: &[String],
    mut i: usize,
    mut prefix: Vec<String>,
    paths: &mut Vec<String>,
) -> usize {
    loop {
        match tokens.get(i).map(String::as_str) {
            Some("{") => {
                i += 1;
                loop {
                    match tokens.get(i).map(String::as_str) {
                        Some("}") => return i + 1,
                        Some(",") => i += 1,
                        None => return i,
                        _ => i = read_tree(tokens, i, prefix.clone(), paths),
                    }
                }
            }
            Some(t) if t == "*" || is_ident(t) => {
                prefix.push(t.to_owned());
                i += 1;
                if tokens.get(i).is_some_and(|t| t == "::") {
                    i += 1;
                    continue;
                }
                // `self` in a group names the group's own path.
                if prefix.last().is_some_and(|p| p == "self") {
                    prefix.pop();
                }
                if !prefix.is_empty() {
                    paths.push(prefix.join("::"));
                }
                // Skip an `as name` rename.
                if tokens.get(i).is_some_and(|t| t == "as") {
                    i += 2;
                }
                return i;
            }
            _ => {
                if !prefix.is_empty() {
                    paths.push(prefix.join("::"));
                }
                return i;
            }
        }
    }
}

fn is_ident(token: &str) -> bool {
    token
        .chars()
        .next()
        .is_some_and(|c| c.is_alphabetic() || c == '_')
}

/// Identifiers, `::` and single punctuation characters; whitespace dropped.
fn tokenize(text: &str) -> Vec<String> {
    let mut tokens = Vec::new();
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_alphanumeric() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            tokens.push(chars[start..i].iter().collect());
        } else if c == ':' && chars.get(i + 1) == Some(&':') {
            tokens.push("::".to_owned());
            i += 2;
        } else {
            if !c.is_whitespace() {
                tokens.push(c.to_string());
            }
            i += 1;
        }
    }
    tokens
}
