//! Embeds every file under `json/` into the crate (`json::FILES`), so a new
//! schema is served and checked without a line of code naming it.

use std::path::{Path, PathBuf};

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("json");
    println!("cargo:rerun-if-changed=json");
    let mut files = Vec::new();
    walk(&root, &mut files);
    files.sort();
    let mut out = String::from("/// Every schema file, by its path under `schemas/json/` (served at\n/// `/schemas/<path>`).\npub const FILES: &[(&str, &str)] = &[\n");
    for path in files {
        let relative = path
            .strip_prefix(&root)
            .expect("under json/")
            .to_str()
            .expect("schema paths are UTF-8")
            .replace('\\', "/");
        out.push_str(&format!(
            "    ({relative:?}, include_str!({:?})),\n",
            path.display().to_string()
        ));
    }
    out.push_str("];\n");
    let dest = Path::new(&std::env::var("OUT_DIR").expect("OUT_DIR")).join("schema_files.rs");
    std::fs::write(dest, out).expect("writing schema_files.rs");
}

fn walk(dir: &Path, files: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("reading schemas/json") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            walk(&path, files);
        } else if path.extension().is_some_and(|e| e == "json") {
            files.push(path);
        }
    }
}
