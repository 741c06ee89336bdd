#!/usr/bin/env bash
# Installs what vecfs needs on Debian 12 (or later), as root: `deps.sh` for
# building and running it (build-essential, pkg-config, a Rust toolchain with
# clippy and rustfmt at least Cargo.toml's rust-version, redis-server,
# fuse3), `deps.sh --test` also for the test suite (moto's S3 server from
# PyPI and Azurite from npm at pinned versions, cargo-nextest),
# `deps.sh --bench` also for the benchmarks. Idempotent: skips what is
# present.
#
# The Rust toolchain, when cargo is missing or older than rust-version:
# rustup's stable if rustup is installed; else Debian's own packages when
# they are new enough (Debian 12 has rustc-web/cargo-web from its security
# updates, newer releases plain rustc/cargo); else rustup from the Debian
# package (Debian 13+) or rustup-init from static.rust-lang.org.
set -euo pipefail
cd "$(dirname "$0")/.."

# Pinned versions of the test servers (what the suite was last run with).
MOTO_VERSION=5.2.1
AZURITE_VERSION=3.35.0

# rustup's default place, for shells that did not source ~/.cargo/env.
export PATH="$HOME/.cargo/bin:$PATH:/usr/local/bin"
export DEBIAN_FRONTEND=noninteractive

mode="${1:-}"
case "$mode" in
  "" | --test | --bench) ;;
  *) echo "usage: $0 [--test|--bench]" >&2; exit 2 ;;
esac

apt_updated=0
apt_install() {
  if ((!apt_updated)); then
    apt-get update -qq
    apt_updated=1
  fi
  echo "installing $* (apt)"
  apt-get install -y -qq "$@" >/dev/null
}

# The newest version a package has in the apt sources, or nothing.
apt_candidate() {
  if ((!apt_updated)); then
    apt-get update -qq
    apt_updated=1
  fi
  apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ && $2 != "(none)" {print $2}'
}

# Whether version $1 (a Debian or rustc version) is at least $2.
version_ge() {
  dpkg --compare-versions "$1" ge "$2"
}

need_apt=()
command -v cc >/dev/null && command -v make >/dev/null || need_apt+=(build-essential)
command -v pkg-config >/dev/null || need_apt+=(pkg-config)
command -v curl >/dev/null || need_apt+=(curl ca-certificates)
command -v git >/dev/null || need_apt+=(git)
command -v redis-server >/dev/null || need_apt+=(redis-server)
command -v fusermount3 >/dev/null || need_apt+=(fuse3)
command -v setfattr >/dev/null || need_apt+=(attr)
command -v python3 >/dev/null || need_apt+=(python3 python3-pip)
command -v ip >/dev/null || need_apt+=(iproute2)
command -v nsenter >/dev/null || need_apt+=(util-linux)
# tests/clock.rs runs a node under libfaketime (a clock 10 minutes off).
if [[ "$mode" == "--test" || "$mode" == "--bench" ]]; then
  command -v faketime >/dev/null || need_apt+=(faketime)
fi
if [[ "$mode" == "--bench" ]]; then
  command -v fio >/dev/null || need_apt+=(fio)
  command -v s3fs >/dev/null || need_apt+=(s3fs)
  command -v rclone >/dev/null || need_apt+=(rclone)
fi
if ((${#need_apt[@]})); then
  apt_install "${need_apt[@]}"
fi
[[ -e /dev/fuse ]] || { echo "/dev/fuse is missing: load the fuse module (modprobe fuse)" >&2; exit 1; }

# --- Rust toolchain -------------------------------------------------------
rust_version=$(sed -n 's/^rust-version *= *"\([^"]*\)".*/\1/p' Cargo.toml | head -n1)
rust_version=${rust_version:-1.85}

cargo_ok() {
  local v
  v=$(cargo --version 2>/dev/null | awk '{print $2}') || return 1
  [[ -n "$v" ]] && version_ge "$v" "$rust_version"
}

install_rust() {
  if command -v rustup >/dev/null; then
    echo "installing Rust stable (rustup)"
    rustup toolchain install stable --profile minimal -c clippy -c rustfmt
    rustup default stable
    return
  fi
  # Debian's packages: rustc-web/cargo-web on Debian 12, rustc/cargo later.
  local set
  for set in "rustc-web cargo-web rust-web-clippy rustfmt-web" "rustc cargo rust-clippy rustfmt"; do
    local -a pkgs
    local v
    read -r -a pkgs <<<"$set"
    v=$(apt_candidate "${pkgs[0]}")
    if [[ -n "$v" ]] && version_ge "${v%%+*}" "$rust_version"; then
      apt_install "${pkgs[@]}"
      hash -r
      return
    fi
  done
  if [[ -n "$(apt_candidate rustup)" ]]; then
    apt_install rustup
  else
    echo "installing rustup (rustup-init from static.rust-lang.org)"
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --no-modify-path
  fi
  hash -r
  rustup toolchain install stable --profile minimal -c clippy -c rustfmt
  rustup default stable
}

if ! cargo_ok; then
  if command -v cargo >/dev/null; then
    echo "cargo $(cargo --version | awk '{print $2}') is older than rust-version $rust_version"
  fi
  install_rust
  hash -r
  cargo_ok || { echo "could not install Rust >= $rust_version" >&2; exit 1; }
fi
# .ci/run lints with clippy and rustfmt.
if ! cargo clippy --version >/dev/null 2>&1 || ! cargo fmt --version >/dev/null 2>&1; then
  if command -v rustup >/dev/null && rustup show active-toolchain >/dev/null 2>&1; then
    echo "installing clippy and rustfmt (rustup)"
    rustup component add clippy rustfmt
  elif dpkg -s cargo-web >/dev/null 2>&1; then
    apt_install rust-web-clippy rustfmt-web
  else
    apt_install rust-clippy rustfmt
  fi
fi

# --- test servers ---------------------------------------------------------
if [[ "$mode" == "--test" || "$mode" == "--bench" ]]; then
  moto_have=$(python3 -m pip show moto 2>/dev/null | awk '/^Version:/ {print $2}' || true)
  if ! command -v moto_server >/dev/null || [[ -n "$moto_have" && "$moto_have" != "$MOTO_VERSION" ]]; then
    echo "installing moto[server]==$MOTO_VERSION (pip)"
    python3 -m pip install -q "moto[server]==$MOTO_VERSION" 2>/dev/null \
      || python3 -m pip install -q --break-system-packages "moto[server]==$MOTO_VERSION"
    hash -r
  fi
  command -v npm >/dev/null || apt_install npm
  azurite_have=$(npm ls -g azurite --depth=0 2>/dev/null | sed -n 's/.*azurite@\([0-9.]*\).*/\1/p' || true)
  if ! command -v azurite-blob >/dev/null || [[ "$azurite_have" != "$AZURITE_VERSION" ]]; then
    echo "installing azurite@$AZURITE_VERSION (npm)"
    npm install -g --silent "azurite@$AZURITE_VERSION" >/dev/null
    hash -r
  fi
  if ! cargo nextest --version >/dev/null 2>&1; then
    echo "installing cargo-nextest (cargo)"
    cargo install --locked cargo-nextest
  fi
fi
