#!/usr/bin/env bash
# `make bench-k8s`: the real `berth operator` process against a real kube-apiserver with
# STACKS (1000) AppStacks applied (examples/vidgen.yaml renamed, 20 per namespace, with the
# Secrets it references). Prints:
#   memory: VmHWM (peak RSS) and VmRSS of the berth process from /proc/<pid>/status once its
#           caches are synced and every stack reconciled (observedGeneration set, writes quiet),
#           with its live heap from /metrics (berth_heap_live_bytes, berth_heap_peak_bytes);
#   idle:   the requests berth sends to the API server over IDLE_SECS (300) after that, by verb,
#           from berth's own berth_kube_requests_total, cross-checked with the deltas of the
#           API server's apiserver_request_total on the resources berth uses (only berth talks to
#           this cluster: the controller-manager and scheduler are stopped once it is up).
#
# The cluster is private to the benchmark and control-plane only (no kubelet, so no pod runs):
# K8S_HOME=/var/tmp/berth-k8s-bench, apiserver :6643, etcd :2579/:2580, started with
# /work/shared/k8s/start.sh (override K8S_DIR) and stopped and deleted at the end (KEEP=1 keeps
# it). BERTH=path/to/berth (default: target/release/berth, built by `make bench-k8s`);
# BERTH_LOG=path keeps the operator's log (RUST_LOG sets its level, default warn).
set -euo pipefail
cd "$(dirname "$0")/../.."

STACKS=${STACKS:-1000}
PER_NS=${PER_NS:-20}
IDLE_SECS=${IDLE_SECS:-300}
BERTH=${BERTH:-target/release/berth}
K8S_DIR=${K8S_DIR:-/work/shared/k8s}
HTTP=${BENCH_HTTP:-127.0.0.1:18089}
export K8S_HOME=${K8S_HOME:-/var/tmp/berth-k8s-bench}
export K8S_APISERVER_PORT=${K8S_APISERVER_PORT:-6643} K8S_ETCD_PORT=${K8S_ETCD_PORT:-2579}
export K8S_ETCD_PEER_PORT=${K8S_ETCD_PEER_PORT:-2580} K8S_KCM_PORT=${K8S_KCM_PORT:-10457}
export K8S_SCHEDULER_PORT=${K8S_SCHEDULER_PORT:-10459} K8S_SERVICES=0
WORK=$(mktemp -d)
LOGFILE=${BERTH_LOG:-$WORK/berth.log} # BERTH_LOG=path keeps the operator log
BERTH_PID=

log() { echo "[bench-k8s $(date -u +%T)] $*" >&2; }
retry() { local i; for i in 1 2 3 4 5 6; do "$@" && return 0; sleep 5; done; return 1; }
cleanup() {
  [[ -n $BERTH_PID ]] && kill "$BERTH_PID" 2>/dev/null && wait "$BERTH_PID" 2>/dev/null
  if [[ ${KEEP:-0} != 1 ]]; then
    bash "$K8S_DIR/stop.sh" >/dev/null 2>&1 || true
    [[ -f $K8S_HOME/.berth-k8s ]] && rm -rf "$K8S_HOME"
    # stop.sh removes every iptables rule carrying the clusters' shared comment, those of a
    # node cluster running beside this one too (pods then lose the API server and each other):
    # let that cluster put its rules back (start.sh is idempotent).
    local node=/var/tmp/berth-k8s/run/kubelet.pid
    if [[ -f $node ]] && kill -0 "$(cat "$node")" 2>/dev/null; then
      env -u K8S_HOME -u K8S_APISERVER_PORT -u K8S_ETCD_PORT -u K8S_ETCD_PEER_PORT -u K8S_KCM_PORT \
        -u K8S_SCHEDULER_PORT -u K8S_SERVICES bash "$K8S_DIR/start.sh" --node >/dev/null 2>&1 || true
    fi
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

[[ -x $BERTH ]] || { echo "no berth binary at $BERTH (make bench-k8s builds it)" >&2; exit 2; }
if curl -fsS -o /dev/null "http://$HTTP/metrics" 2>/dev/null; then
  echo "something already serves http://$HTTP (a berth left running?): stop it or set BENCH_HTTP" >&2
  exit 2
fi
avail=$(df --output=avail -k / | tail -n1)
((avail > 3 * 1024 * 1024)) || { echo "less than 3 GB free on /: not starting a cluster" >&2; exit 2; }

log "starting a private control-plane-only cluster in $K8S_HOME"
eval "$(bash "$K8S_DIR/start.sh" 2>"$WORK/start.log" | tail -n1)" || { cat "$WORK/start.log"; exit 1; }
# Only berth should talk to this apiserver: no Pods from Deployments, no scheduling, no noise.
for c in kube-controller-manager kube-scheduler; do
  [[ -f $K8S_HOME/run/$c.pid ]] && kill "$(cat "$K8S_HOME/run/$c.pid")" 2>/dev/null || true
done
k() { kubectl --request-timeout=60s "$@"; }

k apply -f crds/ >/dev/null
k wait --for condition=Established crd --all --timeout=60s >/dev/null

log "applying $STACKS AppStacks ($PER_NS per namespace)"
namespaces=$(((STACKS + PER_NS - 1) / PER_NS))
stack=$(awk '/^apiVersion: berth.dev/{p=1} p&&/^---/{exit} p' examples/vidgen.yaml)
for ((n = 0; n < namespaces; n++)); do
  {
    printf 'apiVersion: v1\nkind: Namespace\nmetadata: {name: bench-%d}\n---\n' "$n"
    printf 'apiVersion: v1\nkind: Secret\nmetadata: {name: vidgen-keys, namespace: bench-%d}\nstringData: {jwt: j, veo: v, kling: k, runway: r}\n---\n' "$n"
    printf 'apiVersion: v1\nkind: Secret\nmetadata: {name: vidgen-backup-s3, namespace: bench-%d}\nstringData: {AWS_ACCESS_KEY_ID: a, AWS_SECRET_ACCESS_KEY: s}\n---\n' "$n"
    for ((i = n * PER_NS; i < (n + 1) * PER_NS && i < STACKS; i++)); do
      echo "$stack" | sed "s/^  name: vidgen$/  name: vidgen-$i\n  namespace: bench-$n/"
      echo '---'
    done
  } >"$WORK/ns-$n.yaml"
done
cat "$WORK"/ns-*.yaml | k apply -f - >/dev/null

apiserver_counts() { # resource verb count, non-watch requests on berth's resources
  k get --raw /metrics | awk -v re="$RESOURCES" '
    /^apiserver_request_total\{/ {
      verb = $0; sub(/.*verb="/, "", verb); sub(/".*/, "", verb)
      res = $0; sub(/.*[{,]resource="/, "", res); sub(/".*/, "", res)
      if (res ~ re) n[verb ":" res] += $NF
    }
    END { for (v in n) print v, n[v] }' | sort
}
RESOURCES='^(appstacks|workers|backups|certificates|secrets|deployments|statefulsets|services|ingresses|networkpolicies|persistentvolumeclaims|cronjobs|jobs|events|configmaps|leases)$'
berth_counts() { # verb:resource count from berth's /metrics
  curl -fsS "http://$HTTP/metrics" | awk '
    /^berth_kube_requests_total\{/ {
      verb = $0; sub(/.*verb="/, "", verb); sub(/".*/, "", verb)
      res = $0; sub(/.*[{,]resource="/, "", res); sub(/".*/, "", res)
      n[verb ":" res] += $NF
    }
    END { for (v in n) print v, n[v] }' | sort
}
status_of() { awk -v p="^$1:" '$0 ~ p {print $2; exit}' "/proc/$BERTH_PID/status"; }

log "starting $BERTH operator"
RUST_LOG=${RUST_LOG:-warn} "$BERTH" operator --leader-elect=false --http-addr "$HTTP" \
  >"$LOGFILE" 2>&1 &
BERTH_PID=$!
started=$(date +%s)

# Converged: every AppStack has status.observedGeneration == generation, and berth has sent
# no write for 20 s.
deadline=$((started + ${CONVERGE_TIMEOUT:-1800}))
while :; do
  ((($(date +%s)) < deadline)) || { tail -n 30 "$LOGFILE"; echo "not converged" >&2; exit 1; }
  kill -0 "$BERTH_PID" 2>/dev/null || { tail -n 30 "$LOGFILE"; echo "berth exited" >&2; exit 1; }
  # A busy apiserver may time a read out: try again at the next round.
  gens=$(k get appstacks -A -o jsonpath='{range .items[*]}{.metadata.generation}={.status.observedGeneration}{"\n"}{end}') ||
    { sleep 10; continue; }
  pending=$(awk -F= 'NF && $1 != $2' <<<"$gens" | wc -l)
  total=$(grep -c = <<<"$gens" || true)
  if ((pending == 0 && total == STACKS)); then break; fi
  log "$((total - pending))/$STACKS stacks reconciled"
  sleep 10
done
reconciled=$(($(date +%s) - started))
log "every stack reconciled after ${reconciled}s; waiting for writes to stop"
# Writes that never stop (a status that flaps, a reconcile loop) are reported, not waited for:
# after QUIET_TIMEOUT (120 s) the idle window starts anyway and counts them.
last=-1
quiet_by=$(($(date +%s) + ${QUIET_TIMEOUT:-120}))
while :; do
  w=$(curl -fsS "http://$HTTP/metrics" | awk '/^berth_api_writes_total /{print $2}') || true
  [[ $w == "$last" ]] && break
  (($(date +%s) < quiet_by)) || { log "writes still going on after ${QUIET_TIMEOUT:-120}s ($last -> $w in 20s)"; last="$w (not quiet)"; break; }
  last=$w
  sleep 20
done
converged=$(($(date +%s) - started))
hwm=$(awk '/^VmHWM:/{print $2}' "/proc/$BERTH_PID/status")
rss=$(awk '/^VmRSS:/{print $2}' "/proc/$BERTH_PID/status")
# What the RSS after convergence is made of: anonymous pages (the heap, stacks) and the binary's
# mapped code (file pages; the kernel maps code 64 KiB around each page first run).
rss_anon=$(status_of RssAnon) rss_file=$(status_of RssFile)
# The live heap as berth's counting allocator sees it (berth::heap): bytes berth holds, and
# their peak; VmRSS minus the live heap is what the allocator keeps (and code, stacks).
heap() { curl -fsS "http://$HTTP/metrics" | awk -v m="^berth_heap_$1_bytes " '$0 ~ m {print $2}'; }
heap_peak=$(heap peak || true) heap_live=$(heap live || true)
objects() { k get "$1" -A --no-headers 2>/dev/null | wc -l; }
children=0
for r in deployments statefulsets services ingresses networkpolicies workers certificates backups; do
  children=$((children + $(objects "$r")))
done

log "converged after ${converged}s (writes: $last); idle for ${IDLE_SECS}s"
retry berth_counts >"$WORK/berth.before"
retry apiserver_counts >"$WORK/api.before"
sleep "$IDLE_SECS"
retry berth_counts >"$WORK/berth.after"
retry apiserver_counts >"$WORK/api.after"
idle_rss=$(awk '/^VmRSS:/{print $2}' "/proc/$BERTH_PID/status")
heap_idle=$(heap live || true)

delta() { # before after -> "verb delta" for every verb
  join -a1 -a2 -e 0 -o 0,1.2,2.2 <(sort "$1") <(sort "$2") | awk '{d = $3 - $2; print $1, d}'
}
summ() { # "verb:resource delta" lines -> watch total, other total, the non-zero others
  awk '{ split($1, vr, ":"); if (vr[1] == "watch" || vr[1] == "WATCH") w += $2; else { o += $2; if ($2) s = s " " $1 "=" $2 } }
  END { printf "watch %d  other %d  (%s )\n", w, o, s }'; }

echo
echo "berth operator ($BERTH), $STACKS AppStacks (examples/vidgen.yaml) + $children children and Secrets, real kube-apiserver v1.32, control plane only"
printf 'memory:  peak RSS (VmHWM) %.1f MiB   RSS after convergence %.1f MiB   after %ss idle %.1f MiB   goal <= 64 MiB  ratio %.2f\n' \
  "$(echo "$hwm / 1024" | bc -l)" "$(echo "$rss / 1024" | bc -l)" "$IDLE_SECS" "$(echo "$idle_rss / 1024" | bc -l)" \
  "$(echo "$hwm / 1024 / 64" | bc -l)"
mib() { [[ -n $1 ]] && printf '%.1f MiB' "$(echo "$1 / 1048576" | bc -l)" || printf 'n/a'; }
printf 'rss:     after convergence %.1f MiB anonymous (heap, stacks) + %.1f MiB mapped from the binary and libraries\n' \
  "$(echo "$rss_anon / 1024" | bc -l)" "$(echo "$rss_file / 1024" | bc -l)"
echo "heap:    peak live $(mib "$heap_peak")   live after convergence $(mib "$heap_live")   after ${IDLE_SECS}s idle $(mib "$heap_idle")   (berth's counting allocator; RSS minus live heap = what the allocator keeps)"
echo "time:    every stack reconciled ${reconciled}s after start, idle window from ${converged}s (writes: $last)"
echo "idle ${IDLE_SECS}s, berth's berth_kube_requests_total:  $(delta "$WORK/berth.before" "$WORK/berth.after" | summ)"
echo "idle ${IDLE_SECS}s, apiserver_request_total on berth's resources:  $(delta "$WORK/api.before" "$WORK/api.after" | summ)"
echo "goal:    0 requests beyond watches (watch re-opens are counted as watch)"
