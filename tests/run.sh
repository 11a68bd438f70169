#!/usr/bin/env bash
# fleetlake's whole test suite, as CI runs it (.ci/run calls exactly this script).
# Installs what the tests need when it is missing (Debian: mosquitto, mosquitto-clients, nodejs, npm;
# npm: mqtt (MQTT.js); Python: duckdb,
# pyarrow, polars, datafusion, pyspark (and Java 17 for it), paho-mqtt, pytest, prometheus-client, grpcio, grpcio-tools, grpcio-status, moto[server]
# and boto3 for the S3 tests, which start their own moto server on 127.0.0.1), then runs formatting and lint checks, the Rust unit and
# integration tests, the systemd unit checks (when systemd-analyze exists), the Python
# end-to-end tests against the binary cargo built, the Debian package (cargo-deb, installed
# with `cargo install` when missing), and that package booted under systemd-nspawn
# (systemd-container and debootstrap installed when missing).
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

PY_PKGS=(duckdb pyarrow polars datafusion pyspark "paho-mqtt>=2" pytest prometheus-client grpcio grpcio-tools grpcio-status "moto[server]" boto3)
if ! python3 -c "import duckdb, pyarrow, pyarrow.fs, polars, datafusion, pyspark, pytest, prometheus_client, grpc, grpc_tools.protoc, grpc_status.rpc_status, boto3, moto.server, flask, paho.mqtt.client as m; m.CallbackAPIVersion" >/dev/null 2>&1; then
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
cargo deb --strip --locked
deb=$(ls -t "${CARGO_TARGET_DIR:-target}"/debian/fleetlake_*.deb | head -1)
contents=$(dpkg-deb -c "$deb")
for f in ./usr/bin/fleetlake ./usr/bin/fleetlake-bench ./lib/systemd/system/fleetlake.service ./etc/fleetlake/fleetlake.toml \
         ./etc/fleetlake/fleetlake.env ./usr/share/doc/fleetlake/README.md \
         ./usr/share/doc/fleetlake/config/README.md ./usr/lib/sysusers.d/fleetlake.conf; do
  echo "$contents" | grep -q " $f\$" || { echo "missing from $deb: $f"; exit 1; }
done
dpkg-deb -I "$deb" conffiles | grep -qx /etc/fleetlake/fleetlake.toml \
  || { echo "fleetlake.toml is not a conffile"; exit 1; }
echo "package ok: $deb ($(du -h "$deb" | cut -f1))"

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
