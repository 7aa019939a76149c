//! The documentation stays true to the tree: every relative link and image in the README,
//! ARCHITECTURE.md, bench/README.md, configs/README.md and the user guide (`docs/src/`) resolves
//! to a file (and a `#anchor` to a heading of it), the guide's SUMMARY.md lists exactly the
//! chapters under `docs/src/`, and every repository path ARCHITECTURE.md names exists.
//! Pure file reading: no service, no build of the book (`scripts/test.sh` runs `mdbook build`).

use std::collections::BTreeSet;
use std::fs;
use std::path::{Component, Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The Markdown files whose links are checked.
fn checked_files() -> Vec<PathBuf> {
    let r = root();
    let mut files = vec![
        r.join("README.md"),
        r.join("ARCHITECTURE.md"),
        r.join("bench/README.md"),
        r.join("configs/README.md"),
    ];
    files.extend(guide_chapters());
    files
}

/// Every `.md` file under `docs/src/`, SUMMARY.md included, sorted.
fn guide_chapters() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = fs::read_dir(dir) else { return };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "md") {
                out.push(p);
            }
        }
    }
    let mut out = vec![];
    walk(&root().join("docs/src"), &mut out);
    out.sort();
    out
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn rel(path: &Path) -> String {
    path.strip_prefix(root()).unwrap_or(path).display().to_string()
}

/// The lines outside fenced code blocks, with their 1-based numbers.
fn prose_lines(text: &str) -> Vec<(usize, &str)> {
    let mut fenced = false;
    let mut out = vec![];
    for (i, line) in text.lines().enumerate() {
        let t = line.trim_start();
        if t.starts_with("```") || t.starts_with("~~~") {
            fenced = !fenced;
            continue;
        }
        if !fenced {
            out.push((i + 1, line));
        }
    }
    out
}

/// A line without its inline code spans (so that `[a](b)` written as code is no link).
fn without_code(line: &str) -> String {
    let mut out = String::new();
    let mut in_code = false;
    for c in line.chars() {
        if c == '`' {
            in_code = !in_code;
        } else if !in_code {
            out.push(c);
        }
    }
    out
}

/// The contents of a line's inline code spans.
fn code_spans(line: &str) -> Vec<&str> {
    line.split('`').skip(1).step_by(2).collect()
}

/// Link and image targets of one line: `[text](target)`, `![alt](target "title")` and
/// reference definitions `[label]: target`.
fn link_targets(line: &str) -> Vec<String> {
    let line = without_code(line);
    let mut out = vec![];
    let mut rest = line.as_str();
    while let Some(at) = rest.find("](") {
        let after = &rest[at + 2..];
        let mut depth = 0;
        let mut end = after.len();
        for (i, c) in after.char_indices() {
            match c {
                '(' => depth += 1,
                ')' if depth == 0 => {
                    end = i;
                    break;
                }
                ')' => depth -= 1,
                _ => {}
            }
        }
        let target = after[..end].trim();
        let target = target.split_whitespace().next().unwrap_or("");
        out.push(target.trim_start_matches('<').trim_end_matches('>').to_string());
        rest = &after[end.min(after.len())..];
    }
    let t = line.trim_start();
    if t.starts_with('[')
        && let Some(close) = t.find("]:")
        && !t[1..close].contains(']')
        && let Some(target) = t[close + 2..].split_whitespace().next()
    {
        out.push(target.to_string());
    }
    out
}

/// A heading's anchor as mdBook (and GitHub) make it: lower case, whitespace as `-`, every
/// character but letters, digits, `-` and `_` dropped.
fn slug(heading: &str) -> String {
    heading
        .chars()
        .filter_map(|c| {
            if c.is_alphanumeric() || c == '_' || c == '-' {
                Some(c.to_ascii_lowercase())
            } else if c.is_whitespace() {
                Some('-')
            } else {
                None
            }
        })
        .collect()
}

/// The anchors of a Markdown file's headings (with `-1`, `-2`, ... for repeated ones).
fn anchors(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (_, line) in prose_lines(text) {
        let t = line.trim_start();
        if !t.starts_with('#') {
            continue;
        }
        let title = t.trim_start_matches('#');
        if !title.starts_with(' ') {
            continue;
        }
        // The rendered text: code spans keep their content, links their text.
        let mut text = title.trim().replace('`', "");
        while let (Some(a), Some(b)) = (text.find("]("), text.find(')')) {
            if b < a {
                break;
            }
            text.replace_range(a..=b, "");
        }
        let base = slug(&text.replace(['[', ']'], ""));
        let mut id = base.clone();
        let mut n = 1;
        while out.contains(&id) {
            id = format!("{base}-{n}");
            n += 1;
        }
        out.insert(id);
    }
    out
}

/// `a/b/../c` -> `a/c`, without touching the file system.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// Every broken relative link or image of `text` (a file at `file`), one line each.
fn broken_links(file: &Path, text: &str) -> Vec<String> {
    let dir = file.parent().expect("a file has a folder");
    let mut problems = vec![];
    for (n, line) in prose_lines(text) {
        for target in link_targets(line) {
            if target.is_empty()
                || target.contains("://")
                || target.starts_with("mailto:")
                || target.starts_with('{')
            {
                continue;
            }
            let (path_part, anchor) = match target.split_once('#') {
                Some((p, a)) => (p, Some(a)),
                None => (target.as_str(), None),
            };
            let dest = if path_part.is_empty() {
                file.to_path_buf()
            } else {
                normalize(&dir.join(path_part))
            };
            let at = format!("{}:{n}: {target}", rel(file));
            if !dest.exists() {
                problems.push(format!("{at}: {} does not exist", rel(&dest)));
                continue;
            }
            if let Some(anchor) = anchor.filter(|a| !a.is_empty())
                && dest.extension().is_some_and(|x| x == "md")
            {
                let text = if dest == file { text.to_string() } else { read(&dest) };
                if !anchors(&text).contains(anchor) {
                    problems.push(format!("{at}: no heading #{anchor} in {}", rel(&dest)));
                }
            }
        }
    }
    problems
}

#[test]
fn every_relative_link_and_image_resolves() {
    let mut problems = vec![];
    for f in checked_files() {
        problems.extend(broken_links(&f, &read(&f)));
    }
    assert!(problems.is_empty(), "broken links:\n{}", problems.join("\n"));
}

/// Problems with the guide's table of contents: chapters it lists that are missing, and
/// chapters under `docs/src/` it does not list.
fn summary_problems(src: &Path, summary: &str, chapters: &[PathBuf]) -> Vec<String> {
    let mut problems = vec![];
    let mut listed = BTreeSet::new();
    for (n, line) in prose_lines(summary) {
        for target in link_targets(line) {
            if target.is_empty() {
                problems.push(format!("SUMMARY.md:{n}: a draft chapter (no file): {line}"));
                continue;
            }
            let path = normalize(&src.join(target.split('#').next().unwrap_or("")));
            if !path.is_file() {
                problems.push(format!("SUMMARY.md:{n}: {target} does not exist"));
            }
            listed.insert(path);
        }
    }
    for c in chapters {
        if c.file_name().is_some_and(|n| n == "SUMMARY.md") {
            continue;
        }
        if !listed.contains(c) {
            problems.push(format!("{} is not listed in SUMMARY.md", rel(c)));
        }
    }
    problems
}

#[test]
fn the_guide_lists_exactly_its_chapters() {
    let src = root().join("docs/src");
    let summary = read(&src.join("SUMMARY.md"));
    let problems = summary_problems(&src, &summary, &guide_chapters());
    assert!(problems.is_empty(), "docs/src/SUMMARY.md:\n{}", problems.join("\n"));
    assert!(root().join("docs/book.toml").is_file(), "docs/book.toml is missing");
}

const REPO_DIRS: &[&str] =
    &["src/", "tests/", "bench/", "scripts/", "configs/", "proto/", "web/", "deploy/", "docs/"];

/// `src/sim/{a,b}.rs` -> `src/sim/a.rs`, `src/sim/b.rs`.
fn expand_braces(token: &str) -> Vec<String> {
    match (token.find('{'), token.find('}')) {
        (Some(a), Some(b)) if a < b => token[a + 1..b]
            .split(',')
            .flat_map(|alt| expand_braces(&format!("{}{}{}", &token[..a], alt, &token[b + 1..])))
            .collect(),
        _ => vec![token.to_string()],
    }
}

/// The repository paths named in backticks in `text` that do not exist under `root`: a token
/// that starts with one of [`REPO_DIRS`], or a `.rs` file path relative to `src/` (such as
/// `shard/faults.rs`). `path::item` and `path (…)` name the path before them.
fn missing_paths(root: &Path, text: &str) -> Vec<String> {
    let mut problems = vec![];
    for (n, line) in prose_lines(text) {
        for span in code_spans(line) {
            let token = span.split("::").next().unwrap_or("").trim();
            let token = token.split_whitespace().next().unwrap_or("");
            let token = token.trim_end_matches([',', '.', ':', ';', ')']);
            if token.is_empty() || token.contains('*') || token.contains('<') {
                continue;
            }
            let repo_path = REPO_DIRS.iter().any(|d| token.starts_with(d));
            let src_file = !repo_path
                && token.contains('/')
                && token.ends_with(".rs")
                && token.chars().all(|c| c.is_ascii_alphanumeric() || "_/{},.".contains(c));
            if !repo_path && !src_file {
                continue;
            }
            for p in expand_braces(token) {
                let full = if src_file { root.join("src").join(&p) } else { root.join(&p) };
                if !full.exists() {
                    problems.push(format!("line {n}: `{span}`: {} does not exist", rel(&full)));
                }
            }
        }
    }
    problems
}

#[test]
fn every_path_architecture_names_exists() {
    let text = read(&root().join("ARCHITECTURE.md"));
    let problems = missing_paths(&root(), &text);
    assert!(
        problems.is_empty(),
        "ARCHITECTURE.md names paths that do not exist:\n{}",
        problems.join("\n")
    );
}

// The checkers themselves, on text made to fail: a check that cannot fail checks nothing.

#[test]
fn a_broken_link_an_image_and_an_anchor_are_reported() {
    let file = root().join("README.md");
    let text = "# Title\n\nSee [arch](ARCHITECTURE.md), [gone](docs/src/nope.md), \
                ![pic](docs/src/images/missing.png), [here](#title), [there](#nowhere) and \
                [guide](docs/src/fleet-files.md#no-such-heading).\n\
                ```\n[in a fence](not/checked.md)\n```\n`[in code](not/checked.md)`\n";
    let problems = broken_links(&file, text);
    assert_eq!(problems.len(), 4, "{problems:#?}");
    assert!(problems[0].contains("docs/src/nope.md does not exist"), "{problems:#?}");
    assert!(problems[1].contains("images/missing.png does not exist"), "{problems:#?}");
    assert!(problems[2].contains("no heading #nowhere"), "{problems:#?}");
    assert!(problems[3].contains("no heading #no-such-heading"), "{problems:#?}");
}

#[test]
fn anchors_follow_the_heading_text() {
    let a = anchors("# Metrics (`GET /metrics`)\n## `[profiles.NAME]`\n## Faults\n## Faults\n");
    let want = ["metrics-get-metrics", "profilesname", "faults", "faults-1"];
    assert_eq!(a, want.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>());
}

#[test]
fn a_missing_or_unlisted_chapter_is_reported() {
    let src = root().join("docs/src");
    let chapters = vec![src.join("SUMMARY.md"), src.join("fleet-files.md"), src.join("extra.md")];
    let summary = "# Summary\n\n- [Fleet files](fleet-files.md)\n- [Gone](gone.md)\n- [Draft]()\n";
    let problems = summary_problems(&src, summary, &chapters);
    assert_eq!(problems.len(), 3, "{problems:#?}");
    assert!(problems[0].contains("gone.md does not exist"), "{problems:#?}");
    assert!(problems[1].contains("draft chapter"), "{problems:#?}");
    assert!(problems[2].contains("extra.md is not listed"), "{problems:#?}");
}

#[test]
fn a_missing_path_in_backticks_is_reported() {
    let text = "`src/run.rs` and `src/nowhere.rs`, `shard/faults.rs` and `shard/gone.rs`, \
                `src/sim/{seed,nope}.rs`, `tests/it/docs.rs` (this file), `mix64(x)`, `a/b`, \
                `config::RUN_KEYS`, `deploy/k8s/`\n```\n`src/in_a_fence.rs`\n```\n";
    let problems = missing_paths(&root(), text);
    assert_eq!(problems.len(), 3, "{problems:#?}");
    assert!(problems[0].contains("src/nowhere.rs"), "{problems:#?}");
    assert!(problems[1].contains("src/shard/gone.rs"), "{problems:#?}");
    assert!(problems[2].contains("src/sim/nope.rs"), "{problems:#?}");
}
