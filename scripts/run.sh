#!/usr/bin/env bash
# Build Capstan (release) and run every role in one process on embedded
# defaults: http://127.0.0.1:8080, data under ~/.local/share/capstan.
# Extra arguments go to `capstan serve` (e.g. -c config.json).
set -euo pipefail
cd "$(dirname "$0")/.."
CAPSTAN_SETUP_MINIMAL=1 source scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/capstan-target}"
cargo build --release --bin capstan
exec "$CARGO_TARGET_DIR/release/capstan" serve "$@"
