#!/usr/bin/env bash
# NetScope one-step setup for a fresh Debian 12 machine (root).
# Idempotent: every step checks whether its result is already there and says so.
#
#   - pinned stable Rust (+clippy, rustfmt) and a dated nightly with rust-src (for the eBPF crate)
#   - bpf-linker, built against the libLLVM shipped inside that nightly (no system LLVM needed)
#   - cargo-deny (licences, bans, sources)
#   - the apt packages the tests and benches use (nftables, iproute2, bpftool, curl; prometheus
#     with promtool and chromium for the API tests)
#   - tracefs and bpffs mounted
#   - Apache Kafka's jars from Maven Central (scripts/kafka.sh install; Java 17 + Maven)
#   - Ceph 16 with the RADOS Gateway from Debian (scripts/ceph.sh install)
set -euo pipefail

STABLE="${NETSCOPE_STABLE:-1.99.1}"
NIGHTLY="${NETSCOPE_NIGHTLY:-nightly-2026-10-29}"
BPF_LINKER_VERSION="0.13.0"
CARGO_DENY_VERSION="0.20.2"
# prometheus (with promtool) and chromium: the real scraper and browser of the API tests.
# qemu-system-x86 and busybox-static: the kernel matrix (cargo xtask test-kernels).
# podman, runc and debootstrap: the image built and run as the DaemonSet runs it (tests/container.rs).
# libbpf-tools: tcplife, the peer that `cargo xtask bench probe` compares NetScope with.
APT_PACKAGES=(nftables iproute2 bpftool curl prometheus chromium chromium-driver qemu-system-x86
  busybox-static xz-utils libbpf-tools podman runc debootstrap)

say() { printf 'setup: %s\n' "$*"; }

if [ "$(id -u)" -ne 0 ]; then
  say "warning: not root; apt packages and mounts are skipped (the kernel tests need root anyway)"
fi

# --- Rust toolchains -------------------------------------------------------------------------------
if ! command -v rustup >/dev/null 2>&1; then
  say "rustup is missing: install it from your distribution or rustup.rs first" >&2
  exit 1
fi
if rustup toolchain list | grep -q "^${STABLE}-"; then
  say "stable ${STABLE}: present"
else
  say "stable ${STABLE}: installing"
  rustup toolchain install "${STABLE}" --profile minimal -c clippy,rustfmt
fi
if rustup toolchain list | grep -q "^${NIGHTLY}-"; then
  say "${NIGHTLY}: present"
else
  say "${NIGHTLY}: installing (with rust-src)"
  rustup toolchain install "${NIGHTLY}" --profile minimal -c rust-src
fi
if ! rustup component list --toolchain "${NIGHTLY}" --installed | grep -q '^rust-src'; then
  say "${NIGHTLY}: adding rust-src"
  rustup component add rust-src --toolchain "${NIGHTLY}"
fi

# --- bpf-linker against the nightly's own libLLVM ----------------------------------------------------
nightly_sysroot="$(rustup run "${NIGHTLY}" rustc --print sysroot)"
llvm_so="$(find "${nightly_sysroot}/lib" -maxdepth 1 -name 'libLLVM.so.*' | head -n 1)"
if [ -z "${llvm_so}" ]; then
  say "no libLLVM.so.* inside ${nightly_sysroot}/lib: cannot build bpf-linker" >&2
  exit 1
fi
llvm_major="$(basename "${llvm_so}" | sed -E 's/^libLLVM\.so\.([0-9]+).*/\1/')"
prefix="${NETSCOPE_LLVM_PREFIX:-${HOME}/.local/share/netscope/llvm-${llvm_major}}"
linker_ok=0
if command -v bpf-linker >/dev/null 2>&1 && bpf-linker --version 2>/dev/null | grep -q "${BPF_LINKER_VERSION}"; then
  linker_ok=1
fi
if [ "${linker_ok}" = 1 ]; then
  say "bpf-linker ${BPF_LINKER_VERSION}: present ($(command -v bpf-linker))"
else
  say "bpf-linker ${BPF_LINKER_VERSION}: building against LLVM ${llvm_major} from ${NIGHTLY} (~2 min)"
  mkdir -p "${prefix}/lib"
  # Copy, don't link: a later nightly update must not pull the library from under the linker.
  cp -f "${llvm_so}" "${prefix}/lib/$(basename "${llvm_so}")"
  cp -f "${llvm_so}" "${prefix}/lib/libLLVM.so"
  LLVM_PREFIX="${prefix}" rustup run "${STABLE}" cargo install bpf-linker \
    --version "${BPF_LINKER_VERSION}" --locked --no-default-features --features "llvm-${llvm_major}"
fi

# --- cargo-deny (licences, bans, sources: checked by ./xtask.sh test) ----------------------------
if cargo deny --version 2>/dev/null | grep -q "${CARGO_DENY_VERSION}"; then
  say "cargo-deny ${CARGO_DENY_VERSION}: present"
else
  say "cargo-deny ${CARGO_DENY_VERSION}: building (~4 min, once)"
  rustup run "${STABLE}" cargo install cargo-deny --version "${CARGO_DENY_VERSION}" --locked
fi

# --- apt packages --------------------------------------------------------------------------------------
if [ "$(id -u)" -eq 0 ]; then
  missing=()
  for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  if [ "${#missing[@]}" -eq 0 ]; then
    say "apt packages (${APT_PACKAGES[*]}): present"
  else
    say "apt packages: installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
  fi

  # --- kernel filesystems ------------------------------------------------------------------------------
  if [ -e /sys/kernel/tracing/events ]; then
    say "tracefs: mounted"
  else
    say "tracefs: mounting on /sys/kernel/tracing"
    mount -t tracefs tracefs /sys/kernel/tracing
  fi
  if mount | grep -q ' /sys/fs/bpf type bpf'; then
    say "bpffs: mounted"
  else
    say "bpffs: mounting on /sys/fs/bpf"
    mount -t bpf bpf /sys/fs/bpf
  fi
fi
# --- kubernetes-validate: the Kubernetes OpenAPI schemas, offline (tests/manifest.rs) -------------
KUBE_VALIDATE_VERSION="1.37.0"
kv="${HOME}/.cache/netscope/kube-validate"
if "${kv}/bin/kubernetes-validate" --version 2>/dev/null | grep -q "${KUBE_VALIDATE_VERSION}"; then
  say "kubernetes-validate ${KUBE_VALIDATE_VERSION}: present"
else
  say "kubernetes-validate ${KUBE_VALIDATE_VERSION}: installing into ${kv} (PyPI)"
  python3 -m venv "${kv}"
  "${kv}/bin/pip" install -q "kubernetes-validate==${KUBE_VALIDATE_VERSION}"
fi

# --- Kafka (jars cached; started by xtask test / scripts/kafka.sh start) ----------------------------
if ! command -v java >/dev/null 2>&1 || ! command -v mvn >/dev/null 2>&1; then
  if [ "$(id -u)" -eq 0 ]; then
    say "Java/Maven: installing (openjdk-17-jre-headless, maven)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends openjdk-17-jre-headless maven
  else
    say "Java 17 and Maven are needed for the local Kafka broker: install them" >&2
    exit 1
  fi
fi
bash "$(dirname "$0")/kafka.sh" install

# --- Ceph RGW (started by xtask test / scripts/ceph.sh start) --------------------------------------
if [ "$(id -u)" -eq 0 ]; then
  bash "$(dirname "$0")/ceph.sh" install
else
  say "not root: Ceph packages not checked (scripts/ceph.sh install as root)"
fi

say "done"
