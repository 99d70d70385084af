#!/usr/bin/env bash
# kiln deploy vs udpcast (Debian's udp-sender/udp-receiver) on one network built here:
# a server namespace with a bridge and 8 receiver namespaces on veth pairs (as root).
#   1. kiln load time for N = 1..8 receivers; N=8 / N=1                       goal ≤ 1.15×
#      with the host's CPU use and the bytes the server sent (each chunk once, whatever
#      N); then N=1 and N=8 again at SLOW_RATE (200m): all 8 "nodes" share this host's
#      CPUs, so at the full rate N=8 can be CPU-bound where real nodes would not be.
#   2. throughput (disk bytes delivered per second) kiln / udpcast, N=8,
#      without loss and with 5 % loss on every receiver link (tc netem)      goal ≥ 1.0×
#      udpcast sends the raw disk, as it is used; a second row pipes it a
#      zstd stream (--pipe), the fairest udpcast can be. Targets are sparse
#      files in RAM for both (udp-receiver | dd conv=sparse).
#   3. pack ratio: .kzi size vs `zstd -3` of the whole raw disk              goal ≤ 1.0×
# Draws the scaling as target/bench/deploy-scaling.png (gnuplot).
# The disk: 1 GiB, 45 % holes, data about 4× compressible (like a root filesystem).
# Usage: bench/deploy.sh    (KILN=path/to/kiln to use another build; RATE=800m the cap)
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -z "${KILN:-}" ]]; then
  scripts/setup.sh >/dev/null
  KILN=$PWD/target/release/kiln
fi
RATE=${RATE:-800m}
# udpcast rounds that take longer than this count as failed.
PEER_TIMEOUT=${PEER_TIMEOUT:-240}
out=$PWD/target/bench
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
# No IGMP snooping: a plain switch floods multicast (udpcast receivers otherwise stall).
ip -n "$s" link add br0 type bridge mcast_snooping 0
ip -n "$s" addr add 10.98.0.1/24 brd + dev br0
ip -n "$s" link set br0 up
ip -n "$s" route add 224.0.0.0/4 dev br0
for i in $(seq 1 $N_MAX); do
  r=${P}r$i
  ip netns add "$r"
  ip -n "$r" link set lo up
  ip link add "p$i" netns "$s" type veth peer name eth0 netns "$r"
  ip -n "$s" link set "p$i" master br0 up
  ip -n "$r" addr add "10.98.0.$((i + 1))/24" brd + dev eth0
  ip -n "$r" link set eth0 up
  ip -n "$r" route add 224.0.0.0/4 dev eth0
done
# Loss on every receiver link: tc netem, or where the kernel has no sch_netem, iptables'
# statistic match dropping the same share of what each end receives.
if ip netns exec "$s" tc qdisc replace dev p1 root netem loss 1% 2>/dev/null; then
  ip netns exec "$s" tc qdisc del dev p1 root
  loss_tool=netem
else
  loss_tool=iptables
fi
set_loss() {
  local ns
  for ns in "$s" $(seq -f "${P}r%g" 1 $N_MAX); do
    if [[ $loss_tool == iptables ]]; then
      ip netns exec "$ns" iptables -F INPUT
      [[ $1 == 0 ]] || ip netns exec "$ns" iptables -A INPUT -m statistic --mode random \
        --probability "$(echo "$1 / 100" | bc -l)" -j DROP
    fi
  done
  [[ $loss_tool == netem ]] || return 0
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
same() { # target file: 0 when it holds the source disk; removes it
  local got
  got=$(openssl dgst -sha256 -r "$1" | cut -d' ' -f1)
  rm -f "$1"
  [[ $got == "$sha" ]]
}
check() { # target file: kiln must deliver the source disk
  same "$1" || { echo "bench: $1 differs from the source" >&2; exit 1; }
}

# Busy and total jiffies of the whole host (every CPU), from /proc/stat.
cpu_ticks() { awk '/^cpu / {t=0; for (i=2;i<=NF;i++) t+=$i; print t - $5 - $6, t}' /proc/stat; }

# kiln with N receivers (RATE: the server's cap, default $RATE); prints seconds from start
# to the last receiver's end, then the bytes the server sent and the host's busy share.
kiln_round() {
  local n=$1 rate=${2:-$RATE} t0 t1 c0 c1
  read -r -a c0 < <(cpu_ticks)
  ip netns exec "$s" "$KILN" deploy serve "$work/disk.kzi" --group 239.192.9.1:7200 --iface br0 \
    --rate "${rate^^}" --idle-timeout 2 --json >"$work/serve.json" 2>/dev/null &
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
  read -r -a c1 < <(cpu_ticks)
  wait "$server"
  for i in $(seq 1 "$n"); do check "$work/k$i.raw"; done
  echo "$(secs "$t0" "$t1") $(sed -n 's/.*"data_bytes": *\([0-9]*\).*/\1/p' "$work/serve.json")" \
    "$(echo "100 * (${c1[0]} - ${c0[0]}) / (${c1[1]} - ${c0[1]})" | bc -l)"
}

# udpcast with N receivers: raw file, or (mode zstd) a zstd stream decompressed on arrival.
udpcast_round() {
  local n=$1 mode=$2 t0 t1 src=$work/disk.raw pipe=()
  if [[ $mode == zstd ]]; then src=$work/disk.raw.zst; pipe=(--pipe "zstd -dc"); fi
  t0=$(now)
  local pids=()
  # dd conv=sparse keeps the zeros out of RAM, as kiln's targets do.
  for i in $(seq 1 "$n"); do
    ip netns exec "${P}r$i" bash -c 'timeout -k 5 '"$PEER_TIMEOUT"' udp-receiver --interface eth0 --portbase 9100 --nokbd "${@:2}" \
      2>/dev/null | dd of="$1" bs=1M iflag=fullblock conv=sparse status=none' _ "$work/u$i.raw" "${pipe[@]}" &
    pids+=($!)
  done
  ip netns exec "$s" timeout -k 5 "$PEER_TIMEOUT" udp-sender --interface br0 --portbase 9100 --nokbd \
    --file "$src" --min-receivers "$n" --max-bitrate "$RATE" --max-wait 30 >/dev/null 2>&1 || true
  for p in "${pids[@]}"; do wait "$p" || true; done
  t1=$(now)
  # A receiver udpcast dropped (or that timed out) makes the round "fail", not the bench.
  local ok=1
  for i in $(seq 1 "$n"); do same "$work/u$i.raw" || ok=0; done
  if ((ok)); then secs "$t0" "$t1"; else echo fail; fi
}

printf 'n\tkiln_s\n' > "$out/deploy-scaling.tsv"
declare -A kt kb kc
for n in $(seq 1 $N_MAX); do
  read -r kt[$n] kb[$n] kc[$n] < <(kiln_round "$n")
  printf '%s\t%.3f\n' "$n" "${kt[$n]}" >> "$out/deploy-scaling.tsv"
done
printf 'kiln N=1..8 (s):'; for n in $(seq 1 $N_MAX); do printf ' %.2f' "${kt[$n]}"; done; echo
# The same at a slower link, where this host's 2 CPUs, not the network, are no longer
# what 8 receivers wait for (each receiver here shares the host; a real node has its own).
SLOW_RATE=${SLOW_RATE:-200m}
read -r st1 sb1 sc1 < <(kiln_round 1 "$SLOW_RATE")
read -r st8 sb8 sc8 < <(kiln_round $N_MAX "$SLOW_RATE")
u1=$(udpcast_round 1 raw)
u8=$(udpcast_round $N_MAX raw)
z8=$(udpcast_round $N_MAX zstd)
set_loss 5
read -r kl _ _ < <(kiln_round $N_MAX)
ul=$(udpcast_round $N_MAX raw)
zl=$(udpcast_round $N_MAX zstd)
set_loss 0

f2() { if [[ $1 == fail ]]; then echo fail; else printf %.2f "$1"; fi; }
ratio() {
  if [[ $1 == fail || $2 == fail ]]; then echo n/a; else printf %.2fx "$(echo "$1 / $2" | bc -l)"; fi
}
row "benchmark (1 GiB disk, $RATE cap)" "kiln" "peer" "ratio"
row "---------" "----" "----" "-----"
for n in $(seq 1 $N_MAX); do row "kiln load, N=$n (s)" "$(f2 "${kt[$n]}")" "" ""; done
row "N=8 over N=1 time (goal <= 1.15x)" "$(f2 "${kt[8]}")" "$(f2 "${kt[1]}")" "$(ratio "${kt[8]}" "${kt[1]}")"
row "  host CPU busy (%), N=8 | N=1" "$(printf %.0f "${kc[8]}")" "$(printf %.0f "${kc[1]}")" ""
row "  bytes the server sent, N=8 over N=1 (MiB)" "$((kb[8] >> 20))" "$((kb[1] >> 20))" "$(ratio "${kb[8]}" "${kb[1]}")"
row "N=8 over N=1 time at $SLOW_RATE (goal <= 1.15x)" "$(f2 "$st8")" "$(f2 "$st1")" "$(ratio "$st8" "$st1")"
row "  host CPU busy at $SLOW_RATE (%), N=8 | N=1" "$(printf %.0f "$sc8")" "$(printf %.0f "$sc1")" ""
row "  bytes the server sent at $SLOW_RATE, N=8 over N=1" "$((sb8 >> 20))" "$((sb1 >> 20))" "$(ratio "$sb8" "$sb1")"
row "udpcast raw N=1 / N=8 (s)" "" "$(f2 "$u1") / $(f2 "$u8")" ""
# Throughput = disk bytes delivered per second: the ratio is the inverse of the times.
row "throughput kiln/udpcast raw, N=8 (goal >= 1.0x)" "$(f2 "${kt[8]}")" "$(f2 "$u8")" "$(ratio "$u8" "${kt[8]}")"
row "throughput kiln/udpcast zstd pipe, N=8" "$(f2 "${kt[8]}")" "$(f2 "$z8")" "$(ratio "$z8" "${kt[8]}")"
row "  with 5% loss ($loss_tool): kiln/udpcast raw" "$(f2 "$kl")" "$(f2 "$ul")" "$(ratio "$ul" "$kl")"
row "  with 5% loss ($loss_tool): kiln/udpcast zstd pipe" "$(f2 "$kl")" "$(f2 "$zl")" "$(ratio "$zl" "$kl")"
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
$( [[ $u1 == fail ]] || echo "1 $u1" )
$( [[ $u8 == fail ]] || echo "8 $u8" )
e
$( [[ $z8 == fail ]] || echo "8 $z8" )
e
GP
echo "plot: $out/deploy-scaling.png"
