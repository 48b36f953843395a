#!/usr/bin/env bash
# The dokku-daemon design as a baseline: socat forks and runs this script once per connection; it reads
# one command line and answers one JSON line. dokku-daemon would then run `dokku COMMAND`; this skips
# that, so the figures are the cheapest this design can be (the fork, exec and bash start-up alone).
set -euo pipefail
IFS= read -r line || exit 0
line="${line%$'\r'}"
case "$line" in
  ping) printf '{"ok":true,"output":"pong"}\n' ;;
  *) printf '{"ok":false,"output":"Invalid command","error":"invalid_command"}\n' ;;
esac
