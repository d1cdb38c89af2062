"""Launch recipes: the Colab notebook executed headless (tiny run), and the TPU / SLURM scripts.

The notebook runs in a real Jupyter kernel (nbclient + ipykernel) of this interpreter, on CPU, in
the notebook's own folder (so it finds this checkout the way a local user's Jupyter would). The
shell scripts are syntax-checked (and linted when shellcheck is installed), then run for real with
`gcloud` and `srun` replaced by stand-ins that record their arguments: neither a Google Cloud
project nor a SLURM cluster exists here.
"""

import json
import os
import shutil
import stat
import subprocess
import sys

import nbformat
import pytest
from nbclient import NotebookClient

from helpers.environment import REPO
from helpers.tiny_configs import TINY_OVERRIDES

LAUNCH = os.path.join(REPO, "launch")
NOTEBOOK = os.path.join(LAUNCH, "colab.ipynb")
SHELL_SCRIPTS = ("tpu_pod.sh", "slurm_gpu.sbatch")


def _kernel_for_this_interpreter(root) -> str:
  """A kernelspec in `root` that starts ipykernel with sys.executable; returns its name.

  The stock `python3` kernelspec runs whatever `python` is first on PATH, which need not be this
  interpreter (or exist at all); this one does not depend on PATH or on a user-wide install.
  """
  name = "vosjax-test-python"
  spec_dir = root / "kernels" / name
  spec_dir.mkdir(parents=True)
  (spec_dir / "kernel.json").write_text(
    json.dumps(
      {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "vosjax test",
        "language": "python",
      }
    )
  )
  return name


def _outputs(cell, output_type=None) -> list:
  return [o for o in cell.get("outputs", []) if output_type in (None, o["output_type"])]


def _text(cell) -> str:
  return "".join(o.get("text", "") for o in _outputs(cell, "stream"))


def _mime_types(cell) -> list[str]:
  return [mime for o in _outputs(cell) if o["output_type"] == "display_data" for mime in o["data"]]


def test_committed_notebook_has_no_outputs():
  notebook = nbformat.read(NOTEBOOK, as_version=4)
  nbformat.validate(notebook)
  code_cells = [c for c in notebook.cells if c.cell_type == "code"]
  assert len(code_cells) >= 5
  for cell in code_cells:
    assert cell.outputs == [] and cell.execution_count is None, cell.source[:80]


def test_notebook_runs_tiny_on_cpu(tiny_synthetic_dir, tmp_path, monkeypatch):
  workdir = tmp_path / "work"
  monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
  kernel_name = _kernel_for_this_interpreter(tmp_path / "jupyter")
  monkeypatch.setenv("VOSJAX_NOTEBOOK_TINY", "1")
  monkeypatch.setenv("VOSJAX_NOTEBOOK_WORKDIR", str(workdir))
  monkeypatch.setenv("VOSJAX_NOTEBOOK_DATA_DIR", tiny_synthetic_dir)
  # The notebook's own tiny overrides plus (winning) TINY_OVERRIDES, kept in step.
  monkeypatch.setenv("VOSJAX_NOTEBOOK_OVERRIDES", json.dumps(TINY_OVERRIDES))
  monkeypatch.delenv("VOSJAX_REPO", raising=False)  # the notebook must find the checkout itself
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  # Cheaper LLVM passes: this run is all compilation (about 20% less CPU, same metrics).
  monkeypatch.setenv(
    "XLA_FLAGS",
    "--xla_force_host_platform_device_count=1 "
    "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true",
  )
  monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")

  notebook = nbformat.read(NOTEBOOK, as_version=4)
  client = NotebookClient(
    notebook, kernel_name=kernel_name, timeout=300, resources={"metadata": {"path": LAUNCH}}
  )
  client.execute()  # raises CellExecutionError, with the cell's traceback, if a cell fails

  code_cells = [c for c in notebook.cells if c.cell_type == "code"]
  for cell in code_cells:
    assert cell.execution_count is not None, cell.source[:80]
    assert not _outputs(cell, "error"), cell.source[:80]
  by_marker = lambda marker: next(c for c in code_cells if marker in c.source)

  # Install: the checkout was used in place, without pip.
  install = _text(by_marker("def find_checkout"))
  assert f"vosjax checkout: {REPO}\n" in install and "not installing" in install

  # Training ran the tiny configuration of tests/helpers/tiny_configs.py and evaluated it.
  train = _text(by_marker('"-m", "vosjax.main"'))
  for key, value in TINY_OVERRIDES.items():
    assert f"--config.{key}={value}".replace(" ", "") in train, key
  assert "EVAL " in train
  metrics = json.loads((workdir / "eval_metrics.json").read_text())
  assert metrics["step"] == 4 and metrics["num_videos"] == 4

  # The metrics were printed, the overlay GIF and the label-map strip displayed.
  shown = by_marker("eval_metrics.json")
  assert json.loads(_text(shown)) == metrics
  assert (
    _mime_types(shown).count("image/gif")
    == len(list((workdir / "eval_outputs").glob("*.gif")))
    == 1
  )
  assert "image/png" in _mime_types(shown)

  # The tiny run wrote its own input video, readable by vosjax.
  from vosjax.data import video as video_io  # pylint: disable=g-import-not-at-top

  assert video_io.read_video(workdir / "synthetic_input.mp4").shape == (12, 64, 64, 3)

  # Segmentation ran when vosjax.segment exists, and says why not otherwise.
  segment = by_marker("vosjax.segment")
  if os.path.isfile(os.path.join(REPO, "vosjax", "segment.py")):
    assert list((workdir / "segment_outputs").rglob("*.*"))
    assert _mime_types(segment), "the segmentation cell displayed nothing"
  else:
    assert "SEGMENT SKIPPED" in _text(segment)


@pytest.mark.parametrize("script", SHELL_SCRIPTS)
def test_shell_script_syntax_and_lint(script):
  path = os.path.join(LAUNCH, script)
  proc = subprocess.run(["bash", "-n", path], capture_output=True, text=True)
  assert proc.returncode == 0, proc.stderr
  if shutil.which(
    "shellcheck"
  ):  # an extra check where it is installed (apt-get install shellcheck)
    proc = subprocess.run(["shellcheck", path], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout


def _stand_in(bin_dir, name, body: str = "") -> None:
  """An executable `name` in bin_dir that appends its arguments to $STAND_IN_LOG, then runs body."""
  bin_dir.mkdir(exist_ok=True)
  path = bin_dir / name
  path.write_text(f'#!/bin/sh\necho "{name} $*" >> "$STAND_IN_LOG"\n{body}\n')
  path.chmod(path.stat().st_mode | stat.S_IXUSR)


def _run_script(script, tmp_path, env_overrides, args=()):
  bin_dir = tmp_path / "bin"
  log = tmp_path / "calls.log"
  env = dict(
    os.environ,
    PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
    STAND_IN_LOG=str(log),
    **env_overrides,
  )
  proc = subprocess.run(
    ["bash", os.path.join(LAUNCH, script), *args],
    env=env,
    cwd=tmp_path,
    capture_output=True,
    text=True,
    timeout=60,
  )
  calls = log.read_text().splitlines() if log.exists() else []
  return proc, calls


def test_tpu_pod_creates_a_missing_vm_installs_everywhere_and_trains(tmp_path):
  # A TPU VM that does not exist yet (describe fails), which then has 4 workers.
  _stand_in(
    tmp_path / "bin",
    "gcloud",
    """
case "$*" in
  *describe*--format=json*) echo '{"networkEndpoints": [{}, {}, {}, {}]}' ;;
  *describe*) echo "NOT_FOUND" >&2; exit 1 ;;
esac""",
  )
  proc, calls = _run_script(
    "tpu_pod.sh",
    tmp_path,
    {"REPO_URL": "https://example.invalid/v.git"},
    ["--", "--config.num_train_steps=10"],
  )
  assert proc.returncode == 0, proc.stdout + proc.stderr
  create = [c for c in calls if " create " in c]
  assert create == [
    "gcloud compute tpus tpu-vm create vosjax-pod --zone=us-central2-b "
    "--accelerator-type=v4-32 --version=tpu-ubuntu2204-base"
  ]
  ssh = [c for c in calls if " ssh " in c]
  assert ssh and all("--worker=all" in c for c in ssh)
  assert "git clone -q 'https://example.invalid/v.git'" in ssh[0]
  assert "'jax[tpu]>=0.10.2,<0.11'" in ssh[1] and "-e ./vosjax" in ssh[1]
  train = ssh[2]
  for flag in (
    "-m vosjax.main",
    "--config=vosjax/configs/motion_grouping.py",
    "--config.data.data_dir=gs://kubric-public/tfds",
    "--distributed=true",
    "--config.num_train_steps=10",
  ):
    assert flag in train, (flag, train)

  # The same VM again: reused, not created; a single host trains without jax.distributed flags.
  _stand_in(
    tmp_path / "bin",
    "gcloud",
    """
case "$*" in
  *describe*--format=json*) echo '{"networkEndpoints": [{}]}' ;;
  *describe*) echo READY ;;
esac""",
  )
  (tmp_path / "calls.log").unlink()
  proc, calls = _run_script("tpu_pod.sh", tmp_path, {"REPO_URL": "https://example.invalid/v.git"})
  assert proc.returncode == 0, proc.stdout + proc.stderr
  assert "Reusing TPU VM" in proc.stdout
  assert not [c for c in calls if " create " in c]
  assert "--distributed" not in calls[-1] and "-m vosjax.main" in calls[-1]


def test_tpu_pod_rejects_bad_arguments_and_prints_usage(tmp_path):
  proc, calls = _run_script("tpu_pod.sh", tmp_path, {}, ["--help"])
  assert proc.returncode == 0 and "Usage: launch/tpu_pod.sh" in proc.stdout and not calls
  proc, calls = _run_script("tpu_pod.sh", tmp_path, {}, ["--zone=x"])
  assert proc.returncode == 2 and "unexpected argument '--zone=x'" in proc.stderr and not calls


def test_slurm_script_runs_one_process_per_gpu_through_srun(tmp_path):
  script = open(os.path.join(LAUNCH, "slurm_gpu.sbatch")).read()
  assert "#SBATCH --nodes=" in script and "#SBATCH --ntasks-per-node=" in script
  assert "module load" in script and 'pip install -e . "jax[cuda12]' in script
  _stand_in(tmp_path / "bin", "srun")
  _stand_in(tmp_path / "bin", "module")  # a shell function on real clusters
  env = {
    "SLURM_NTASKS": "16",
    "SLURM_JOB_NUM_NODES": "2",
    "VOSJAX_MODULES": "python/3.11",
    "VOSJAX_VENV": str(tmp_path / "no-venv"),
  }
  proc, calls = _run_script("slurm_gpu.sbatch", tmp_path, env, ["--config.num_train_steps=10"])
  assert proc.returncode == 0, proc.stdout + proc.stderr
  assert calls == [
    "module load python/3.11",
    "srun --kill-on-bad-exit=0 --wait=60 python -m vosjax.main --config=configs/motion_grouping.py "
    "--workdir=workdirs/slurm-vosjax --config.data.data_dir=gs://kubric-public/tfds "
    "--config.batch_size=32 --config.eval_batch_size=16 --config.num_train_steps=10",
  ]

  (tmp_path / "calls.log").unlink()
  proc, calls = _run_script("slurm_gpu.sbatch", tmp_path, dict(env, BATCH_SIZE="24"))
  assert proc.returncode == 1 and "BATCH_SIZE=24 is not a multiple of the 16 GPUs" in proc.stderr
  assert not [c for c in calls if c.startswith("srun")]


# The exit status of `python -m vosjax.main` stopped by SIGTERM with its checkpoint saved
# (tests/test_faults.py checks that the real command exits with it).
EXIT_PREEMPTED = 75


@pytest.mark.parametrize(
  "srun_status, restart_count, requeued",
  [(EXIT_PREEMPTED, 0, True), (EXIT_PREEMPTED, 20, False), (0, 0, False), (1, 0, False)],
)
def test_slurm_script_requeues_a_run_stopped_by_sigterm(
  tmp_path, srun_status, restart_count, requeued
):
  script = open(os.path.join(LAUNCH, "slurm_gpu.sbatch")).read()
  assert "#SBATCH --requeue" in script and "#SBATCH --signal=TERM@" in script
  _stand_in(tmp_path / "bin", "srun", f"exit {srun_status}")
  _stand_in(tmp_path / "bin", "scontrol")
  env = {
    "SLURM_NTASKS": "2",
    "SLURM_JOB_ID": "4242",
    "SLURM_RESTART_COUNT": str(restart_count),
    "VOSJAX_VENV": str(tmp_path / "no-venv"),
  }
  proc, calls = _run_script("slurm_gpu.sbatch", tmp_path, env)
  assert proc.returncode == srun_status, proc.stdout + proc.stderr  # the run's status is the job's
  assert calls[0].startswith("srun ") and "vosjax.main" in calls[0]
  assert calls[1:] == (["scontrol requeue 4242"] if requeued else []), calls
  if requeued:
    assert "requeueing job 4242 (restart 1 of at most 20)" in proc.stdout
  elif srun_status == EXIT_PREEMPTED:
    assert "already requeued 20 times (MAX_REQUEUES=20)" in proc.stderr


# A TPU VM for tpu_pod.sh: `describe` reads its state from a file (`create` makes it READY,
# `delete` removes it); the training `ssh` runs its --command for real in a stand-in worker home,
# whose `vosjax-venv/bin/python` exits with the statuses listed in `statuses`, one per run. With a
# `preempt_once` file the next training ssh instead fails (255) and leaves the VM PREEMPTED.
FAKE_TPU_VM = r"""
home="$FAKE_WORKER_HOME"
case "$*" in
  *" describe "*--format=json*) echo '{"networkEndpoints": [{}, {}]}' ;;
  *" describe "*) cat "$home/vm_state" ;;
  *" create "*) echo READY > "$home/vm_state" ;;
  *" delete "*) rm -f "$home/vm_state" ;;
  *" ssh "*vosjax.main*)
    if [ -e "$home/preempt_once" ]; then
      rm "$home/preempt_once"; echo PREEMPTED > "$home/vm_state"; exit 255
    fi
    for arg in "$@"; do case "$arg" in --command=*) command="${arg#--command=}" ;; esac; done
    cd "$home" && HOME="$home" bash -c "$command" ;;
esac
"""

FAKE_VOSJAX_MAIN = """#!/bin/sh
runs=$(($(cat "$HOME/runs" 2>/dev/null || echo 0) + 1))
echo "$runs" > "$HOME/runs"
echo "fake vosjax.main run $runs: $*"
exit "$(sed -n "${runs}p" "$HOME/statuses")"
"""


def _fake_tpu_worker(tmp_path, statuses, preempt_once=False):
  home = tmp_path / "worker"
  (home / "vosjax-venv" / "bin").mkdir(parents=True)
  python = home / "vosjax-venv" / "bin" / "python"
  python.write_text(FAKE_VOSJAX_MAIN)
  python.chmod(0o755)
  (home / "statuses").write_text("".join(f"{s}\n" for s in statuses))
  (home / "vm_state").write_text("READY\n")
  if preempt_once:
    (home / "preempt_once").write_text("")
  _stand_in(tmp_path / "bin", "gcloud", FAKE_TPU_VM)
  return home


@pytest.mark.parametrize(
  "statuses, preempt_once, max_requeues, runs, final_status",
  [
    ([EXIT_PREEMPTED, 0], False, 20, 2, 0),  # SIGTERM once: requeued, then finishes
    ([EXIT_PREEMPTED] * 3, False, 1, 2, EXIT_PREEMPTED),  # requeues used up
    ([1], False, 20, 1, 1),  # an error is not requeued
    ([0], True, 20, 1, 0),  # the Spot VM went away under the run: recreated, run again
  ],
)
def test_tpu_pod_requeues_a_run_stopped_by_sigterm(
  tmp_path, statuses, preempt_once, max_requeues, runs, final_status
):
  home = _fake_tpu_worker(tmp_path, statuses, preempt_once)
  proc, calls = _run_script(
    "tpu_pod.sh",
    tmp_path,
    {
      "REPO_URL": "https://example.invalid/v.git",
      "FAKE_WORKER_HOME": str(home),
      "MAX_REQUEUES": str(max_requeues),
    },
  )
  output = proc.stdout + proc.stderr
  assert proc.returncode == final_status, output
  assert int((home / "runs").read_text()) == runs, output
  trainings = [c for c in calls if " ssh " in c and "vosjax.main" in c]
  assert len(trainings) == runs + preempt_once, calls
  assert all("--distributed=true" in c for c in trainings)
  assert output.count(f"vosjax.main exit status {statuses[0]}") >= 1
  requeues = runs - 1 + preempt_once
  for n in range(1, requeues + 1):
    assert f"requeue {n} of at most {max_requeues}" in output, output
  # Each requeue installs again (a recreated VM is bare) before training.
  clones = [c for c in calls if "git clone" in c]
  assert len(clones) == len(trainings), calls
  if preempt_once:
    assert [c.split()[4] for c in calls if " delete " in c or " create " in c] == [
      "delete",
      "create",
    ], calls
  if final_status == EXIT_PREEMPTED:
    assert f"not requeued after {max_requeues} requeues" in output
