#!/usr/bin/env bash
# Builds fleetlake for the gateways from this x86_64 Debian machine and smoke-tests each build.
#
#   tests/cross.sh [--no-smoke] [--unit | --unit-only] TARGET...   TARGET: aarch64 armv7 x86_64-musl aarch64-musl all
#
#   aarch64       aarch64-unknown-linux-gnu      release binaries + fleetlake_<v>_arm64.deb
#   armv7         armv7-unknown-linux-gnueabihf  release binaries + fleetlake_<v>_armhf.deb
#   x86_64-musl   x86_64-unknown-linux-musl      static binaries + fleetlake-<v>-<triple>.tar.xz
#   aarch64-musl  aarch64-unknown-linux-musl     static binaries + fleetlake-<v>-<triple>.tar.xz
#   (no armv7 musl build: rustup here has no rust-std for armv7-unknown-linux-musleabihf, 404)
#
# Everything lands in $CARGO_TARGET_DIR/dist/ (default target/dist/). Each build is then run
# (under Debian's qemu-user for a foreign architecture): `--version` names the target, and the
# daemon on its default config takes mosquitto_pub messages at QoS 1, flushes on SIGTERM, and
# DuckDB reads the rows back (tests/python/test_cross_smoke.py). --no-smoke skips that;
# --unit also runs the library's unit tests for the target under qemu (armv7: the 32-bit check);
# --unit-only runs only those (no release build, package or smoke test).
#
# Toolchain: rustup targets, and Debian's C cross compilers (gcc-aarch64-linux-gnu,
# gcc-arm-linux-gnueabihf) for the C in ring and zstd and as linkers; musl-tools (musl-gcc) for
# x86_64-musl; qemu-user to run them. All are installed here when missing (apt-get as root or
# via sudo). The glibc builds link against Debian 12's cross glibc and need glibc >= 2.34 on the
# gateway (the .deb says so); the musl builds need no libc at all.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

usage() { echo "usage: tests/cross.sh [--no-smoke] [--unit | --unit-only] aarch64|armv7|x86_64-musl|aarch64-musl|all..." >&2; exit 2; }

smoke=1
unit=0
release=1
targets=()
for arg in "$@"; do
  case "$arg" in
    --no-smoke) smoke=0 ;;
    --unit) unit=1 ;;
    --unit-only) unit=1; release=0 ;;
    all) targets+=(aarch64 armv7 x86_64-musl aarch64-musl) ;;
    aarch64|armv7|x86_64-musl|aarch64-musl) targets+=("$arg") ;;
    *) usage ;;
  esac
done
[ ${#targets[@]} -gt 0 ] || usage

target_dir="${CARGO_TARGET_DIR:-target}"
mkdir -p "$target_dir/dist"
dist="$(cd "$target_dir/dist" && pwd)"
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -1)

need_apt=()
need_cmd() { command -v "$1" >/dev/null 2>&1 || need_apt+=("$2"); }

for t in "${targets[@]}"; do
  case "$t" in
    aarch64)      need_cmd aarch64-linux-gnu-gcc gcc-aarch64-linux-gnu; need_cmd qemu-aarch64 qemu-user ;;
    armv7)        need_cmd arm-linux-gnueabihf-gcc gcc-arm-linux-gnueabihf; need_cmd qemu-arm qemu-user ;;
    x86_64-musl)  need_cmd musl-gcc musl-tools ;;
    aarch64-musl) need_cmd aarch64-linux-gnu-gcc gcc-aarch64-linux-gnu; need_cmd qemu-aarch64 qemu-user ;;
  esac
done
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "== installing ${need_apt[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(printf '%s\n' "${need_apt[@]}" | sort -u)
fi

# The release build of target $t as a .deb (glibc targets) or a static tarball, checked.
package() {
  if [ -n "$deb_arch" ]; then
    echo "== $t: cargo deb ($deb_arch)"
    deb=$(cargo deb --target "$triple" --no-build --strip --locked | tail -1)
    cp "$deb" "$dist/"
    tests/check-deb.sh "$dist/$(basename "$deb")" "$deb_arch"
  else
    echo "== $t: static tarball"
    name="fleetlake-$version-$triple"
    stage=$(mktemp -d)
    mkdir -p "$stage/$name"
    for bin in fleetlake fleetlake-bench; do
      "$strip" -o "$stage/$name/$bin" "$out/$bin"
    done
    cp systemd/fleetlake.service systemd/fleetlake.sysusers config/fleetlake.toml config/fleetlake.env README.md "$stage/$name/"
    mkdir -p "$stage/$name/config" && cp config/README.md "$stage/$name/config/"
    tar -C "$stage" -cJf "$dist/$name.tar.xz" "$name"
    # Static: no program interpreter, no shared library.
    if readelf -l "$stage/$name/fleetlake" | grep -q 'Requesting program interpreter' \
       || readelf -d "$stage/$name/fleetlake" | grep -q NEEDED; then
      echo "$triple: fleetlake is not static"; exit 1
    fi
    echo "tarball ok: $dist/$name.tar.xz ($(du -h "$dist/$name.tar.xz" | cut -f1); fleetlake $(du -h "$stage/$name/fleetlake" | cut -f1) stripped, static)"
    rm -rf "$stage"
  fi
}

for t in "${targets[@]}"; do
  started=$(date +%s)
  # triple, C compiler, linker, strip, emulator (empty: runs natively), Debian architecture
  # (empty: a static tarball instead of a .deb). musl-gcc compiles C for x86_64-musl but does
  # not link: rustc links musl targets with its own (self-contained) C runtime via the host cc.
  case "$t" in
    aarch64)      triple=aarch64-unknown-linux-gnu;     cc=aarch64-linux-gnu-gcc;   linker=$cc; strip=aarch64-linux-gnu-strip
                  runner="qemu-aarch64 -L /usr/aarch64-linux-gnu";  deb_arch=arm64 ;;
    armv7)        triple=armv7-unknown-linux-gnueabihf; cc=arm-linux-gnueabihf-gcc; linker=$cc; strip=arm-linux-gnueabihf-strip
                  runner="qemu-arm -L /usr/arm-linux-gnueabihf";    deb_arch=armhf ;;
    x86_64-musl)  triple=x86_64-unknown-linux-musl;     cc=musl-gcc;                linker=cc;  strip=strip
                  runner="";                                        deb_arch="" ;;
    aarch64-musl) triple=aarch64-unknown-linux-musl;    cc=aarch64-linux-gnu-gcc;   linker=$cc; strip=aarch64-linux-gnu-strip
                  runner="qemu-aarch64";                            deb_arch="" ;;
  esac
  rustup target list --installed | grep -qx "$triple" || rustup target add "$triple"
  upper=$(echo "$triple" | tr 'a-z-' 'A-Z_')
  lower=$(echo "$triple" | tr '-' '_')
  build_env=("CC_$lower=$cc" "CARGO_TARGET_${upper}_LINKER=$linker")
  out="$target_dir/$triple/release"
  if [ "$release" = 1 ]; then
    echo "== $t: cargo build --release --target $triple"
    env "${build_env[@]}" cargo build --release --locked --target "$triple" --bins
    package
  fi
  if [ "$smoke" = 1 ] && [ "$release" = 1 ]; then
    echo "== $t: smoke test${runner:+ under $runner}"
    FLEETLAKE_CROSS_BIN="$(cd "$out" && pwd)/fleetlake" FLEETLAKE_CROSS_TARGET="$triple" \
      FLEETLAKE_CROSS_RUNNER="$runner" python3 -m pytest -q -s tests/python/test_cross_smoke.py
  fi
  if [ "$unit" = 1 ]; then
    echo "== $t: unit tests${runner:+ under $runner}"
    # A native target (x86_64-musl) runs its tests directly: cargo refuses an empty runner.
    test_env=("${build_env[@]}")
    [ -z "$runner" ] || test_env+=("CARGO_TARGET_${upper}_RUNNER=$runner")
    env "${test_env[@]}" cargo test --locked --target "$triple" --lib
  fi
  echo "== $t: done in $(( $(date +%s) - started )) s"
done
