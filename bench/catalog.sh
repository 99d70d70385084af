#!/usr/bin/env bash
# kiln catalogue and marketplace benchmarks, side by side with the peers (Debian 12, as root):
#   1. one download of a 512 MiB image: kiln serve vs python3 -m http.server   goal ≤ 1.2×
#   2. 16 parallel downloads of it: the same pair                               goal ≤ 1.2×
#   3. verify (sha256 + sha512 + signature): kiln image verify vs sha256sum,
#      sha512sum and minisign -V one after the other                            goal ≤ 1.0×
#   4. pull (metadata check, download, verify, enter the catalogue) vs curl + sha256sum + sha512sum
# Usage: bench/catalog.sh     (KILN=path/to/kiln to use another build; no set-up then)
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -z "${KILN:-}" ]]; then
  scripts/setup.sh >/dev/null
  KILN=$PWD/target/release/kiln
fi
work=$(mktemp -d /var/tmp/kiln-bench-catalog.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
now() { date +%s.%N; }
secs() { echo "$2 - $1" | bc -l; }
row() { printf '%-52s %10s %10s %8s\n' "$@"; }
ratio() { printf '%.2fx' "$(echo "$1 / $2" | bc -l)"; }

# A 512 MiB "image" with a manifest, as kiln build writes one (the catalogue needs only the
# file's digests and sizes for this).
img=$work/big.raw
head -c 512M /dev/urandom > "$img"
sha256=$(sha256sum "$img" | cut -d' ' -f1); sha512=$(sha512sum "$img" | cut -d' ' -f1)
cat > "$img.manifest.json" <<JSON
{"schema":"kiln-image-manifest/1","name":"big","file":"big.raw","format":"raw","bytes":$((512<<20)),
 "virtual_size":$((512<<20)),"sha256":"$sha256","sha512":"$sha512","boot":"none","default_partition":null,
 "node_types":[],"arches":[],"partitions":[],"spec_sha256":"","layer_id":"","kiln_version":"bench",
 "build_time":0,"build_time_utc":"1970-01-01T00:00:00Z"}
JSON
export KILN_CATALOG=$work/cat
"$KILN" key generate -o "$work/me.key" >/dev/null
mkdir -p "$work/trust" "$work/srv/trust"
cp "$work/me.pub" "$work/trust/me@lab.org.pub"; cp "$work/me.pub" "$work/srv/trust/"
"$KILN" image add "$img" --title big --endorser me@lab.org --key "$work/me.key" --no-lint >/dev/null
echo tok > "$work/token"
"$KILN" serve --listen 127.0.0.1:0 --data "$work/srv" --token-file "$work/token" > "$work/serve.out" 2>/dev/null &
pids+=($!)
until grep -q listening "$work/serve.out" 2>/dev/null; do sleep 0.1; done
url=$(sed -n 's/.*listening on //p' "$work/serve.out")
KILN_MARKETPLACE_TOKEN=tok "$KILN" image push "$sha256" "$url" >/dev/null
mkdir -p "$work/plain"; ln "$img" "$work/plain/big.raw"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
(cd "$work/plain" && exec python3 -m http.server "$port" --bind 127.0.0.1 >/dev/null 2>&1) &
pids+=($!)
until curl -sf -o /dev/null "http://127.0.0.1:$port/"; do sleep 0.1; done

row "benchmark (seconds)" "kiln" "peer" "ratio"
row "-------------------" "----" "----" "-----"
fetch() { curl -sf -o /dev/null "$1"; }
t0=$(now); fetch "$url/api/images/$sha256/download"; t1=$(now); fetch "http://127.0.0.1:$port/big.raw"; t2=$(now)
k=$(secs "$t0" "$t1"); p=$(secs "$t1" "$t2")
row "1 download, 512 MiB (vs python http.server)" "$(printf %.2f "$k")" "$(printf %.2f "$p")" "$(ratio "$k" "$p")"
par() { local ps=(); for _ in $(seq 16); do fetch "$1" & ps+=($!); done; wait "${ps[@]}"; }
t0=$(now); par "$url/api/images/$sha256/download"; t1=$(now); par "http://127.0.0.1:$port/big.raw"; t2=$(now)
k=$(secs "$t0" "$t1"); p=$(secs "$t1" "$t2")
row "16 parallel downloads (vs python http.server)" "$(printf %.2f "$k")" "$(printf %.2f "$p")" "$(ratio "$k" "$p")"
entry=$work/cat/entries/$sha256
t0=$(now); "$KILN" image verify "$sha256" --trust "$work/trust" >/dev/null; t1=$(now)
sha256sum "$entry/big.raw" >/dev/null; sha512sum "$entry/big.raw" >/dev/null
minisign -Vq -p "$work/me.pub" -m "$entry/metadata.json"; t2=$(now)
k=$(secs "$t0" "$t1"); p=$(secs "$t1" "$t2")
row "verify (vs sha256sum + sha512sum + minisign -V)" "$(printf %.2f "$k")" "$(printf %.2f "$p")" "$(ratio "$k" "$p")"
t0=$(now); KILN_CATALOG=$work/cat2 "$KILN" image pull "$url/$sha256" --trust "$work/trust" >/dev/null; t1=$(now)
curl -sf -o "$work/peer.raw" "http://127.0.0.1:$port/big.raw"; sha256sum "$work/peer.raw" >/dev/null; sha512sum "$work/peer.raw" >/dev/null; t2=$(now)
k=$(secs "$t0" "$t1"); p=$(secs "$t1" "$t2")
row "pull + verify (vs curl + sha256sum + sha512sum)" "$(printf %.2f "$k")" "$(printf %.2f "$p")" "$(ratio "$k" "$p")"
