#!/bin/sh
# berth-demo/standin: the stand-in for an application image the examples name (ghcr.io/acme/...,
# ollama/ollama, n8nio/n8n, qdrant/qdrant) in the real-cluster tests, where nothing can be pulled.
# Whatever it is started as (the image's entrypoint, or node, celery, rq, bundle, python... which
# are symlinks to this script), it answers HTTP 200 on every path on $PORT and on the ports the
# examples use (STANDIN_PORTS), and exits at once on SIGTERM.
ports=$(printf '%s\n' ${PORT:-} ${STANDIN_PORTS:-3000 5001 5678 6333 8000 8080 11434} | sort -u)
echo "berth stand-in started as: $(basename "$0") $*"
echo "answering HTTP 200 on ports:" $ports
pids=
for p in $ports; do
  nc -ll -p "$p" -e /usr/local/bin/standin-respond &
  pids="$pids $!"
done
trap 'kill $pids 2>/dev/null; exit 0' TERM INT
wait
