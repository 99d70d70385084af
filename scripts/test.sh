#!/usr/bin/env bash
# Runs kiln's whole test suite: unit tests, the real-namespace integration tests and the
# end-to-end builds against Debian's mirror. Needs root (namespaces, overlayfs, mounts).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo test --workspace --release --no-fail-fast 2>&1 | tee target/test.log
grep -E '^test result:' target/test.log | awk '{p+=$4; f+=$6} END {print p " passed, " f " failed"}'
