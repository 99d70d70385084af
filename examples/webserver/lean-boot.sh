#!/bin/sh
# A VM image boots lean: under an emulated CPU (QEMU's TCG) every process systemd starts
# early costs a fraction of a second of every boot. This image has no encrypted, verity
# or integrity volumes, no swap to resume from, no SysV scripts to convert and no GPT
# auto-mounts, so those generators go; nor does it need kernel feature mounts (debugfs,
# tracefs, configfs, FUSE, binfmt), the modules they load, a pstore, a console on the
# (absent) VGA screen, login records, maintenance timers (apt, dpkg backups, e2scrub,
# fstrim) or a journal kept on disk (the journal stays in memory; the serial console
# shows the boot, and its login prompt stays).
set -eu
mkdir -p /etc/systemd/system-generators
for g in cryptsetup gpt-auto hibernate-resume integritysetup veritysetup system-update \
         rc-local sysv bless-boot; do
  ln -sf /dev/null "/etc/systemd/system-generators/systemd-$g-generator"
done
systemctl mask --quiet \
  sys-kernel-debug.mount sys-kernel-tracing.mount sys-kernel-config.mount \
  sys-fs-fuse-connections.mount proc-sys-fs-binfmt_misc.automount systemd-binfmt.service \
  modprobe@dm_mod.service modprobe@loop.service modprobe@efi_pstore.service \
  modprobe@fuse.service modprobe@configfs.service systemd-pstore.service \
  systemd-network-generator.service e2scrub_reap.service systemd-journal-flush.service \
  systemd-update-utmp.service systemd-update-utmp-runlevel.service \
  apt-daily.timer apt-daily-upgrade.timer dpkg-db-backup.timer e2scrub_all.timer fstrim.timer
systemctl disable --quiet getty@tty1.service
# Debian's fallback that starts gettys on tty2-tty6 when logind is absent: no screen here.
systemctl mask --quiet getty-static.service
mkdir -p /etc/systemd/journald.conf.d
printf '[Journal]\nStorage=volatile\n' > /etc/systemd/journald.conf.d/volatile.conf
# The image is complete: /etc and /var are up to date with /usr. systemd keeps that as
# the time stamp of /etc/.updated and /var/.updated (written by systemd-update-done,
# which Debian does not ship); without them every boot counts as the first after an
# update and runs the units conditioned on one (sysusers, ldconfig, journal catalogue).
for d in /etc /var; do
  printf '# /usr has not changed since this image was built\n' > "$d/.updated"
  touch -r /usr "$d/.updated"
done
