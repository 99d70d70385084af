#!/bin/sh
# Prints a greeting naming where the app lives ($APP_HOME comes from the spec's env).
echo "hello from ${APP_HOME:-nowhere}"
