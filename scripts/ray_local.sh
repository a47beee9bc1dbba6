#!/usr/bin/env bash
# Start (or stop) a throw-away two-node Ray cluster on loopback: a head on 127.0.0.2 and a worker
# node on 127.0.0.3, for the tests and for trying `--search.backend ray` on one machine.
#   eval "$(bash scripts/ray_local.sh start)"   # prints: export RAY_ADDRESS=... PRUNETUNE_RAY_NODE_IP=...
#   prunetune run examples/digits.toml --search.backend ray --evaluate.threads 1
#   bash scripts/ray_local.sh stop              # stops exactly the Ray processes of this cluster
# Why these addresses: Ray replaces 127.0.0.1 with the machine's interface address, and a second
# node on the same address refuses to join; 127.0.0.2 and .3 are loopback on Linux and stay put.
# A driver must say which node it runs beside: the exported PRUNETUNE_RAY_NODE_IP (PruneTune's
# driver reads it; it is ray.init's _node_ip_address).
# Settings (environment): PRUNETUNE_RAY_DIR (the cluster's private --temp-dir, logs and pid files;
# default /tmp/prunetune-ray; keep it short, Ray puts sockets in it), PRUNETUNE_RAY_PORT (the
# head's port, default 6391), PRUNETUNE_RAY_HEAD_CPUS / PRUNETUNE_RAY_WORKER_CPUS (logical CPUs
# per node, default 1 each; PRUNETUNE_RAY_WORKER_CPUS=0 starts the head alone), RAY (the `ray`
# executable; default .venv/bin/ray, else the one on PATH).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DIR=${PRUNETUNE_RAY_DIR:-/tmp/prunetune-ray}
PORT=${PRUNETUNE_RAY_PORT:-6391}
HEAD_CPUS=${PRUNETUNE_RAY_HEAD_CPUS:-1}
WORKER_CPUS=${PRUNETUNE_RAY_WORKER_CPUS:-1}
HEAD_IP=127.0.0.2
WORKER_IP=127.0.0.3
if [ -z "${RAY:-}" ]; then
  if [ -x "$ROOT/.venv/bin/ray" ]; then RAY="$ROOT/.venv/bin/ray"; else RAY=ray; fi
fi
export RAY_USAGE_STATS_ENABLED=0
# A dead node is declared dead after ~3 s instead of ~30 s: on loopback there is no network to wait for.
export RAY_health_check_initial_delay_ms=${RAY_health_check_initial_delay_ms:-1000}
export RAY_health_check_period_ms=${RAY_health_check_period_ms:-1000}
export RAY_health_check_timeout_ms=${RAY_health_check_timeout_ms:-1000}
export RAY_health_check_failure_threshold=${RAY_health_check_failure_threshold:-3}

# The Ray processes of this cluster: those that name our temp dir on their command line or hold a
# file in it (workers rename themselves ray::..., but their logs stay open there). Processes that
# are not Ray's (a driver connected to the cluster) are never included.
ours() {
  local p cmd
  for p in /proc/[0-9]*; do
    p=${p#/proc/}
    [ "$p" = "$$" ] && continue
    cmd=$(tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null) || continue
    case "$cmd" in
      ray::*|*/site-packages/ray/*|*/ray/core/src/*) ;;
      *) continue ;;
    esac
    if [[ "$cmd" == *"$DIR/"* ]] || ls -l "/proc/$p/fd" 2>/dev/null | grep -qF -- "-> $DIR/"; then
      echo "$p"
    fi
  done
}

stop() {
  [ -d "$DIR" ] || return 0
  local pids left i
  pids=$(ours)
  if [ -n "$pids" ]; then
    # shellcheck disable=SC2086
    kill -TERM $pids 2>/dev/null || true
    for i in $(seq 50); do
      left=""
      for p in $pids; do kill -0 "$p" 2>/dev/null && left="$left $p"; done
      [ -z "$left" ] && break
      sleep 0.1
    done
    # shellcheck disable=SC2086
    [ -n "$left" ] && kill -KILL $left 2>/dev/null || true
  fi
  rm -rf "$DIR"
}

raylet_of() {  # the pid of the raylet of the node at $1
  local p
  for p in $(pgrep -f -- "--node_ip_address=$1 " || true); do
    if tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null | grep -q -- "raylet/raylet .*--temp_dir=$DIR/ray "; then
      echo "$p"
    fi
  done
}

case "${1:-start}" in
  start)
    stop
    mkdir -p "$DIR/ray"
    "$RAY" start --head --node-ip-address="$HEAD_IP" --port="$PORT" --num-cpus="$HEAD_CPUS" --num-gpus=0 \
      --include-dashboard=false --temp-dir="$DIR/ray" --disable-usage-stats >"$DIR/head.log" 2>&1 \
      || { cat "$DIR/head.log" >&2; stop; exit 1; }
    raylet_of "$HEAD_IP" >"$DIR/head.raylet.pid"
    if [ "$WORKER_CPUS" != 0 ]; then
      "$RAY" start --node-ip-address="$WORKER_IP" --address="$HEAD_IP:$PORT" --num-cpus="$WORKER_CPUS" \
        --num-gpus=0 --temp-dir="$DIR/ray" --disable-usage-stats >"$DIR/worker.log" 2>&1 \
        || { cat "$DIR/worker.log" >&2; stop; exit 1; }
      raylet_of "$WORKER_IP" >"$DIR/worker.raylet.pid"
    fi
    echo "export RAY_ADDRESS=$HEAD_IP:$PORT"
    echo "export PRUNETUNE_RAY_NODE_IP=$HEAD_IP"
    echo "export PRUNETUNE_RAY_DIR=$DIR"
    echo "export RAY_USAGE_STATS_ENABLED=0"
    ;;
  stop) stop ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
