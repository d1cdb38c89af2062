#!/usr/bin/env bash
# Train vosjax on a Cloud TPU VM slice (one or many hosts), reading MOVi-E from gs://kubric-public/tfds.
#
# Creates the TPU VM if it does not exist (reuses it otherwise), copies this checkout (or clones
# REPO_URL) onto every worker, installs vosjax with `jax[tpu]` in a Python 3.12 virtualenv there, and
# starts the same training command on all workers at once. See launch/README.md.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: launch/tpu_pod.sh [--help] [-- EXTRA_VOSJAX_FLAGS...]

Every setting is an environment variable (defaults in brackets):
  TPU_NAME          TPU VM name                                   [vosjax-pod]
  ZONE              zone                                          [us-central2-b]
  ACCELERATOR_TYPE  slice type; v4-32 is 4 hosts x 4 chips        [v4-32]
  TPU_VERSION       TPU VM software version                       [tpu-ubuntu2204-base]
  PROJECT           GCP project                                   [gcloud's default]
  SPOT              1: create a Spot VM (preemptible, cheaper)    [0]
  REPO_URL          git URL to clone on the workers; empty: copy this checkout's REF instead []
  REF               commit/branch to copy or check out            [HEAD]
  CONFIG            config file, relative to the repository       [configs/motion_grouping.py]
  WORKDIR           checkpoints and results; on a multi-host slice every worker must see the
                    same directory (an NFS/Filestore mount, or gs://BUCKET/... once the CLI
                    accepts gs:// workdirs; see launch/README.md); a relative path
                    is relative to the workers' home directory [vosjax_workdirs/$TPU_NAME]
  DATA_DIR          TFDS data_dir holding movi_e/128x128          [gs://kubric-public/tfds]
  BATCH_SIZE        global training batch (multiple of the chip count)   [32]
  EVAL_BATCH_SIZE   global evaluation batch (multiple of the chip count) [32]
  DETACH            1: start training under nohup and return (log: ~/vosjax_train.log on each
                    worker); 0: stream every worker's output here   [0]
  SETUP_ONLY        1: create and install, do not train           [0]
  MAX_REQUEUES      without DETACH: how many times a run stopped by SIGTERM (vosjax.main exit
                    status 75, checkpoint saved: a maintenance event or a Spot preemption) or
                    whose VM went away is started again; a preempted VM is deleted and created
                    again first                                   [20]

Arguments after `--` are passed to `python -m vosjax.main` unchanged, e.g.
  launch/tpu_pod.sh -- --config.num_train_steps=100000
  CONFIG=configs/movi_e.py launch/tpu_pod.sh -- --config.backbone.checkpoint=/path/to/dino.pth

Rerunning the script with the same WORKDIR resumes from the latest checkpoint.
Exit status: that of the training command (0: finished; 75: stopped by SIGTERM and not requeued).
EOF
}

EXTRA_FLAGS=()
while (($#)); do
  case "$1" in
    -h | --help) usage; exit 0 ;;
    --) shift; EXTRA_FLAGS=("$@"); break ;;
    *) echo "tpu_pod.sh: unexpected argument '$1' (settings are environment variables)" >&2
       usage >&2; exit 2 ;;
  esac
done

TPU_NAME="${TPU_NAME:-vosjax-pod}"
ZONE="${ZONE:-us-central2-b}"  # v4 slices live in us-central2-b
ACCELERATOR_TYPE="${ACCELERATOR_TYPE:-v4-32}"
TPU_VERSION="${TPU_VERSION:-tpu-ubuntu2204-base}"
PROJECT="${PROJECT:-}"
SPOT="${SPOT:-0}"
REPO_URL="${REPO_URL:-}"
REF="${REF:-HEAD}"
CONFIG="${CONFIG:-configs/motion_grouping.py}"
WORKDIR="${WORKDIR:-vosjax_workdirs/${TPU_NAME}}"
DATA_DIR="${DATA_DIR:-gs://kubric-public/tfds}"
BATCH_SIZE="${BATCH_SIZE:-32}"
EVAL_BATCH_SIZE="${EVAL_BATCH_SIZE:-32}"
DETACH="${DETACH:-0}"
SETUP_ONLY="${SETUP_ONLY:-0}"
MAX_REQUEUES="${MAX_REQUEUES:-20}"
EXIT_PREEMPTED=75  # python -m vosjax.main: stopped by SIGTERM after saving its checkpoint

# On the workers, relative to the home directory where the ssh commands start.
REMOTE_REPO=vosjax
REMOTE_VENV=vosjax-venv
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

if ! command -v gcloud >/dev/null; then
  echo "tpu_pod.sh: gcloud not found; install the Google Cloud CLI and run 'gcloud auth login'." >&2
  exit 1
fi
if [[ ! -f "${REPO_ROOT}/${CONFIG}" ]]; then
  echo "tpu_pod.sh: CONFIG=${CONFIG} does not exist in ${REPO_ROOT}." >&2
  exit 1
fi

gcloud_tpu=(gcloud compute tpus tpu-vm)
location=(--zone="${ZONE}")
if [[ -n "${PROJECT}" ]]; then
  location+=(--project="${PROJECT}")
fi

# Runs one shell command line on every worker of the slice at once.
on_all_workers() {
  "${gcloud_tpu[@]}" ssh "${TPU_NAME}" "${location[@]}" --worker=all --command="$1"
}

vm_state() {
  "${gcloud_tpu[@]}" describe "${TPU_NAME}" "${location[@]}" --format='value(state)' 2>/dev/null \
    || true
}

create_vm() {
  echo ">>> Creating TPU VM ${TPU_NAME} (${ACCELERATOR_TYPE}, ${TPU_VERSION}) in ${ZONE}."
  local create_flags=(--accelerator-type="${ACCELERATOR_TYPE}" --version="${TPU_VERSION}")
  if [[ "${SPOT}" == 1 ]]; then
    create_flags+=(--spot)
  fi
  "${gcloud_tpu[@]}" create "${TPU_NAME}" "${location[@]}" "${create_flags[@]}"
}

# ------------------------------------------------------------------ 1. The TPU VM: reuse or create.
state="$(vm_state)"
if [[ "${state}" == READY ]]; then
  echo ">>> Reusing TPU VM ${TPU_NAME} in ${ZONE}."
elif [[ -n "${state}" ]]; then
  echo "tpu_pod.sh: TPU VM ${TPU_NAME} exists in state ${state}, not READY. Wait for it, or delete" \
    "it (gcloud compute tpus tpu-vm delete ${TPU_NAME} --zone=${ZONE}) and rerun." >&2
  exit 1
else
  create_vm
fi

# Before a requeued run: a preempted (Spot) or terminated VM is deleted and created again; one in
# maintenance (REPAIRING, RESTARTING, ...) is waited for, up to 30 minutes.
vm_ready_again() {
  local state waited=0
  while :; do
    state="$(vm_state)"
    case "${state}" in
      READY) return 0 ;;
      PREEMPTED | TERMINATED)
        echo ">>> TPU VM ${TPU_NAME} is ${state}: deleting it and creating it again."
        "${gcloud_tpu[@]}" delete "${TPU_NAME}" "${location[@]}" --quiet
        create_vm
        return 0 ;;
      "") create_vm; return 0 ;;
    esac
    if ((waited >= 1800)); then
      echo "tpu_pod.sh: TPU VM ${TPU_NAME} still ${state} after 30 minutes; rerun later." >&2
      return 1
    fi
    echo ">>> TPU VM ${TPU_NAME} is ${state}; waiting for READY."
    sleep 30
    waited=$((waited + 30))
  done
}

# The number of hosts: one network endpoint per worker.
count_workers() {
  num_workers="$("${gcloud_tpu[@]}" describe "${TPU_NAME}" "${location[@]}" --format=json \
    | python3 -c 'import json, sys; print(len(json.load(sys.stdin).get("networkEndpoints", [])) or 1)')"
  echo ">>> ${num_workers} worker(s)."
}

# ------------------------------------------------------------------ 2. The code on every worker.
archive=""
train_log="$(mktemp -t vosjax-train-XXXXXX.log)"  # the output of the last training run
trap 'rm -f "${archive}" "${train_log}"' EXIT
if [[ -z "${REPO_URL}" ]]; then
  if [[ -n "$(git -C "${REPO_ROOT}" status --porcelain --untracked-files=no)" ]]; then
    echo ">>> Warning: uncommitted changes in ${REPO_ROOT} are not copied (only ${REF} is)." >&2
  fi
  if ! git -C "${REPO_ROOT}" cat-file -e "${REF}:${CONFIG}" 2>/dev/null; then
    echo "tpu_pod.sh: ${CONFIG} is not committed in ${REF}, so it would not be copied; commit it." >&2
    exit 1
  fi
  archive="$(mktemp -t vosjax-XXXXXX.tar.gz)"
  git -C "${REPO_ROOT}" archive --format=tar.gz -o "${archive}" "${REF}"
fi

copy_code() {
  if [[ -n "${REPO_URL}" ]]; then
    echo ">>> Cloning ${REPO_URL} (${REF}) on every worker."
    on_all_workers "rm -rf ${REMOTE_REPO} && git clone -q '${REPO_URL}' ${REMOTE_REPO} \
      && git -C ${REMOTE_REPO} checkout -q '${REF}'"
  else
    echo ">>> Copying ${REF} of ${REPO_ROOT} to every worker."
    "${gcloud_tpu[@]}" scp "${archive}" "${TPU_NAME}:vosjax.tar.gz" "${location[@]}" --worker=all
    on_all_workers "rm -rf ${REMOTE_REPO} && mkdir -p ${REMOTE_REPO} \
      && tar -xzf ~/vosjax.tar.gz -C ${REMOTE_REPO} && rm ~/vosjax.tar.gz"
  fi
}

# ------------------------------------------------------------------ 3. Install (idempotent).
# vosjax and jax need Python >= 3.11; the TPU images ship 3.10, so uv provides a 3.12 virtualenv.
install_vosjax() {
  echo ">>> Installing vosjax and jax[tpu] on every worker."
  on_all_workers "set -e; python3 -m pip install -q --user --upgrade uv \
    && ~/.local/bin/uv venv -q --allow-existing --python 3.12 ${REMOTE_VENV} \
    && ~/.local/bin/uv pip install -q --python ${REMOTE_VENV}/bin/python \
         -e ./${REMOTE_REPO} 'jax[tpu]>=0.10.2,<0.11' \
    && ${REMOTE_VENV}/bin/python -c 'import jax; print(jax.local_device_count(), \"local TPU chips\")'"
}

# ------------------------------------------------------------------ 4. Train on all workers.
# The same command everywhere; jax.distributed finds the other hosts from the TPU metadata.
train_command() {
  local train_flags=(
    --config="${REMOTE_REPO}/${CONFIG}" --workdir="${WORKDIR}"
    --config.data.data_dir="${DATA_DIR}"
    --config.batch_size="${BATCH_SIZE}" --config.eval_batch_size="${EVAL_BATCH_SIZE}"
  )
  if ((num_workers > 1)); then
    train_flags+=(--distributed=true)
  fi
  train_flags+=("${EXTRA_FLAGS[@]}")
  printf '%s' "${REMOTE_VENV}/bin/python -m vosjax.main"
  printf ' %q' "${train_flags[@]}"
}

# Trains on every worker, streaming their output here; each worker ends with a line
# "vosjax.main exit status N". Returns 0 when the run should be requeued: a worker stopped with
# EXIT_PREEMPTED, or the command failed because the VM went away (no longer READY).
train_and_check_preempted() {
  local train status=0
  train="$(train_command)"
  echo ">>> Training on every worker: ${train}"
  on_all_workers "set -o pipefail; ${train} 2>&1 | tee ~/vosjax_train.log; status=\$?; \
    echo \"vosjax.main exit status \${status}\"; exit \${status}" 2>&1 | tee "${train_log}" \
    || status=$?
  train_status="${status}"
  if grep -Eq "vosjax\.main exit status ${EXIT_PREEMPTED}( |\$)" "${train_log}"; then
    train_status="${EXIT_PREEMPTED}"
    return 0
  fi
  ((status != 0)) && [[ "$(vm_state)" != READY ]]
}

requeues=0
while :; do
  count_workers
  copy_code
  install_vosjax
  if [[ "${SETUP_ONLY}" == 1 ]]; then
    echo ">>> SETUP_ONLY=1: not training."
    exit 0
  fi
  if [[ "${DETACH}" == 1 ]]; then
    echo ">>> Starting training in the background on every worker (log: ~/vosjax_train.log)."
    echo "    (DETACH=1 does not requeue: after a preemption, rerun this script to resume.)"
    on_all_workers "nohup bash -c $(printf '%q' "$(train_command)") > ~/vosjax_train.log 2>&1 &"
    echo ">>> Follow worker 0 with:"
    echo "    gcloud compute tpus tpu-vm ssh ${TPU_NAME} --zone=${ZONE} --worker=0 \\"
    echo "        --command='tail -f ~/vosjax_train.log'"
    train_status=0
    break
  fi
  if ! train_and_check_preempted; then
    break
  fi
  if ((requeues >= MAX_REQUEUES)); then
    echo ">>> Stopped by SIGTERM or the VM went away; not requeued after ${requeues} requeues" \
      "(MAX_REQUEUES=${MAX_REQUEUES}). Rerun the script to resume." >&2
    break
  fi
  requeues=$((requeues + 1))
  echo ">>> Stopped by SIGTERM (exit ${EXIT_PREEMPTED}) or the VM went away: requeue ${requeues} of" \
    "at most ${MAX_REQUEUES}, resuming from the latest checkpoint in WORKDIR."
  vm_ready_again
done
echo ">>> Delete the TPU VM when done: gcloud compute tpus tpu-vm delete ${TPU_NAME} --zone=${ZONE}"
exit "${train_status}"
