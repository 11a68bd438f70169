//! The command line: config checking and exit codes, as systemd's ExecStartPre relies on them.

use std::process::Command;

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn fleetlake(args: &[&str]) -> std::io::Result<std::process::Output> {
    Command::new(env!("CARGO_BIN_EXE_fleetlake"))
        .args(args)
        .output()
}

#[test]
fn check_config_exits_78_and_names_the_bad_key() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[batch]\nmax_rows = 0\n")?;
    let out = fleetlake(&["check-config", "--config", &path.to_string_lossy()])?;
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("batch.max_rows"));
    Ok(())
}

#[test]
fn check_config_prints_the_effective_config_of_a_good_file() -> TestResult {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config/fleetlake.toml");
    let out = fleetlake(&["check-config", "--config", path])?;
    assert_eq!(out.status.code(), Some(0));
    let printed = String::from_utf8(out.stdout)?;
    assert!(printed.contains("listen = \"0.0.0.0:1883\""));
    assert!(printed.contains("shutdown_grace"), "defaults are filled in");
    Ok(())
}

#[test]
fn the_printed_default_config_is_itself_a_valid_config() -> TestResult {
    let out = fleetlake(&["print-default-config"])?;
    assert!(out.status.success());
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("default.toml");
    std::fs::write(&path, &out.stdout)?;
    let check = fleetlake(&["check-config", "--config", &path.to_string_lossy()])?;
    assert_eq!(
        check.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    Ok(())
}

#[test]
fn a_missing_config_file_is_a_config_error() -> TestResult {
    let out = fleetlake(&["run", "--config", "/nonexistent/fleetlake.toml"])?;
    assert_eq!(out.status.code(), Some(78));
    Ok(())
}

#[test]
fn version_names_the_release_and_the_git_commit() -> TestResult {
    let out = fleetlake(&["--version"])?;
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8(out.stdout)?;
    assert!(
        text.starts_with(&format!("fleetlake {} (commit ", env!("CARGO_PKG_VERSION"))),
        "{text}"
    );
    assert!(text.contains("object stores: s3"), "{text}");
    Ok(())
}

#[test]
fn an_object_store_missing_from_the_build_is_named_by_check_config() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("gcs.toml");
    std::fs::write(&path, "[output]\nurl = \"gs://bucket/prefix\"\n")?;
    let out = fleetlake(&["check-config", "--config", &path.to_string_lossy()])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if cfg!(feature = "gcs") {
        assert_eq!(out.status.code(), Some(0), "{stderr}");
    } else {
        assert_eq!(out.status.code(), Some(78), "{stderr}");
        assert!(stderr.contains("--features gcs"), "{stderr}");
    }
    Ok(())
}

#[test]
fn check_config_reads_the_bridge_files() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("bridge.toml");
    std::fs::write(
        &path,
        "[[bridge]]\nname = \"plant\"\nurl = \"mqtts://broker:8883\"\nca_file = \"/nonexistent/ca.pem\"\nsubscriptions = [{ filter = \"#\" }]\n",
    )?;
    let out = fleetlake(&["check-config", "--config", &path.to_string_lossy()])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(
        stderr.contains("bridge `plant`") && stderr.contains("/nonexistent/ca.pem"),
        "{stderr}"
    );
    Ok(())
}
