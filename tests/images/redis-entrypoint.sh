#!/bin/sh
# Entrypoint of berth-demo/redis, accepting the official `redis` image's usage: the command is
# `redis-server [redis.conf] [--option value ...]` (or just options). Like the official image,
# protected mode is off unless asked for (the container network is the boundary, and
# --requirepass is how a password is set); the server runs as the `redis` user in /data.
set -eu

if [ "${1#-}" != "$1" ] || [ "${1%.conf}" != "$1" ]; then set -- redis-server "$@"; fi

if [ "$1" = redis-server ] && [ "$(id -u)" = 0 ]; then
  find . \! -user redis -exec chown redis:redis '{}' +
  exec /usr/bin/setpriv --reuid=redis --regid=redis --init-groups "$0" "$@"
fi

if [ "$1" = redis-server ]; then
  shift
  # A config file must come first; the options after it win over both it and this default.
  if [ $# -gt 0 ] && { [ "${1%.conf}" != "$1" ] || [ "$1" = - ]; }; then
    conf=$1
    shift
    set -- redis-server "$conf" --protected-mode no "$@"
  else
    set -- redis-server --protected-mode no "$@"
  fi
  if [ "$(umask)" = 0022 ]; then umask 0077; fi
fi

exec "$@"
