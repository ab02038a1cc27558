//! The layering of `src/`: every top-level module uses only the modules
//! below it in ARCHITECTURE.md's list of layers, and no modules inside one
//! module use each other in a circle. Read from the source's `crate::`,
//! `super::` and `self::` paths; a failure names the file and line.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The layers as ARCHITECTURE.md lists them, bottom first: the lines of the
/// fenced block after the "## Layers" heading, `N. module — what`.
fn layers() -> Vec<String> {
    let text = std::fs::read_to_string("ARCHITECTURE.md").expect("ARCHITECTURE.md");
    let section = text
        .split("\n## Layers")
        .nth(1)
        .expect("ARCHITECTURE.md has a `## Layers` section");
    let block = section
        .split("```")
        .nth(1)
        .expect("the Layers section lists the layers in a fenced block");
    block
        .lines()
        .filter_map(|line| {
            let (number, rest) = line.trim().split_once(". ")?;
            number.parse::<u32>().ok()?;
            rest.split_whitespace().next().map(str::to_owned)
        })
        .collect()
}

/// Every `.rs` file under `dir`.
fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("readable source directory") {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code of a line, without its comment (`//` outside a string).
fn code(line: &str) -> &str {
    let mut in_string = false;
    let bytes = line.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' if in_string => i += 1,
            b'"' => in_string = !in_string,
            b'/' if !in_string && bytes.get(i + 1) == Some(&b'/') => return &line[..i],
            _ => {}
        }
        i += 1;
    }
    line
}

/// The first name of each path after `prefix` on a line: `crate::sink::x`
/// gives `sink`, `crate::{api, data_dir}` gives `api` and `data_dir`.
fn names_after(line: &str, prefix: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = line;
    while let Some(at) = rest.find(prefix) {
        let before = rest[..at].chars().next_back();
        rest = &rest[at + prefix.len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
            continue; // `foo_crate::`, `a::crate::`
        }
        let ident = |s: &str| -> String {
            s.chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect()
        };
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 0;
            let mut start = true;
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => start = true,
                    c if c.is_whitespace() => {}
                    _ if start => {
                        names.push(ident(&group[i..]));
                        start = false;
                    }
                    _ => {}
                }
            }
        } else {
            names.push(ident(rest));
        }
    }
    names.retain(|n| !n.is_empty() && n != "self");
    names
}

/// `src/pipeline/shard.rs` → ("pipeline", Some("shard")); `src/lsn.rs` →
/// ("lsn", None); `src/pipeline/mod.rs` → ("pipeline", None).
fn module_of(path: &Path) -> (String, Option<String>) {
    let parts: Vec<String> = path
        .strip_prefix("src")
        .expect("under src")
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_owned())
        .collect();
    let sub = parts.get(1).filter(|s| *s != "mod").cloned();
    (parts[0].clone(), sub)
}

#[test]
fn every_module_uses_only_the_layers_below_it() {
    let layers = layers();
    assert!(
        layers.len() > 5,
        "ARCHITECTURE.md lists the layers: {layers:?}"
    );
    let rank: BTreeMap<&str, usize> = layers
        .iter()
        .enumerate()
        .map(|(i, m)| (m.as_str(), i))
        .collect();
    let mut files = Vec::new();
    sources(Path::new("src"), &mut files);
    files.sort();
    let mut found = Vec::new();
    for file in &files {
        let (module, _) = module_of(file);
        if module == "lib" || module == "main" {
            continue;
        }
        let Some(&own) = rank.get(module.as_str()) else {
            found.push(format!(
                "{}: module `{module}` is not in ARCHITECTURE.md's layers",
                file.display()
            ));
            continue;
        };
        let text = std::fs::read_to_string(file).expect("readable source");
        for (n, line) in text.lines().enumerate() {
            for used in names_after(code(line), "crate::") {
                match rank.get(used.as_str()) {
                    Some(&other) if other > own => found.push(format!(
                        "{}:{}: `{module}` uses `{used}`, which is above it: {}",
                        file.display(),
                        n + 1,
                        line.trim()
                    )),
                    _ => {}
                }
            }
        }
    }
    assert!(
        found.is_empty(),
        "a module uses only the modules below it in ARCHITECTURE.md's layers:\n{}",
        found.join("\n")
    );
}

#[test]
fn no_modules_inside_one_module_use_each_other_in_a_circle() {
    let mut files = Vec::new();
    sources(Path::new("src"), &mut files);
    files.sort();
    // Per top-level module: its submodules, and who uses whom (with where).
    let mut subs: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in &files {
        if let (module, Some(sub)) = module_of(file) {
            subs.entry(module).or_default().insert(sub);
        }
    }
    let mut edges: BTreeMap<(String, String), BTreeMap<String, String>> = BTreeMap::new();
    for file in &files {
        let (module, Some(sub)) = module_of(file) else {
            continue;
        };
        let siblings = &subs[&module];
        // A file inside a submodule's folder (`sink/http/client.rs`) reaches
        // its own submodule's parts with `super::`; only a submodule's own
        // file reaches siblings that way.
        let own_file = file.parent().and_then(Path::file_name) == Some(module.as_ref());
        let text = std::fs::read_to_string(file).expect("readable source");
        for (n, line) in text.lines().enumerate() {
            let line = code(line);
            let mut used = names_after(line, &format!("crate::{module}::"));
            if own_file {
                used.extend(names_after(line, "super::"));
            }
            for other in used {
                if other != sub && siblings.contains(&other) {
                    edges
                        .entry((module.clone(), sub.clone()))
                        .or_default()
                        .entry(other)
                        .or_insert_with(|| format!("{}:{}", file.display(), n + 1));
                }
            }
        }
    }
    let mut circles = Vec::new();
    for (module, members) in &subs {
        // Depth-first search for a path back to where it started.
        for start in members {
            let mut stack = vec![(start.clone(), vec![start.clone()])];
            let mut seen = BTreeSet::new();
            while let Some((at, path)) = stack.pop() {
                let Some(next) = edges.get(&(module.clone(), at.clone())) else {
                    continue;
                };
                for (to, place) in next {
                    if to == start {
                        let mut shown: Vec<String> =
                            path.iter().map(|m| format!("{module}/{m}")).collect();
                        shown.push(format!("{module}/{start} (last use at {place})"));
                        circles.push(shown.join(" -> "));
                    } else if seen.insert(to.clone()) {
                        let mut longer = path.clone();
                        longer.push(to.clone());
                        stack.push((to.clone(), longer));
                    }
                }
            }
        }
    }
    circles.sort();
    circles.dedup();
    assert!(
        circles.is_empty(),
        "modules inside one module use each other in a circle:\n{}",
        circles.join("\n")
    );
}

#[test]
fn paths_are_read_as_the_compiler_reads_them() {
    assert_eq!(
        names_after("use crate::{api, data_dir::Lock};", "crate::"),
        ["api", "data_dir"]
    );
    assert_eq!(
        names_after("x(crate::sink::build(a), crate::lsn::Lsn)", "crate::"),
        ["sink", "lsn"]
    );
    assert!(names_after("use foo_crate::x;", "crate::").is_empty());
    assert_eq!(code(r#"let s = "a // b"; // c"#), r#"let s = "a // b"; "#);
    assert_eq!(
        module_of(Path::new("src/pipeline/shard.rs")),
        ("pipeline".to_owned(), Some("shard".to_owned()))
    );
    assert_eq!(
        module_of(Path::new("src/pipeline/mod.rs")),
        ("pipeline".to_owned(), None)
    );
}
