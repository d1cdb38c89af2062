"""benchmarks/official/: the official-side benchmark drivers start, and name a wrong --official
folder instead of failing deep in an import. (They run the authors' code, which is not part of this
repository: docs/benchmarks_official.md fetches it.)"""

import subprocess
import sys

import pytest

from helpers.environment import REPO

DRIVERS = ["motion_grouping.py", "dino_backbone.py", "betrayed_end_to_end.py"]


def run_driver(name, *args):
  return subprocess.run(
    [sys.executable, f"benchmarks/official/{name}", *args],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
  )


@pytest.mark.parametrize("name", DRIVERS)
def test_driver_help_and_wrong_official_folder(name, tmp_path):
  proc = run_driver(name, "--help")
  assert proc.returncode == 0 and "--official" in proc.stdout, proc.stderr
  args = ["--official", str(tmp_path / "nowhere")] + (
    ["step"] if name == "motion_grouping.py" else []
  )
  proc = run_driver(name, *args)
  assert proc.returncode != 0
  assert "nowhere" in proc.stderr and "is --official" in proc.stderr, proc.stderr
  assert "Traceback" not in proc.stderr
