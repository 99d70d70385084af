# shellcheck shell=bash
# diskimage-builder (DIB) as a peer of kiln: the image of examples/memcached built the DIB way.
# Meant to be sourced by a bench script, as root, on Debian 12:
#
#   source bench/lib/dib.sh
#   dib_setup                        # Debian packages + DIB in a venv (idempotent)
#   dib_build_memcached OUT.qcow2    # bootable qcow2; DIB's log in OUT.qcow2.log
#
# Neither function writes to stdout; both return non-zero with the tail of their log on
# stderr when they fail.
#
# Environment:
#   KILN_BENCH_CACHE   where the venv lives (default /var/cache/kiln-bench; venv: dib-venv)
#   KILN_BENCH_DIB_VERSION  diskimage-builder release from PyPI (default below)
#   DIB_IMAGE_CACHE    DIB's own cache (default ~/.cache/image-create): the bootstrap
#                      tarball (see below) and, in apt/debian/, the .debs of DIB's first
#                      phase only (root.d: systemd-sysv, python3, …); the kernel,
#                      memcached and GRUB are downloaded again on every build
#   DIB_DEBOOTSTRAP_CACHE, DIB_DEBIAN_USE_DEBOOTSTRAP_CACHE  default 1 here (DIB's is
#                      off): write, then reuse, the bootstrapped base as a tarball
#   DIB_NO_TMPFS       default 1 here: build on disk under /var/tmp/dib-*, as kiln does
#                      (DIB's default puts the build in a tmpfs when RAM allows)
#
# What DIB builds, against kiln's examples/memcached. Same: Debian 12 bookworm amd64 from
# deb.debian.org `bookworm main` only, linux-image-amd64 (with initramfs-tools),
# systemd-sysv, udev, memcached with the example's memcached.conf, systemd-networkd
# enabled with 80-dhcp.network, no recommends, kernel command line ending
# `console=tty0 console=ttyS0,115200 rw`, no boot menu delay, uncompressed qcow2, ext4
# root on a GPT. The command (see dib_build_memcached for the environment):
#   disk-image-create -n -a amd64 -t qcow2 -u -o OUT -p memcached,udev \
#     debian-minimal vm block-device-{efi|gpt} kiln-memcached
# Differences DIB does not let us remove:
#   - boot: GRUB, root=LABEL=cloudimg-rootfs (needs the initrd, which both have); kiln
#     writes systemd-boot on its ESP and root=PARTUUID=…. Where the kernel mounts vfat,
#     block-device-efi: a 550 MiB ESP, an 8 MiB BIOS boot partition and the root, GRUB
#     for UEFI and BIOS (kiln: an ESP of at least 64 MiB and the root, UEFI only). On
#     this bench machine (no vfat, see _dib_block_device_element) block-device-gpt: an
#     8 MiB BIOS boot partition and the root, GRUB for legacy BIOS only (QEMU's default
#     SeaBIOS boots it; OVMF does not).
#   - packages (195 in a build here): debian-minimal always adds busybox, sudo, gnupg2 and
#     python3 (its in-chroot scripts need python3), and netbase; DIB's debootstrap
#     element adds adduser, ca-certificates, locales, lsb-release; the boot loader adds
#     grub-pc (or grub-efi-amd64 + grub-pc-bin). It bootstraps with mmdebstrap (kiln
#     needs it anyway) and --include=apt,tzdata.
#   - files DIB leaves: /etc/dib-manifests, /etc/hostname "debian", a C.UTF-8 locale,
#     /etc/fstab by label, a 64 MiB journal and one inode per 4 KiB (mkfs -i 4096).
#   - the disk's virtual size is DIB's (content / 0.6, plus 525 MiB with an ESP), not
#     kiln's (content × 1.3 + 256 MiB).
#   - DIB has no counterpart of kiln's (test …) boot check; the spec's build-time check
#     (memcached --version, -l 0.0.0.0 in the config) runs in the kiln-memcached element.
# Workarounds for this machine (each explained where it is made): device-mapper shims
# (bench/lib/dib-shims), BIOS layout without vfat, the sources list without
# security.debian.org.

_DIB_LIB_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
_DIB_DEFAULT_VERSION=3.43.0
_DIB_MIRROR=http://deb.debian.org/debian

# Host tools DIB runs, by Debian package.
_DIB_HOST_PACKAGES=(
  python3-venv # the venv DIB is installed in, with Debian's python3
  sudo         # DIB runs every privileged command through sudo, even as root
  debootstrap  # DIB's debootstrap element asks `debootstrap --version` even when it uses mmdebstrap
  mmdebstrap   # what DIB bootstraps with when present (kiln needs it anyway)
  kpartx       # DIB's block-device maps the partitions of its loop device with kpartx
  gdisk        # sgdisk writes the GPT
  dosfstools   # mkfs.vfat for the ESP
  e2fsprogs    # mkfs.ext4 for the root
  qemu-utils   # qemu-img convert to qcow2
  util-linux   # losetup, mount, and partx for the device-mapper shims
  procps       # DIB's cleanup looks for processes left in the chroot
)

# PATH entries that stand in for device-mapper where the kernel has none (this bench
# machine's kernel has neither device-mapper nor built-in partition table parsers, so
# DIB's `kpartx` fails with "/dev/mapper/control: open failed"): shims that map
# kpartx/dmsetup to partx on the loop device. See bench/lib/dib-shims/. Empty where
# device-mapper works, so DIB then runs the real kpartx.
_dib_shim_path() {
  grep -qw device-mapper /proc/misc 2>/dev/null || echo "$_DIB_LIB_DIR/dib-shims:"
}

# The block-device-* element: UEFI like kiln's default (block-device-efi: GPT, ESP,
# BIOS boot partition, GRUB for both) where the kernel can mount vfat, since DIB mounts
# the ESP to run grub-install into it. This bench machine's kernel has no vfat (mount
# fails with "unknown filesystem type 'vfat'"), so there: block-device-gpt (GPT, BIOS
# boot partition, root; GRUB for legacy BIOS, which QEMU's default SeaBIOS boots).
# KILN_BENCH_DIB_BLOCK_DEVICE=efi|gpt forces one.
_dib_block_device_element() {
  local layout=${KILN_BENCH_DIB_BLOCK_DEVICE:-}
  if [[ -z $layout ]]; then
    if grep -qw vfat /proc/filesystems 2>/dev/null ||
      { modprobe -q vfat 2>/dev/null && grep -qw vfat /proc/filesystems; }; then
      layout=efi
    else
      layout=gpt
    fi
  fi
  echo "block-device-$layout"
}

# The venv DIB lives in.
_dib_venv() {
  echo "${KILN_BENCH_CACHE:-/var/cache/kiln-bench}/dib-venv"
}

# Prints message $2 and the last lines of log $1 on stderr. Succeeds, so that callers
# under `set -e` get to their own `return 1`.
_dib_fail() {
  echo "dib: $2 (log: $1); last lines:" >&2
  tail -n 40 "$1" >&2 || true
}

# Installs the Debian packages DIB needs that are missing; `apt-get update` only if the
# first try fails (the lists are usually there). Output goes to log $1.
_dib_apt_install() {
  local log=$1 pkg missing=()
  for pkg in "${_DIB_HOST_PACKAGES[@]}"; do
    [[ $(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null) == "install ok installed" ]] || missing+=("$pkg")
  done
  if ((${#missing[@]} == 0)); then return 0; fi
  echo "dib: installing ${missing[*]}" >>"$log"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >>"$log" 2>&1 && return 0
  # Some sources of this machine may be unreachable: update's status says nothing useful,
  # the second install does.
  apt-get update -q >>"$log" 2>&1 || true
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >>"$log" 2>&1
}

# Creates the venv (with Debian's python3, not whatever python3 comes first in PATH)
# and installs the pinned DIB from PyPI into it, unless it is already there.
_dib_venv_install() {
  local log=$1 venv version
  venv=$(_dib_venv)
  version=${KILN_BENCH_DIB_VERSION:-$_DIB_DEFAULT_VERSION}
  if [[ -x $venv/bin/disk-image-create ]] &&
    [[ $("$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("diskimage-builder"))' 2>/dev/null) == "$version" ]]; then
    return 0
  fi
  if ! "$venv/bin/python" -c 'import sys' >/dev/null 2>&1; then
    rm -rf "$venv"
    /usr/bin/python3 -m venv "$venv" >>"$log" 2>&1 || return 1
  fi
  "$venv/bin/pip" install -q --disable-pip-version-check "diskimage-builder==$version" >>"$log" 2>&1
}

# Installs what dib_build_memcached needs: Debian packages, and DIB in a venv under
# ${KILN_BENCH_CACHE:-/var/cache/kiln-bench}/dib-venv. Reuses what is already there.
dib_setup() {
  local cache log
  cache=$(dirname "$(_dib_venv)")
  mkdir -p "$cache" || return 1
  log=$cache/dib-setup.log
  : >"$log"
  _dib_apt_install "$log" || { _dib_fail "$log" "installing Debian packages failed"; return 1; }
  _dib_venv_install "$log" || { _dib_fail "$log" "installing diskimage-builder from PyPI failed"; return 1; }
}

# Undoes what a failed DIB run may leave under scratch directory $1: mounts (the
# chroot's /proc, /sys, /dev, the apt cache bind mount…), partition mappings and loop
# devices whose backing file is there. Loop devices of anything else are left alone.
# Removes the directory only when nothing is mounted below it any more (a bind mount
# of DIB's cache or of /dev must never be deleted through).
_dib_cleanup() {
  local scratch=$1 target dev back
  while read -r target; do
    umount "$target" 2>/dev/null || umount -l "$target" 2>/dev/null || true
  done < <(findmnt -rn -o TARGET | grep -F "$scratch/" | sort -r)
  while read -r dev back; do
    [[ $back == "$scratch"/* ]] || continue
    PATH="$(_dib_shim_path)$PATH" kpartx -d "$dev" >/dev/null 2>&1 || true
    losetup -d "$dev" 2>/dev/null || true
  done < <(losetup -l -n -O NAME,BACK-FILE 2>/dev/null)
  if findmnt -rn -o TARGET | grep -qF "$scratch/"; then
    echo "dib: mounts left under $scratch; not removing it" >&2
    return 1
  fi
  rm -rf --one-file-system "$scratch"
}

# Builds kiln's examples/memcached with diskimage-builder into the qcow2 file $1, DIB's
# log in $1.log. Run dib_setup first.
dib_build_memcached() {
  if (($# != 1)); then
    echo "usage: dib_build_memcached OUT.qcow2" >&2
    return 2
  fi
  local out log venv scratch block_device status=0
  out=$(realpath -m "$1")
  log=$out.log
  venv=$(_dib_venv)
  if [[ ! -x $venv/bin/disk-image-create ]]; then
    echo "dib: $venv/bin/disk-image-create missing; run dib_setup first" >&2
    return 1
  fi
  mkdir -p "$(dirname "$out")" || return 1
  scratch=$(mktemp -d /var/tmp/dib-XXXXXX) || return 1
  mkdir -p "$scratch/out" || return 1
  block_device=$(_dib_block_device_element)
  echo "dib: layout $block_device" >"$log"
  # Env: DIB_RELEASE/DIB_DISTRIBUTION_MIRROR pick bookworm from deb.debian.org; the
  # sources list is kiln's (only `bookworm main`: DIB's default adds bookworm-updates
  # and security.debian.org, which this network cannot reach); the security mirror is
  # moved to deb.debian.org in case an element reads it. No ifupdown stanzas (the
  # example uses networkd). Boot: kiln's command line (DIB appends `rw` after Debian's
  # `ro`; tty0 and ttyS0,115200 are DIB's defaults) and timeout 0. TMP_DIR is where DIB
  # makes its build, image and mount directories. -u: no qcow2 compression, as kiln.
  # -n: no `base` element, which would add software-properties-common and
  # apt-transport-https that kiln's image does not have.
  (
    cd "$scratch" &&
      env PATH="$(_dib_shim_path)$venv/bin:$PATH" \
        ELEMENTS_PATH="$_DIB_LIB_DIR/dib-elements" \
        KILN_DIB_MEMCACHED_SRC="$_DIB_LIB_DIR/../../examples/memcached" \
        TMP_DIR="$scratch" \
        DIB_RELEASE=bookworm \
        DIB_DISTRIBUTION_MIRROR="$_DIB_MIRROR" \
        DIB_APT_SOURCES_CONF="default:deb $_DIB_MIRROR bookworm main" \
        DIB_DEBIAN_SECURITY_MIRROR=http://deb.debian.org/debian-security \
        DIB_APT_MINIMAL_CREATE_INTERFACES=0 \
        DIB_BOOTLOADER_DEFAULT_CMDLINE=rw \
        DIB_NO_TIMER_CHECK=False \
        DIB_GRUB_TIMEOUT=0 \
        DIB_DEBOOTSTRAP_CACHE="${DIB_DEBOOTSTRAP_CACHE:-1}" \
        DIB_DEBIAN_USE_DEBOOTSTRAP_CACHE="${DIB_DEBIAN_USE_DEBOOTSTRAP_CACHE:-1}" \
        DIB_NO_TMPFS="${DIB_NO_TMPFS:-1}" \
        disk-image-create -n -a amd64 -t qcow2 -u \
        -o "$scratch/out/memcached" \
        -p memcached,udev \
        debian-minimal vm "$block_device" kiln-memcached
  ) </dev/null >>"$log" 2>&1 || status=$?
  if ((status == 0)); then
    mv -f "$scratch/out/memcached.qcow2" "$out" || status=1
  fi
  _dib_cleanup "$scratch" || true
  if ((status != 0)); then
    _dib_fail "$log" "disk-image-create failed with status $status"
    return 1
  fi
}
