#!/bin/sh
# Entrypoint of berth-demo/nginx. Runs `nginx -g 'daemon off;'` by default; SIGTERM becomes a
# graceful stop (SIGQUIT: open requests finish), which the official image gets from its
# STOPSIGNAL and `docker import` cannot set. `nginx -s reload` inside reloads with no drop.
set -eu

if [ "$1" != nginx ]; then exec "$@"; fi

"$@" &
pid=$!
trap 'kill -QUIT "$pid" 2>/dev/null || :' TERM QUIT
trap 'kill -TERM "$pid" 2>/dev/null || :' INT
trap 'kill -HUP "$pid" 2>/dev/null || :' HUP
status=0
wait "$pid" || status=$?
while kill -0 "$pid" 2>/dev/null; do
  status=0
  wait "$pid" || status=$?
done
exit "$status"
