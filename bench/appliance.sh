#!/usr/bin/env bash
# kiln appliance benchmark (issue 13, acceptance 5), as root on Debian 12, under whatever
# accelerator kiln's probe picks (TCG where KVM is unusable, as on this project's CI hosts).
# From one layer, examples/memcached (Debian 12 + kernel + systemd + memcached), side by side:
#   - size: the appliance's initrd (zstd) against the full image (qcow2) kiln builds from
#     the same spec, and the layer itself                              goal ≥ 50x smaller
#   - boot to serving: QEMU's start to memcached answering `version` on a forwarded port,
#     the appliance (`kiln run DIR`) against the full image (`kiln test`'s boot to its
#     first passing check, the port)                                    goal ≤ 5 s
#   - the initrd Debian's initramfs-tools made for the same kernel in that layer (the
#     example's skeleton sets MODULES=list, as a simulator image would), for scale.
# Each time is the median of $ROUNDS boots (default 3), the two ways alternating.
# Usage: bench/appliance.sh      (KILN=path/to/kiln to use another build than release)
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
if [[ -z "${KILN:-}" ]]; then
  scripts/setup.sh >/dev/null
fi
kiln=${KILN:-$repo/target/release/kiln}
work=$(mktemp -d /var/tmp/kiln-bench-appliance.XXXXXX)
trap 'rm -rf "$work"' EXIT
store=$work/store
now() { date +%s.%N; }
secs() { echo "$2 - $1" | bc -l; }
row() { printf '%-58s %10s %10s %9s\n' "$@"; }
ratio() { printf %.2fx "$(echo "$1 / $2" | bc -l)"; }
median() { printf '%s\n' "$@" | sort -n | awk '{v[NR]=$1} END {print (NR % 2) ? v[(NR+1)/2] : (v[NR/2] + v[NR/2+1]) / 2}'; }
rounds=${ROUNDS:-3}

t0=$(now); head -c 256M /dev/zero | sha512sum >/dev/null; t1=$(now)
printf 'host reference: sha512sum of 256 MiB in %.2f s; load average %s\n' \
  "$(secs "$t0" "$t1")" "$(cut -d' ' -f1-3 /proc/loadavg)"

# Built once, untimed: the full image and the appliance of the same spec.
ex=$repo/examples/memcached
"$kiln" --store "$store" build -f "$ex/memcached.spec" "$ex" -o "$work/full.qcow2" >"$work/build.out" 2>&1 ||
  { tail -30 "$work/build.out" >&2; exit 1; }
"$kiln" --store "$store" appliance -f "$ex/memcached.spec" "$ex" -o "$work/app" \
  --train 'memcached -u nobody -d && sleep 1 && bash -c "exec 3<>/dev/tcp/127.0.0.1/11211; printf \"stats\r\nquit\r\n\" >&3; cat <&3 >/dev/null"' \
  --run '/usr/bin/memcached -u nobody' >"$work/app.out" 2>&1 ||
  { tail -30 "$work/app.out" >&2; exit 1; }

# Seconds from `kiln run DIR` starting QEMU to memcached's VERSION reply on a forward.
appliance_boot() {
  local port=$((20000 + RANDOM % 20000)) t0 t1 pid
  sync
  t0=$(now)
  "$kiln" run "$work/app" -p "$port:11211" </dev/null >"$work/run.out" 2>&1 &
  pid=$!
  until (exec 3<>"/dev/tcp/127.0.0.1/$port" && printf 'version\r\n' >&3 && timeout 1 head -c 7 <&3) 2>/dev/null | grep -q VERSION; do
    kill -0 "$pid" 2>/dev/null || { echo "kiln run ended:" >&2; cat "$work/run.out" >&2; exit 1; }
    sleep 0.05
  done
  t1=$(now)
  kill "$pid"; wait "$pid" 2>/dev/null || true
  secs "$t0" "$t1"
}
full_boot() {
  sync
  "$kiln" --store "$store" test "$work/full.qcow2" -f "$ex/memcached.spec" >"$work/test.out" 2>&1 ||
    { cat "$work/test.out" >&2; exit 1; }
  sed -n 's/^boot to first passing check: \([0-9.]*\) s.*/\1/p' "$work/test.out"
}
apps=() fulls=()
for _ in $(seq "$rounds"); do
  apps+=("$(appliance_boot)")
  fulls+=("$(full_boot)")
done
accel=$(sed -n 's/^boot to first passing check: [0-9.]* s (\(.*\))/\1/p' "$work/test.out")
echo "  appliance: ${apps[*]}; full image: ${fulls[*]}" >&2

initrd=$(ls "$work"/app/initrd.cpio.*)
app_bytes=$(stat -c %s "$initrd")
full_bytes=$(stat -c %s "$work/full.qcow2")
layer_bytes=$(sed -n '/"layer": {/,/}/s/.*"bytes": \([0-9]*\).*/\1/p' "$work/app/report.json")
debian_initrd=$(stat -c %s "$work/full.qcow2.boot/initrd.img")
mb() { printf %.1f "$(echo "$1 / 1048576" | bc -l)"; }

row "benchmark" "appliance" "peer" "ratio"
row "---------" "---------" "----" "-----"
row "size (MB): appliance initrd vs full image (qcow2)" "$(mb "$app_bytes")" "$(mb "$full_bytes")" "$(ratio "$full_bytes" "$app_bytes")"
row "size (MB): appliance initrd vs the layer's files" "$(mb "$app_bytes")" "$(mb "$layer_bytes")" "$(ratio "$layer_bytes" "$app_bytes")"
row "size (MB): appliance initrd vs initramfs-tools' initrd" "$(mb "$app_bytes")" "$(mb "$debian_initrd")" "$(ratio "$debian_initrd" "$app_bytes")"
a=$(median "${apps[@]}") f=$(median "${fulls[@]}")
row "boot to serving (s, $accel): appliance vs full image" "$(printf %.1f "$a")" "$(printf %.1f "$f")" "$(ratio "$a" "$f")"
row "boot to serving (s, $accel): appliance vs 5 s goal" "$(printf %.1f "$a")" "5.0 goal" "$(ratio "$a" 5)"
