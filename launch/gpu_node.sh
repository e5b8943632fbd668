#!/usr/bin/env bash
# Start a jaxvrl run on one GPU node: one process drives all local GPUs through JAX CUDA.
#
#   launch/gpu_node.sh configs/video_r1.py /runs/r1 [--config.x=y ...]
set -euo pipefail
if [[ $# -lt 2 ]]; then
  echo "usage: $0 CONFIG WORKDIR [--config.key=value ...]" >&2
  exit 2
fi
config=$1 workdir=$2
shift 2
cd "$(dirname "$0")/.."
# Let XLA keep most of the GPU memory for the model; the pipeline's workers stay on the CPU.
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}
exec python -m jaxvrl.train --config="$config" --workdir="$workdir" "$@"
