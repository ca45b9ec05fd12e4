#!/usr/bin/env bash
# The agent's container image, built and run with podman (runc, no registry) — by
# tests/container.rs and `cargo xtask image`. Everything podman keeps lives under
# ~/.cache/netscope/containers (its own configuration: /etc stays untouched).
#
#   scripts/image.sh build BINARY   the base image (debootstrap, built once and cached) and
#                                   deploy/Dockerfile around BINARY (the agent the README's
#                                   build made: the image cannot drift from it); prints the tag
#   scripts/image.sh podman ARGS…   podman with this configuration
#   scripts/image.sh seccomp [OUT]  deploy/seccomp/netscope-agent.json from podman's default
#                                   profile (CRI-O's too): bpf under CAP_BPF, perf_event_open
#                                   under CAP_PERFMON
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
CACHE="${NETSCOPE_CACHE:-${HOME}/.cache/netscope}/containers"
# Debian 12 minbase plus ca-certificates (the S3 client and https targets need a trust store).
BASE="localhost/netscope-base:bookworm"
# Tagged with the workspace's version: deploy/daemonset.yaml names that tag (tests/manifest.rs
# holds the two together), never `:latest`.
VERSION="$(sed -n 's/^version = "\(.*\)"$/\1/p' "${ROOT}/Cargo.toml" | head -n 1)"
IMAGE="localhost/netscope-agent:${VERSION}"

say() { printf 'image: %s\n' "$*" >&2; }

configure() {
  mkdir -p "${CACHE}/storage" "${CACHE}/tmp"
  # This VM: runc (crun refuses its hybrid cgroups), cgroupfs and file events (no systemd),
  # and limits root may set without CAP_SYS_RESOURCE.
  cat > "${CACHE}/containers.conf" <<EOF
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "${CACHE}/events.log"
tmp_dir = "${CACHE}/tmp"
EOF
  cat > "${CACHE}/storage.conf" <<EOF
[storage]
driver = "overlay"
graphroot = "${CACHE}/storage"
runroot = "/run/netscope-containers"
EOF
  export CONTAINERS_CONF="${CACHE}/containers.conf"
  export CONTAINERS_STORAGE_CONF="${CACHE}/storage.conf"
}

base() {
  if podman image exists "${BASE}"; then
    return
  fi
  local tarball="${CACHE}/bookworm-minbase-ca.tar"
  if [ ! -s "${tarball}" ]; then
    local rootfs="${CACHE}/rootfs"
    rm -rf "${rootfs}"
    say "debootstrap --variant=minbase --include=ca-certificates bookworm (once; cached in ${tarball})"
    debootstrap --variant=minbase --include=ca-certificates bookworm "${rootfs}" http://deb.debian.org/debian >"${CACHE}/debootstrap.log" 2>&1 \
      || { tail -20 "${CACHE}/debootstrap.log" >&2; exit 1; }
    # Smaller and reproducible enough: no apt lists or caches in the image.
    rm -rf "${rootfs}/var/lib/apt/lists/"* "${rootfs}/var/cache/apt/"*
    tar -C "${rootfs}" -cf "${tarball}.partial" .
    mv "${tarball}.partial" "${tarball}"
    rm -rf "${rootfs}"
  fi
  say "importing ${tarball} as ${BASE}"
  podman import -q "${tarball}" "${BASE}" >/dev/null
}

build() {
  local binary="${1:?usage: scripts/image.sh build BINARY}"
  [ -x "${binary}" ] || { say "${binary}: not an executable (cargo build --release -p netscope-agent)"; exit 1; }
  base
  local context="${CACHE}/context"
  rm -rf "${context}"
  mkdir -p "${context}"
  cp "${binary}" "${context}/netscope-agent"
  podman build -q -f "${ROOT}/deploy/Dockerfile" -t "${IMAGE}" "${context}" >/dev/null
  rm -rf "${context}"
  echo "${IMAGE}"
}

seccomp() {
  local out="${1:-${ROOT}/deploy/seccomp/netscope-agent.json}"
  python3 - /usr/share/containers/seccomp.json "${out}" <<'EOF'
import json, sys
src, out = sys.argv[1], sys.argv[2]
profile = json.load(open(src))
ours = {"bpf": "CAP_BPF", "perf_event_open": "CAP_PERFMON"}
rules = []
for rule in profile["syscalls"]:
    # The default's "without CAP_SYS_ADMIN: EPERM" rule would collide with ours.
    if rule.get("action") == "SCMP_ACT_ERRNO" and rule.get("excludes", {}).get("caps") == ["CAP_SYS_ADMIN"]:
        rule = dict(rule, names=[n for n in rule["names"] if n not in ours])
    rules.append(rule)
for name, cap in ours.items():
    rules.append({
        "names": [name],
        "action": "SCMP_ACT_ALLOW",
        "args": [],
        "comment": f"NetScope: {name} under {cap} (the default allows it only with CAP_SYS_ADMIN)",
        "includes": {"caps": [cap]},
        "excludes": {},
    })
profile["syscalls"] = rules
with open(out, "w") as f:
    json.dump(profile, f, indent=2)
    f.write("\n")
EOF
  say "wrote ${out}"
}

configure
case "${1:-}" in
  build) shift; build "$@" ;;
  podman) shift; exec podman "$@" ;;
  seccomp) shift; seccomp "$@" ;;
  *) echo "usage: $0 build BINARY | podman ARGS… | seccomp [OUT]" >&2; exit 2 ;;
esac
