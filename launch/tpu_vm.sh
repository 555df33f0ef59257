#!/usr/bin/env bash
# Creates a Cloud TPU slice, installs jaxpref on every worker, runs one job, deletes the slice.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: launch/tpu_vm.sh [options] -- [jaxpref.main args...]

Creates a TPU VM slice with gcloud, copies this checkout to every worker, installs it with
jax[tpu], runs `python -m jaxpref.main ARGS` on all workers at once (--worker=all; each
worker is one JAX process and jaxpref.distributed auto-detects the slice), streams the
logs (prefixed with the worker's hostname) and deletes the slice, also on failure.

Options:
  --name NAME          TPU VM name (default: jaxpref-$USER)
  --zone ZONE          zone (default: us-central2-b)
  --accelerator TYPE   slice type, e.g. v4-16, v5litepod-16, v5p-32 (default: v4-16)
  --version VERSION    TPU software version (default from the type: v4 tpu-ubuntu2204-base,
                       v5litepod v2-alpha-tpuv5-lite, v5p v2-alpha-tpuv5)
  --project PROJECT    GCP project (default: gcloud's configured project)
  --spot               create a Spot slice
  --keep               do not delete the slice at the end (reuse it with --reuse)
  --reuse              skip creating the slice (it already exists)
  --dry-run            print the commands instead of running them (or set DRY_RUN=1)
  -h, --help           this text

Multi-host runs need a --workdir that all workers share at the same path (orbax writes one
checkpoint from all workers), e.g. a bucket mounted with gcsfuse or a Filestore NFS share.

Example:
  launch/tpu_vm.sh --accelerator v5litepod-16 -- --config=configs/dpo.py \
      --config.mesh.data=1 --config.mesh.fsdp=-1 --workdir=/mnt/shared/runs/dpo
EOF
}

name="jaxpref-${USER:-user}"
zone="us-central2-b"
accelerator="v4-16"
version=""
project=""
spot=0
keep=0
reuse=0
dry_run="${DRY_RUN:-0}"
while [[ $# -gt 0 ]]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --name) name="$2"; shift 2 ;;
    --zone) zone="$2"; shift 2 ;;
    --accelerator) accelerator="$2"; shift 2 ;;
    --version) version="$2"; shift 2 ;;
    --project) project="$2"; shift 2 ;;
    --spot) spot=1; shift ;;
    --keep) keep=1; shift ;;
    --reuse) reuse=1; shift ;;
    --dry-run) dry_run=1; shift ;;
    --) shift; break ;;
    *) echo "unknown option $1 (job arguments go after --)" >&2; usage >&2; exit 2 ;;
  esac
done

if [[ -z "$version" ]]; then
  case "$accelerator" in
    v4-*) version="tpu-ubuntu2204-base" ;;
    v5litepod-*|v5e-*) version="v2-alpha-tpuv5-lite" ;;
    v5p-*) version="v2-alpha-tpuv5" ;;
    *) echo "no default --version for accelerator $accelerator; pass --version" >&2; exit 2 ;;
  esac
fi

# Prints one shell word, single-quoted unless it is plain.
quote() {
  if [[ "$1" =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}

# Runs a command, or prints it (shell-quoted) in dry-run mode.
run() {
  if [[ "$dry_run" == "1" ]]; then
    local first=1 word
    for word in "$@"; do
      [[ $first == 1 ]] || printf ' '
      quote "$word"
      first=0
    done
    printf '\n'
  else
    "$@"
  fi
}

tpu=(gcloud compute tpus tpu-vm)
where=(--zone="$zone")
[[ -n "$project" ]] && where+=(--project="$project")
repo="$(cd "$(dirname "$0")/.." && pwd)"
bundle="${TMPDIR:-/tmp}/jaxpref-src.tar.gz"
printf -v job_args ' %q' "$@"
install='rm -rf ~/jaxpref && mkdir -p ~/jaxpref && tar -xzf ~/jaxpref-src.tar.gz -C ~/jaxpref && cd ~/jaxpref'
install+=' && python3 -m venv ~/venv && . ~/venv/bin/activate && pip install -q -U pip && pip install -q -e . "jax[tpu]"'
job="cd ~/jaxpref && . ~/venv/bin/activate && python -m jaxpref.main${job_args} 2>&1 | sed -u \"s/^/[\$(hostname)] /\""

cleanup() {
  if [[ "$keep" != "1" ]]; then
    run "${tpu[@]}" delete "$name" "${where[@]}" --quiet
  fi
}

if [[ "$reuse" != "1" ]]; then
  create=("${tpu[@]}" create "$name" "${where[@]}" --accelerator-type="$accelerator" --version="$version")
  [[ "$spot" == "1" ]] && create+=(--spot)
  run "${create[@]}"
fi
trap cleanup EXIT
run tar -czf "$bundle" -C "$repo" --exclude=.git --exclude=.venv --exclude=runs --exclude='*.egg-info' .
run "${tpu[@]}" scp "$bundle" "$name":jaxpref-src.tar.gz "${where[@]}" --worker=all
run "${tpu[@]}" ssh "$name" "${where[@]}" --worker=all --command="$install"
run "${tpu[@]}" ssh "$name" "${where[@]}" --worker=all --command="$job"
