#!/usr/bin/env bash
# kiln build-engine benchmarks, side by side with the peers (Debian 12, as root):
#   1. cold bootstrap of bookworm/minbase: kiln (empty store) vs plain mmdebstrap   goal ≤ 1.1×
#   2. warm no-op rebuild of an 8-step spec                                         goal ≤ 0.2 s
#   3. per-step cost of a trivial step on a ~200 MB rootfs (upper bound of commit)  goal ≤ 50 ms
#   4. apt-get install with fast sync vs --no-fast-sync
# Usage: bench/build.sh [--quick]   (--quick skips the cold bootstrap pair)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh >/dev/null
kiln=$PWD/target/release/kiln
work=$(mktemp -d /var/tmp/kiln-bench.XXXXXX)
trap 'rm -rf "$work"' EXIT
now() { date +%s.%N; }
secs() { echo "$2 - $1" | bc -l; }
row() { printf '%-46s %12s %12s %10s\n' "$@"; }
nonce=$(od -An -N8 -tx8 /dev/urandom | tr -d ' ')

row "benchmark" "kiln" "peer" "ratio"
row "---------" "----" "----" "-----"

if [[ "${1:-}" != "--quick" ]]; then
  printf '((from debian:bookworm))\n' > "$work/base.spec"
  t0=$(now); "$kiln" --store "$work/cold" build -f "$work/base.spec" "$work" >/dev/null; t1=$(now)
  mmdebstrap --quiet --mode=root --variant=minbase bookworm "$work/mm" http://deb.debian.org/debian >/dev/null 2>&1; t2=$(now)
  k=$(secs "$t0" "$t1"); m=$(secs "$t1" "$t2")
  row "cold bootstrap (s) vs mmdebstrap" "$(printf %.2f "$k")" "$(printf %.2f "$m")" "$(printf %.2fx "$(echo "$k / $m" | bc -l)")"
  rm -rf "$work/mm" "$work/cold/result"
  "$kiln" --store "$work/cold" clean >/dev/null
  t0=$(now); "$kiln" --store "$work/cold" build -f "$work/base.spec" "$work" >/dev/null; t1=$(now)
  k=$(secs "$t0" "$t1")
  row "bootstrap with warm .deb cache (s)" "$(printf %.2f "$k")" "$(printf %.2f "$m")" "$(printf %.2fx "$(echo "$k / $m" | bc -l)")"
fi

store=$work/store
cat > "$work/eight.spec" <<SPEC
((from debian:bookworm)
 (run (shell "echo $nonce > /nonce"))
 (env A 1)
 (workdir /srv)
 (run (shell "mkdir -p data && echo one > data/one"))
 (user (uid 1000) (gid 1000))
 (run (shell "echo two > /tmp/two"))
 (copy (src eight.spec) (dst /srv/spec))
 (run (shell "true")))
SPEC
"$kiln" --store "$store" build -f "$work/eight.spec" "$work" >/dev/null
best=999
for _ in 1 2 3 4 5; do
  t0=$(now); "$kiln" --store "$store" build -f "$work/eight.spec" "$work" >/dev/null; t1=$(now)
  t=$(secs "$t0" "$t1"); best=$(echo "if ($t < $best) $t else $best" | bc -l)
done
row "warm no-op rebuild, 8 steps (s, best of 5)" "$(printf %.3f "$best")" "0.200 goal" "$(printf %.2fx "$(echo "$best / 0.2" | bc -l)")"

# ~200 MB rootfs: the Debian base plus 30 MB of data, then 20 trivial steps.
{ printf '((from debian:bookworm)\n (run (shell "head -c 30000000 /dev/urandom > /data-%s"))\n' "$nonce"
  for i in $(seq 20); do printf ' (run (shell "echo %s > /step-%s"))\n' "$i" "$i"; done
  printf ')\n'; } > "$work/steps.spec"
"$kiln" --store "$store" build -f "$work/steps.spec" "$work" > "$work/steps.log"
size=$(du -sm "$store/result" | cut -f1)
sed -i "s/echo \([0-9]*\) >/echo \1-again >/" "$work/steps.spec"
t0=$(now); "$kiln" --store "$store" build -f "$work/steps.spec" "$work" >/dev/null; t1=$(now)
per=$(echo "($(secs "$t0" "$t1")) / 20 * 1000" | bc -l)
row "trivial step incl. commit, ${size} MB store (ms)" "$(printf %.1f "$per")" "50 goal" "$(printf %.2fx "$(echo "$per / 50" | bc -l)")"

# apt install: the same package set with and without fast sync (warm apt caches, fresh layers).
apt_spec() {
  printf '((from debian:bookworm)\n (run (cache (apt-archives (target /var/cache/apt/archives)) (apt-lists (target /var/lib/apt/lists)))\n      (network host)\n      (shell "echo %s; apt-get update -qq && apt-get install -y -qq --no-install-recommends python3-minimal >/dev/null")))\n' "$1"
}
apt_spec "warm-$nonce" > "$work/apt.spec"; "$kiln" --store "$store" build -f "$work/apt.spec" "$work" >/dev/null
apt_spec "fast-$nonce" > "$work/apt.spec"
t0=$(now); "$kiln" --store "$store" build -f "$work/apt.spec" "$work" >/dev/null; t1=$(now)
apt_spec "slow-$nonce" > "$work/apt.spec"
"$kiln" --store "$store" build --no-fast-sync -f "$work/apt.spec" "$work" >/dev/null; t2=$(now)
f=$(secs "$t0" "$t1"); s=$(secs "$t1" "$t2")
# What one synchronous 4 KiB write costs on this disk: fast sync saves about this per fsync.
sync_ms=$( { dd if=/dev/zero of="$work/ddtest" bs=4k count=500 oflag=dsync 2>&1 >/dev/null | tail -1; } | awk '{print $(NF-3) / 500 * 1000}')
row "one fsync'd 4 KiB write on this disk (ms)" "$(printf %.2f "$sync_ms")" "" ""
row "apt install python3-minimal (s): fast vs real sync" "$(printf %.2f "$f")" "$(printf %.2f "$s")" "$(printf %.2fx "$(echo "$f / $s" | bc -l)")"
