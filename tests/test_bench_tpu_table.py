"""`python -m vosjax.bench tpu --table --render-only`: docs/tpu.md's table and the README's compact
one, written from the cached cells (vosjax/benchmarks/_tpu_table.py), nothing compiled."""

import json

from vosjax.benchmarks import _tpu_table as tpu_table
from vosjax.benchmarks import tpu


def _compiled_cell(per_chip: int, gib: float, step_s: float, **extra) -> dict:
  chips = 16
  return {
    "chips": chips,
    "per_chip_batch": per_chip,
    "fits": gib < 16,
    "memory": {"total": gib * 2**30},
    "step_s": step_s,
    "step_s_source": "cost model",
    "examples_per_s": per_chip * chips / step_s,
    "mfu_bf16": 0.25,
    "flops": 1e12,
    "num_train_steps": 1000,
    **extra,
  }


def _write(tmp_path, results):
  (tmp_path / "tpu.json").write_text(json.dumps(results))
  (tmp_path / "tpu.md").write_text(f"intro\n{tpu_table.BEGIN}\nold\n<!-- end of table -->\nafter\n")
  (tmp_path / "README.md").write_text(
    f"top\n{tpu_table.README_BEGIN}\nold\n<!-- end of tpu table -->\nbottom\n"
  )


def test_render_only_writes_both_tables_from_the_cached_cells(tmp_path, monkeypatch):
  results = {
    "movi_e.py|v5e-16": {
      "shipped_batch": 8,
      "shipped": _compiled_cell(1, 2.5, 0.05),
      "largest": _compiled_cell(6, 15.2, 0.3, predicted=True),
    },
    "demo.py|v5e-16": {
      "shipped_batch": 16,
      "shipped": {"per_chip_batch": 1, "fits": False, "error": "RESOURCE_EXHAUSTED: too big"},
      "largest": {"per_chip_batch": 1, "fits": False, "error": "RESOURCE_EXHAUSTED: too big"},
    },
  }
  _write(tmp_path, results)
  monkeypatch.chdir(tmp_path)
  (tmp_path / "configs").mkdir()
  for name in ("demo.py", "movi_e.py", "ytvis.py"):
    (tmp_path / "configs" / name).write_text("")
  argv = ["--table", "--render-only", "--topology", "v5e-16"]
  assert tpu.main(argv + ["--out", "tpu.md", "--readme", "README.md"]) == 0
  full = (tmp_path / "tpu.md").read_text()
  assert full.startswith("intro\n") and full.endswith("<!-- end of table -->\nafter\n")
  assert (
    "| movi_e.py | v5e-16 (16 chips) | shipped | 16 (1/chip) | yes | 2.50 GiB | 50.00 ms" in full
  )
  assert "| largest (predicted from 2 compiles) | 96 (6/chip) | yes | 15.20 GiB" in full
  assert "| demo.py | v5e-16 | shipped | 1/chip | no | RESOURCE_EXHAUSTED: too big" in full
  assert "Not computed in the last run (out of time): ytvis.py on v5e-16." in full
  readme = (tmp_path / "README.md").read_text()
  assert readme.startswith("top\n") and readme.endswith("<!-- end of tpu table -->\nbottom\n")
  assert "old" not in readme
  # 8 examples x 1000 steps at 320 examples/s: 25 s; one epoch of MOVi-E's 9,750 videos: 30.5 s.
  row = "| movi_e.py | v5e-16 (16) | 16 (1) | yes | 2.5 GiB | 50.0 ms | 320 | 25.0% | 25 s | 30 s"
  assert row + " | 96 (6) (pred.) | 320 |" in readme
  assert "| demo.py | v5e-16 () | 1/chip | no: RESOURCE_EXHAUSTED: too big |" in readme
