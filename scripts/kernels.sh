#!/usr/bin/env bash
# Real Debian kernels for the kernel test matrix (`cargo xtask test-kernels`), fetched once and
# cached: the newest linux-image of bullseye (5.10), bookworm (6.1), trixie (6.12) and
# trixie-backports (7.x), through a private apt configuration (/etc/apt is not touched).
#
#   scripts/kernels.sh fetch    download and unpack what is missing; print "<release> <dir>"
#   scripts/kernels.sh list     print "<release> <dir>" of what is unpacked
#
# Each kernel's directory holds vmlinuz and, decompressed under modules/kernel/, the modules the
# tests load in the guest: nftables, TC (clsact and cls_bpf, needed below 6.6), veth. Environment: NETSCOPE_KERNELS_DIR
# (~/.cache/netscope/kernels), NETSCOPE_KERNEL_SUITES ("bullseye bookworm trixie trixie-backports").
set -euo pipefail

dir="${NETSCOPE_KERNELS_DIR:-${HOME}/.cache/netscope/kernels}"
suites="${NETSCOPE_KERNEL_SUITES:-bullseye bookworm trixie trixie-backports}"
apt_opts=(-o "Dir::Etc::sourcelist=${dir}/apt/sources.list" -o "Dir::Etc::sourceparts=-"
  -o "Dir::State::Lists=${dir}/apt/lists" -o "Dir::Cache=${dir}/apt/cache"
  -o "APT::Sandbox::User=root")

say() { printf 'kernels: %s\n' "$*" >&2; }

lists() {
  mkdir -p "${dir}/apt/lists/partial" "${dir}/apt/cache/archives/partial" "${dir}/debs"
  : > "${dir}/apt/sources.list.new"
  for s in ${suites}; do
    echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian ${s} main" \
      >> "${dir}/apt/sources.list.new"
  done
  mv "${dir}/apt/sources.list.new" "${dir}/apt/sources.list"
  # Lists younger than a day are reused (a point release changes the package names).
  if [ -z "$(find "${dir}/apt/lists" -maxdepth 1 -name '*Packages*' -mtime -1 2>/dev/null | head -1)" ]; then
    say "updating the package lists (${suites})"
    apt-get "${apt_opts[@]}" -qq update
  fi
}

# The image package each suite's linux-image-amd64 depends on, one per line.
images() {
  apt-cache "${apt_opts[@]}" madison linux-image-amd64 | awk -F'|' '{gsub(/ /, "", $2); print $2}' |
    while read -r v; do
      apt-cache "${apt_opts[@]}" depends "linux-image-amd64=${v}" | awk '/Depends: linux-image-/ {print $2; exit}'
    done | sort -uV
}

# unpack DEB…: vmlinuz and the TC modules out of the image's packages (from 7.x Debian splits
# the image into linux-binary-* and linux-modules-*).
unpack() {
  local tmp release
  tmp="$(mktemp -d)"
  for deb in "$@"; do
    dpkg-deb -x "${deb}" "${tmp}"
  done
  # /boot/vmlinuz-<release>, or (7.x) /usr/lib/modules/<release>/vmlinuz.
  local image
  image="$(ls "${tmp}"/boot/vmlinuz-* "${tmp}"/usr/lib/modules/*/vmlinuz 2>/dev/null | head -1 || true)"
  case "${image}" in
    */boot/vmlinuz-*) release="${image##*/vmlinuz-}" ;;
    *) release="$(basename "$(dirname "${image}")")" ;;
  esac
  mkdir -p "${dir}/${release}"
  cp "${image}" "${dir}/${release}/vmlinuz"
  # The modules the tests need, decompressed (the guest runs depmod and modprobe): netfilter
  # (nftables), TC (clsact, cls_bpf), veth, and what they depend on.
  local src="" mods="${dir}/${release}/modules"
  for d in "${tmp}/lib/modules/${release}" "${tmp}/usr/lib/modules/${release}"; do
    if [ -d "${d}/kernel" ]; then src="${d}"; fi
  done
  rm -rf "${mods}"
  mkdir -p "${mods}"
  for sub in net/netfilter net/ipv4/netfilter net/ipv6/netfilter net/sched drivers/net/veth.ko \
    lib crypto; do
    for f in "${src}/kernel/${sub}"*; do
      if [ -e "${f}" ]; then
        mkdir -p "${mods}/kernel/$(dirname "${sub}")"
        cp -r "${f}" "${mods}/kernel/$(dirname "${sub}")/"
      fi
    done
  done
  find "${mods}" -name '*.ko.xz' -exec xz -d {} +
  find "${mods}" -name '*.ko.zst' -exec zstd -q -d --rm {} +
  touch "${dir}/${release}/.complete-2"
  rm -rf "${tmp}"
}

# download PKG: the package's .deb in the cache (downloaded once); prints its path.
download() {
  local pkg="$1" deb
  deb="$(ls "${dir}/debs/${pkg}"_*.deb 2>/dev/null | head -1 || true)"
  if [ -z "${deb}" ]; then
    say "downloading ${pkg}"
    (cd "${dir}/debs" && apt-get "${apt_opts[@]}" -qq download "${pkg}")
    deb="$(ls "${dir}/debs/${pkg}"_*.deb | head -1)"
  fi
  echo "${deb}"
}

fetch() {
  lists
  for pkg in $(images); do
    local release="${pkg#linux-image-}"
    [ -f "${dir}/${release}/.complete-2" ] && continue
    local debs=("$(download "${pkg}")")
    # The split packages the image depends on, when it is only a shell.
    for part in $(dpkg-deb -f "${debs[0]}" Depends | tr ',' '\n' | awk '{print $1}' |
      grep -E "^linux-(binary|modules)-${release//+/\\+}$" || true); do
      debs+=("$(download "${part}")")
    done
    say "unpacking ${release}"
    unpack "${debs[@]}"
  done
  list
}

list() {
  for d in "${dir}"/*/; do
    if [ -f "${d}.complete-2" ]; then echo "$(basename "${d}") ${d%/}"; fi
  done | sort -V
}

case "${1:-}" in
  fetch) fetch ;;
  list) list ;;
  *) echo "usage: $0 fetch|list" >&2; exit 2 ;;
esac
