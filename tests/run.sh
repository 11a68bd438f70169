#!/usr/bin/env bash
# fleetlake's whole test suite, as CI runs it (.ci/run calls exactly this script).
# Installs what the tests need when it is missing (Debian: mosquitto, mosquitto-clients, nodejs, npm;
# npm: mqtt (MQTT.js); Python: duckdb, deltalake,
# pyarrow, polars, datafusion, pyspark (and Java 17 for it), paho-mqtt, pytest, prometheus-client, grpcio, grpcio-tools, grpcio-status, moto[server]
# and boto3 for the S3 tests, which start their own moto server on 127.0.0.1), then runs formatting and lint checks, the Rust unit and
# integration tests, the systemd unit checks (when systemd-analyze exists), the Python
# end-to-end tests against the binary cargo built, the Debian package (cargo-deb, installed
# with `cargo install` when missing), and that package booted under systemd-nspawn
# (systemd-container and debootstrap installed when missing), the aarch64 build smoke-tested
# and the unit tests run on armv7, both under qemu-user (tests/cross.sh; the cross compilers and
# qemu installed when missing).
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

# mosquitto-clients for mosquitto_pub; mosquitto, the broker the bridge tests start themselves
# (on a free loopback port with their own config; the package's own service is not used).
if ! command -v mosquitto_pub >/dev/null 2>&1 || ! [ -x /usr/sbin/mosquitto ]; then
  echo "== installing mosquitto and mosquitto-clients"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto mosquitto-clients
fi

# Java 17 for Spark, one of the lake's readers (tests/python/test_readers.py).
if ! command -v java >/dev/null 2>&1; then
  echo "== installing openjdk-17-jre-headless"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openjdk-17-jre-headless
fi

# Node.js and MQTT.js (npm `mqtt` 5) for the broker's interoperability test
# (tests/node/aliases.js), cached outside the clone.
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  echo "== installing nodejs and npm"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm
fi
NODE_DIR="${FLEETLAKE_NODE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/fleetlake-node}"
if [ ! -f "$NODE_DIR/node_modules/mqtt/package.json" ]; then
  echo "== installing MQTT.js (npm mqtt@5) into $NODE_DIR"
  mkdir -p "$NODE_DIR"
  npm install --prefix "$NODE_DIR" --no-audit --no-fund --silent mqtt@5
fi
export NODE_PATH="$NODE_DIR/node_modules"

PY_PKGS=(duckdb pyarrow polars datafusion pyspark deltalake "paho-mqtt>=2" pytest prometheus-client grpcio grpcio-tools grpcio-status "moto[server]" boto3)
if ! python3 -c "import duckdb, pyarrow, pyarrow.fs, polars, datafusion, pyspark, deltalake, pytest, prometheus_client, grpc, grpc_tools.protoc, grpc_status.rpc_status, boto3, moto.server, flask, paho.mqtt.client as m; m.CallbackAPIVersion" >/dev/null 2>&1; then
  echo "== installing Python test packages"
  python3 -m pip install -q "${PY_PKGS[@]}" \
    || python3 -m pip install -q --break-system-packages "${PY_PKGS[@]}"
fi

# fmt and clippy are rustup components; a toolchain without them skips these checks (said
# loudly) rather than failing the suite.
have_component() { cargo "$1" --version >/dev/null 2>&1 || rustup component add "$2" >/dev/null 2>&1; }

if have_component fmt rustfmt; then
  echo "== cargo fmt --check"
  cargo fmt --all -- --check
else
  echo "== SKIPPED cargo fmt --check: rustfmt is not installed"
fi

if have_component clippy clippy; then
  echo "== cargo clippy"
  cargo clippy --locked --all-targets -- -D warnings
  # The optional object stores (GCS, Azure) must keep compiling too.
  cargo clippy --locked --all-targets --features gcs,azure -- -D warnings
else
  echo "== SKIPPED cargo clippy: clippy is not installed"
fi

echo "== cargo test"
# --nocapture: a test that cannot run here (e.g. no tmpfs mount) says SKIPPED in the log.
cargo test --locked -- --nocapture

if command -v systemd-analyze >/dev/null 2>&1; then
  echo "== systemd unit: verify, and security exposure <= 1.5"
  unit_dir=$(mktemp -d)
  bin="$(cd "${CARGO_TARGET_DIR:-target}" && pwd)/debug/fleetlake"
  sed "s#/usr/bin/fleetlake#$bin#g" systemd/fleetlake.service > "$unit_dir/fleetlake.service"
  systemd-analyze verify "$unit_dir/fleetlake.service"
  rm -rf "$unit_dir"
  systemd-analyze security --offline=true --threshold=15 systemd/fleetlake.service | tail -1
else
  echo "== SKIPPED systemd unit checks: systemd-analyze is not installed"
fi

echo "== pytest (end to end: mosquitto_pub, paho-mqtt, grpcio, DuckDB, pyarrow, moto S3 server)"
export FLEETLAKE_BIN="${CARGO_TARGET_DIR:-target}/debug/fleetlake"
python3 -m pytest -q -s tests/python   # -s: the crash test prints its summary

echo "== cargo deb: the Debian package builds and holds the expected files"
if ! command -v cargo-deb >/dev/null 2>&1; then
  echo "== installing cargo-deb"
  cargo install cargo-deb --locked
fi
# cargo deb prints the package's path last (cross builds put theirs in the same folder).
deb=$(cargo deb --strip --locked | tail -1)
tests/check-deb.sh "$deb" amd64

# The package under a real systemd: a cached Debian 12 root file system (debootstrap) gets the
# package and boots with systemd-nspawn; tests/nspawn/scenario.sh plays the operator inside
# (shipped config: one failed start; minimal config: start, publish, reload, stop, an analyst
# reads the lake; the sandbox's exposure). Needs root; FLEETLAKE_SKIP_NSPAWN=1 skips it.
if [ "${FLEETLAKE_SKIP_NSPAWN:-0}" = 1 ]; then
  echo "== SKIPPED the package under systemd-nspawn (FLEETLAKE_SKIP_NSPAWN=1)"
else
  if ! command -v systemd-nspawn >/dev/null 2>&1 || ! command -v debootstrap >/dev/null 2>&1; then
    echo "== installing systemd-container and debootstrap"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq systemd-container debootstrap
  fi
  echo "== the package under systemd-nspawn (Debian 12, systemd as PID 1)"
  nspawn_started=$(date +%s)
  deb_abs="$(cd "$(dirname "$deb")" && pwd)/$(basename "$deb")"
  as_root env FLEETLAKE_DEB="$deb_abs" python3 -m pytest -q -s tests/nspawn
  echo "nspawn test: $(( $(date +%s) - nspawn_started )) s"
fi

# The gateways (tests/cross.sh; README "On the gateways"): the aarch64 build, cross-compiled
# with Debian's gcc-aarch64-linux-gnu, packaged as an arm64 .deb and smoke-tested under qemu-user
# (default config, mosquitto_pub at QoS 1, SIGTERM, DuckDB reads the rows); and the unit tests
# built for armv7 and run under qemu-arm (the 32-bit check). The armv7 package and the static
# musl builds run from the same script by hand. FLEETLAKE_SKIP_CROSS=1 skips both.
if [ "${FLEETLAKE_SKIP_CROSS:-0}" = 1 ]; then
  echo "== SKIPPED the aarch64 build and the armv7 unit tests (FLEETLAKE_SKIP_CROSS=1)"
else
  cross_started=$(date +%s)
  # README shows this line to users; it must stay what runs here.
  grep -q '^tests/cross.sh aarch64 ' README.md || { echo "README no longer shows tests/cross.sh aarch64"; exit 1; }
  tests/cross.sh aarch64
  tests/cross.sh --unit-only armv7
  echo "aarch64 build and smoke test, armv7 unit tests: $(( $(date +%s) - cross_started )) s"
fi
