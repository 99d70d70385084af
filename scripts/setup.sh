#!/usr/bin/env bash
# Installs what kiln and its tests need on Debian 12 (as root) and builds kiln.
# Safe to run again: packages already present are not fetched twice.
set -euo pipefail
cd "$(dirname "$0")/.."

# Runtime: mmdebstrap bootstraps Debian bases (debootstrap is the fallback).
# Tests: busybox-static makes tiny rootfs bases, docker-registry + skopeo serve OCI images on loopback,
# apache2-utils (htpasswd) writes the users of a registry with HTTP basic authentication.
# Images: e2fsprogs (mke2fs -d, e2fsck), fdisk (sfdisk), dosfstools + mtools (the ESP),
# systemd-boot-efi (the UEFI loader), qemu-system-x86 + ovmf (kiln run/test), qemu-utils (qemu-img).
# QEMU sandbox: kmod (depmod, for the module tables of the kernel it unpacks for VM bases).
# Benchmarks: time (/usr/bin/time -v, peak memory in bench/registry.sh), curl (its peer).
# Build: libc6-dev, the static C library kiln-init (the boot initramfs' /init) is linked with.
# Deploy: iproute2 (netns, veth, bridge, tc netem) and iptables (loss where the kernel lacks netem)
# for its tests; udpcast, zstd and gnuplot-nox for
# bench/deploy.sh (the peer it is measured against, the pack-ratio baseline, the plot); openssl
# (fast SHA-256 of the loaded disks in the tests).
# Catalogue tests: minisign (the stock tool verifies kiln's signatures), chromium + a font (the
# marketplace page, read headless).
PACKAGES=(mmdebstrap debootstrap busybox-static docker-registry skopeo ca-certificates iproute2 bc
          e2fsprogs fdisk dosfstools mtools systemd-boot-efi qemu-system-x86 qemu-utils ovmf libc6-dev
          kmod udpcast zstd gnuplot-nox openssl time curl minisign chromium fonts-liberation apache2-utils
          iptables)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  apt-get update -q
  # qemu-system-x86 must come with bookworm's own qemu-utils: a newer preinstalled
  # qemu-utils (from backports) conflicts with it, so both are pinned to bookworm.
  if [[ " ${missing[*]} " == *" qemu-system-x86 "* ]]; then
    missing=("${missing[@]/qemu-utils/}")
    missing+=(qemu-utils/bookworm)
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends --allow-downgrades ${missing[@]}
fi

# docker-registry's package starts a system service on :5000; the tests start their own.
systemctl disable --now docker-registry >/dev/null 2>&1 || true

if ! command -v cargo >/dev/null; then
  echo "setup: cargo is missing; install Rust (https://rustup.rs) or Debian's cargo" >&2
  exit 1
fi
cargo build --release -q -p kiln
echo "setup: kiln built at target/release/kiln"
