#!/usr/bin/env bash
# Installs what vecfs needs on Debian: `deps.sh` for running it (redis-server,
# fuse3), `deps.sh --test` also for the test suite (moto's S3 server from
# PyPI, Azurite from npm, cargo-nextest). Idempotent: skips what is present.
set -euo pipefail

need_apt=()
command -v redis-server >/dev/null || need_apt+=(redis-server)
command -v fusermount3 >/dev/null || need_apt+=(fuse3)
command -v setfattr >/dev/null || need_apt+=(attr)
command -v python3 >/dev/null || need_apt+=(python3 python3-pip)
command -v ip >/dev/null || need_apt+=(iproute2)
command -v nsenter >/dev/null || need_apt+=(util-linux)
if [[ "${1:-}" == "--bench" ]]; then
  command -v fio >/dev/null || need_apt+=(fio)
  command -v s3fs >/dev/null || need_apt+=(s3fs)
  command -v rclone >/dev/null || need_apt+=(rclone)
fi
if ((${#need_apt[@]})); then
  echo "installing ${need_apt[*]} (apt)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
[[ -e /dev/fuse ]] || { echo "/dev/fuse is missing: load the fuse module (modprobe fuse)" >&2; exit 1; }
command -v cargo >/dev/null || { echo "cargo is missing: install Rust from rustup.rs" >&2; exit 1; }

if [[ "${1:-}" == "--test" || "${1:-}" == "--bench" ]]; then
  if ! command -v moto_server >/dev/null; then
    echo "installing moto[server] (pip)"
    python3 -m pip install -q 'moto[server]' 2>/dev/null \
      || python3 -m pip install -q --break-system-packages 'moto[server]'
    hash -r
  fi
  if ! command -v azurite-blob >/dev/null; then
    command -v npm >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq npm >/dev/null
    echo "installing azurite (npm)"
    npm install -g --silent azurite >/dev/null
  fi
  if ! cargo nextest --version >/dev/null 2>&1; then
    echo "installing cargo-nextest (cargo)"
    cargo install --locked cargo-nextest
  fi
fi
