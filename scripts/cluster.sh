#!/usr/bin/env bash
# A cluster on this machine, from the project's .venv: a Spark standalone master with two
# workers (separate JVMs, each offering one executor of the config's size) and a Ray head
# with worker nodes (one per train worker, each with the CPUs of one). Every server answers
# on 127.0.0.1 only. Logs, pids and Ray's temp dir live under one folder (.cluster/).
#
#   scripts/cluster.sh up [--config FILE] [--set k=v ...]   start it (sizes from the config)
#   scripts/cluster.sh status                                what runs, and where
#   scripts/cluster.sh run COMMAND...                        run COMMAND where Ray is reachable
#   scripts/cluster.sh train [jobs.train ARGS...]            `ray job submit` the training job
#   scripts/cluster.sh restart NAME                          start a stopped node again
#   scripts/cluster.sh down                                  stop exactly what `up` started
#
# Spark jobs:  scripts/submit.sh --master spark://127.0.0.1:7077 jobs/build_features.py ...
# Training:    scripts/cluster.sh train --set run.name=oncluster   (ray job submit ... jobs.train)
#
# Ray 2.55's core servers listen on all interfaces (hard-coded), so where Linux allows it
# the Ray nodes run in a private network namespace that holds only loopback
# (mtlrec/private_network.py); `run` and `train` enter it, with RAY_ADDRESS (the GCS) and
# RAY_API_SERVER_ADDRESS (the dashboard's job server, on 127.0.0.1) set. Spark binds to
# 127.0.0.1 itself (SPARK_LOCAL_IP, --host).
#
# Ports (environment): MTLREC_SPARK_PORT (7077), MTLREC_SPARK_UI_PORT (8080),
# MTLREC_SPARK_WORKER_UI_PORT (8081; the second worker +1), MTLREC_RAY_PORT (6379),
# MTLREC_RAY_DASHBOARD_PORT (8265). Folder: MTLREC_CLUSTER_DIR (.cluster).
set -Eeuo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PY="$ROOT/.venv/bin/python"
DIR="$(mkdir -p "${MTLREC_CLUSTER_DIR:-$ROOT/.cluster}" && cd "${MTLREC_CLUSTER_DIR:-$ROOT/.cluster}" && pwd)"
STATE="$DIR/cluster.env"
SPARK_WORKERS=2
# Start order; `down` stops in reverse.
PROCESSES=(ray-netns ray-head ray-node-1 ray-node-2 ray-node-3 spark-master spark-worker-1 spark-worker-2)

helper() { (cd "$ROOT" && "$PY" scripts/local_cluster.py "$@"); }

alive() { [[ -f "$DIR/pids/$1.pid" ]] && kill -0 "$(cat "$DIR/pids/$1.pid")" 2>/dev/null; }

# Each process leads its own process group (setsid), so `down` stops it with everything it
# started (executors, Ray's daemons and workers) and nothing else.
launch() {
  local name="$1"
  shift
  printf '%s\0' "$@" >"$DIR/pids/$name.cmd"  # for `restart NAME`
  setsid "$@" >>"$DIR/logs/$name.log" 2>&1 </dev/null &
  echo $! >"$DIR/pids/$name.pid"
}

# Start one stopped process again with its recorded command and environment (a Ray node
# or a Spark worker that died or was killed: what a cluster manager would do).
restart() {
  local name="$1" command=()
  if [[ ! -f "$STATE" || ! -f "$DIR/pids/$name.cmd" ]]; then
    echo "cluster: no process $name in $DIR/pids" >&2
    exit 2
  fi
  if alive "$name"; then
    echo "cluster: $name is running" >&2
    exit 2
  fi
  mapfile -d '' command <"$DIR/pids/$name.cmd"
  # shellcheck disable=SC1090
  source "$DIR/pids/env.sh"
  launch "$name" "${command[@]}"
  echo "restarted $name (pid $(cat "$DIR/pids/$name.pid"))"
}

# The command prefix that enters the Ray nodes' network namespace (none on the host network).
ray_network() {
  RAY_NETWORK=()
  if [[ -n "${RAY_NETNS_PID:-}" ]]; then
    RAY_NETWORK=(nsenter --target "$RAY_NETNS_PID" --user --net --preserve-credentials)
  fi
}

up() {
  for name in "${PROCESSES[@]}"; do
    if alive "$name"; then
      echo "cluster: already up ($name runs); see scripts/cluster.sh status" >&2
      exit 2
    fi
  done
  local spark_port="${MTLREC_SPARK_PORT:-7077}" ui_port="${MTLREC_SPARK_UI_PORT:-8080}"
  local worker_ui="${MTLREC_SPARK_WORKER_UI_PORT:-8081}" ray_port="${MTLREC_RAY_PORT:-6379}"
  local dash_port="${MTLREC_RAY_DASHBOARD_PORT:-8265}"
  local name_port
  for name_port in "MTLREC_RAY_PORT=$ray_port" "MTLREC_RAY_DASHBOARD_PORT=$dash_port"; do
    if ((${name_port#*=} >= 10002 && ${name_port#*=} <= 19999)); then
      echo "cluster: $name_port lies in 10002-19999, the ports Ray gives its workers; choose another" >&2
      exit 2
    fi
  done
  local sizes
  sizes="$(helper sizes "$@")"
  eval "$sizes"  # SPARK_WORKER_CORES, SPARK_WORKER_MEMORY, RAY_NODES, RAY_NODE_CPUS
  if ((RAY_NODES > 4)); then
    echo "cluster: ray.num_workers=$RAY_NODES: the local cluster runs at most 4 Ray nodes" >&2
    exit 2
  fi
  local netns_blocker
  netns_blocker="$(cd "$ROOT" && "$PY" -c \
    'from mtlrec.private_network import unavailable_reason as r; print(r() or "")')"
  local ports=("MTLREC_SPARK_PORT=$spark_port" "MTLREC_SPARK_UI_PORT=$ui_port"
    "MTLREC_SPARK_WORKER_UI_PORT=$worker_ui" "MTLREC_SPARK_WORKER_UI_PORT+1=$((worker_ui + 1))")
  if [[ -n "$netns_blocker" ]]; then  # Ray on the host network: its ports must be free too
    ports+=("MTLREC_RAY_PORT=$ray_port" "MTLREC_RAY_DASHBOARD_PORT=$dash_port")
  fi
  helper ports-free "${ports[@]}"

  rm -rf "$DIR/logs" "$DIR/pids" "$DIR/ray" "$DIR/spark-work-"* "$STATE"
  mkdir -p "$DIR/logs" "$DIR/pids"
  trap 'echo "cluster: start-up failed; logs in $DIR/logs" >&2; down >/dev/null' ERR

  # Spark: master and workers on loopback, the master's web UI (and its /json/) too.
  export SPARK_LOCAL_IP=127.0.0.1 SPARK_MASTER_HOST=127.0.0.1 SPARK_DAEMON_MEMORY=256m
  # pyspark's launcher scripts find Spark with $PYSPARK_PYTHON (else python3 from PATH).
  export PYSPARK_PYTHON="$PY" RAY_DISABLE_USAGE_STATS=1
  SPARK_HOME="$("$PY" -c 'import os, pyspark; print(os.path.dirname(pyspark.__file__))')"
  export SPARK_HOME
  export -p | grep -E ' (SPARK_|PYSPARK_PYTHON|RAY_DISABLE)' >"$DIR/pids/env.sh"
  # Ray: a namespace holding only loopback (kept alive by a sleeping process), the head
  # and the worker nodes inside it. A private --temp-dir: nothing under /tmp/ray.
  RAY_NETNS_PID=""
  if [[ -z "$netns_blocker" ]]; then
    launch ray-netns unshare --user --map-root-user --net "$PY" -c \
      'from mtlrec.private_network import bring_loopback_up as up; up(); import signal; signal.pause()'
    RAY_NETNS_PID="$(cat "$DIR/pids/ray-netns.pid")"
    sleep 1
  else
    echo "cluster: warning: Ray runs on the host network ($netns_blocker): its core servers listen on all interfaces" >&2
  fi
  # The dashboard holds the job server `ray job submit` talks to (ray[default]).
  local ray_address="127.0.0.1:$ray_port" dashboard_url="http://127.0.0.1:$dash_port"
  local dashboard=(--include-dashboard true --dashboard-host 127.0.0.1 --dashboard-port "$dash_port")
  ray_network
  local common=(--block --node-ip-address 127.0.0.1 --num-cpus "$RAY_NODE_CPUS"
    --temp-dir "$DIR/ray" --disable-usage-stats)
  launch ray-head "${RAY_NETWORK[@]}" "$PY" "$ROOT/scripts/local_cluster.py" ray-start --head --port "$ray_port" \
    "${dashboard[@]}" "${common[@]}"
  # The head alone first: a loaded machine starting JVMs and nodes at once is slow to
  # register the head's raylet, and the other nodes need it registered.
  "${RAY_NETWORK[@]}" env -u RAY_ADDRESS "$PY" "$ROOT/scripts/local_cluster.py" wait-ray \
    "$ray_address" 1 180 >/dev/null 2>>"$DIR/logs/wait-ray.log"
  for i in $(seq 1 "$((RAY_NODES - 1))"); do
    launch "ray-node-$i" "${RAY_NETWORK[@]}" "$PY" "$ROOT/scripts/local_cluster.py" ray-start --address "$ray_address" \
      "${common[@]}"
  done

  local master="spark://127.0.0.1:$spark_port" ui="http://127.0.0.1:$ui_port"
  launch spark-master "$ROOT/.venv/bin/spark-class" org.apache.spark.deploy.master.Master \
    --host 127.0.0.1 --port "$spark_port" --webui-port "$ui_port"
  for i in $(seq 1 "$SPARK_WORKERS"); do
    launch "spark-worker-$i" "$ROOT/.venv/bin/spark-class" org.apache.spark.deploy.worker.Worker \
      --host 127.0.0.1 --cores "$SPARK_WORKER_CORES" --memory "$SPARK_WORKER_MEMORY" \
      --webui-port "$((worker_ui + i - 1))" --work-dir "$DIR/spark-work-$i" "$master"
  done

  cat >"$STATE" <<EOF
SPARK_MASTER_URL=$master
SPARK_UI_URL=$ui
RAY_ADDRESS=$ray_address
RAY_NETNS_PID=$RAY_NETNS_PID
RAY_DASHBOARD_URL=$dashboard_url
SPARK_EXPECTED_WORKERS=$SPARK_WORKERS
RAY_EXPECTED_NODES=$RAY_NODES
EOF
  helper wait-spark "$ui" "$SPARK_WORKERS" 180
  # (Ray's client warnings about the missing internet go to the log, not the terminal.)
  "${RAY_NETWORK[@]}" env -u RAY_ADDRESS "$PY" "$ROOT/scripts/local_cluster.py" wait-ray \
    "$ray_address" "$RAY_NODES" 180 >/dev/null 2>>"$DIR/logs/wait-ray.log"
  trap - ERR
  status
}

status() {
  if [[ ! -f "$STATE" ]]; then
    echo "cluster: down (no $STATE)"
    return 3
  fi
  # shellcheck disable=SC1090
  source "$STATE"
  echo "spark master:    $SPARK_MASTER_URL   (web UI and JSON status: $SPARK_UI_URL/json/)"
  helper spark-workers "$SPARK_UI_URL" || echo "  (master not answering)"
  echo "ray address:     $RAY_ADDRESS   (reached through: scripts/cluster.sh run COMMAND)"
  echo "ray dashboard:   $RAY_DASHBOARD_URL"
  echo "folder:          $DIR (logs/, pids/, ray/, spark-work-*/)"
  local name
  for name in "${PROCESSES[@]}"; do
    if [[ -f "$DIR/pids/$name.pid" ]]; then
      if alive "$name"; then
        echo "  $name pid $(cat "$DIR/pids/$name.pid") running"
      else
        echo "  $name pid $(cat "$DIR/pids/$name.pid") NOT running"
      fi
    fi
  done
}

run() {
  if [[ ! -f "$STATE" ]] || ! alive ray-head; then
    echo "cluster: not up; start it with scripts/cluster.sh up" >&2
    exit 2
  fi
  # shellcheck disable=SC1090
  source "$STATE"
  ray_network
  cd "$ROOT"
  # RAY_ADDRESS for ray.init (the GCS), RAY_API_SERVER_ADDRESS for `ray job` (the dashboard).
  "${RAY_NETWORK[@]}" env RAY_ADDRESS="$RAY_ADDRESS" RAY_API_SERVER_ADDRESS="$RAY_DASHBOARD_URL" "$@"
}

# jobs.train submitted as a Ray job: its driver runs on the head node, in this checkout
# (every node here shares the file system, so no --working-dir upload; relative paths in
# the config mean the same as for a local run). Ray joins the entrypoint's words into one
# shell line, quoting only those with spaces, so each word is shell-escaped here first
# (arguments with spaces are not supported). Exits 0 when the job succeeded, else 1.
train() {
  local words=(cd "$ROOT" "&&" .venv/bin/python -m jobs.train --ray-address auto "$@") escaped=()
  local word
  for word in "${words[@]}"; do
    if [[ "$word" == "&&" ]]; then escaped+=("$word"); else escaped+=("$(printf %q "$word")"); fi
  done
  run "$ROOT/.venv/bin/ray" job submit --log-style record -- "${escaped[@]}"
}

down() {
  local name pid i
  for ((i = ${#PROCESSES[@]} - 1; i >= 0; i--)); do
    name="${PROCESSES[i]}"
    [[ -f "$DIR/pids/$name.pid" ]] || continue
    pid="$(cat "$DIR/pids/$name.pid")"
    if kill -0 "$pid" 2>/dev/null; then
      kill -TERM -- "-$pid" 2>/dev/null || true
      for _ in $(seq 1 30); do
        kill -0 -- "-$pid" 2>/dev/null || break
        sleep 1
      done
      kill -KILL -- "-$pid" 2>/dev/null || true
      echo "stopped $name (process group $pid)"
    fi
    rm -f "$DIR/pids/$name.pid" "$DIR/pids/$name.cmd"
  done
  rm -f "$STATE" "$DIR/pids/env.sh"
}

case "${1:-}" in
  up) shift; up "$@" ;;
  status) status ;;
  run) shift; run "$@" ;;
  train) shift; train "$@" ;;
  restart) shift; restart "$1" ;;
  down) down ;;
  *)
    echo "usage: scripts/cluster.sh up [--config FILE] [--set k=v ...] | status | run COMMAND... | train [ARGS...] | restart NAME | down" >&2
    exit 2
    ;;
esac
