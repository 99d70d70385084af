#!/bin/sh
# Debian's lighttpd.conf runs two Perl scripts (include_shell) every time it is read, and
# lighttpd.service reads it twice per start (`lighttpd -tt` as ExecStartPre, then the
# server): four Perl start-ups on every boot, seconds under an emulated CPU. This image's
# configuration is fixed when it is built, so the scripts run now, their output is
# included as plain files, and the configuration is checked now instead of at each boot.
set -eu
conf=/etc/lighttpd/lighttpd.conf
/usr/share/lighttpd/use-ipv6.pl 80 > /etc/lighttpd/use-ipv6.conf
/usr/share/lighttpd/create-mime.conf.pl > /etc/lighttpd/mime.conf
sed -i -e 's|^include_shell "/usr/share/lighttpd/use-ipv6.pl " + server.port$|include "/etc/lighttpd/use-ipv6.conf"|' \
       -e 's|^include_shell "/usr/share/lighttpd/create-mime.conf.pl"$|include "/etc/lighttpd/mime.conf"|' "$conf"
if grep -q '^include_shell' "$conf"; then
  echo "lighttpd-fixed-config: $conf still runs a script:" >&2
  grep '^include_shell' "$conf" >&2
  exit 1
fi
grep -q '^server.port *= *80$' "$conf"
lighttpd -tt -f "$conf"
mkdir -p /etc/systemd/system/lighttpd.service.d
printf '[Service]\n# checked when the image was built (lighttpd-fixed-config)\nExecStartPre=\n' \
  > /etc/systemd/system/lighttpd.service.d/checked-at-build.conf
