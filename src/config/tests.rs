use super::*;

fn err_key(text: &str) -> String {
    match RawConfig::parse(text, "test").and_then(Config::validate) {
        Err(ConfigError::Invalid { key, .. }) => key,
        Err(e) => format!("other: {e}"),
        Ok(_) => "ok".into(),
    }
}

#[test]
fn the_builtin_default_is_valid_and_routes_everything_to_telemetry() {
    let config = Config::builtin();
    assert_eq!(
        config.mqtt.listen.map(|a| a.to_string()).as_deref(),
        Some("127.0.0.1:1883")
    );
    assert_eq!(
        config.grpc.listen.map(|a| a.to_string()).as_deref(),
        Some("127.0.0.1:50051")
    );
    assert_eq!(config.grpc.default_table, "telemetry");
    assert_eq!(
        config.output,
        OutputTarget::Local(PathBuf::from("./fleetlake-data/lake"))
    );
    let router = config.router();
    let route = router
        .route("sensors/thermo-7/telemetry")
        .and_then(Result::ok)
        .map(|r| r.table.to_string());
    assert_eq!(route.as_deref(), Some("telemetry"));
}

#[test]
fn an_empty_file_gives_the_builtin_default() {
    let raw = RawConfig::parse("", "test").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(raw.tables.len(), 1);
}

#[test]
fn the_production_example_in_config_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/fleetlake.toml");
    let config = Config::load(Some(&path)).unwrap_or_else(|e| panic!("{e}"));
    let tls = config.mqtt.tls.as_ref().map(|t| t.listen.ip().to_string());
    assert_eq!(tls.as_deref(), Some("0.0.0.0"));
    assert!(!config.mqtt.auth.allow_anonymous);
}

#[test]
fn grpc_settings_are_checked() {
    assert_eq!(err_key("[grpc]\nlisten = \"localhost\""), "grpc.listen");
    assert_eq!(
        err_key("[grpc]\ndefault_table = \"_x\""),
        "grpc.default_table"
    );
    assert_eq!(
        err_key("[grpc]\nmax_message_size = 0"),
        "grpc.max_message_size"
    );
    assert_eq!(
        err_key("[memory]\nbudget = \"8MiB\"\n[grpc]\nmax_message_size = \"4MiB\""),
        "memory.budget"
    );
    // gRPC off: its message size does not bind the budget.
    let off = "[memory]\nbudget = \"8MiB\"\n[grpc]\nlisten = \"\"";
    assert_eq!(err_key(off), "ok");
}

#[test]
fn bad_values_are_reported_with_their_key() {
    assert_eq!(err_key("[batch]\nmax_rows = 0"), "batch.max_rows");
    assert_eq!(err_key("[batch]\nmax_tables = 0"), "batch.max_tables");
    assert_eq!(err_key("[mqtt]\nlisten = \"nowhere\""), "mqtt.listen");
    assert_eq!(
        err_key("[parquet]\ncompression = \"brotli9\""),
        "parquet.compression"
    );
    assert_eq!(
        err_key("[parquet]\ncompression_level = 99"),
        "parquet.compression_level"
    );
    assert_eq!(err_key("[output]\nurl = \"ftp://host/x\""), "output.url");
    assert_eq!(err_key("[output]\nurl = \"s3://\""), "output.url");
    assert_eq!(err_key("[output]\nurl = \"s3://b/a//c\""), "output.url");
    assert_eq!(
        err_key("[output]\nurl = \"s3://b\"\nspool_full = \"drop\""),
        "output.spool_full"
    );
    assert_eq!(
        err_key("[output]\nurl = \"s3://b\"\nmultipart_threshold = \"1MiB\""),
        "output.multipart_threshold"
    );
    assert_eq!(
        err_key("[output]\nurl = \"s3://b\"\n[output.s3]\nendpoint = \"http://127.0.0.1:9000\""),
        "output.s3.endpoint"
    );
    assert_eq!(
        err_key("[[tables]]\nname = \"a\"\ntopics = [\"x/#/y\"]"),
        "tables[0].topics[0]"
    );
    assert_eq!(
        err_key("[[tables]]\nname = \"_x\"\ntopics = [\"#\"]"),
        "tables[0].name"
    );
    assert_eq!(err_key("[memory]\nbudget = \"1MiB\""), "memory.budget");
    assert_eq!(
        err_key("[memory]\nqos0_when_full = \"maybe\""),
        "memory.qos0_when_full"
    );
    assert_eq!(err_key("[node]\nid = \"a/b\""), "node.id");
    // MQTT's largest packet is the limit (and keeps 4 x it inside a 32-bit usize).
    assert_eq!(
        err_key("[mqtt]\nmax_packet_size = \"1GiB\"\n[memory]\nbudget = \"8GiB\""),
        "mqtt.max_packet_size"
    );
    // The budget is a semaphore of bytes (tokio's MAX_PERMITS: 2^61 - 1, or 2^29 - 1 = 512MiB
    // on a 32-bit build, where the largest packets cannot be had: 4 x 256MiB > 512MiB).
    assert_eq!(
        err_key("[memory]\nbudget = 2305843009213693952"),
        "memory.budget"
    );
    let largest = err_key("[mqtt]\nmax_packet_size = \"256MiB\"\n[memory]\nbudget = \"1GiB\"");
    if cfg!(target_pointer_width = "32") {
        assert_eq!(largest, "memory.budget");
        assert_eq!(err_key("[memory]\nbudget = \"512MiB\""), "memory.budget");
        assert_eq!(err_key("[memory]\nbudget = \"511MiB\""), "ok");
    } else {
        assert_eq!(largest, "ok");
    }
}

#[test]
fn unknown_keys_are_refused_by_name() {
    let err = RawConfig::parse("[batch]\nmax_rowz = 5", "test")
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("max_rowz"), "{err}");
}

#[test]
fn units_and_file_urls_are_understood() {
    let raw = RawConfig::parse(
        "[batch]\nmax_bytes = \"8MiB\"\nmax_age = \"250ms\"\n[output]\nurl = \"file:///var/lib/lake\"",
        "test",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let config = Config::validate(raw).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.batch.max_bytes, 8 << 20);
    assert_eq!(config.batch.max_age, Duration::from_millis(250));
    assert_eq!(
        config.output,
        OutputTarget::Local(PathBuf::from("/var/lib/lake"))
    );
    let null = RawConfig::parse("[output]\nurl = \"null:\"", "test")
        .and_then(Config::validate)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(null.output, OutputTarget::Discard);
}

#[test]
fn object_store_urls() {
    let config = RawConfig::parse(
        "[node]\ndata_dir = \"/d\"\n[output]\nurl = \"s3://lake/fleet/v1/\"\nspool_max_bytes = \"64MiB\"\nspool_full = \"drop_oldest\"\n[output.s3]\nendpoint = \"http://127.0.0.1:9000\"\nallow_http = true",
        "test",
    )
    .and_then(Config::validate)
    .expect("valid");
    let OutputTarget::Remote(r) = config.output else {
        panic!("not remote: {:?}", config.output);
    };
    assert_eq!(
        (r.kind, r.bucket.as_str(), r.prefix.as_str()),
        (StoreKind::S3, "lake", "fleet/v1")
    );
    assert_eq!(r.spool_dir, PathBuf::from("/d/spool"));
    assert_eq!(
        (r.spool_max_bytes, r.spool_full),
        (64 << 20, SpoolFull::DropOldest)
    );
    assert_eq!(r.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
    for (url, kind, bucket, prefix) in [
        ("gs://b", StoreKind::Gcs, "b", ""),
        ("az://c/p", StoreKind::Azure, "c", "p"),
    ] {
        let text = format!("[output]\nurl = \"{url}\"");
        let c = RawConfig::parse(&text, "test")
            .and_then(Config::validate)
            .expect("valid");
        let OutputTarget::Remote(r) = c.output else {
            panic!("{url}: not remote");
        };
        assert_eq!(
            (r.kind, r.bucket.as_str(), r.prefix.as_str()),
            (kind, bucket, prefix)
        );
        assert_eq!(r.spool_full, SpoolFull::Pause, "pause is the default");
    }
    // Credentials are never read from the file.
    assert_eq!(
        err_key("[output]\nurl = \"s3://b\"\n[output.s3]\nsecret_access_key = \"x\""),
        "output.s3.secret_access_key"
    );
}

#[test]
fn lake_modes_are_octal_and_keep_the_services_own_access() {
    let config = Config::builtin();
    assert_eq!(
        (config.lake_modes.file, config.lake_modes.dir),
        (0o640, 0o750)
    );
    let ok = "[output]\nfile_mode = \"0644\"\ndir_mode = \"755\"";
    assert_eq!(err_key(ok), "ok");
    assert_eq!(
        err_key("[output]\nfile_mode = \"rw-r-----\""),
        "output.file_mode"
    );
    assert_eq!(
        err_key("[output]\nfile_mode = \"0440\""),
        "output.file_mode"
    );
    assert_eq!(err_key("[output]\ndir_mode = \"0640\""), "output.dir_mode");
}

#[test]
fn declared_columns_are_checked_and_name_their_key() {
    let table = |body: &str| format!("[[tables]]\nname = \"r\"\ntopics = [\"r/#\"]\n{body}\n");
    let ok = table(
        r#"unknown_fields = "drop"
columns = [
  { name = "temp", type = "float64", required = true },
  { name = "n", type = "int64" },
  { name = "at", type = "timestamp" },
  { name = "site", type = "string", from = "meta.site" },
  { name = "ok", type = "bool" },
  { name = "raw", type = "binary" },
]"#,
    );
    let config = RawConfig::parse(&ok, "test")
        .and_then(Config::validate)
        .unwrap_or_else(|e| panic!("{e}"));
    let d = &config.declared[0];
    assert_eq!((d.table.as_str(), d.columns.len()), ("r", 6));
    assert_eq!(d.unknown_fields, crate::columnar::UnknownFields::Drop);
    assert_eq!(d.columns[3].from.as_deref(), Some("meta.site"));
    for (body, key) in [
        (
            r#"columns = [{ name = "t", type = "decimal" }]"#,
            "tables[0].columns[0].type",
        ),
        (
            r#"columns = [{ name = "t", type = "float64" }, { name = "t", type = "bool" }]"#,
            "tables[0].columns[1].name",
        ),
        (
            r#"columns = [{ name = "time", type = "float64" }]"#,
            "tables[0].columns[0].name",
        ),
        (
            r#"columns = [{ name = "a", type = "bool", from = "" }]"#,
            "tables[0].columns[0].from",
        ),
        (
            r#"columns = [{ name = "a", type = "bool", nullable = true }]"#,
            "other",
        ),
        (r#"unknown_fields = "reject""#, "tables[0].unknown_fields"),
        (r#"unknown_fields = "ignore""#, "tables[0].unknown_fields"),
    ] {
        let got = err_key(&table(body));
        assert!(got.starts_with(key), "{body}: {got}");
    }
    // `strict = true` is `unknown_fields = "reject"`.
    let strict = table(
        r#"strict = true
columns = [{ name = "t", type = "float64" }]"#,
    );
    let config = RawConfig::parse(&strict, "test")
        .and_then(Config::validate)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        config.declared[0].unknown_fields,
        crate::columnar::UnknownFields::Reject
    );
    let both = table(
        r#"strict = true
unknown_fields = "drop"
columns = [{ name = "t", type = "float64" }]"#,
    );
    assert_eq!(err_key(&both), "tables[0].strict");
    // A table with columns and no topics declares the schema of a gRPC (or `{table}`) table.
    let grpc_only = "[[tables]]\nname = \"m\"\ncolumns = [{ name = \"n\", type = \"int64\" }]\n[[tables]]\nname = \"t\"\ntopics = [\"#\"]\n";
    assert_eq!(err_key(grpc_only), "ok");
    assert_eq!(err_key("[[tables]]\nname = \"m\"\n"), "tables[0].topics");
}

#[test]
fn the_clock_window_and_policy_are_checked() {
    assert_eq!(err_key("[clock]\nmax_ahead = \"30s\""), "clock.max_ahead");
    let weeks = err_key("[clock]\nmax_behind = \"2w\"");
    assert!(
        weeks.contains("unknown duration unit `w` (use ms, s, m, h, d)"),
        "{weeks}"
    );
    assert_eq!(
        err_key("[clock]\nout_of_range = \"clamp\""),
        "clock.out_of_range"
    );
    let config = RawConfig::parse(
        "[clock]\nmax_behind = \"7d\"\nout_of_range = \"reject\"",
        "test",
    )
    .and_then(Config::validate)
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.clock.max_behind_us, 7 * 86_400_000_000);
    assert_eq!(config.clock.action, OutOfRange::Reject);
    assert!(config.clock.out_of_range(0, 8 * 86_400_000_000));
    assert!(!config.clock.out_of_range(86_400_000_000, 0));
}

#[test]
fn the_table_format_is_parquet_by_default_and_delta_is_checked() {
    assert_eq!(Config::builtin().table_format, TableFormat::Parquet);
    let delta = |extra: &str| format!("[output]\ntable_format = \"delta\"\n{extra}");
    let config = RawConfig::parse(&delta(""), "test")
        .and_then(Config::validate)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        config.table_format,
        TableFormat::Delta {
            checkpoint_interval: 10,
            compact: Some(crate::sink::compact::CompactOptions {
                after: Duration::from_secs(900),
                target_bytes: 128 << 20,
                vacuum_after: Duration::from_secs(3600),
            }),
        }
    );
    let off = RawConfig::parse(&delta("[output.delta]\ncompact_after = \"0s\""), "test")
        .and_then(Config::validate)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(matches!(
        off.table_format,
        TableFormat::Delta { compact: None, .. }
    ));
    assert_eq!(
        err_key(&delta("[output.delta]\ntarget_file_size = \"1KiB\"")),
        "output.delta.target_file_size"
    );
    assert_eq!(
        err_key(&delta("[output.delta]\nvacuum_after = \"0s\"")),
        "output.delta.vacuum_after"
    );
    assert_eq!(
        err_key("[output]\ntable_format = \"iceberg\""),
        "output.table_format"
    );
    assert_eq!(err_key(&delta("url = \"s3://bucket/p\"")), "ok");
    assert_eq!(err_key(&delta("url = \"null:\"")), "output.table_format");
    assert_eq!(
        err_key(&delta("retain_bytes = \"1GiB\"")),
        "output.table_format"
    );
    assert_eq!(
        err_key(&delta("[output.delta]\ncheckpoint_interval = 0")),
        "output.delta.checkpoint_interval"
    );
    let unknown = RawConfig::parse(&delta("[output.delta]\ncheckpoint = 3"), "test")
        .expect_err("unknown key")
        .to_string();
    assert!(unknown.contains("checkpoint"), "{unknown}");
}
