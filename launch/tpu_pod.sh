#!/usr/bin/env bash
# Start a jaxvrl run on every host of a Cloud TPU VM pod slice (one process per host; each host
# reads its own share of every global batch; jax.distributed starts from the TPU environment).
#
#   launch/tpu_pod.sh TPU_NAME ZONE configs/video_r1.py gs://BUCKET/runs/r1 [--config.x=y ...]
#
# The repository must be at the same path on every host (JAXVRL_REPO, default ~/jaxvrl there, e.g.
# cloned by a start-up script), and the checkpoint / data paths in the config must be readable
# from every host.
set -euo pipefail
if [[ $# -lt 4 ]]; then
  echo "usage: $0 TPU_NAME ZONE CONFIG WORKDIR [--config.key=value ...]" >&2
  exit 2
fi
tpu=$1 zone=$2 config=$3 workdir=$4
shift 4
# shellcheck disable=SC2016  # $HOME is the TPU host's
repo=${JAXVRL_REPO:-'$HOME/jaxvrl'}
arguments=$(printf ' %q' --config="$config" --workdir="$workdir" --config.mesh.distributed=true "$@")
gcloud compute tpus tpu-vm ssh "$tpu" --zone="$zone" --worker=all --command="
  set -e
  cd $repo
  pip install -q -r requirements.txt 'jax[tpu]==0.10.2'
  python -m jaxvrl.train$arguments
"
