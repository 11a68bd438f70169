#!/bin/bash
# Runs inside the booted Debian 12 container (systemd as PID 1), as the oneshot unit
# fleetlake-scenario.service; tests/nspawn/test_package.py reads what it writes to /results.
# Does what an operator does: installs the package, starts the shipped config, then a minimal one.
set -u
exec >/results/scenario.log 2>&1
result() { echo "$1=$2" >> /results/results.env; }
set -x

dpkg -i /pkg/fleetlake.deb
result install "$?"
result enabled_after_install "$(systemctl is-enabled fleetlake 2>&1)"
result active_after_install "$(systemctl is-active fleetlake 2>&1)"

# (a) The shipped config names files the operator has not made yet: one failed start, no loop.
systemctl start fleetlake
result a_start_rc "$?"
# Absence of a restart is checked over more than RestartSec (2 s): a bounded wait, not a sync.
sleep 5
result a_state "$(systemctl is-active fleetlake)"
result a_restarts "$(systemctl show -P NRestarts fleetlake)"
result a_exit_status "$(systemctl show -P ExecMainStatus fleetlake)"
journalctl --sync
journalctl -u fleetlake --no-pager -o cat > /results/a_journal.txt
result a_journal_lines "$(wc -l < /results/a_journal.txt)"

# (b) A minimal config: only the node id and a short batch age.
printf '[node]\nid = "gw-test"\n[batch]\nmax_age = "1s"\n' > /etc/fleetlake/fleetlake.toml
systemctl reset-failed fleetlake
systemctl start fleetlake
result b_start_rc "$?"
result b_state "$(systemctl is-active fleetlake)"
# The allocator settings the unit gives the daemon (glibc reads them at start).
result b_malloc_env "$(tr '\0' '\n' < /proc/"$(systemctl show -P MainPID fleetlake)"/environ | grep '^MALLOC_' | sort | tr '\n' ' ')"
for i in 1 2 3; do
  mosquitto_pub -h 127.0.0.1 -p 1883 -i "thermo-$i" -q 1 -t "sensors/thermo-$i/telemetry" \
    -m "{\"seq\": $i, \"temp\": 21.5}"
done
result b_published "$?"
systemctl reload fleetlake
result b_reload_rc "$?"
result b_status "$(systemctl show -P StatusText fleetlake)"
systemctl stop fleetlake
result b_stop_rc "$?"
result b_status_after_stop "$(systemctl show -P StatusText fleetlake)"
ls -laR /var/lib/fleetlake /var/lib/private 2>&1 | head -60 > /results/b_layout.txt
journalctl -u fleetlake --no-pager -o cat > /results/b_journal.txt

# An analyst: not root, in the group the package made for reading the lake.
useradd --create-home --groups fleetlake analyst
result b_useradd "$?"
su analyst -c "python3 -c \"
import duckdb
print(duckdb.sql(\\\"SELECT count(*) FROM read_parquet('/var/lib/fleetlake/**/*.parquet')\\\").fetchall()[0][0])
\"" > /results/b_analyst_rows.txt 2>/results/b_analyst_error.txt
result b_analyst_rc "$?"

# (c) The sandbox under the real systemd.
systemd-analyze security fleetlake --no-pager > /results/c_security.txt 2>&1
result c_exposure "$(grep -o 'Overall exposure level for fleetlake.service: [0-9.]*' /results/c_security.txt | grep -o '[0-9.]*$')"
result done 1
