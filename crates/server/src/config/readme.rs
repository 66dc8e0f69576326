//! The README's configuration table held to the declarations: every variable declared is
//! documented once, every variable documented is declared, and the defaults agree.

use std::collections::HashSet;

use super::vars::{Decl, ENTITY, Shown, VARS, declared_entities};

const README: &str = include_str!("../../../../README.md");

/// Variables the table documents that `logging` reads, before the config, so that a bad
/// configuration can itself be logged; its own tests pin these names.
const READ_BY_LOGGING: [&str; 2] = ["RUST_LOG", "LOG_FORMAT"];

/// A row of the table.
struct Row {
    /// The variables its first column names: one, a group (`` `A`, `B` ``), or per-entity
    /// ones (`` `CACHE_TTL_<ENTITY>_L2_SECS` / `_L1_SECS` ``, where a name starting with `_`
    /// continues the first one up to its `<ENTITY>`).
    names: Vec<String>,
    /// Its default column, one default per name.
    defaults: Vec<String>,
    /// Its last column.
    notes: String,
}

/// The rows of the table that opens the README's Configuration section.
fn rows() -> Vec<Row> {
    let (_, section) = README
        .split_once("\n## Configuration\n")
        .expect("README.md has a Configuration section");
    let mut lines = section
        .lines()
        .skip_while(|line| !line.starts_with('|'))
        .take_while(|line| line.starts_with('|'));
    assert_eq!(lines.next(), Some("| variable | default | |"));
    assert_eq!(lines.next(), Some("|---|---|---|"));
    lines.map(row).collect()
}

fn row(line: &str) -> Row {
    let cells: Vec<&str> = line
        .trim_start_matches('|')
        .trim_end_matches('|')
        .split(" | ")
        .map(str::trim)
        .collect();
    let [first, defaults, notes] = cells[..] else {
        panic!("not three cells: {line}");
    };
    let mut names: Vec<String> = Vec::new();
    for name in backticked(first) {
        let name = match names.first() {
            // `_L1_SECS` after `CACHE_TTL_<ENTITY>_L2_SECS` is `CACHE_TTL_<ENTITY>_L1_SECS`.
            Some(stem) if name.starts_with('_') => {
                let end = stem
                    .find(ENTITY)
                    .expect("a `_` name follows a per-entity one")
                    + ENTITY.len();
                format!("{}{name}", &stem[..end])
            }
            _ => name.to_owned(),
        };
        names.push(name);
    }
    assert!(!names.is_empty(), "no variable in: {line}");
    // A group (`A`, `B`) gives one default per variable; a family (`A` / `_B`) shares one,
    // and so does a single variable, whose default may be words with commas.
    let defaults: Vec<String> = if names.len() == 1 || first.contains(" / ") {
        vec![defaults.to_owned(); names.len()]
    } else {
        defaults.split(", ").map(str::to_owned).collect()
    };
    assert_eq!(
        defaults.len(),
        names.len(),
        "one default per variable: {line}"
    );
    Row {
        names,
        defaults,
        notes: notes.to_owned(),
    }
}

/// The `code` spans of a cell.
fn backticked(cell: &str) -> impl Iterator<Item = &str> {
    cell.split('`').skip(1).step_by(2)
}

#[test]
fn the_readme_documents_every_variable_declared_and_no_other() {
    let documented: Vec<String> = rows().into_iter().flat_map(|row| row.names).collect();
    let mut declared: Vec<&str> = Vec::new();
    for decl in VARS {
        match decl {
            Decl::One(var) => declared.push(var.name),
            Decl::EachEntity(vars) => declared.extend(vars.iter().map(|var| var.name)),
        }
    }
    for name in &declared {
        let rows = documented.iter().filter(|d| d == name).count();
        assert_eq!(rows, 1, "{name} is in the README's table {rows} times");
    }
    let known: HashSet<&str> = declared.iter().copied().chain(READ_BY_LOGGING).collect();
    for name in &documented {
        assert!(
            known.contains(name.as_str()),
            "the README documents {name}, which nothing declares"
        );
    }
    for name in READ_BY_LOGGING {
        assert!(!declared.contains(&name), "{name} is logging's to read");
        assert!(documented.iter().any(|d| d == name), "{name} undocumented");
    }
}

#[test]
fn the_readme_shows_the_declared_defaults() {
    let mut shown = Vec::new();
    for row in rows() {
        shown.extend(row.names.into_iter().zip(row.defaults));
    }
    let mut checked = 0;
    for decl in VARS {
        let Decl::One(var) = decl else { continue };
        let Some((_, cell)) = shown.iter().find(|(name, _)| name == var.name) else {
            continue; // Its absence is the other test's to report.
        };
        // A value may be written as code (`` `true` ``) or not (16); words as they are.
        let matches = match var.default {
            Shown::Value(value) => cell.trim_matches('`') == value,
            Shown::Words(words) => cell == words,
        };
        assert!(matches, "{}: the README shows {cell:?}", var.name);
        checked += 1;
    }
    assert!(checked > 30, "{checked}");
}

#[test]
fn the_readme_lists_the_declared_entities_and_their_ttls() {
    let rows = rows();
    let row = rows
        .iter()
        .find(|row| row.names.iter().any(|name| name.contains(ENTITY)))
        .expect("a row of per-entity variables");
    let (_, listed) = row
        .notes
        .split_once("entity: ")
        .expect("the per-entity row lists its entities after \"entity: \"");
    let entities = declared_entities();
    let declared: Vec<String> = entities
        .iter()
        .map(|(entity, _)| entity.as_str().to_ascii_uppercase())
        .collect();
    assert_eq!(backticked(listed).collect::<Vec<_>>(), declared);

    // Its defaults are each entity's, which the library's section lists ("see below").
    assert!(
        row.defaults.iter().all(|d| d == "see below"),
        "{:?}",
        row.defaults
    );
    let readme = README.split_whitespace().collect::<Vec<_>>().join(" ");
    for (entity, policy) in entities {
        for shown in [
            format!("{entity} {} s", policy.l2_ttl.as_secs()),
            format!("{} s in L1", policy.l1_ttl.as_secs()),
            format!(
                "{} s for a cached \"not found\"",
                policy.negative_ttl.as_secs()
            ),
        ] {
            assert!(readme.contains(&shown), "README.md lacks {shown:?}");
        }
    }
}
