#!/usr/bin/env bash
# Checks a built fleetlake .deb: the files every package must hold (both binaries, the unit, the
# config as a conffile, the env file, the sysusers.d file, the docs), its Debian architecture, that
# both binaries are stripped ELF files for that architecture, and that the glibc its binaries
# need is no newer than what its Depends line asks for.
# Usage: tests/check-deb.sh PACKAGE.deb DEBIAN_ARCH      (tests/run.sh and tests/cross.sh call it)
set -euo pipefail
deb=$1
arch=$2

contents=$(dpkg-deb -c "$deb")
for f in ./usr/bin/fleetlake ./usr/bin/fleetlake-bench ./lib/systemd/system/fleetlake.service ./etc/fleetlake/fleetlake.toml \
         ./etc/fleetlake/fleetlake.env ./usr/share/doc/fleetlake/README.md \
         ./usr/share/doc/fleetlake/config/README.md ./usr/lib/sysusers.d/fleetlake.conf; do
  echo "$contents" | grep -q " $f\$" || { echo "missing from $deb: $f"; exit 1; }
done
dpkg-deb -I "$deb" conffiles | grep -qx /etc/fleetlake/fleetlake.toml \
  || { echo "fleetlake.toml is not a conffile"; exit 1; }
got_arch=$(dpkg-deb -f "$deb" Architecture)
[ "$got_arch" = "$arch" ] || { echo "$deb: Architecture $got_arch, expected $arch"; exit 1; }

# The ELF machine readelf names for each Debian architecture we build.
case "$arch" in
  amd64) machine="Advanced Micro Devices X86-64" ;;
  arm64) machine="AArch64" ;;
  armhf) machine="ARM" ;;
  *) echo "check-deb: unknown architecture $arch"; exit 1 ;;
esac
depends=$(dpkg-deb -f "$deb" Depends)
declared=$(echo "$depends" | sed -n 's/.*libc6[^(]*(>= \([0-9.]*\)).*/\1/p')
[ -n "$declared" ] || { echo "$deb: Depends names no libc6 version: $depends"; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
dpkg-deb -x "$deb" "$tmp"
for bin in fleetlake fleetlake-bench; do
  elf="$tmp/usr/bin/$bin"
  readelf -h "$elf" | grep -q "Machine: *$machine\$" || { echo "$bin is not an $arch ELF file"; exit 1; }
  if readelf -S -W "$elf" | grep -qE '\.(debug_info|symtab) '; then echo "$bin is not stripped"; exit 1; fi
  # The newest GLIBC_x.y symbol version the binary links against.
  needed=$(readelf --dyn-syms -W "$elf" | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -1)
  if [ "$(printf '%s\n%s\n' "$needed" "$declared" | sort -V | tail -1)" != "$declared" ]; then
    echo "$bin needs glibc $needed but the package depends on libc6 (>= $declared)"; exit 1
  fi
done
echo "package ok: $deb ($(du -h "$deb" | cut -f1); $arch; Depends: $depends; fleetlake $(du -h "$tmp/usr/bin/fleetlake" | cut -f1) stripped)"
