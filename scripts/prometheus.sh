#!/usr/bin/env bash
# A real Prometheus (Debian's package) for tests and local runs: it scrapes every agent whose
# address is listed in a file under its targets directory (file-based discovery, re-read on
# change), every second, and answers its HTTP API on 127.0.0.1.
#
#   scripts/prometheus.sh start     write the config, start, wait until ready (idempotent)
#   scripts/prometheus.sh stop      stop it
#   scripts/prometheus.sh status    running or not
#   scripts/prometheus.sh targets   the directory where `<name>.json` target files go
#
# A target file: [{"targets": ["127.0.0.1:9464"], "labels": {"test": "name"}}]
# Environment: NETSCOPE_PROMETHEUS_PORT (9090), NETSCOPE_PROMETHEUS_DIR (state: config,
# targets, data — a temporary TSDB wiped at every start, log, pid).
set -euo pipefail

# shellcheck source=scripts/lib.sh
. "$(cd "$(dirname "$0")" && pwd)/lib.sh"

dir="${NETSCOPE_PROMETHEUS_DIR:-${HOME}/.local/share/netscope/prometheus}"
port="${NETSCOPE_PROMETHEUS_PORT:-9090}"
pidfile="${dir}/prometheus.pid"

say() { printf 'prometheus: %s\n' "$*"; }

running() {
  [ -f "${pidfile}" ] && kill -0 "$(cat "${pidfile}")" 2>/dev/null
}

ready() {
  curl -fsS "http://127.0.0.1:${port}/-/ready" > /dev/null 2>&1
}

write_config() {
  mkdir -p "${dir}/targets"
  cat > "${dir}/prometheus.yml" <<YAML
global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 5s
scrape_configs:
  - job_name: netscope
    file_sd_configs:
      - files: ["${dir}/targets/*.json"]
        refresh_interval: 1s
YAML
}

start() {
  command -v prometheus > /dev/null || { say "not installed (apt package prometheus; scripts/setup.sh installs it)" >&2; exit 1; }
  if running && ready; then
    say "already running (pid $(cat "${pidfile}")) on 127.0.0.1:${port}"
    return
  fi
  stop > /dev/null
  write_config
  rm -rf "${dir}/data"
  say "starting on 127.0.0.1:${port} (targets: ${dir}/targets)"
  nohup prometheus --config.file="${dir}/prometheus.yml" --storage.tsdb.path="${dir}/data" \
    --web.listen-address="127.0.0.1:${port}" --storage.tsdb.retention.time=1d \
    > "${dir}/prometheus.log" 2>&1 < /dev/null &
  echo $! > "${pidfile}"
  wait_started 30 "${dir}/prometheus.log" ready running "${pidfile}"
}

stop() {
  stop_pidfile "${pidfile}" running
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) if running; then say "running (pid $(cat "${pidfile}"))"; else say "not running"; exit 1; fi ;;
  targets) mkdir -p "${dir}/targets"; echo "${dir}/targets" ;;
  *) echo "usage: $0 start|stop|status|targets" >&2; exit 2 ;;
esac
