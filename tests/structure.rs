//! The crate's layering, checked rather than reviewed: no two top-level modules of
//! `src/` reach each other through `crate::` paths (config is data, alerts are events,
//! stages use only the stages after them), and `src/lib.rs`'s layout names every one.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

fn modules(src: &Path) -> BTreeSet<String> {
    std::fs::read_dir(src)
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            let m = name.strip_suffix(".rs").unwrap_or(&name).to_string();
            (m != "lib" && m != "main").then_some(m)
        })
        .collect()
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let path = e.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|x| x == "rs") {
            out.push(path);
        }
    }
}

/// Which top-level module imports which, from every `crate::NAME` in its files.
fn edges(src: &Path, mods: &BTreeSet<String>) -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for path in files {
        let rel = path.strip_prefix(src).unwrap();
        let first = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_str()
            .unwrap();
        let me = first.strip_suffix(".rs").unwrap_or(first).to_string();
        let text = std::fs::read_to_string(&path).unwrap();
        for (at, _) in text.match_indices("crate::") {
            let name: String = text[at + 7..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect();
            if mods.contains(&name) && name != me {
                edges.entry(me.clone()).or_default().insert(name);
            }
        }
    }
    edges
}

fn reaches(edges: &BTreeMap<String, BTreeSet<String>>, from: &str, to: &str) -> bool {
    let mut seen = BTreeSet::new();
    let mut todo = vec![from.to_string()];
    while let Some(m) = todo.pop() {
        for n in edges.get(&m).into_iter().flatten() {
            if n == to {
                return true;
            }
            if seen.insert(n.clone()) {
                todo.push(n.clone());
            }
        }
    }
    false
}

#[test]
fn no_two_top_level_modules_import_each_other() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mods = modules(&src);
    let edges = edges(&src, &mods);
    let knot: Vec<&String> = mods.iter().filter(|m| reaches(&edges, m, m)).collect();
    assert!(
        knot.is_empty(),
        "modules in an import cycle: {knot:?}\n{:#?}",
        edges
            .iter()
            .filter(|(m, _)| knot.contains(m))
            .collect::<Vec<_>>()
    );
}

#[test]
fn the_crate_layout_names_every_module() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let lib = std::fs::read_to_string(src.join("lib.rs")).unwrap();
    let layout = &lib[..lib.find("#![").unwrap_or(lib.len())];
    for m in modules(&src) {
        assert!(
            layout.contains(&format!("[`{m}`]")),
            "src/lib.rs's layout does not name `{m}`"
        );
    }
}
