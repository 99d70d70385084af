#!/usr/bin/env bash
# kiln's main job on the bundled memcached example: bootstrap Debian, install memcached,
# build the image layers, export the root filesystem and check it.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
kiln=target/release/kiln
out=${KILN_QUICKSTART_OUT:-/tmp/kiln-quickstart}
mkdir -p "$out"

$kiln build -f examples/memcached/memcached.spec examples/memcached | tee "$out/build.log"
id=$(sed -n 's/^Got: "\(.*\)"$/\1/p' "$out/build.log")
$kiln export "$id" --format tar -o "$out/memcached-rootfs.tar"

# The check: the image holds memcached and our config.
tar -tf "$out/memcached-rootfs.tar" | grep -x 'usr/bin/memcached' >/dev/null
tar -xOf "$out/memcached-rootfs.tar" etc/memcached.conf | grep '^-l 0.0.0.0' >/dev/null
echo "quickstart: OK — layer $id, rootfs at $out/memcached-rootfs.tar"
