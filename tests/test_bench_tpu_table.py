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
  row = "| movi_e.py | v5e-16 (16) | 16 (1) | yes | 2.50 GiB | 50.0 ms | 320 | 25.0% | 25 s | 30 s"
  assert row + " | 96 (6) (pred.) | 320 |" in readme
  assert "| demo.py | v5e-16 () | 1/chip | no: RESOURCE_EXHAUSTED: too big |" in readme
  assert readme.count("Not computed yet: v5e-16: ytvis.py.") == 1


def _fake_run(memory_gib, step_s):
  """A `tpu.run` stand-in for `_largest`'s arithmetic: memory and step time as functions of the
  per-chip batch (what XLA would report), the rest of a compiled result as `_compiled_cell`."""

  def run(config, topology_name, programs):
    per_chip = config.batch_size // 16
    cell = _compiled_cell(per_chip, memory_gib(per_chip), step_s(per_chip))
    cell.update(
      hbm_bytes=16 * 2**30, bf16_flops_per_s=1e14, fp32_flops_per_s=1e14 / 6, compile_s=1.0
    )
    cell["flops"] = 1e11 * per_chip * 16
    return [cell]

  return run


def test_largest_batch_from_two_compiles(monkeypatch):
  monkeypatch.setattr(tpu_table, "_overrides", lambda path: [])
  first = _fake_run(lambda b: 1 + b, lambda b: 0.01 * b)(
    tpu_table.config_file.load_config("configs/demo.py", ["batch_size=16"]), "v5e-16", ("train",)
  )[0]
  # 1 GiB + 1 GiB per example: 15 examples fit 16 GiB. The byte-bound step time of the second
  # compile (XLA counts a loop body once) fell with the batch; the prediction keeps its time per
  # example, so no MFU above that compile's appears.
  run = _fake_run(lambda b: 1 + b, lambda b: 0.02 if b == 1 else 0.015)
  largest = tpu_table._largest(run, "configs/demo.py", "v5e-16", 16, first, verify=False)
  assert largest["predicted"] and largest["per_chip_batch"] == 15
  assert largest["memory"]["total"] == 16 * 2**30 and largest["fits"]
  assert largest["step_s"] == 0.015 * 15 / 2
  assert largest["examples_per_s"] == 2 * 16 / 0.015
  assert [c["per_chip_batch"] for c in largest["from_compiles"]] == [1, 2]
  # Memory that does not grow with the batch bounds nothing: the larger compile, marked.
  flat = tpu_table._largest(
    _fake_run(lambda b: 1.0, lambda b: 0.01), "configs/demo.py", "v5e-16", 16, first, False
  )
  assert flat["unbounded"] and flat["per_chip_batch"] == 2 and "predicted" not in flat
  assert tpu_table._mfu({"mfu_bf16": 1.3}).startswith("n/a (130%")
