//! The layer order, checked: every `crate::…` path in `src/**/*.rs` outside test code must
//! name a top-level module below the file's own in the order that ARCHITECTURE.md's "Layers"
//! section states (the one place it is written), and no import circle may span more than one
//! top-level module.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// A `crate::<module>` reference: the file, its line and the module it names.
#[derive(Debug)]
struct Reference {
    file: String,
    line: usize,
    module: String,
}

/// The layers, top first, from the fenced block that opens ARCHITECTURE.md's "Layers" section:
/// levels separated by `→`, peers within a level by `/`.
fn stated_order(architecture: &str) -> Vec<Vec<String>> {
    let section = architecture
        .split("\n## ")
        .find(|s| s.starts_with("Layers\n"))
        .expect("ARCHITECTURE.md has a \"## Layers\" section");
    let block = section.split("```").nth(1).expect("the Layers section opens with a fenced block");
    let line = block.lines().map(str::trim).find(|l| l.contains('→')).expect("a line with →");
    line.split('→').map(|level| level.split('/').map(|m| m.trim().to_string()).collect()).collect()
}

/// Every `.rs` file under `dir`.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The top-level module a file under `src/` belongs to (`None` for the crate root files).
fn top_module(rel: &Path) -> Option<String> {
    let first = rel.components().next()?.as_os_str().to_str()?;
    match first {
        "lib.rs" | "main.rs" => None,
        f => Some(f.trim_end_matches(".rs").to_string()),
    }
}

/// The source with comments, string and char literals blanked (newlines kept, so line numbers
/// hold).
fn code_only(src: &str) -> String {
    let b = src.as_bytes();
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    let blank = |out: &mut String, s: &[u8]| {
        out.extend(s.iter().map(|&c| if c == b'\n' { '\n' } else { ' ' }));
    };
    while i < b.len() {
        let rest = &b[i..];
        let end = if rest.starts_with(b"//") {
            i + rest.iter().position(|&c| c == b'\n').unwrap_or(rest.len())
        } else if rest.starts_with(b"/*") {
            let mut depth = 0;
            let mut j = i;
            while j < b.len() {
                if b[j..].starts_with(b"/*") {
                    depth += 1;
                    j += 2;
                } else if b[j..].starts_with(b"*/") {
                    depth -= 1;
                    j += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    j += 1;
                }
            }
            j
        } else if let Some(hashes) = raw_string_start(rest) {
            let close: Vec<u8> =
                std::iter::once(b'"').chain(std::iter::repeat_n(b'#', hashes)).collect();
            let body = i + 2 + hashes + usize::from(rest[0] == b'b');
            body + find(&b[body..], &close).map_or(b.len() - body, |k| k + close.len())
        } else if rest[0] == b'"' {
            let mut j = i + 1;
            while j < b.len() && b[j] != b'"' {
                j += if b[j] == b'\\' { 2 } else { 1 };
            }
            j + 1
        } else if rest[0] == b'\'' {
            // A char literal ('x', '\n', '\u{..}'); otherwise a lifetime.
            match rest.iter().skip(1).take(10).position(|&c| c == b'\'') {
                Some(k) if k == 1 || rest[1] == b'\\' => i + k + 2,
                _ => i + 1,
            }
        } else {
            let c = src[i..].chars().next().unwrap();
            out.push(c);
            i += c.len_utf8();
            continue;
        };
        let end = end.min(b.len());
        blank(&mut out, &b[i..end]);
        i = end;
    }
    out
}

/// `r"`, `r#"`, `br"`…: the number of `#`s.
fn raw_string_start(s: &[u8]) -> Option<usize> {
    let s = s.strip_prefix(b"b").unwrap_or(s);
    let s = s.strip_prefix(b"r")?;
    let hashes = s.iter().take_while(|&&c| c == b'#').count();
    (s.get(hashes) == Some(&b'"')).then_some(hashes)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Blanks every item under `#[cfg(test)]` (a `mod tests { … }`, a test-only fn); returns the
/// names of test-only file modules (`#[cfg(test)] mod tests;`).
fn drop_test_items(code: &mut String) -> Vec<String> {
    let mut test_mods = vec![];
    let mut from = 0;
    while let Some(k) = code[from..].find("#[cfg(test)]") {
        let start = from + k;
        let b = code.as_bytes();
        // The item: up to its `;` or the brace that closes its first `{`.
        let mut j = start + "#[cfg(test)]".len();
        let mut depth = 0usize;
        while j < b.len() {
            match b[j] {
                b'{' => depth += 1,
                b'}' => {
                    depth -= 1;
                    if depth == 0 {
                        break;
                    }
                }
                b';' if depth == 0 => break,
                _ => {}
            }
            j += 1;
        }
        let item = &code[start..=j.min(b.len() - 1)];
        if item.trim_end().ends_with(';')
            && let Some(name) = item.split_whitespace().skip_while(|w| *w != "mod").nth(1)
        {
            test_mods.push(name.trim_end_matches(';').to_string());
        }
        let blanked: String = item.chars().map(|c| if c == '\n' { '\n' } else { ' ' }).collect();
        code.replace_range(start..start + item.len(), &blanked);
        from = start + blanked.len();
    }
    test_mods
}

/// The top-level modules a `crate::` path at byte `at` of `code` names (one, or several for
/// `crate::{a::X, b::Y}`).
fn named_modules(code: &str, at: usize) -> Vec<String> {
    let ident = |s: &str| -> String {
        s.trim_start().chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect()
    };
    let rest = &code[at..];
    if let Some(group) = rest.strip_prefix('{') {
        let mut depth = 1;
        let mut items = vec![String::new()];
        for c in group.chars() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        break;
                    }
                }
                ',' if depth == 1 => items.push(String::new()),
                _ => {}
            }
            if depth >= 1 {
                items.last_mut().unwrap().push(c);
            }
        }
        items.iter().map(|s| ident(s.trim_start_matches(',').trim_start_matches('{'))).collect()
    } else {
        vec![ident(rest)]
    }
}

/// Every `crate::<module>` reference outside test code, with the module it is in.
fn references(src_dir: &Path) -> (Vec<(String, Reference)>, BTreeSet<String>) {
    let mut files = vec![];
    rust_files(src_dir, &mut files);
    files.sort();
    let mut test_files = BTreeSet::new();
    let mut parsed = vec![];
    for f in &files {
        let mut code = code_only(&std::fs::read_to_string(f).unwrap());
        let dir = match f.file_name().and_then(|n| n.to_str()) {
            Some("mod.rs" | "lib.rs") => f.parent().unwrap().to_path_buf(),
            _ => f.with_extension(""),
        };
        for m in drop_test_items(&mut code) {
            test_files.insert(dir.join(format!("{m}.rs")));
            test_files.insert(dir.join(m).join("mod.rs"));
        }
        parsed.push((f.clone(), code));
    }
    let mut modules = BTreeSet::new();
    let mut refs = vec![];
    for (f, code) in parsed {
        let rel = f.strip_prefix(src_dir).unwrap();
        let Some(top) = top_module(rel) else { continue };
        modules.insert(top.clone());
        if test_files.contains(&f) || top == "layers" {
            continue;
        }
        let file = format!("src/{}", rel.display());
        for (n, _) in code.match_indices("crate::") {
            let prev = code[..n].chars().next_back();
            if prev.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                continue;
            }
            let line = code[..n].matches('\n').count() + 1;
            for module in named_modules(&code, n + "crate::".len()) {
                if !module.is_empty() && module != top {
                    refs.push((top.clone(), Reference { file: file.clone(), line, module }));
                }
            }
        }
    }
    (refs, modules)
}

/// A circle of imports between top-level modules, if there is one.
fn find_cycle(edges: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|p| p == n) {
            let mut cycle = path[i..].to_vec();
            cycle.push(n.to_string());
            return Some(cycle);
        }
        if done.contains(n) {
            return None;
        }
        path.push(n.to_string());
        for m in edges.get(n).into_iter().flatten() {
            if let Some(c) = visit(m, edges, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(n.to_string());
        None
    }
    let mut done = BTreeSet::new();
    edges.keys().find_map(|n| visit(n, edges, &mut vec![], &mut done))
}

/// Every reference that does not look down the order, as `file:line: …` lines.
fn violations(order: &[Vec<String>], refs: &[(String, Reference)]) -> Vec<String> {
    let level: BTreeMap<&str, usize> = order
        .iter()
        .enumerate()
        .flat_map(|(i, l)| l.iter().map(move |m| (m.as_str(), i)))
        .collect();
    let mut out = vec![];
    for (from, r) in refs {
        let (Some(&a), Some(&b)) = (level.get(from.as_str()), level.get(r.module.as_str())) else {
            continue;
        };
        if b <= a {
            let how = if a == b { "its peer" } else { "a module above it" };
            out.push(format!(
                "{}:{}: `{from}` uses `crate::{}`, {how} in the layer order",
                r.file, r.line, r.module
            ));
        }
    }
    out
}

#[test]
fn every_module_only_imports_the_layers_below_it() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let order = stated_order(&std::fs::read_to_string(root.join("ARCHITECTURE.md")).unwrap());
    let (refs, modules) = references(&root.join("src"));
    let stated: Vec<&String> = order.iter().flatten().collect();
    let mut problems = vec![];
    for m in modules.iter().filter(|m| *m != "layers") {
        match stated.iter().filter(|s| **s == m).count() {
            1 => {}
            0 => problems.push(format!("module `{m}` is not in ARCHITECTURE.md's layer order")),
            _ => problems.push(format!("module `{m}` is in the layer order more than once")),
        }
    }
    for s in &stated {
        if !modules.contains(*s) {
            problems.push(format!("the layer order names `{s}`, which is not a module of src/"));
        }
    }
    problems.extend(violations(&order, &refs));
    let mut report = String::new();
    for p in &problems {
        let _ = writeln!(report, "{p}");
    }
    assert!(problems.is_empty(), "layer order (ARCHITECTURE.md, \"Layers\"):\n{report}");
}

#[test]
fn no_import_circle_spans_more_than_one_module() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let (refs, _) = references(&root.join("src"));
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (from, r) in &refs {
        edges.entry(from.clone()).or_default().insert(r.module.clone());
    }
    if let Some(cycle) = find_cycle(&edges) {
        let first = |a: &str, b: &str| {
            refs.iter()
                .find(|(f, r)| f == a && r.module == b)
                .map(|(_, r)| format!("{}:{}", r.file, r.line))
                .unwrap_or_default()
        };
        let steps: Vec<String> = cycle
            .windows(2)
            .map(|w| format!("{} -> {} ({})", w[0], w[1], first(&w[0], &w[1])))
            .collect();
        panic!("import circle across modules: {}", steps.join(", "));
    }
}

#[test]
fn the_checker_finds_paths_in_code_only() {
    let mut code = code_only(
        "use crate::a::X; // crate::b\nlet s = \"crate::c\"; let c = '\"'; use crate::{d::Y, e};\n\
         #[cfg(test)]\nmod tests { use crate::f; }\nfn g<'a>() { crate::h::z() }\n",
    );
    let test_mods = drop_test_items(&mut code);
    assert!(test_mods.is_empty());
    let found: Vec<(usize, Vec<String>)> = code
        .match_indices("crate::")
        .map(|(n, _)| (code[..n].matches('\n').count() + 1, named_modules(&code, n + 7)))
        .collect();
    let want = |l: usize, m: &[&str]| (l, m.iter().map(|s| s.to_string()).collect::<Vec<_>>());
    assert_eq!(found, [want(1, &["a"]), want(2, &["d", "e"]), want(5, &["h"])]);
    let order = stated_order("x\n## Layers\n\n```\na → b / c → d\n```\n");
    assert_eq!(order, [vec!["a"], vec!["b", "c"], vec!["d"]]);
    let r = |from: &str, to: &str| {
        (from.to_string(), Reference { file: "src/x.rs".into(), line: 3, module: to.into() })
    };
    assert_eq!(violations(&order, &[r("a", "b"), r("b", "d")]), Vec::<String>::new());
    assert_eq!(
        violations(&order, &[r("d", "a"), r("b", "c")]),
        [
            "src/x.rs:3: `d` uses `crate::a`, a module above it in the layer order",
            "src/x.rs:3: `b` uses `crate::c`, its peer in the layer order",
        ]
    );
}
