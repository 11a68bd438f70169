//! A table's learned schema, kept durably in `{node.data_dir}/schema/{table}.json` so that a
//! column has one type in every file a node ever writes, across restarts and crashes.
//!
//! Why this is enough without coordination between nodes: a column's type follows from the
//! kind of the first value seen alone, never from the value itself or from the order values
//! arrive in (see [`Kind::infer`]): every number is `float64` (JSON has one number type; an
//! integer-valued reading and a fractional one are the same measurement), `true`/`false` is
//! `bool`, text is `string`, bytes are `binary`. Two nodes that see the same field as numbers
//! therefore pick the same type. A value of another kind than its column's is refused
//! (`type_conflict`) and stored in `_rejected`, never written with a different type.
//!
//! The file is written by the publisher before the first data file that holds a new column
//! (temp file, fsync, rename, fsync of the directory), so every column of every published
//! file is in it; a node that restarts loads it and starts every table with those columns.
//!
//! ```json
//! {"format":1,"table":"readings","columns":[{"name":"temp","type":"float64"}]}
//! ```

use std::collections::HashMap;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::builder::Kind;
use crate::wal::checkpoint::replace_durably;

/// The file format version this build writes and reads.
const FORMAT: u32 = 1;

/// One payload column: its name and type.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ColumnSpec {
    /// Column name (a field name, flattened with `.`).
    pub name: Arc<str>,
    /// Its type.
    #[serde(rename = "type")]
    pub kind: Kind,
}

/// A table's payload columns in file order (`time`, `received_at` and `device_id`, which
/// every table has, are not listed).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TableSchema {
    /// Format version.
    pub format: u32,
    /// Table name.
    pub table: String,
    /// Payload columns.
    pub columns: Vec<ColumnSpec>,
}

impl TableSchema {
    /// A schema of the current format.
    pub fn new(table: &str, columns: Vec<ColumnSpec>) -> Self {
        Self {
            format: FORMAT,
            table: table.to_string(),
            columns,
        }
    }
}

/// A schema file that cannot be used; the daemon does not start (guessing could give a column
/// a second type).
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    /// Reading the directory or a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// A file does not parse, or holds another table or format.
    #[error(
        "{path}: not a fleetlake schema file ({why}); it keeps column types stable across restarts: fix it, or delete it to let the table's types be learned again"
    )]
    Invalid {
        /// The path.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
}

/// What `[[tables]]` declares of a table's columns (`columns`, `unknown_fields`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Declared {
    /// Table name.
    pub table: String,
    /// The declared columns, in file order (before any inferred one).
    pub columns: Vec<DeclaredColumn>,
    /// What happens to a field no declared column takes.
    pub unknown_fields: UnknownFields,
}

/// One declared column.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeclaredColumn {
    /// Column name.
    pub name: Arc<str>,
    /// Its type.
    pub kind: Kind,
    /// Whether every row must hold a (non-null) value for it.
    pub required: bool,
    /// The payload field (flattened path, e.g. `a.b`) it is read from, when not `name`.
    pub from: Option<Arc<str>>,
}

/// `tables[].unknown_fields`: what happens to a field no declared column takes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UnknownFields {
    /// It becomes a new nullable column, typed by inference (the default).
    #[default]
    Accept,
    /// The whole message goes to `_rejected` (reason `unknown_field`).
    Reject,
    /// The field is left out of the row, and counted (`fleetlake_fields_dropped_total`).
    Drop,
}

impl Declared {
    /// Checks the declaration against the table's stored schema: a column declared with
    /// another type than files already hold would give it a second type.
    pub fn check_stored(&self, stored: &TableSchema) -> Result<(), String> {
        for c in &self.columns {
            if let Some(s) = stored.columns.iter().find(|s| s.name == c.name)
                && s.kind != c.kind
            {
                return Err(format!(
                    "table `{}`: column `{}` is declared {} but its files already hold it as {}; declare it {}, or delete the stored schema to let new files use {} (older files keep {})",
                    self.table, c.name, c.kind, s.kind, s.kind, c.kind, s.kind
                ));
            }
        }
        Ok(())
    }
}

/// The `schema/` directory under `node.data_dir`.
#[derive(Clone, Debug)]
pub struct SchemaDir {
    dir: PathBuf,
}

impl SchemaDir {
    /// `{data_dir}/schema`, created (mode 0700) when missing.
    pub fn open(data_dir: &Path) -> Result<Self, SchemaError> {
        let dir = data_dir.join("schema");
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|source| SchemaError::Io {
                path: dir.clone(),
                source,
            })?;
        Ok(Self { dir })
    }

    /// Every stored schema, by table name.
    pub fn load(&self) -> Result<HashMap<String, TableSchema>, SchemaError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| SchemaError::Io { path, source }
        };
        let mut schemas = HashMap::new();
        for entry in std::fs::read_dir(&self.dir).map_err(io(&self.dir))? {
            let path = entry.map_err(io(&self.dir))?.path();
            let Some(table) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".json"))
            else {
                continue; // a temp file left by a crash, or something else: not ours
            };
            let bytes = std::fs::read(&path).map_err(io(&path))?;
            let schema = parse(table, &bytes).map_err(|why| SchemaError::Invalid {
                path: path.clone(),
                why,
            })?;
            schemas.insert(table.to_string(), schema);
        }
        Ok(schemas)
    }

    /// Replaces `schema`'s file atomically and durably.
    pub fn store(&self, schema: &TableSchema) -> io::Result<()> {
        let path = self.dir.join(format!("{}.json", schema.table));
        let text = serde_json::to_vec(schema).map_err(io::Error::other)?;
        replace_durably(&path, &text)
    }
}

/// Parses the file of `table`.
fn parse(table: &str, bytes: &[u8]) -> Result<TableSchema, String> {
    let schema: TableSchema = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    if schema.format != FORMAT {
        return Err(format!(
            "format {} (this build reads format {FORMAT})",
            schema.format
        ));
    }
    if schema.table != table {
        return Err(format!("it names table `{}`", schema.table));
    }
    for (i, c) in schema.columns.iter().enumerate() {
        if schema.columns[..i].iter().any(|d| d.name == c.name) {
            return Err(format!("column `{}` is listed twice", c.name));
        }
    }
    Ok(schema)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, kind: Kind) -> ColumnSpec {
        ColumnSpec {
            name: Arc::from(name),
            kind,
        }
    }

    #[test]
    fn a_stored_schema_loads_back_and_a_bad_file_names_itself()
    -> Result<(), Box<dyn std::error::Error>> {
        let tmp = tempfile::tempdir()?;
        let dir = SchemaDir::open(tmp.path())?;
        assert!(dir.load()?.is_empty());
        let schema = TableSchema::new(
            "readings",
            vec![spec("temp", Kind::Float), spec("fw", Kind::Str)],
        );
        dir.store(&schema)?;
        let text = std::fs::read_to_string(tmp.path().join("schema/readings.json"))?;
        assert_eq!(
            text,
            r#"{"format":1,"table":"readings","columns":[{"name":"temp","type":"float64"},{"name":"fw","type":"string"}]}"#
        );
        assert_eq!(dir.load()?.get("readings"), Some(&schema));

        std::fs::write(
            tmp.path().join("schema/other.json"),
            br#"{"format":1,"table":"x","columns":[]}"#,
        )?;
        let err = dir.load().err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            err.contains("other.json") && err.contains("names table `x`"),
            "{err}"
        );
        std::fs::write(
            tmp.path().join("schema/other.json"),
            br#"{"format":1,"table":"other","columns":[{"name":"a","type":"decimal"}]}"#,
        )?;
        let err = dir.load().err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("unknown variant `decimal`"), "{err}");
        Ok(())
    }
}
