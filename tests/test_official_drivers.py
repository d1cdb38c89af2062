"""benchmarks/official/: the official-side benchmark drivers start, and name a wrong --official
folder (or a missing dependency folder, or an impossible workload) in one line instead of failing
deep in an import. (They run the authors' code, which is not part of this repository:
docs/benchmarks_official.md fetches it.)"""

import subprocess
import sys

import pytest

from helpers.environment import REPO

DRIVERS = [
  "motion_grouping.py",
  "dino_backbone.py",
  "betrayed_end_to_end.py",
  "betrayed_clustering.py",
  "smtc_step.py",
]


def run_driver(name, *args):
  return subprocess.run(
    [sys.executable, f"benchmarks/official/{name}", *args],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
  )


def assert_one_line_refusal(proc, *fragments):
  assert proc.returncode != 0
  assert "Traceback" not in proc.stderr, proc.stderr
  for fragment in fragments:
    assert fragment in proc.stderr, proc.stderr


@pytest.mark.parametrize("name", DRIVERS)
def test_driver_help_and_wrong_official_folder(name, tmp_path):
  proc = run_driver(name, "--help")
  assert proc.returncode == 0 and "--official" in proc.stdout, proc.stderr
  args = ["--official", str(tmp_path / "nowhere")] + (
    ["step"] if name == "motion_grouping.py" else []
  )
  assert_one_line_refusal(run_driver(name, *args), "nowhere", "is --official")


def test_smtc_step_names_a_missing_dependency_folder(tmp_path):
  # An SMTC-shaped folder gets past the --official check; the kornia/cvbase folder does not exist.
  (tmp_path / "smtc" / "src" / "model").mkdir(parents=True)
  (tmp_path / "smtc" / "src" / "model" / "model_twostage.py").write_text("")
  proc = run_driver(
    "smtc_step.py", "--official", str(tmp_path / "smtc"), "--deps", str(tmp_path / "no_deps")
  )
  assert_one_line_refusal(proc, "--deps", "no_deps", "is not a folder")


def test_smtc_step_refuses_an_empty_batch(tmp_path):
  proc = run_driver("smtc_step.py", "--official", str(tmp_path), "--clips", "0")
  assert_one_line_refusal(proc, "--clips")


def test_betrayed_clustering_refuses_a_video_without_key_frames(tmp_path):
  # The official code keys on arange(T // ratio) * ratio: T < ratio has none.
  proc = run_driver(
    "betrayed_clustering.py", "--official", str(tmp_path), "--frames", "5", "--ratio", "10"
  )
  assert_one_line_refusal(proc, "--frames [5]", "no key frame")
