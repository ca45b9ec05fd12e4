# Shared by the scripts that run a local service (sourced; the caller defines `say`).

# wait_started SECONDS LOG READY RUNNING PIDFILE: polls the READY function every 0.25 s until it
# succeeds (says "ready"); fails with the last lines of LOG when the RUNNING function says the
# process is gone, or after SECONDS.
wait_started() {
  local seconds="$1" log="$2" ready="$3" running="$4" pidfile="$5"
  for _ in $(seq 1 "$((seconds * 4))"); do
    if "${ready}"; then
      say "ready (pid $(cat "${pidfile}"))"
      return 0
    fi
    if ! "${running}"; then
      say "exited during start-up; last log lines:" >&2
      tail -n 30 "${log}" >&2
      exit 1
    fi
    sleep 0.25
  done
  say "not ready after ${seconds} s; last log lines:" >&2
  tail -n 30 "${log}" >&2
  exit 1
}

# stop_pidfile PIDFILE RUNNING: SIGTERM, then SIGKILL if the RUNNING function still says so
# after 20 s; removes PIDFILE.
stop_pidfile() {
  local pidfile="$1" running="$2"
  if ! "${running}"; then
    say "not running"
    rm -f "${pidfile}"
    return 0
  fi
  local pid
  pid="$(cat "${pidfile}")"
  kill -TERM "${pid}" 2>/dev/null || true
  for _ in $(seq 1 80); do
    "${running}" || break
    sleep 0.25
  done
  if "${running}"; then
    say "still running after 20 s: SIGKILL"
    kill -KILL "${pid}" 2>/dev/null || true
  fi
  rm -f "${pidfile}"
  say "stopped"
}
