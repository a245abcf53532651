#!/usr/bin/env bash
# Install what building and testing Capstan needs on Debian, skipping what is
# already there: the Rust toolchain, cmake (pingora's zlib-ng), and the real
# clients and peers the tests drive (skopeo, oras from PyPI, docker-registry)
# and the servers they start (redis-server, postgresql, slapd, node's
# oidc-provider, s3s-fs as the S3-compatible store), and sqlite3 (tests read
# the metadata database).
set -euo pipefail

need_apt=()
for pair in cmake:cmake gcc:gcc skopeo:skopeo docker-registry:docker-registry python3:python3 pip3:python3-pip \
    redis-server:redis-server redis-cli:redis-tools runuser:util-linux \
    docker-compose:docker-compose sqlite3:sqlite3; do
  cmd=${pair%%:*}; pkg=${pair##*:}
  command -v "$cmd" >/dev/null 2>&1 || need_apt+=("$pkg")
done
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || need_apt+=(postgresql)
# The compose test: podman (with runc, its network tools and the init the
# stack's `init: true` needs) and debootstrap for the base image.
for pair in podman:podman runc:runc debootstrap:debootstrap; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || [ -x "/usr/sbin/${pair%%:*}" ] || need_apt+=("${pair##*:}")
done
[ -x /usr/libexec/podman/catatonit ] || need_apt+=(catatonit)
[ -x /usr/lib/podman/netavark ] || [ -x /usr/libexec/podman/netavark ] || need_apt+=(netavark)
[ -x /usr/lib/podman/aardvark-dns ] || [ -x /usr/libexec/podman/aardvark-dns ] || need_apt+=(aardvark-dns)
[ -x /usr/sbin/slapd ] || need_apt+=(slapd)
command -v ldapsearch >/dev/null 2>&1 || need_apt+=(ldap-utils)
command -v node >/dev/null 2>&1 || need_apt+=(nodejs)
command -v npm >/dev/null 2>&1 || need_apt+=(npm)
if [ "${CAPSTAN_SETUP_MINIMAL:-0}" = 1 ]; then
  # Running the registry needs only the build tools.
  filtered=()
  for p in "${need_apt[@]}"; do
    case "$p" in cmake|gcc) filtered+=("$p") ;; esac
  done
  need_apt=("${filtered[@]}")
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: installing ${need_apt[*]}" >&2
  SUDO=""
  [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q "${need_apt[@]}"
fi

if ! command -v cargo >/dev/null 2>&1; then
  if [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
  else
    echo "setup: installing the Rust toolchain with rustup" >&2
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal -c clippy,rustfmt
    export PATH="$HOME/.cargo/bin:$PATH"
  fi
fi

if [ "${CAPSTAN_SETUP_MINIMAL:-0}" != 1 ]; then
  # The OpenID provider the tests log in through (npm's oidc-provider).
  oidc_dir="$(dirname "${BASH_SOURCE[0]}")/../tests/oidc"
  [ -d "$oidc_dir/node_modules/oidc-provider" ] || {
    echo "setup: installing oidc-provider (npm)" >&2
    (cd "$oidc_dir" && npm ci --no-audit --no-fund --silent)
  }
  # The S3-compatible server the S3 backend is tested against: s3s-fs
  # (the s3s project's file-backed S3 server, a Rust crate; see README).
  # 0.14.1 is the newest release this toolchain builds.
  command -v s3s-fs >/dev/null 2>&1 || [ -x "$HOME/.cargo/bin/s3s-fs" ] || {
    echo "setup: installing s3s-fs (crates.io)" >&2
    cargo install -q s3s-fs --version 0.14.1 --features binary --locked -j2
  }
  python3 -c 'import oras' 2>/dev/null || {
    echo "setup: installing oras (PyPI)" >&2
    python3 -m pip install -q oras 2>/dev/null || python3 -m pip install -q --break-system-packages oras
  }
fi
