#!/usr/bin/env bash
# Run acs_jax on N fake CPU devices of this one machine (data parallelism and
# sharding checks without an accelerator).
#
#   launch/local_devices.sh N [--dry-run | --check-devices] [acs_jax.main flags]
#
#   launch/local_devices.sh 4 --config=configs/quickstart.py --workdir=/tmp/acs4
#   launch/local_devices.sh 2 --dry-run --config=configs/quickstart.py --workdir=/tmp/x
#   launch/local_devices.sh 2 --check-devices      # prints "2 cpu devices"
#
# XLA splits the host CPU into N devices (--xla_force_host_platform_device_count);
# the N devices share the machine's cores, so this shows correctness, not speed.
# Every global batch size of the config (teacher.batch_size, train.batch_size,
# train.eval_batch_size, coreset.score_batch_size) must be a multiple of N; the
# run stops at start-up, naming the field, when one is not.
# PYTHON overrides the interpreter (default: python).
set -euo pipefail

usage() {
  echo "usage: $0 N [--dry-run | --check-devices] [acs_jax.main flags...]" >&2
  echo "  N: number of fake CPU devices, a positive integer" >&2
  exit 2
}

[[ $# -ge 1 ]] || usage
N="$1"
shift
if ! [[ "$N" =~ ^[1-9][0-9]*$ ]]; then
  echo "error: N must be a positive integer, got '$N'" >&2
  usage
fi

MODE=run
if [[ "${1:-}" == "--dry-run" ]]; then
  MODE=dry
  shift
elif [[ "${1:-}" == "--check-devices" ]]; then
  MODE=check
  shift
fi

cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"

# Keep any other XLA flags, replace a previous device count.
xla_flags=""
for f in ${XLA_FLAGS:-}; do
  [[ "$f" == --xla_force_host_platform_device_count=* ]] || xla_flags+="$f "
done
export XLA_FLAGS="${xla_flags}--xla_force_host_platform_device_count=${N}"
export JAX_PLATFORMS=cpu

case "$MODE" in
  dry)
    printf 'JAX_PLATFORMS=%s XLA_FLAGS=%q ' "$JAX_PLATFORMS" "$XLA_FLAGS"
    printf '%q ' "$PYTHON" -m acs_jax.main "$@"
    printf '\n'
    ;;
  check)
    exec "$PYTHON" -c 'import jax; print(jax.device_count(), jax.default_backend(), "devices")'
    ;;
  run)
    exec "$PYTHON" -m acs_jax.main "$@"
    ;;
esac
