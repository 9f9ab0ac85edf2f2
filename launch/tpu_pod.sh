#!/usr/bin/env bash
# Run acs_jax on every worker of a Cloud TPU VM pod slice (e.g. v4-32, v5e-64).
#
#   export TPU_NAME=my-v4-32 ZONE=us-central2-b   # PROJECT=... optional
#   launch/tpu_pod.sh --setup                     # once: copy the repo, install
#   launch/tpu_pod.sh --config=configs/r18_w4a4_imagenet.py \
#       --workdir=/mnt/shared/acs/r18_w4a4 [--config.train.epochs=90 ...]
#
# The same command runs on every worker (gcloud ... ssh --worker=all) with
# ACS_JAX_DISTRIBUTED=1, so each process calls jax.distributed.initialize(),
# which finds the pod's coordinator by itself. Each worker then loads only its
# slice of every global batch; the global batch is split over all chips.
#
# --workdir must be a directory that every worker sees at the same path (a
# Filestore/NFS mount, or a GCS bucket mounted with gcsfuse): checkpoints are
# written cooperatively by all workers, and metrics, selections and the
# summary by worker 0. gs:// URLs are not accepted (plain file I/O).
#
# Options (before the main.py flags):
#   --setup    copy this repository (git HEAD) to ~/acs_jax on every worker,
#              create ~/acs_jax_venv and `pip install -e '.[tpu]'`; then exit.
#   --detach   run under nohup so the job survives a dropped ssh session;
#              follow it with the printed `tail` command.
# Logs: every worker appends its output to ~/acs_jax_logs/<RUN_NAME>.log
# (RUN_NAME defaults to the workdir's base name); with --detach that file is
# the only output. Worker 0 writes metrics.jsonl, tb/ and summary.json into
# the workdir.
set -euo pipefail

: "${TPU_NAME:?set TPU_NAME to the TPU VM name}"
: "${ZONE:?set ZONE to the zone of the TPU}"
REMOTE_DIR="${REMOTE_DIR:-acs_jax}"          # relative to each worker's home
REMOTE_VENV="${REMOTE_VENV:-acs_jax_venv}"

ssh_all() {
  gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" \
    ${PROJECT:+--project="$PROJECT"} --worker=all --command "$1"
}

if [[ "${1:-}" == "--setup" ]]; then
  repo="$(cd "$(dirname "$0")/.." && pwd)"
  tarball="$(mktemp -d)/acs_jax.tar.gz"
  git -C "$repo" archive --format=tar.gz -o "$tarball" HEAD
  echo "Copying $repo (git HEAD; uncommitted changes are not included)"
  gcloud compute tpus tpu-vm scp "$tarball" "$TPU_NAME:~/acs_jax.tar.gz" \
    --zone="$ZONE" ${PROJECT:+--project="$PROJECT"} --worker=all
  ssh_all "set -e; mkdir -p ~/$REMOTE_DIR && tar -xzf ~/acs_jax.tar.gz -C ~/$REMOTE_DIR \
    && python3 -m venv ~/$REMOTE_VENV && ~/$REMOTE_VENV/bin/pip install -q -U pip \
    && cd ~/$REMOTE_DIR && ~/$REMOTE_VENV/bin/pip install -q -e '.[tpu]' \
    && ~/$REMOTE_VENV/bin/python -c 'import jax; print(jax.process_count(), jax.local_device_count())'"
  exit 0
fi

DETACH=0
if [[ "${1:-}" == "--detach" ]]; then
  DETACH=1
  shift
fi

workdir=""
for a in "$@"; do
  case "$a" in
    --workdir=*) workdir="${a#--workdir=}" ;;
  esac
done
if [[ -z "$workdir" ]]; then
  echo "error: pass --workdir=DIR (shared storage mounted on every worker)" >&2
  exit 2
fi
if [[ "$workdir" == gs://* ]]; then
  echo "error: --workdir=$workdir: mount the bucket (gcsfuse) and pass the" \
       "mount path; gs:// URLs are not supported" >&2
  exit 2
fi
if [[ "$workdir" != /* ]]; then
  echo "error: --workdir=$workdir must be an absolute path on shared storage" >&2
  exit 2
fi
RUN_NAME="${RUN_NAME:-$(basename "$workdir")}"

args="$(printf '%q ' "$@")"
log="~/acs_jax_logs/${RUN_NAME}.log"
run="cd ~/$REMOTE_DIR && mkdir -p ~/acs_jax_logs && \
ACS_JAX_DISTRIBUTED=1 TF_CPP_MIN_LOG_LEVEL=2 \
~/$REMOTE_VENV/bin/python -m acs_jax.main $args"

if [[ "$DETACH" == 1 ]]; then
  ssh_all "cd ~/$REMOTE_DIR && mkdir -p ~/acs_jax_logs && \
nohup env ACS_JAX_DISTRIBUTED=1 TF_CPP_MIN_LOG_LEVEL=2 \
~/$REMOTE_VENV/bin/python -m acs_jax.main $args >>$log 2>&1 </dev/null &"
  echo "Started on all workers. Follow worker 0 with:"
  echo "  gcloud compute tpus tpu-vm ssh $TPU_NAME --zone=$ZONE --worker=0 --command 'tail -f $log'"
else
  ssh_all "set -o pipefail; $run 2>&1 | tee -a $log"
fi
