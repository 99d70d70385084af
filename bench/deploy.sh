#!/usr/bin/env bash
# kiln deploy vs udpcast (Debian's udp-sender/udp-receiver) on one network built here:
# a server namespace with a bridge and 8 receiver namespaces on veth pairs (as root).
#   1. kiln load time for N = 1..8 receivers; N=8 / N=1                       goal ≤ 1.15×
#   2. throughput (disk bytes delivered per second) kiln / udpcast, N=8,
#      without loss and with 5 % loss on every receiver link (tc netem)      goal ≥ 1.0×
#      udpcast sends the raw disk, as it is used; a second row pipes it a
#      zstd stream (--pipe), the fairest udpcast can be. Targets are sparse
#      files in RAM for both (udp-receiver | dd conv=sparse).
#   3. pack ratio: .kzi size vs `zstd -3` of the whole raw disk              goal ≤ 1.0×
# Draws the scaling as bench/out/deploy-scaling.png (gnuplot).
# The disk: 1 GiB, 45 % holes, data about 4× compressible (like a root filesystem).
# Usage: bench/deploy.sh    (KILN=path/to/kiln to use another build; RATE=800m the cap)
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -z "${KILN:-}" ]]; then
  scripts/setup.sh >/dev/null
  KILN=$PWD/target/release/kiln
fi
RATE=${RATE:-800m}
out=$PWD/bench/out
mkdir -p "$out"
# In RAM (tmpfs keeps holes): the host's disk is shared and would measure its other users.
work=$(mktemp -d /dev/shm/kiln-deploy-bench.XXXXXX)
P=kzb$$
N_MAX=8
cleanup() {
  for i in $(seq 0 $N_MAX); do ip netns del "${P}r$i" 2>/dev/null || true; done
  ip netns del "${P}s" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
now() { date +%s.%N; }
secs() { echo "$2 - $1" | bc -l; }
row() { printf '%-52s %12s %12s %10s\n' "$@"; }

# --- the disk -------------------------------------------------------------------------
python3 - "$work/disk.raw" <<'PY'
import os, sys
MIB = 1 << 20
pool = os.urandom(8 << 20)
text = (b"root:x:0:0:root:/root:/bin/sh\nkiln deploy test data\n" * 64)[:3072]
with open(sys.argv[1], "wb") as f:
    f.truncate(1 << 30)
    for i in range(1024):
        if ((i * 2654435761) >> 7) % 100 >= 55:
            continue
        blocks = []
        for b in range(256):
            if b % 5 == 4:
                blocks.append(bytes(4096))
                continue
            off = i * MIB + b * 4096
            at = (off // 4096 * 7919) % (len(pool) - 1016)
            blocks.append(off.to_bytes(8, "little") + pool[at:at + 1016] + text)
        f.seek(i * MIB)
        f.write(b"".join(blocks))
PY
sha=$(openssl dgst -sha256 -r "$work/disk.raw" | cut -d' ' -f1)
"$KILN" deploy pack "$work/disk.raw" -o "$work/disk.kzi" >/dev/null 2>&1
zstd -q -3 -T0 -c "$work/disk.raw" > "$work/disk.raw.zst"
kzi_bytes=$(stat -c %s "$work/disk.kzi")
zst_bytes=$(stat -c %s "$work/disk.raw.zst")
disk_bytes=$((1 << 30))

# --- the network ----------------------------------------------------------------------
s=${P}s
ip netns add "$s"
ip -n "$s" link set lo up
ip -n "$s" link add br0 type bridge
ip -n "$s" addr add 10.98.0.1/24 dev br0
ip -n "$s" link set br0 up
ip -n "$s" route add 224.0.0.0/4 dev br0
for i in $(seq 1 $N_MAX); do
  r=${P}r$i
  ip netns add "$r"
  ip -n "$r" link set lo up
  ip link add "p$i" netns "$s" type veth peer name eth0 netns "$r"
  ip -n "$s" link set "p$i" master br0 up
  ip -n "$r" addr add "10.98.0.$((i + 1))/24" dev eth0
  ip -n "$r" link set eth0 up
  ip -n "$r" route add 224.0.0.0/4 dev eth0
done
set_loss() {
  for i in $(seq 1 $N_MAX); do
    if [[ $1 == 0 ]]; then
      ip netns exec "$s" tc qdisc del dev "p$i" root 2>/dev/null || true
      ip netns exec "${P}r$i" tc qdisc del dev eth0 root 2>/dev/null || true
    else
      ip netns exec "$s" tc qdisc replace dev "p$i" root netem loss "$1%"
      ip netns exec "${P}r$i" tc qdisc replace dev eth0 root netem loss "$1%"
    fi
  done
}
check() { # target file
  local got
  got=$(openssl dgst -sha256 -r "$1" | cut -d' ' -f1)
  [[ $got == "$sha" ]] || { echo "bench: $1 differs from the source" >&2; exit 1; }
  rm -f "$1"
}

# kiln with N receivers; prints seconds from start to the last receiver's end.
kiln_round() {
  local n=$1 t0 t1
  ip netns exec "$s" "$KILN" deploy serve "$work/disk.kzi" --group 239.192.9.1:7200 --iface br0 \
    --rate "${RATE^^}" --idle-timeout 2 >/dev/null 2>&1 &
  local server=$!
  t0=$(now)
  local pids=()
  for i in $(seq 1 "$n"); do
    ip netns exec "${P}r$i" "$KILN" deploy load --group 239.192.9.1:7200 --iface eth0 \
      --target "$work/k$i.raw" --timeout 60 >/dev/null 2>&1 &
    pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p"; done
  t1=$(now)
  wait "$server"
  for i in $(seq 1 "$n"); do check "$work/k$i.raw"; done
  secs "$t0" "$t1"
}

# udpcast with N receivers: raw file, or (mode zstd) a zstd stream decompressed on arrival.
udpcast_round() {
  local n=$1 mode=$2 t0 t1 src=$work/disk.raw pipe=()
  if [[ $mode == zstd ]]; then src=$work/disk.raw.zst; pipe=(--pipe "zstd -dc"); fi
  t0=$(now)
  local pids=()
  # dd conv=sparse keeps the zeros out of RAM, as kiln's targets do.
  for i in $(seq 1 "$n"); do
    ip netns exec "${P}r$i" bash -c 'udp-receiver --interface eth0 --portbase 9100 --nokbd "${@:2}" \
      2>/dev/null | dd of="$1" bs=1M iflag=fullblock conv=sparse status=none' _ "$work/u$i.raw" "${pipe[@]}" &
    pids+=($!)
  done
  ip netns exec "$s" timeout 900 udp-sender --interface br0 --portbase 9100 --nokbd --file "$src" \
    --min-receivers "$n" --max-bitrate "$RATE" --max-wait 30 >/dev/null 2>&1
  for p in "${pids[@]}"; do wait "$p"; done
  t1=$(now)
  for i in $(seq 1 "$n"); do check "$work/u$i.raw"; done
  secs "$t0" "$t1"
}

printf 'n\tkiln_s\n' > "$out/deploy-scaling.tsv"
declare -A kt
for n in $(seq 1 $N_MAX); do
  kt[$n]=$(kiln_round "$n")
  printf '%s\t%.3f\n' "$n" "${kt[$n]}" >> "$out/deploy-scaling.tsv"
done
u1=$(udpcast_round 1 raw)
u8=$(udpcast_round $N_MAX raw)
z8=$(udpcast_round $N_MAX zstd)
set_loss 5
kl=$(kiln_round $N_MAX)
ul=$(udpcast_round $N_MAX raw)
zl=$(udpcast_round $N_MAX zstd)
set_loss 0

f2() { printf %.2f "$1"; }
ratio() { printf %.2fx "$(echo "$1 / $2" | bc -l)"; }
row "benchmark (1 GiB disk, $RATE cap)" "kiln" "peer" "ratio"
row "---------" "----" "----" "-----"
for n in $(seq 1 $N_MAX); do row "kiln load, N=$n (s)" "$(f2 "${kt[$n]}")" "" ""; done
row "N=8 over N=1 time (goal <= 1.15x)" "$(f2 "${kt[8]}")" "$(f2 "${kt[1]}")" "$(ratio "${kt[8]}" "${kt[1]}")"
row "udpcast raw N=1 / N=8 (s)" "" "$(f2 "$u1") / $(f2 "$u8")" ""
# Throughput = disk bytes delivered per second: the ratio is the inverse of the times.
row "throughput kiln/udpcast raw, N=8 (goal >= 1.0x)" "$(f2 "${kt[8]}")" "$(f2 "$u8")" "$(ratio "$u8" "${kt[8]}")"
row "throughput kiln/udpcast zstd pipe, N=8" "$(f2 "${kt[8]}")" "$(f2 "$z8")" "$(ratio "$z8" "${kt[8]}")"
row "  with 5% loss: kiln/udpcast raw" "$(f2 "$kl")" "$(f2 "$ul")" "$(ratio "$ul" "$kl")"
row "  with 5% loss: kiln/udpcast zstd pipe" "$(f2 "$kl")" "$(f2 "$zl")" "$(ratio "$zl" "$kl")"
row "pack size: .kzi vs zstd -3 of the raw (MiB)" "$((kzi_bytes >> 20))" "$((zst_bytes >> 20))" "$(ratio "$kzi_bytes" "$zst_bytes")"
row "pack ratio (disk / file)" "$(ratio "$disk_bytes" "$kzi_bytes")" "$(ratio "$disk_bytes" "$zst_bytes")" ""

gnuplot <<GP
set terminal pngcairo size 800,500 noenhanced
set output "$out/deploy-scaling.png"
set title "kiln deploy: 1 GiB disk to N receivers (netns bridge, $RATE cap)"
set xlabel "receivers (N)"
set ylabel "seconds until every disk is loaded"
set xrange [0.5:8.5]
set yrange [0:*]
set key top left
set grid
plot "$out/deploy-scaling.tsv" using 1:2 with linespoints lw 2 pt 7 title "kiln deploy load", \
     "-" using 1:2 with points pt 5 ps 1.5 title "udpcast (raw disk)", \
     "-" using 1:2 with points pt 9 ps 1.5 title "udpcast (zstd pipe)"
1 $u1
8 $u8
e
8 $z8
e
GP
echo "plot: $out/deploy-scaling.png"
