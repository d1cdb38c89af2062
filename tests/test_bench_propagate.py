"""`python -m vosjax.bench propagate`: the propagation and the backbone rows run and print their
per-frame summary (ours only here: the official side needs a scratch export of the DINO code)."""

import re
import subprocess

import pytest

from helpers.environment import PYTHON, REPO, subprocess_env

SUMMARY = re.compile(r"per frame wall ours (\d+\.\d+) s, CPU (\d+\.\d+) s, peak RSS (\d+) MB")


@pytest.mark.parametrize(
  "options,label",
  [
    (["--patch", "16", "--frames", "3"], "ViT-S/16 propagation, 480p grid (30, 52), 3 frames"),
    (
      ["--backbone", "--resolution", "32x64", "--depth", "1", "--frames", "2"],
      "ViT-S/16 backbone (random weights, depth 1) at 32x64, 2 frames",
    ),
  ],
)
def test_ours_only_rows(options, label):
  command = [PYTHON, "-m", "vosjax.bench", "propagate", "--ours_only", "--repeats", "1"]
  out = subprocess.run(
    command + options, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=600
  )
  assert out.returncode == 0, out.stderr[-2000:]
  summary = out.stdout.strip().splitlines()[-1]
  assert summary.startswith(label), summary
  wall, cpu, peak = SUMMARY.search(summary).groups()
  assert float(wall) > 0 and float(cpu) > 0 and int(peak) > 0
  assert "official" not in summary
