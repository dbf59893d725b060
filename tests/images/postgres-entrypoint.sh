#!/bin/sh
# Entrypoint of berth-demo/postgres, following the official `postgres` image's conventions:
# POSTGRES_PASSWORD (required unless POSTGRES_HOST_AUTH_METHOD=trust), POSTGRES_USER (postgres),
# POSTGRES_DB (= user), POSTGRES_INITDB_ARGS, PGDATA, /docker-entrypoint-initdb.d/*.sql|*.sh on
# first start. Runs the server as the `postgres` user; SIGTERM triggers a fast shutdown (what the
# official image gets from STOPSIGNAL SIGINT, which `docker import` cannot set).
set -eu

# `docker run IMAGE -c shared_buffers=256MB` means: the server, with these options.
if [ "${1#-}" != "$1" ]; then set -- postgres "$@"; fi
if [ "$1" != postgres ]; then exec "$@"; fi

PGDATA=${PGDATA:-/var/lib/postgresql/data}
export PGDATA

if [ "$(id -u)" = 0 ]; then
  # A fresh bind mount or volume may belong to root: hand it to postgres, then drop root.
  mkdir -p "$PGDATA" /var/run/postgresql
  chmod 700 "$PGDATA" 2>/dev/null || :
  chmod 2777 /var/run/postgresql
  find "$PGDATA" /var/run/postgresql \! -user postgres -exec chown postgres:postgres '{}' +
  exec /usr/bin/setpriv --reuid=postgres --regid=postgres --init-groups "$0" "$@"
fi

if [ ! -s "$PGDATA/PG_VERSION" ]; then
  POSTGRES_USER=${POSTGRES_USER:-postgres}
  POSTGRES_DB=${POSTGRES_DB:-$POSTGRES_USER}
  auth=${POSTGRES_HOST_AUTH_METHOD:-scram-sha-256}
  if [ -z "${POSTGRES_PASSWORD:-}" ] && [ "$auth" != trust ]; then
    cat >&2 <<'MSG'
Error: Database is uninitialized and superuser password is not specified.
       You must specify POSTGRES_PASSWORD to a non-empty value for the superuser.
       For example, "-e POSTGRES_PASSWORD=password" on "docker run".
       (Or set POSTGRES_HOST_AUTH_METHOD=trust to allow all connections without a password.)
MSG
    exit 1
  fi
  pwfile=$(mktemp)
  chmod 600 "$pwfile"
  printf '%s\n' "${POSTGRES_PASSWORD:-}" >"$pwfile"
  # shellcheck disable=SC2086 # POSTGRES_INITDB_ARGS is a list of options, as in the official image
  initdb --username="$POSTGRES_USER" --pwfile="$pwfile" --auth-local=trust --auth-host="$auth" \
    ${POSTGRES_INITDB_ARGS:-}
  rm -f "$pwfile"
  if [ "$auth" = md5 ]; then echo "password_encryption = md5" >>"$PGDATA/postgresql.conf"; fi
  echo "listen_addresses = '*'" >>"$PGDATA/postgresql.conf"
  printf '\nhost all all all %s\n' "$auth" >>"$PGDATA/pg_hba.conf"

  # No TCP while setting up, so no client from outside connects to a half-made database. (The
  # local socket is open: a check inside the container asks on 127.0.0.1, as pg_isready in
  # berth's health check does.)
  pg_ctl -D "$PGDATA" -o "-c listen_addresses='' -p 5432" -w start
  psql_setup() { psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --no-password --no-psqlrc "$@"; }
  exists=$(echo "SELECT 1 FROM pg_database WHERE datname = :'db';" | psql_setup --dbname postgres -tA -v db="$POSTGRES_DB")
  if [ -z "$exists" ]; then
    echo 'CREATE DATABASE :"db";' | psql_setup --dbname postgres -v db="$POSTGRES_DB"
  fi
  for f in /docker-entrypoint-initdb.d/*; do
    case $f in
      *.sh) echo "running $f"; . "$f" ;;
      *.sql) echo "running $f"; psql_setup --dbname "$POSTGRES_DB" -f "$f" ;;
      *.sql.gz) echo "running $f"; gunzip -c "$f" | psql_setup --dbname "$POSTGRES_DB" ;;
      *) ;;
    esac
  done
  pg_ctl -D "$PGDATA" -m fast -w stop
  echo "PostgreSQL init process complete; ready for start up."
fi

"$@" &
pid=$!
trap 'kill -INT "$pid" 2>/dev/null || :' TERM INT
trap 'kill -QUIT "$pid" 2>/dev/null || :' QUIT
status=0
wait "$pid" || status=$?
# A trapped signal interrupts `wait`; keep waiting for the server's own exit status.
while kill -0 "$pid" 2>/dev/null; do
  status=0
  wait "$pid" || status=$?
done
exit "$status"
