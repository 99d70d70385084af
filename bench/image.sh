#!/usr/bin/env bash
# kiln image benchmarks, side by side with the peers (Debian 12, as root). The subject is
# examples/memcached: Debian 12 + kernel + systemd + memcached, an ext4 root on GPT, qcow2.
#   1. build from nothing (empty store, packages downloaded) vs the same made by hand with
#      mmdebstrap + mke2fs -d + sfdisk + qemu-img                                goal ≤ 1.0×
#      and, for scale, the rebuild after an edit of memcached.conf (kiln reuses its layers;
#      by hand it all happens again)
#   2. the same kiln build vs diskimage-builder from PyPI (its second run: venv and
#      bootstrap tarball cached, as DIB users run it)                goal: kiln ≥ 2× faster
#   3. kiln test under TCG: from QEMU's start to memcached answering, as kiln test reports
#      it (median of 3 boots of the --boot kernel raw image, with kiln's boot initramfs;
#      the accelerator probe before it takes ~0.1 s where KVM fails fast, at most 3 s);
#      the same with the image's own initramfs (--initrd image) for comparison. goal ≤ 12 s
# (examples/webserver's boots, direct and UEFI, are bench/vm.sh's.)
# Row 1 alternates kiln and by hand for $ROUNDS rounds (default 3) and compares medians:
# this host's timings vary by ±20% from one run to the next.
# Usage: bench/image.sh [--no-dib]   (--no-dib skips row 2 and DIB's ~1 GB of set-up)
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
scripts/setup.sh >/dev/null
kiln=$repo/target/release/kiln
example=$repo/examples/memcached
work=$(mktemp -d /var/tmp/kiln-bench-image.XXXXXX)
trap 'rm -rf "$work"' EXIT
now() { date +%s.%N; }
secs() { echo "$2 - $1" | bc -l; }
row() { printf '%-52s %10s %10s %9s\n' "$@"; }
ratio() { printf %.2fx "$(echo "$1 / $2" | bc -l)"; }

# The example's image made by hand: one mmdebstrap with the same packages and, in place
# before they install, the same initramfs and module settings; the example's other files;
# an ext4 root filled by mke2fs -d, one GPT partition, qcow2 by qemu-img.
by_hand() {
  local out=$1 root=$work/hand-root
  mmdebstrap --quiet --mode=root --variant=minbase \
    --aptopt='APT::Install-Recommends "false"' \
    --setup-hook="sync-in '$example/skeleton' /" \
    --include=linux-image-amd64,systemd-sysv,udev,memcached \
    bookworm "$root" http://deb.debian.org/debian >/dev/null 2>&1
  [[ $(du -m "$root"/boot/initrd.img-* | cut -f1) -lt 16 ]] ||
    { echo "by hand: the initramfs settings were not applied" >&2; exit 1; }
  install -m644 "$example/80-dhcp.network" "$root/etc/systemd/network/"
  install -m644 "$example/memcached.conf" "$root/etc/memcached.conf"
  chroot "$root" systemctl enable systemd-networkd >/dev/null 2>&1
  install -m755 "$example/lean-boot.sh" "$root/root/lean-boot.sh"
  chroot "$root" sh /root/lean-boot.sh
  rm "$root/root/lean-boot.sh"
  local uuid size_mb
  uuid=$(cat /proc/sys/kernel/random/uuid)
  echo "UUID=$uuid / ext4 errors=remount-ro 0 1" > "$root/etc/fstab"
  mkdir -p "$out.boot"
  cp "$root"/boot/vmlinuz-* "$out.boot/vmlinuz"
  cp "$root"/boot/initrd.img-* "$out.boot/initrd.img"
  size_mb=$(( $(du -sm "$root" | cut -f1) * 13 / 10 + 64 ))
  mke2fs -q -t ext4 -U "$uuid" -d "$root" "$work/hand-root.ext4" "${size_mb}M" >/dev/null
  truncate -s $((size_mb + 2))M "$work/hand.raw"
  printf 'label: gpt\nstart=2048, type=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709\n' |
    sfdisk -q "$work/hand.raw"
  dd if="$work/hand-root.ext4" of="$work/hand.raw" bs=1M seek=1 conv=notrunc,sparse status=none
  qemu-img convert -O qcow2 "$work/hand.raw" "$out"
  # Its intermediates go, as kiln's raw disk does; the root tree is kept (kiln keeps
  # its layers in the store) and removed untimed by the caller.
  rm -f "$work/hand-root.ext4" "$work/hand.raw"
}

kiln_build() { # STORE OUT [ARGS…]   ($EXAMPLE_DIR: another copy of the example)
  local store=$1 out=$2 dir=${EXAMPLE_DIR:-$example}; shift 2
  "$kiln" --store "$store" build -f "$dir/memcached.spec" "$dir" -o "$out" "$@" >/dev/null 2>&1
}

# This host's speed drifts (shared CPUs): a fixed CPU-bound reference, to compare runs by.
t0=$(now); head -c 256M /dev/zero | sha512sum >/dev/null; t1=$(now)
printf 'host reference: sha512sum of 256 MiB in %.2f s\n' "$(secs "$t0" "$t1")"
row "benchmark (memcached image)" "kiln" "peer" "ratio"
row "---------" "----" "----" "-----"

median() { printf '%s\n' "$@" | sort -n | awk '{v[NR]=$1} END {print (NR % 2) ? v[(NR+1)/2] : (v[NR/2] + v[NR/2+1]) / 2}'; }
kilns=() hands=()
for round in $(seq "${ROUNDS:-3}"); do
  # Each run starts with nothing of the other's left to write back (a sync, not timed):
  # otherwise the second pays for the first one's gigabytes.
  rm -rf "$work/store" "$work"/kiln.qcow2*; sync
  t0=$(now); kiln_build "$work/store" "$work/kiln.qcow2" --boot kernel; t1=$(now)
  rm -f "$work/hand.qcow2"; rm -rf "$work/hand.qcow2.boot"; sync
  t2=$(now); by_hand "$work/hand.qcow2"; t3=$(now)
  rm -rf "$work/hand-root"
  kilns+=("$(secs "$t0" "$t1")") hands+=("$(secs "$t2" "$t3")")
  printf '  round %s: kiln %.1f s, by hand %.1f s\n' "$round" "${kilns[-1]}" "${hands[-1]}" >&2
done
k=$(median "${kilns[@]}") h=$(median "${hands[@]}")
row "build from nothing (s, median): kiln vs by hand" "$(printf %.1f "$k")" "$(printf %.1f "$h")" "$(ratio "$k" "$h")"
# Each round's pair ran back to back, so its ratio is the least touched by the host's drift.
pairs=()
for i in "${!kilns[@]}"; do pairs+=("$(echo "${kilns[$i]} / ${hands[$i]}" | bc -l)"); done
row "  per-round ratios $(printf '%.2f ' "${pairs[@]}")(median)" "" "" "$(printf %.2fx "$(median "${pairs[@]}")")"
row "  image size (MiB): kiln vs by hand" \
  "$(($(stat -c %s "$work/kiln.qcow2") >> 20))" "$(($(stat -c %s "$work/hand.qcow2") >> 20))" ""
# The everyday case: memcached.conf edited, the image made again. kiln rebuilds from the
# changed step on (its store holds the rest); by hand, everything is done again.
cp -r "$example" "$work/edited"
echo "# edited" >> "$work/edited/memcached.conf"
sync; t0=$(now); EXAMPLE_DIR=$work/edited kiln_build "$work/store" "$work/edited.qcow2" --boot kernel; t1=$(now)
e=$(secs "$t0" "$t1")
row "  after editing memcached.conf (s): kiln vs by hand" "$(printf %.1f "$e")" "$(printf %.1f "$h")" "$(ratio "$e" "$h")"
rm -rf "$work/edited" "$work"/edited.qcow2*

if [[ "${1:-}" != "--no-dib" ]]; then
  # shellcheck source=bench/lib/dib.sh
  source bench/lib/dib.sh
  dib_setup
  dib_build_memcached "$work/dib-first.qcow2"   # fills DIB's caches, as a user's first run
  rm -f "$work/dib-first.qcow2"; sync
  t0=$(now); dib_build_memcached "$work/dib.qcow2"; t1=$(now)
  d=$(secs "$t0" "$t1")
  row "build (s): kiln from nothing vs DIB 2nd run" "$(printf %.1f "$k")" "$(printf %.1f "$d")" "$(ratio "$k" "$d")"
  row "  image size (MiB): kiln vs DIB" \
    "$(($(stat -c %s "$work/kiln.qcow2") >> 20))" "$(($(stat -c %s "$work/dib.qcow2") >> 20))" ""
fi

# Boot: the same build as a raw --boot kernel image (cached, so this only exports).
kiln_build "$work/store" "$work/kiln.raw" --boot kernel
boot_median() { # IMAGE SPEC [kiln test ARGS…]: median of 3 "boot to first passing check" times
  local image=$1 spec=$2 boots=() boot; shift 2
  for _ in 1 2 3; do
    sync # untimed: no earlier run's write-back (DIB leaves gigabytes) under the boot
    "$kiln" --store "$work/store" test "$image" -f "$spec" "$@" >"$work/test.out" 2>&1 ||
      { cat "$work/test.out" >&2; exit 1; }
    # The port check passes when memcached answers; its end is "start + boot time".
    boot=$(sed -n 's/^boot to first passing check: \([0-9.]*\) s.*/\1/p' "$work/test.out")
    boots+=("$boot")
  done
  echo "  boots: ${boots[*]}" >&2
  median "${boots[@]}"
}
b=$(boot_median "$work/kiln.raw" "$example/memcached.spec")
accel=$(sed -n 's/^boot to first passing check: [0-9.]* s (\(.*\))/\1/p' "$work/test.out")
row "kiln test: VM start to memcached answering (s, $accel)" "$b" "12.0 goal" "$(ratio "$b" 12)"
o=$(boot_median "$work/kiln.raw" "$example/memcached.spec" --initrd image)
row "  the same with the image's own initramfs (s)" "$o" "" ""

