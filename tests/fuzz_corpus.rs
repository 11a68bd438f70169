//! Replays every input the fuzzers kept — `fuzz/corpus/{target}/` (seeds and what coverage
//! found) and `fuzz/regressions/{target}/` (each input that once crashed, minimized) — through
//! the same entry points the fuzz targets call, so plain `cargo test` re-checks them all.

use std::path::Path;

type Target = fn(&[u8]);

const TARGETS: [(&str, Target); 5] = [
    ("mqtt_session", fleetlake::fuzzing::mqtt_session),
    ("json_rows", fleetlake::fuzzing::json_rows),
    ("wal_segment", fleetlake::fuzzing::wal_segment),
    ("config", fleetlake::fuzzing::config),
    ("security_files", fleetlake::fuzzing::security_files),
];

#[test]
fn every_kept_fuzz_input_runs_cleanly() -> std::io::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    for (name, target) in TARGETS {
        let mut inputs = 0;
        for kind in ["corpus", "regressions"] {
            let dir = root.join(kind).join(name);
            if !dir.exists() {
                continue;
            }
            for entry in std::fs::read_dir(&dir)? {
                let path = entry?.path();
                if path.is_file() {
                    target(&std::fs::read(&path)?);
                    inputs += 1;
                }
            }
        }
        assert!(inputs > 0, "no corpus for fuzz target {name}");
        println!("{name}: {inputs} inputs replayed");
    }
    Ok(())
}
