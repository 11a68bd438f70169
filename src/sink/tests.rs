use std::sync::Arc;

use bytes::Bytes;
use parquet::basic::Compression;

use super::*;
use crate::columnar::{TableBuilder, encode::partition};
use crate::decode::{Message, Row};

fn part() -> Part {
    let mut b = TableBuilder::new(Arc::from("t"));
    let m = Message {
        table: Arc::from("t"),
        device_id: Arc::from("d"),
        received_at: 0,
        columns: Vec::new(),
        rows: vec![Row {
            time: 1_767_225_600_000_000,
            fields: Vec::new(),
        }],
        topic: String::new(),
        payload: Bytes::new(),
        seq: 0,
        source: crate::decode::Source::Mqtt,
        rejected: None,
        mqtt: crate::decode::MqttMeta::default(),
    };
    b.append(&m, 42).unwrap_or_else(|e| panic!("{e}"));
    let batch = b.finish().ok().flatten().unwrap_or_else(|| panic!("empty"));
    partition(&batch)
        .unwrap_or_else(|e| panic!("{e}"))
        .remove(0)
}

#[test]
fn file_names_are_derived_from_node_and_zero_padded_sequence_range() {
    assert_eq!(
        file_name("gw-1", 7, 1234),
        "gw-1-00000000000000000007-00000000000000001234.parquet"
    );
    let path = relative_path("telemetry", &part(), "gw");
    assert_eq!(
        path.to_string_lossy(),
        "telemetry/date=2026-01-01/hour=00/gw-00000000000000000042-00000000000000000042.parquet"
    );
}

#[test]
fn publish_leaves_only_the_final_file_and_prepare_removes_crash_leftovers()
-> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let opts = ParquetOptions {
        compression: Compression::SNAPPY,
        row_group_rows: 100,
    };
    let modes = crate::config::FileModes {
        file: 0o640,
        dir: 0o750,
    };
    let sink = LocalSink::new(dir.path().join("lake"), "gw".into(), opts, modes);
    assert_eq!(sink.prepare()?, 0);
    let published = sink.publish("telemetry", &part())?;
    assert!(published.path.is_file());
    assert_eq!(published.rows, 1);
    let folder = published
        .path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let names: Vec<String> = fs::read_dir(&folder)?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into())
        .collect();
    assert_eq!(names.len(), 1, "no temp file left: {names:?}");
    fs::write(folder.join(".x.parquet.tmp"), b"half")?;
    assert_eq!(sink.prepare()?, 1);
    Ok(())
}

#[test]
fn files_and_folders_get_exactly_the_configured_modes_whatever_the_umask()
-> Result<(), Box<dyn std::error::Error>> {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir()?;
    let opts = ParquetOptions {
        compression: Compression::SNAPPY,
        row_group_rows: 100,
    };
    let mode = |p: &Path| fs::metadata(p).map(|m| m.permissions().mode() & 0o777);
    for modes in [
        crate::config::FileModes {
            file: 0o644,
            dir: 0o755,
        },
        crate::config::FileModes::PRIVATE,
    ] {
        let root = dir.path().join(format!("lake-{:o}", modes.file));
        let sink = LocalSink::new(root.clone(), "gw".into(), opts, modes);
        sink.prepare()?;
        let published = sink.publish("telemetry", &part())?;
        assert_eq!(mode(&published.path)?, modes.file);
        assert_eq!(mode(&root)?, modes.dir);
        let mut folder = published.path.parent();
        while let Some(f) = folder.filter(|f| f.starts_with(&root)) {
            assert_eq!(mode(f)?, modes.dir, "{}", f.display());
            folder = f.parent();
        }
    }
    Ok(())
}

#[test]
fn the_schema_file_merges_what_another_node_wrote_and_is_left_alone_when_unchanged()
-> Result<(), Box<dyn std::error::Error>> {
    use arrow::datatypes::{DataType, Field, Schema};
    let dir = tempfile::tempdir()?;
    let modes = crate::config::FileModes {
        file: 0o640,
        dir: 0o750,
    };
    let sink = |node: &str| {
        let opts = ParquetOptions {
            compression: Compression::SNAPPY,
            row_group_rows: 100,
        };
        LocalSink::new(dir.path().into(), node.into(), opts, modes)
    };
    let schema = |cols: &[(&str, DataType)]| {
        Schema::new(
            cols.iter()
                .map(|(n, t)| Field::new(*n, t.clone(), false))
                .collect::<Vec<_>>(),
        )
    };
    let names = || -> Result<Vec<String>, Box<dyn std::error::Error>> {
        let s = read_schema(&dir.path().join("t").join(SCHEMA_FILE)).ok_or("no schema file")?;
        Ok(s.fields()
            .iter()
            .map(|f| format!("{}:{}", f.name(), f.data_type()))
            .collect())
    };
    sink("a").publish_schema(
        "t",
        &schema(&[("device_id", DataType::Utf8), ("v", DataType::Float64)]),
    )?;
    assert_eq!(
        names()?,
        ["device_id:Utf8", "v:Float64", "date:Utf8", "hour:Int32"]
    );
    // Node b knows `w` but not `v`: the file keeps both.
    sink("b").publish_schema(
        "t",
        &schema(&[("device_id", DataType::Utf8), ("w", DataType::Boolean)]),
    )?;
    assert_eq!(
        names()?,
        [
            "device_id:Utf8",
            "v:Float64",
            "w:Boolean",
            "date:Utf8",
            "hour:Int32"
        ]
    );
    // Nothing new: not rewritten.
    let path = dir.path().join("t").join(SCHEMA_FILE);
    let before = fs::metadata(&path)?.modified()?;
    std::thread::sleep(std::time::Duration::from_millis(20)); // mtime resolution, not synchronisation
    sink("a").publish_schema("t", &schema(&[("v", DataType::Float64)]))?;
    assert_eq!(fs::metadata(&path)?.modified()?, before);
    Ok(())
}
