#!/usr/bin/env bash
# kiln's main job on the bundled memcached example: bootstrap Debian, install a kernel and
# memcached, assemble a bootable qcow2 image, boot it under QEMU and run the spec's
# (test …) checks against it (store a key over TCP and read it back).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
kiln=target/release/kiln
out=${KILN_QUICKSTART_OUT:-/tmp/kiln-quickstart}
mkdir -p "$out"

$kiln build -f examples/memcached/memcached.spec examples/memcached \
  -o "$out/memcached.qcow2" --test --junit "$out/junit.xml"
echo "quickstart: OK — image $out/memcached.qcow2 (manifest and SPDX SBOM beside it), checks passed"
