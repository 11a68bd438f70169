//! The command line: config checking and exit codes, as the systemd unit relies on them (78: final, not restarted).

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

/// The production example with its certificate, key, password and ACL files made in `dir`.
fn production_config(
    dir: &std::path::Path,
) -> Result<std::path::PathBuf, Box<dyn std::error::Error>> {
    let (cert, key) = (dir.join("server.pem"), dir.join("server.key"));
    let made = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ])
        .args(["-subj", "/CN=gw-0001", "-days", "1", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()?;
    assert!(
        made.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&made.stderr)
    );
    // python3: base64(pbkdf2_hmac("sha512", b"pw", b"saltsaltsalt", 101))
    std::fs::write(
        dir.join("mqtt.passwd"),
        "dev-1:$7$101$c2FsdHNhbHRzYWx0$LLKkEbEE6A0ZzBgDD1a8DxtZgwjUsWayIyP80udI8/oy/V5JrBisQZnPkSqa7DTcD2GFAT9Bqc/9Z8XDXv/2PA==\n",
    )?;
    std::fs::write(dir.join("mqtt.acl"), "pattern write sensors/%u/#\n")?;
    let example = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/fleetlake.toml"
    ))?;
    let d = dir.display();
    let text = example
        .replace("/etc/fleetlake/tls/server.pem", &format!("{d}/server.pem"))
        .replace(
            "/run/credentials/fleetlake.service/mqtt-tls.key",
            &format!("{d}/server.key"),
        )
        .replace(
            "/run/credentials/fleetlake.service/mqtt.passwd",
            &format!("{d}/mqtt.passwd"),
        )
        .replace("/etc/fleetlake/mqtt.acl", &format!("{d}/mqtt.acl"));
    let path = dir.join("fleetlake.toml");
    std::fs::write(&path, text)?;
    Ok(path)
}

#[test]
fn check_config_prints_the_effective_config_of_a_good_file_only_when_asked() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = production_config(dir.path())?;
    let quiet = fleetlake(&["check-config", "--config", &path.to_string_lossy()])?;
    assert_eq!(quiet.status.code(), Some(0));
    assert!(quiet.stdout.is_empty(), "no config dump unless --print");
    let out = fleetlake(&[
        "check-config",
        "--print",
        "--config",
        &path.to_string_lossy(),
    ])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let printed = String::from_utf8(out.stdout)?;
    assert!(printed.contains("listen = \"0.0.0.0:8883\""));
    assert!(printed.contains("shutdown_grace"), "defaults are filled in");
    Ok(())
}

#[test]
fn check_config_names_a_missing_or_bad_security_file() -> TestResult {
    // As shipped, the example names files that exist only once the operator made them.
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config/fleetlake.toml");
    let out = fleetlake(&["check-config", "--config", path])?;
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("mqtt.passwd"));

    let dir = tempfile::tempdir()?;
    let path = production_config(dir.path())?;
    for (file, text, needle) in [
        ("mqtt.acl", "topic write a/#/b\n", "mqtt.acl: line 1"),
        ("mqtt.passwd", "dev-1:plain\n", "mosquitto_passwd -U"),
        ("server.key", "not a key\n", "server.key"),
    ] {
        let saved = std::fs::read(dir.path().join(file))?;
        std::fs::write(dir.path().join(file), text)?;
        let out = fleetlake(&["check-config", "--config", &path.to_string_lossy()])?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(78), "{file}: {stderr}");
        assert!(stderr.contains(needle), "{file}: {stderr}");
        std::fs::write(dir.path().join(file), saved)?;
    }
    Ok(())
}

#[test]
fn a_listener_beyond_loopback_needs_authentication_or_an_explicit_anonymous() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("open.toml");
    std::fs::write(&path, "[mqtt]\nlisten = \"0.0.0.0:1883\"\n")?;
    let out = fleetlake(&["check-config", "--config", &path.to_string_lossy()])?;
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("mqtt.auth.allow_anonymous"));
    let out = fleetlake(&["run", "--config", &path.to_string_lossy()])?;
    assert_eq!(
        out.status.code(),
        Some(78),
        "`run` refuses it too, before binding"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("mqtt.auth.allow_anonymous"));
    std::fs::write(
        &path,
        "[mqtt]\nlisten = \"0.0.0.0:1883\"\n[mqtt.auth]\nallow_anonymous = true\n",
    )?;
    let out = fleetlake(&["check-config", "--config", &path.to_string_lossy()])?;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
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
    // The triple this test binary was built for is the one the daemon was built for.
    let target = format!("; target {}", std::env::consts::ARCH);
    assert!(text.contains(&target), "{text}");
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

#[test]
fn run_exits_78_on_a_credential_that_was_never_loaded_and_says_which_line_to_add() -> TestResult {
    // The shipped example names /run/credentials/fleetlake.service/mqtt.passwd: without
    // `LoadCredential=` that file does not exist.
    let dir = tempfile::tempdir()?;
    let example = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/fleetlake.toml"
    ))?;
    let data = dir.path().join("data");
    let text = example.replace(
        "data_dir = \"/var/lib/fleetlake\"",
        &format!("data_dir = \"{}\"", data.display()),
    );
    let path = dir.path().join("fleetlake.toml");
    std::fs::write(&path, text)?;
    for command in ["run", "check-config"] {
        let out = fleetlake(&[command, "--config", &path.to_string_lossy()])?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(78), "{command}: {stderr}");
        assert!(
            stderr.contains("LoadCredential=mqtt.passwd:/etc/fleetlake/credentials/mqtt.passwd"),
            "{command}: {stderr}"
        );
        assert!(
            stderr.lines().count() <= 3,
            "{command}: one message, not a dump: {stderr}"
        );
    }
    Ok(())
}

#[test]
fn run_exits_78_when_node_data_dir_cannot_be_created() -> TestResult {
    let dir = tempfile::tempdir()?;
    let blocker = dir.path().join("file");
    std::fs::write(&blocker, "")?;
    let path = dir.path().join("fleetlake.toml");
    std::fs::write(
        &path,
        format!(
            "[node]\ndata_dir = \"{}/data\"\n[mqtt]\nlisten = \"127.0.0.1:0\"\n[grpc]\nlisten = \"\"\n[admin]\nlisten = \"\"\n",
            blocker.display()
        ),
    )?;
    let out = fleetlake(&["run", "--config", &path.to_string_lossy()])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(stderr.contains("node.data_dir"), "{stderr}");
    Ok(())
}

#[test]
fn check_config_warns_of_an_unbounded_lake_and_of_bounds_past_the_volume() -> TestResult {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let write = |name: &str, output: &str| -> std::io::Result<String> {
        let path = dir.path().join(name);
        let text = format!(
            "[node]\ndata_dir = \"{}\"\n[output]\n{output}\n",
            data.display()
        );
        std::fs::write(&path, text)?;
        Ok(path.to_string_lossy().into_owned())
    };
    let unbounded = write("a.toml", "")?;
    let out = fleetlake(&["check-config", "--config", &unbounded])?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("has no bound (output.retain_bytes, output.retain_age)"),
        "{err}"
    );
    // A petabyte bound is more than any test machine's volume.
    let huge = write(
        "b.toml",
        "retain_bytes = \"1048576GiB\"\nretain_age = \"30d\"",
    )?;
    let out = fleetlake(&["check-config", "--config", &huge])?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(!err.contains("has no bound"), "{err}");
    assert!(
        err.contains("less than its bounds add up to")
            && err.contains("output.retain_bytes 1048576GiB"),
        "{err}"
    );
    Ok(())
}
