#!/usr/bin/env bash
# A real Ceph cluster with the RADOS Gateway (S3) for local runs and tests, all on 127.0.0.1:
# one mon, one OSD, one radosgw, and an S3 user with fixed local keys. Debian's Ceph 16.
#
#   scripts/ceph.sh install   apt packages (skipped when present)
#   scripts/ceph.sh start     create the cluster if new, start it, wait until S3 answers
#   scripts/ceph.sh stop      stop every daemon (SIGTERM, then SIGKILL); nothing is left behind
#   scripts/ceph.sh status
#   scripts/ceph.sh rgw-stop  stop only radosgw (an RGW outage: mon and OSD keep the data)
#   scripts/ceph.sh rgw-start start radosgw again and wait until S3 answers
#
# NETSCOPE_CEPH_STORE=memstore (default; fast, data lost when the OSD stops — tests) or
# bluestore (a sparse file; survives restarts — a local instance that keeps its data).
# NETSCOPE_CEPH_DIR (state), NETSCOPE_RGW_PORT (7480).
set -euo pipefail

store="${NETSCOPE_CEPH_STORE:-memstore}"
dir="${NETSCOPE_CEPH_DIR:-${HOME}/.local/share/netscope/ceph-${store}}"
rgw_port="${NETSCOPE_RGW_PORT:-7480}"
mon_v2=13300
mon_v1=16789
fsid="6e657473-636f-7065-2d63-6570682d3031"
conf="${dir}/ceph.conf"
access_key="netscope-local"
secret_key="netscope-local-secret"

say() { printf 'ceph: %s\n' "$*"; }

install() {
  if command -v radosgw >/dev/null 2>&1 && command -v ceph-osd >/dev/null 2>&1 && command -v ceph-mon >/dev/null 2>&1; then
    say "packages: present"
    return
  fi
  say "packages: installing ceph-mon ceph-osd radosgw ceph-common"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends ceph-mon ceph-osd radosgw ceph-common
}

pid_alive() { # pid → 0 when the process runs (a zombie is dead)
  kill -0 "$1" 2>/dev/null && ! grep -q '^State:.*Z' "/proc/$1/status" 2>/dev/null
}

alive() { # pidfile → 0 when the process runs (a zombie is dead)
  [ -f "$1" ] || return 1
  local pid
  pid="$(cat "$1" 2>/dev/null)" || return 1 # the daemon removes it as it exits
  [ -n "${pid}" ] && pid_alive "${pid}"
}

write_conf() {
  mkdir -p "${dir}"/{run,log,mon/a,osd/0,rgw}
  {
    cat <<CONF
[global]
fsid = ${fsid}
mon_host = [v2:127.0.0.1:${mon_v2},v1:127.0.0.1:${mon_v1}]
public_addr = 127.0.0.1
cluster_addr = 127.0.0.1
ms_bind_ipv6 = false
auth_cluster_required = none
auth_service_required = none
auth_client_required = none
ms_mon_client_mode = crc
osd_pool_default_size = 1
osd_pool_default_min_size = 1
osd_pool_default_pg_num = 8
osd_pool_default_pgp_num = 8
mon_allow_pool_size_one = true
mon_warn_on_pool_no_redundancy = false
osd_crush_chooseleaf_type = 0
mon_data_avail_crit = 1
paxos_propose_interval = 0.05
run_dir = ${dir}/run
admin_socket = ${dir}/run/\$cluster-\$name.asok
log_file = ${dir}/log/\$cluster-\$name.log
pid_file = ${dir}/run/\$name.pid
[mon.a]
mon_data = ${dir}/mon/a
[osd.0]
osd_data = ${dir}/osd/0
osd_objectstore = ${store}
CONF
    if [ "${store}" = bluestore ]; then
      cat <<CONF
bluestore_block_path = ${dir}/osd/block.0
bluestore_block_create = true
bluestore_block_size = 10737418240
CONF
    fi
    cat <<CONF
[client.rgw.a]
rgw_data = ${dir}/rgw
rgw_frontends = beast endpoint=127.0.0.1:${rgw_port} tcp_nodelay=1
CONF
  } > "${conf}"
}

ceph_cli() { ceph -c "${conf}" --connect-timeout 10 "$@"; }

s3_answers() { (exec 3<>"/dev/tcp/127.0.0.1/${rgw_port}") 2>/dev/null; }

stop_other_stores() { # the memstore and bluestore clusters use the same ports
  local other
  for other in memstore bluestore; do
    [ "${other}" != "${store}" ] || continue
    local other_dir="${HOME}/.local/share/netscope/ceph-${other}"
    if [ -z "${NETSCOPE_CEPH_DIR:-}" ] && alive "${other_dir}/run/mon.a.pid"; then
      say "stopping the ${other} cluster (same ports)"
      NETSCOPE_CEPH_STORE="${other}" bash "$0" stop >/dev/null
    fi
  done
}

start() {
  install
  if alive "${dir}/run/client.rgw.a.pid" && s3_answers; then
    say "already running (S3 on 127.0.0.1:${rgw_port}, ${store})"
    return
  fi
  stop_other_stores
  stop quiet
  if [ "${store}" = memstore ] || [ ! -f "${dir}/created" ]; then
    # A memstore OSD comes back empty while the monitor still maps placement groups to it:
    # a memstore cluster is always made anew (its data never outlives its OSD anyway). A
    # cluster whose creation did not finish is made anew too.
    rm -rf "${dir}"
  fi
  write_conf
  local fresh=0
  if [ ! -f "${dir}/created" ]; then
    fresh=1
    say "creating the cluster in ${dir} (${store})"
    monmaptool --create --fsid "${fsid}" --addv a "[v2:127.0.0.1:${mon_v2},v1:127.0.0.1:${mon_v1}]" "${dir}/monmap" >/dev/null
    ceph-mon -c "${conf}" --mkfs -i a --monmap "${dir}/monmap"
  fi
  ceph-mon -c "${conf}" -i a
  if [ "${fresh}" = 1 ]; then
    local uuid
    uuid="$(cat /proc/sys/kernel/random/uuid)"
    ceph_cli osd new "${uuid}" 0 >/dev/null
    if ! ceph-osd -c "${conf}" -i 0 --mkfs --osd-uuid "${uuid}" >/dev/null 2>&1; then
      say "creating the OSD failed; last log lines:" >&2
      tail -n 5 "${dir}/log/ceph-osd.0.log" >&2 || true
      stop quiet
      exit 1
    fi
  fi
  ceph-osd -c "${conf}" -i 0
  radosgw -c "${conf}" -n client.rgw.a
  wait_s3
  if ! radosgw-admin -c "${conf}" user info --uid netscope >/dev/null 2>&1; then
    radosgw-admin -c "${conf}" user create --uid netscope --display-name NetScope \
      --access-key "${access_key}" --secret "${secret_key}" >/dev/null
  fi
  touch "${dir}/created"
  say "ready: S3 on http://127.0.0.1:${rgw_port} (access key ${access_key}, ${store})"
}

wait_s3() {
  for _ in $(seq 1 120); do
    if s3_answers; then
      return 0
    fi
    sleep 0.5
  done
  say "radosgw did not answer within 60 s; last log lines:" >&2
  tail -n 20 "${dir}/log/ceph-client.rgw.a.log" >&2 || true
  exit 1
}

rgw_start() {
  if ! alive "${dir}/run/osd.0.pid"; then
    say "the cluster is not running: scripts/ceph.sh start" >&2
    exit 1
  fi
  if ! alive "${dir}/run/client.rgw.a.pid"; then
    radosgw -c "${conf}" -n client.rgw.a
  fi
  wait_s3
  say "radosgw ready on http://127.0.0.1:${rgw_port}"
}

stop() {
  local quiet="${1:-}"
  local any=0
  local names="${2:-client.rgw.a osd.0 mon.a}"
  for name in ${names}; do
    local pidfile="${dir}/run/${name}.pid"
    local pid
    pid="$(cat "${pidfile}" 2>/dev/null)" || pid=""
    if [ -n "${pid}" ] && pid_alive "${pid}"; then
      any=1
      kill -TERM "${pid}" 2>/dev/null || true
      # Wait on the process, not its pidfile (the daemon removes that before it is gone).
      for _ in $(seq 1 40); do
        pid_alive "${pid}" || break
        sleep 0.25
      done
      if pid_alive "${pid}"; then
        kill -KILL "${pid}" 2>/dev/null || true
      fi
    fi
    rm -f "${pidfile}"
  done
  if [ -z "${quiet}" ]; then
    if [ "${any}" = 1 ]; then say "stopped"; else say "not running"; fi
  fi
}

case "${1:-}" in
  install) install ;;
  start) start ;;
  stop) stop ;;
  rgw-stop) stop quiet client.rgw.a; say "radosgw stopped" ;;
  rgw-start) rgw_start ;;
  status)
    if alive "${dir}/run/client.rgw.a.pid" && s3_answers; then
      say "running (S3 on 127.0.0.1:${rgw_port}, ${store})"
    else
      say "not running"
      exit 3
    fi
    ;;
  *) echo "usage: $0 install|start|stop|status|rgw-stop|rgw-start" >&2; exit 2 ;;
esac
