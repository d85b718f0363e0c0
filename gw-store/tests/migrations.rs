//! The schema migrations stay additive, on both backends alike: during a rolling upgrade the
//! first upgraded controller migrates the shared database while controllers of the previous
//! release keep running on it, so a migration may create tables and indexes, add columns
//! that the older code can leave out (nullable, or with a default), and insert rows; never
//! drop, rename or change what a previous release reads or writes.

use std::path::{Path, PathBuf};

fn migrations(backend: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("migrations")
        .join(backend);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "sql"))
        .collect();
    files.sort();
    files
}

fn file_name(path: &Path) -> String {
    path.file_name().unwrap().to_string_lossy().into_owned()
}

/// The statements of a migration, comments left out, each on one line in upper case.
fn statements(sql: &str) -> Vec<String> {
    let without_comments: String = sql
        .lines()
        .map(|line| line.split("--").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join(" ");
    without_comments
        .split(';')
        .map(|s| s.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|s| !s.is_empty())
        .map(|s| s.to_uppercase())
        .collect()
}

/// Why `statement` is not additive, if it is not.
fn not_additive(statement: &str) -> Option<&'static str> {
    for word in [" DROP ", " RENAME ", " ALTER COLUMN "] {
        if format!(" {statement} ").contains(word) {
            return Some("drops, renames or changes what a previous release uses");
        }
    }
    for verb in ["DELETE ", "UPDATE ", "TRUNCATE "] {
        if statement.starts_with(verb) {
            return Some("deletes or changes rows a previous release wrote");
        }
    }
    if statement.starts_with("CREATE TABLE")
        || statement.starts_with("CREATE INDEX")
        || statement.starts_with("CREATE UNIQUE INDEX")
        || statement.starts_with("INSERT INTO")
    {
        return None;
    }
    if let Some(rest) = statement
        .strip_prefix("ALTER TABLE ")
        .and_then(|rest| rest.split_once(" ADD COLUMN "))
        .map(|(_, column)| column)
    {
        // a previous release inserts rows without the column
        if rest.contains("NOT NULL") && !rest.contains("DEFAULT") {
            return Some("adds a NOT NULL column without a default");
        }
        return None;
    }
    Some("is none of CREATE TABLE, CREATE INDEX, INSERT or ALTER TABLE … ADD COLUMN")
}

#[test]
fn both_backends_have_the_same_numbered_migrations() {
    let postgres: Vec<String> = migrations("postgres")
        .iter()
        .map(|p| file_name(p))
        .collect();
    let sqlite: Vec<String> = migrations("sqlite").iter().map(|p| file_name(p)).collect();
    assert_eq!(postgres, sqlite);
    assert!(postgres.len() >= 8, "{postgres:?}");
    for (i, name) in postgres.iter().enumerate() {
        assert!(
            name.starts_with(&format!("{:04}_", i + 1)),
            "migration {name} out of sequence (expected number {})",
            i + 1
        );
    }
}

#[test]
fn every_migration_only_adds() {
    let mut checked = 0;
    for backend in ["postgres", "sqlite"] {
        for path in migrations(backend) {
            let sql = std::fs::read_to_string(&path).unwrap();
            for statement in statements(&sql) {
                if let Some(why) = not_additive(&statement) {
                    panic!("{backend}/{}: {why}: {statement}", file_name(&path));
                }
                checked += 1;
            }
        }
    }
    assert!(checked > 20, "{checked} statements");
}

/// The check itself tells additive statements from the others.
#[test]
fn what_is_not_additive_is_caught() {
    for refused in [
        "DROP TABLE runtimes",
        "ALTER TABLE runtimes DROP COLUMN refused",
        "ALTER TABLE runtimes RENAME COLUMN refused TO refusal",
        "ALTER TABLE runtimes ALTER COLUMN refused TYPE BIGINT",
        "ALTER TABLE runtimes ADD COLUMN epoch BIGINT NOT NULL",
        "DELETE FROM apis",
        "TRUNCATE apis",
        "UPDATE apis SET spec = NULL",
        "CREATE VIEW v AS SELECT 1",
    ] {
        let statement = statements(refused).remove(0);
        assert!(not_additive(&statement).is_some(), "{refused}");
    }
    for taken in [
        "CREATE TABLE t (a TEXT)",
        "CREATE UNIQUE INDEX i ON t (a)",
        "ALTER TABLE runtimes ADD COLUMN epoch BIGINT NOT NULL DEFAULT 0",
        "ALTER TABLE runtimes ADD COLUMN note TEXT",
        "INSERT INTO gw_meta (k, v) VALUES ('a', 'b')",
    ] {
        let statement = statements(taken).remove(0);
        assert_eq!(not_additive(&statement), None, "{taken}");
    }
}
