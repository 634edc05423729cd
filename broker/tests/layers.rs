//! The broker's modules form a DAG, with the server on top and the protocol at the bottom: this test
//! reads the `crate::` paths of every source file (tests left out) and fails on a cycle, so the layers
//! that docs/architecture.md draws stay true.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Top-level module -> the top-level modules its code names.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let modules: BTreeSet<String> = std::fs::read_dir(&src)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().trim_end_matches(".rs").to_string())
        .filter(|m| m != "lib" && m != "bin")
        .collect();
    let mut graph = BTreeMap::new();
    for module in &modules {
        let mut uses = BTreeSet::new();
        for file in files(&src, module) {
            let text = std::fs::read_to_string(&file).unwrap();
            // Test modules (at the end of a file) left out; a test-only item elsewhere is read too.
            let code = text.split("#[cfg(test)]\nmod ").next().unwrap_or_default();
            for (at, _) in code.match_indices("crate::") {
                let rest = &code[at + "crate::".len()..];
                let named: Vec<&str> = if let Some(group) = rest.strip_prefix('{') {
                    group[..group.find('}').unwrap_or(0)]
                        .split(',')
                        .map(|p| p.trim().split("::").next().unwrap_or(""))
                        .collect()
                } else {
                    vec![rest.split(|c: char| !(c.is_alphanumeric() || c == '_')).next().unwrap_or("")]
                };
                uses.extend(named.into_iter().filter(|n| modules.contains(*n) && n != module).map(str::to_string));
            }
        }
        graph.insert(module.clone(), uses);
    }
    graph
}

fn files(src: &Path, module: &str) -> Vec<std::path::PathBuf> {
    let file = src.join(format!("{module}.rs"));
    if file.exists() {
        return vec![file];
    }
    let mut found = Vec::new();
    let mut dirs = vec![src.join(module)];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(dir).unwrap().filter_map(|e| e.ok()) {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                found.push(path);
            }
        }
    }
    found
}

#[test]
fn the_modules_form_a_dag_from_the_server_down_to_the_protocol() {
    let graph = graph();
    assert!(graph.len() >= 10, "modules found: {graph:?}");
    assert!(graph["protocol"].is_empty(), "the protocol uses nothing else: {:?}", graph["protocol"]);
    for (module, uses) in &graph {
        assert!(!uses.contains("server"), "{module} reaches up to the server: {uses:?}");
        // A client connection is served by the server alone.
        assert!(module == "server" || !uses.contains("client"), "{module} reaches up to a client: {uses:?}");
    }
    // Kahn: peel off modules that use nothing left; whatever remains is in a cycle.
    let mut left = graph.clone();
    while let Some(leaf) = left.iter().find(|(_, uses)| uses.is_empty()).map(|(m, _)| m.clone()) {
        left.remove(&leaf);
        for uses in left.values_mut() {
            uses.remove(&leaf);
        }
    }
    assert!(left.is_empty(), "import cycle among {left:?}");
}
