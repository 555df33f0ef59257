#!/usr/bin/env bash
# Runs N processes of one jaxpref job on this machine, joined over localhost.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: launch/local.sh [--dry-run] [--port PORT] [--module MODULE] N [ARGS...]

Starts N processes of `python -m MODULE ARGS...` (MODULE defaults to jaxpref.main) on this
machine. Process i gets
    JAXPREF_COORDINATOR=127.0.0.1:PORT JAXPREF_NUM_PROCESSES=N JAXPREF_PROCESS_ID=i
which jaxpref.distributed.initialize passes to jax.distributed.initialize; on CPU the
processes exchange data with gloo collectives. Every output line is prefixed with "[i] ".
Waits for all processes; when one fails the others are stopped and the script exits with
the failing status.

Options:
  --dry-run      print the commands instead of running them (or set DRY_RUN=1)
  --port PORT    coordinator port on 127.0.0.1 (default: a free port)
  --module MOD   Python module to run (default: jaxpref.main)
  -h, --help     this text

Environment: PYTHON (default: python). Anything else (XLA_FLAGS, JAX_PLATFORMS, ...) is
passed through; e.g. XLA_FLAGS=--xla_force_host_platform_device_count=4 gives each
process 4 CPU devices.

Example:
  launch/local.sh 2 --config=configs/dpo.py --workdir=runs/dpo_2proc
EOF
}

dry_run="${DRY_RUN:-0}"
port=""
module="jaxpref.main"
while [[ $# -gt 0 ]]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --dry-run) dry_run=1; shift ;;
    --port) port="$2"; shift 2 ;;
    --module) module="$2"; shift 2 ;;
    *) break ;;
  esac
done
if [[ $# -lt 1 || ! "$1" =~ ^[1-9][0-9]*$ ]]; then
  usage >&2
  exit 2
fi
num_processes="$1"
shift
python="${PYTHON:-python}"
if [[ -z "$port" ]]; then
  port="$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
fi

if [[ "$dry_run" == "1" ]]; then
  for ((i = 0; i < num_processes; i++)); do
    printf 'JAXPREF_COORDINATOR=127.0.0.1:%s JAXPREF_NUM_PROCESSES=%s JAXPREF_PROCESS_ID=%s %s -m %s' \
      "$port" "$num_processes" "$i" "$python" "$module"
    printf ' %q' "$@"
    printf '\n'
  done
  exit 0
fi

pids=()
stop_all() {
  for pid in "${pids[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
}
trap 'stop_all; exit 130' INT TERM

for ((i = 0; i < num_processes; i++)); do
  JAXPREF_COORDINATOR="127.0.0.1:$port" JAXPREF_NUM_PROCESSES="$num_processes" JAXPREF_PROCESS_ID="$i" \
    "$python" -m "$module" "$@" > >(sed -u "s/^/[$i] /") 2>&1 &
  pids+=("$!")
done

status=0
running=("${pids[@]}")
while [[ ${#running[@]} -gt 0 ]]; do
  finished=""
  rc=0
  wait -n -p finished "${running[@]}" || rc=$?
  if [[ $rc -ne 0 ]]; then
    status=$rc
    echo "[local.sh] process with pid ${finished:-?} exited with status $rc; stopping the others" >&2
    stop_all
    break
  fi
  left=()
  for pid in "${running[@]}"; do
    [[ "$pid" == "$finished" ]] || left+=("$pid")
  done
  running=("${left[@]}")
done
wait || true  # reap the stopped processes and let the log prefixers flush
exit "$status"
