#!/bin/sh
# Writes the page the web server serves: a weather report and where it was built.
set -eu
docroot=${1:-/var/www/html}
mkdir -p "$docroot"
cat > "$docroot/cloud.txt" <<TXT
Cloudy Weather Expected
served by $(. /etc/os-release; echo "$PRETTY_NAME")
TXT
