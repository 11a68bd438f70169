//! Build script: compiles `proto/` into Rust (pure Rust: protox parses the `.proto` files, so no
//! system `protoc` is needed) and records the git commit the binary is built from (for
//! `fleetlake --version`; "unknown" outside a git checkout or without git), with the target
//! triple and the object stores built in.

use std::path::PathBuf;
use std::process::Command;

const PROTOS: &[&str] = &["fleetlake/v1/ingest.proto"];

fn main() {
    compile_protos();
    record_commit();
}

fn compile_protos() {
    println!("cargo:rerun-if-changed=proto");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let mut compiler = protox::Compiler::new(["proto"]).expect("proto include path");
    compiler.include_source_info(true);
    for proto in PROTOS {
        if let Err(e) = compiler.open_file(proto) {
            panic!("cannot compile proto/{proto}: {e:?}");
        }
    }
    // Served by the reflection service, so grpcurl and friends need no .proto file.
    std::fs::write(
        out.join("fleetlake_descriptor.bin"),
        compiler.encode_file_descriptor_set(),
    )
    .expect("writing the descriptor set");
    // The messages (prost) for `decode::proto`: decoding points is a payload format like JSON,
    // and the WAL replay decodes stored gRPC records without the gRPC server.
    let messages = out.join("messages");
    let services = out.join("services");
    for dir in [&messages, &services] {
        std::fs::create_dir_all(dir).expect("creating an OUT_DIR folder");
    }
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(false)
        // Bytes fields share the request buffer instead of copying into a Vec.
        .bytes(".")
        .out_dir(&messages)
        .compile_fds(compiler.file_descriptor_set())
        .expect("generating Rust messages from proto/");
    // The service stubs (tonic) for `grpc::proto`, over the messages above.
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .bytes(".")
        .extern_path(".fleetlake.v1", "crate::decode::proto")
        // Our codec: a request that is not valid protobuf is INVALID_ARGUMENT, not INTERNAL.
        .codec_path("crate::grpc::codec::Codec")
        .out_dir(&services)
        .compile_fds(compiler.file_descriptor_set())
        .expect("generating Rust services from proto/");
}

fn record_commit() {
    let commit = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into());
    let dirty = Command::new("git")
        .args(["status", "--porcelain", "--untracked-files=no"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .is_some_and(|o| !o.stdout.is_empty());
    let commit = if dirty {
        format!("{commit}-dirty")
    } else {
        commit
    };
    println!("cargo:rustc-env=FLEETLAKE_GIT_COMMIT={commit}");
    // The object stores built in (S3 always; GCS and Azure behind features), for --version.
    let mut stores = String::from("s3");
    for (feature, name) in [
        ("CARGO_FEATURE_GCS", "gcs"),
        ("CARGO_FEATURE_AZURE", "azure"),
    ] {
        if std::env::var_os(feature).is_some() {
            stores.push(' ');
            stores.push_str(name);
        }
    }
    println!("cargo:rustc-env=FLEETLAKE_OBJECT_STORES={stores}");
    // The target triple (aarch64-unknown-linux-gnu, x86_64-unknown-linux-musl, ...): which
    // gateway a binary is for, read off `--version`.
    let target = std::env::var("TARGET").unwrap_or_else(|_| "unknown".into());
    println!("cargo:rustc-env=FLEETLAKE_TARGET={target}");
    println!("cargo:rerun-if-changed=.git/HEAD");
    println!("cargo:rerun-if-changed=.git/index");
    // Written on every commit and checkout, even when HEAD names the same branch.
    println!("cargo:rerun-if-changed=.git/logs/HEAD");
}
