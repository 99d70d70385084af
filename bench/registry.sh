#!/usr/bin/env bash
# kiln registry benchmarks, against Debian's docker-registry on loopback (Debian 12, root):
#   1. push of a 1 GiB disk (`kiln artifact push`, one streamed PUT) vs a plain loopback
#      copy of the same bytes (file → TCP socket → file, 1 MiB buffers)       goal ≥ 0.7×
#   2. the same push in 4 MiB PATCH chunks (--chunked)                           (no goal)
#   3. pull of it (`kiln artifact pull`: Range download, digest checked) vs the copy
#                                                                                goal ≥ 0.7×
#   4. peak memory (max RSS, /usr/bin/time -v) of kiln during the 1 GiB push     goal ≤ 64 MiB
# and, as a second peer, curl moving the same blob to and from the same registry (one
# streamed PUT, one GET): what the registry itself sustains, whoever the client is.
# The disk is incompressible (random bytes behind qcow2's magic, so it travels as it is):
# the transfer itself is measured, not zstd. Throughput is MB/s of the file's bytes over
# the command's wall time (hashing included: kiln reads the file once to digest it, and
# the registry digests what it receives).
# Usage: bench/registry.sh   (KILN=path/to/kiln to measure another build)
set -euo pipefail
cd "$(dirname "$0")/.."
kiln=${KILN:-$PWD/target/release/kiln}
if [[ -z "${KILN:-}" ]]; then
  cargo build --release -q -p kiln
fi
for tool in docker-registry python3 /usr/bin/time curl sha256sum; do
  command -v "$tool" >/dev/null || { echo "bench: $tool is missing (scripts/setup.sh installs it)" >&2; exit 1; }
done
# The disk, the registry's copy, a pulled copy and a curl copy: 4 GiB at the peak.
free_kb=$(df -Pk /var/tmp | awk 'NR==2 {print $4}')
if (( free_kb < 5 * 1024 * 1024 )); then
  echo "bench: needs 5 GiB free in /var/tmp (has $((free_kb / 1024)) MiB)" >&2
  exit 1
fi
work=$(mktemp -d /var/tmp/kiln-bench-registry.XXXXXX)
registry_pid=
cleanup() { [[ -n "$registry_pid" ]] && kill "$registry_pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
row() { printf '%-52s %12s %12s %10s\n' "$@"; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

port=$(free_port)
cat > "$work/registry.yml" <<YML
version: 0.1
log:
  level: error
storage:
  filesystem:
    rootdirectory: $work/data
http:
  addr: 127.0.0.1:$port
YML
docker-registry serve "$work/registry.yml" >/dev/null 2>&1 &
registry_pid=$!
for _ in $(seq 200); do
  python3 -c "import socket; socket.create_connection(('127.0.0.1', $port))" 2>/dev/null && break
  sleep 0.05
done

size=$((1 << 30))
{ printf 'QFI\xfb'; head -c $((size - 4)) /dev/urandom; } > "$work/disk.qcow2"
echo '{"name":"bench"}' > "$work/meta.json"
mb() { echo "$size / 1000000" | bc -l; }

# The peer: the same bytes through a loopback TCP connection into a file.
cat > "$work/copy.py" <<'PY'
import socket, sys, threading, time
src, dst = sys.argv[1], sys.argv[2]
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(1)
port = srv.getsockname()[1]
def receive():
    conn, _ = srv.accept()
    with open(dst, "wb") as out:
        while True:
            b = conn.recv(1 << 20)
            if not b:
                break
            out.write(b)
t = threading.Thread(target=receive); t.start()
start = time.monotonic()
c = socket.create_connection(("127.0.0.1", port))
with open(src, "rb") as f:
    while True:
        b = f.read(1 << 20)
        if not b:
            break
        c.sendall(b)
c.close(); t.join()
print(time.monotonic() - start)
PY
copy_s=$(python3 "$work/copy.py" "$work/disk.qcow2" "$work/copy.bin")
rm -f "$work/copy.bin"
copy_mbs=$(echo "$(mb) / $copy_s" | bc -l)

# timed LABEL CMD…: runs CMD under /usr/bin/time -v; sets secs and rss_kb.
timed() {
  local label=$1; shift
  /usr/bin/time -v -o "$work/$label.time" "$@" > "$work/$label.out"
  secs=$(awk -F': ' '/Elapsed \(wall clock\)/ {n=split($2,a,":"); s=0; for(i=1;i<=n;i++) s=s*60+a[i]; print s}' "$work/$label.time")
  rss_kb=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$work/$label.time")
}

row "benchmark (1 GiB, incompressible)" "kiln" "peer" "ratio"
row "---------" "----" "----" "-----"
row "loopback copy file→socket→file (MB/s)" "" "$(printf %.0f "$copy_mbs")" ""

timed push "$kiln" artifact push "$work/disk.qcow2" "oci://127.0.0.1:$port/bench/disk:v1" --metadata "$work/meta.json"
push_mbs=$(echo "$(mb) / $secs" | bc -l)
push_rss=$rss_kb
row "push, monolithic (MB/s) vs loopback copy" "$(printf %.0f "$push_mbs")" "$(printf %.0f "$copy_mbs")" "$(printf %.2fx "$(echo "$push_mbs / $copy_mbs" | bc -l)")"

rm -rf "$work/data/docker/registry/v2/blobs" "$work/data/docker/registry/v2/repositories"
timed chunked "$kiln" artifact push "$work/disk.qcow2" "oci://127.0.0.1:$port/bench/disk:v1" --metadata "$work/meta.json" --chunked
chunked_mbs=$(echo "$(mb) / $secs" | bc -l)
row "push, 4 MiB chunks (MB/s) vs loopback copy" "$(printf %.0f "$chunked_mbs")" "$(printf %.0f "$copy_mbs")" "$(printf %.2fx "$(echo "$chunked_mbs / $copy_mbs" | bc -l)")"

timed pull "$kiln" artifact pull "oci://127.0.0.1:$port/bench/disk:v1" -o "$work/pulled"
pull_mbs=$(echo "$(mb) / $secs" | bc -l)
pull_rss=$rss_kb
cmp -s "$work/disk.qcow2" "$work/pulled/disk.qcow2" || { echo "bench: the pulled disk differs" >&2; exit 1; }
rm -rf "$work/pulled"
row "pull (MB/s) vs loopback copy" "$(printf %.0f "$pull_mbs")" "$(printf %.0f "$copy_mbs")" "$(printf %.2fx "$(echo "$pull_mbs / $copy_mbs" | bc -l)")"
# The registry's own ceiling: curl, one streamed PUT to a fresh repository, then one GET.
digest=sha256:$(sha256sum "$work/disk.qcow2" | cut -d' ' -f1)
location=$(curl -si -X POST "http://127.0.0.1:$port/v2/bench/curl/blobs/uploads/" | awk -F': ' 'tolower($1)=="location" {print $2}' | tr -d '\r')
timed curl_put curl -sf -o /dev/null -T "$work/disk.qcow2" "$location&digest=$digest"
curl_put_mbs=$(echo "$(mb) / $secs" | bc -l)
timed curl_get curl -sf -o "$work/curl.bin" "http://127.0.0.1:$port/v2/bench/curl/blobs/$digest"
curl_get_mbs=$(echo "$(mb) / $secs" | bc -l)
rm -f "$work/curl.bin"
row "push (MB/s) vs curl PUT to the same registry" "$(printf %.0f "$push_mbs")" "$(printf %.0f "$curl_put_mbs")" "$(printf %.2fx "$(echo "$push_mbs / $curl_put_mbs" | bc -l)")"
row "pull (MB/s) vs curl GET from the same registry" "$(printf %.0f "$pull_mbs")" "$(printf %.0f "$curl_get_mbs")" "$(printf %.2fx "$(echo "$pull_mbs / $curl_get_mbs" | bc -l)")"
row "peak memory during the 1 GiB push (MiB)" "$(printf %.1f "$(echo "$push_rss / 1024" | bc -l)")" "64 goal" "$(printf %.2fx "$(echo "$push_rss / 1024 / 64" | bc -l)")"
row "peak memory during the 1 GiB pull (MiB)" "$(printf %.1f "$(echo "$pull_rss / 1024" | bc -l)")" "64 goal" "$(printf %.2fx "$(echo "$pull_rss / 1024 / 64" | bc -l)")"
