//! The source tree keeps the shape the README promises: no import cycle between files, no file
//! past 600 lines of non-test code, the wire and the scheduler free of what sits above them, and
//! the README's Layout section naming every file and folder under `src/*/`.
//!
//! These read the sources as text, as a reviewer would: a `use` (or a `crate::…` path in code)
//! is an edge from the file it is written in to the file that defines the module it names.
//! Comments and test modules are not code for this purpose.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file under `src/`, keyed by its module path (`["engine", "build"]`; a `mod.rs`
/// is its folder's module, `lib.rs` and `main.rs` the crate's).
fn modules() -> BTreeMap<Vec<String>, PathBuf> {
    let mut out = BTreeMap::new();
    let mut dirs = vec![src()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let rel = p.strip_prefix(src()).unwrap().with_extension("");
                let mut parts: Vec<String> = rel
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect();
                if matches!(
                    parts.last().map(String::as_str),
                    Some("mod" | "lib" | "main")
                ) {
                    parts.pop();
                }
                if p.file_name().is_some_and(|n| n == "main.rs") {
                    continue;
                }
                out.insert(parts, p);
            }
        }
    }
    out
}

/// The file's code: before its `#[cfg(test)]` module, without comment lines.
fn code(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    let end = text
        .find("\n#[cfg(test)]\nmod ")
        .or_else(|| text.find("\n#[cfg(test)]\npub(crate) mod "))
        .unwrap_or(text.len());
    text[..end]
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The module paths a file's code names: `crate::a::b`, `super::a`, `self::a`, and each item of
/// a `{…}` group after them.
fn named_paths(module: &[String], is_mod_file: bool, code: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let bytes = code.as_bytes();
    let word = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    let mut i = 0;
    while i < code.len() {
        if !code.is_char_boundary(i) {
            i += 1;
            continue;
        }
        let rest = &code[i..];
        let head = ["crate::", "super::", "self::"]
            .into_iter()
            .find(|h| rest.starts_with(h) && (i == 0 || !word(bytes[i - 1])));
        let Some(head) = head else {
            i += 1;
            continue;
        };
        // Where the path starts from.
        let here: Vec<String> = if is_mod_file {
            module.to_vec()
        } else {
            module[..module.len().saturating_sub(1)].to_vec()
        };
        let mut base: Vec<String> = match head {
            "crate::" => Vec::new(),
            "super::" => here[..here.len().saturating_sub(1)].to_vec(),
            _ => module.to_vec(),
        };
        let mut j = i + head.len();
        // Further `super::`s and plain segments.
        loop {
            let seg_end = code[j..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .map_or(code.len(), |k| j + k);
            let seg = &code[j..seg_end];
            if seg.is_empty() {
                break;
            }
            if seg == "super" {
                base.pop();
            } else {
                base.push(seg.to_string());
            }
            j = seg_end;
            if code[j..].starts_with("::") {
                j += 2;
            } else {
                break;
            }
        }
        if code[j..].starts_with('{') {
            let close = code[j..].find('}').map_or(code.len(), |k| j + k);
            for item in code[j + 1..close].split(',') {
                let first = item.trim().split("::").next().unwrap_or("").trim();
                let first = first.split_whitespace().next().unwrap_or("");
                if first == "self" || first.is_empty() {
                    out.push(base.clone());
                } else {
                    let mut p = base.clone();
                    p.push(first.to_string());
                    out.push(p);
                }
            }
            j = close;
        } else {
            out.push(base);
        }
        i = j.max(i + 1);
    }
    out
}

/// The file-level import graph: each module to the modules (files) it names.
fn graph() -> BTreeMap<Vec<String>, BTreeSet<Vec<String>>> {
    let mods = modules();
    let resolve = |path: &[String]| -> Option<Vec<String>> {
        (0..=path.len())
            .rev()
            .map(|n| path[..n].to_vec())
            .find(|p| mods.contains_key(p))
    };
    mods.iter()
        .map(|(m, p)| {
            let is_mod_file = matches!(
                p.file_name().and_then(|n| n.to_str()),
                Some("mod.rs" | "lib.rs")
            );
            let to = named_paths(m, is_mod_file, &code(p))
                .iter()
                .filter_map(|t| resolve(t))
                .filter(|t| t != m)
                .collect();
            (m.clone(), to)
        })
        .collect()
}

fn name(m: &[String]) -> String {
    if m.is_empty() {
        "lib".into()
    } else {
        m.join("/")
    }
}

#[test]
fn no_import_cycle_between_source_files() {
    let g = graph();
    // A cycle exists iff some edge a → b has a path back b →* a.
    let reaches = |from: &Vec<String>, to: &Vec<String>| -> bool {
        let mut seen = BTreeSet::new();
        let mut stack = vec![from.clone()];
        while let Some(m) = stack.pop() {
            if &m == to {
                return true;
            }
            if seen.insert(m.clone()) {
                stack.extend(g.get(&m).into_iter().flatten().cloned());
            }
        }
        false
    };
    let mut cycles = Vec::new();
    for (a, tos) in &g {
        for b in tos {
            if reaches(b, a) {
                cycles.push(format!("{} -> {}", name(a), name(b)));
            }
        }
    }
    assert!(
        cycles.is_empty(),
        "edges on an import cycle:\n{}",
        cycles.join("\n")
    );
}

#[test]
fn the_graph_sees_imports() {
    // The checks above are only as good as the parser: the engine must be seen to import the
    // model's registry, and the client the wire's frames.
    let g = graph();
    let edge = |a: &str, b: &str| {
        let a: Vec<String> = a.split('/').map(String::from).collect();
        let b: Vec<String> = b.split('/').map(String::from).collect();
        g[&a].contains(&b)
    };
    assert!(edge("engine/build", "model/families"));
    assert!(edge("client", "wire/frame"));
    assert!(edge("model/layers/linear", "model/kernels/gemm"));
}

#[test]
fn no_source_file_has_over_600_lines_of_code() {
    let long: Vec<String> = modules()
        .values()
        .filter_map(|p| {
            let text = std::fs::read_to_string(p).unwrap();
            let end = text.find("\n#[cfg(test)]\nmod tests").unwrap_or(text.len());
            let lines = text[..end].lines().count();
            (lines > 600).then(|| format!("{}: {lines}", p.display()))
        })
        .collect();
    assert!(
        long.is_empty(),
        "over 600 lines before their tests: {long:?}"
    );
}

#[test]
fn wire_and_sched_import_nothing_above_them() {
    let mut found = Vec::new();
    for (m, p) in modules() {
        let banned: &[&str] = match m.first().map(String::as_str) {
            Some("wire") => &["crate::engine", "crate::settings", "crate::service"],
            Some("sched") => &["crate::settings", "crate::service", "crate::serve"],
            Some("client") => &["crate::engine", "crate::settings", "crate::service"],
            _ => continue,
        };
        let code = code(&p);
        for b in banned {
            if code.contains(b) {
                found.push(format!("{} names {b}", p.display()));
            }
        }
    }
    assert!(found.is_empty(), "{found:?}");
}

#[test]
fn readme_layout_names_every_file_under_src() {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let start = readme.find("## Layout").expect("a Layout section");
    let section = &readme[start..];
    let section = &section[..section[3..].find("\n## ").map_or(section.len(), |e| e + 3)];
    let mut missing = Vec::new();
    for e in std::fs::read_dir(src()).unwrap() {
        let dir = e.unwrap().path();
        if !dir.is_dir() {
            continue;
        }
        let folder = dir.file_name().unwrap().to_string_lossy().into_owned();
        let row = section
            .lines()
            .find(|l| l.starts_with('|') && l.contains(&format!("`src/{folder}/`")))
            .unwrap_or_else(|| panic!("no Layout row for src/{folder}/"));
        for f in std::fs::read_dir(&dir).unwrap() {
            let p = f.unwrap().path();
            let n = p.file_name().unwrap().to_string_lossy().into_owned();
            if n == "mod.rs" {
                continue;
            }
            let shown = if p.is_dir() {
                format!("`{n}/`")
            } else {
                format!("`{n}`")
            };
            if !row.contains(&shown) {
                missing.push(format!("src/{folder}/{n}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "the README's Layout section does not name {missing:?}"
    );
}
