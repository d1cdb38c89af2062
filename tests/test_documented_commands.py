"""Every `python -m vosjax...` command that README.md, docs/*.md or a config docstring prints is run
by a test, or says next to it what it needs that the development machines do not have.

`EXECUTED` is the registry: command (as `documented_commands` normalises it) -> the test that runs
it and how (as written; or the same config / command line with tiny overrides, where the command as
written is a long CPU run). A command outside the registry must have a "needs ..." statement in its
context (`documented_commands`: the comment lines or introducing sentence above it, its paragraph or
table row). A new command that is neither fails
`test_every_documented_command_is_run_or_says_what_it_needs`.
"""

import ast
import json
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from helpers import documented_commands
from helpers.environment import PYTHON, REPO, subprocess_env
from helpers.tiny_configs import TINY_SYNTHETIC

_CONFIG_CASE = "tests/test_configs.py::test_config_trains_two_steps_and_evaluates[{}]"
_DEMO = "python -m vosjax.main --config configs/demo.py --workdir workdirs/demo"
EXECUTED = {
  # README's first command (also configs/demo.py's and the results table's): CI runs the README's
  # first two commands as they are (the second, `python -m pytest -q`, is this test suite and no
  # vosjax command); here configs/demo.py runs with tiny overrides.
  _DEMO: (_CONFIG_CASE.format("demo.py"), "CI runs it as written; tiny overrides here"),
  _DEMO + " --config.batch_size=32 --config.num_train_steps=5000": (
    "tests/test_train.py::test_command_line_trains_evaluates_and_writes_outputs",
    "the same command line with --config.* overrides (tiny ones)",
  ),
  _DEMO + " --mode eval": (
    "tests/test_train.py::test_command_line_trains_evaluates_and_writes_outputs",
    "--mode eval after training, tiny overrides",
  ),
  "python -m vosjax.segment --config configs/demo.py --workdir workdirs/demo --input VIDEO "
  "--output DIR": (
    "tests/test_segment.py::"
    "test_command_line_writes_masks_and_overlays_of_the_whole_video_prediction",
    "configs/demo.py with tiny overrides, a checkpointed workdir and a generated video",
  ),
  "python -m vosjax.bench data": (
    "tests/test_documented_commands.py::test_bench_data_command",
    "with --data_dir/--tfds_name of the tiny set",
  ),
  "python -m vosjax.main --config configs/davis2016.py --workdir workdirs/davis2016": (
    _CONFIG_CASE.format("davis2016.py"),
    "tiny overrides (2 sequences, 6 frames, 32x56)",
  ),
  "python -m vosjax.main --config configs/davis2016.py --workdir W --config.num_train_steps=0 "
  "[--config.eval.mode=official]": (
    "tests/test_motion_grouping_official_checkpoint.py::"
    "test_official_mode_reports_the_oracle_slot_choice",
    "official mode evaluated on a tiny DAVIS folder; training with tiny overrides: "
    + _CONFIG_CASE.format("davis2016.py"),
  ),
  "python -m vosjax.main --config configs/davis2016.py --workdir workdirs/davis2016 "
  "[--config.data.root=PATH_TO_DAVIS2016] "
  "[--config.data.raft_flow_root=DIR --config.data.raft_res=480p]": (
    _CONFIG_CASE.format("davis2016.py"),
    "tiny overrides; RAFT folders: tests/test_davis.py",
  ),
  "python -m vosjax.main --config configs/slot_attention.py --workdir W "
  '--config.data.resolution="(32,32)" --config.batch_size=16 --config.num_train_steps=600': (
    _CONFIG_CASE.format("slot_attention.py"),
    "tiny overrides",
  ),
  "python -m vosjax.main --config configs/slot_attention.py --workdir workdirs/slot_attention": (
    _CONFIG_CASE.format("slot_attention.py"),
    "tiny overrides",
  ),
  "python -m vosjax.evaluate --protocol davis2016 --gt ../shared/data/davis2016 --results "
  "../shared/data/davis2017_eval_results/semi-supervised/osvos --frames all": (
    "tests/test_evaluate.py::test_global_means_equal_official",
    "the same evaluation (all sequences, all frames) through the library; the command line on "
    "two sequences: test_cli_writes_official_csv_layout",
  ),
  "python -m vosjax.main --config configs/smtc_davis.py --workdir /tmp/smtc_davis": (
    _CONFIG_CASE.format("smtc_davis.py"),
    "tiny overrides (2 sequences of 6 frames, 32x32, a 3-block 32-wide random ViT)",
  ),
  "python -m vosjax.bench all --output DIR": (
    "tests/test_bench_all.py::test_quick_backbone_and_keyframes",
    "--quick, two sections; every section: test_quick_run_of_every_section (slow)",
  ),
  "python -m vosjax.bench all --only end_to_end --output DIR": (
    "tests/test_bench_all.py::test_quick_end_to_end_section",
    "--quick (tiny shapes)",
  ),
  "python -m vosjax.bench train --config configs/smtc_ytvos.py --set batch_size=2 "
  "--set backbone.random_init=True": (
    "tests/test_bench_train.py::test_benchmark_runs_smtc_training_step_without_dino_weights",
    "with a tiny random ViT and tiny shapes",
  ),
  "python -m vosjax.bench train --config configs/smtc_ytvos.py --set batch_size=2 "
  "--set backbone.random_init=True --steps 3": (
    "tests/test_bench_train.py::test_benchmark_runs_smtc_training_step_without_dino_weights",
    "with a tiny random ViT and tiny shapes",
  ),
  "python -m vosjax.bench forward --config configs/motion_grouping.py "
  '--set "data.resolution=(128,224)" --flows 16': (
    "tests/test_bench_forward.py::test_forward_benchmark_command",
    "the same method (configs/demo.py's Motion Grouping) at tiny widths and 16x16, 3 flows",
  ),
  "python -m vosjax.bench forward": (
    "tests/test_bench_forward.py::test_forward_benchmark_command",
    "with a config and tiny shapes",
  ),
  "python -m vosjax.bench backbone --frames 4 --frame-chunk 2": (
    "tests/test_bench_train.py::test_backbone_benchmark_command",
    "ViT-S/16 at 32x64, one repeat",
  ),
  "python -m vosjax.bench train --config configs/motion_grouping.py --set batch_size=8 "
  '--set "data.resolution=(128,224)"': (
    "tests/test_bench_train.py::test_benchmark_runs_the_training_step",
    "the same method (configs/demo.py's Motion Grouping) at tiny widths and 16x16",
  ),
  "python -m vosjax.bench train --config configs/motion_grouping.py --set batch_size=8 "
  '--set "data.resolution=(128,224)" --steps 3': (
    "tests/test_bench_train.py::test_benchmark_runs_the_training_step",
    "the same method (configs/demo.py's Motion Grouping) at tiny widths and 16x16",
  ),
  "python -m vosjax.bench train": (
    "tests/test_bench_train.py::test_benchmark_runs_the_training_step",
    "with a config and tiny shapes",
  ),
  "python -m vosjax.bench backbone --archs dino_vits16 --resolutions 192x384 --frames 4 "
  "--frame-chunk 1": (
    "tests/test_bench_train.py::test_backbone_benchmark_command",
    "ViT-S/16 at 32x64, one repeat",
  ),
  "python -m vosjax.bench tpu --config CONFIG --topology v5e:4x4": (
    "tests/test_tpu.py::test_config_train_step_compiles_for_tpu",
    "every config at tiny sizes on v4:2x2x2, through the command's `tpu.run`",
  ),
  "python -m vosjax.bench clustering --frames 24 --skip_numpy": (
    "tests/test_bench_clustering.py::test_clustering_benchmark_runs_and_agrees_with_numpy",
    "4 frames, with the NumPy comparison",
  ),
  "python -m vosjax.bench flow_error --tfds_name vosjax_synthetic/64x64_o1-1 --data_dir DIR": (
    "tests/test_bench_flow_error.py::test_flow_error_of_the_dis_twin",
    "on the tiny set",
  ),
  "python -m vosjax.main --config configs/demo.py --workdir W "
  "--config.data.tfds_name=vosjax_synthetic/NAME": (
    _CONFIG_CASE.format("demo.py"),
    "tiny overrides; the _dis sets: tests/test_synthetic.py, tests/test_bench_flow_error.py",
  ),
  "python -m vosjax.bench mg_recipes --set KEY=VALUE ... --steps 10000": (
    "tests/test_bench_mg_recipes.py::test_export_then_train_from_arrays",
    "4 steps on the tiny set",
  ),
  "python -m vosjax.main --config configs/movi_e.py --workdir /tmp/betrayed_smoke "
  "--config.data.tfds_name=vosjax_synthetic/64x64 --config.data.data_dir=/tmp/tfds "
  "--config.backbone.random_init=True --config.num_train_steps=20 --config.batch_size=2 "
  "--config.eval_batch_size=2 '--config.model.train_resolution=(64,64)' "
  "'--config.model.inference_resolution=(64,64)' --config.loss.semantic_positives=2 "
  "--config.loss.semantic_negatives=12 --config.loss.motion_positives=1 "
  "--config.loss.motion_negatives=3 '--config.data.eval_split=validation[:8]'": (
    "tests/test_documented_commands.py::test_movi_e_offline_smoke_command_runs_as_written",
    "as written (its --workdir in a temporary folder)",
  ),
}
_NEEDS = re.compile(r"\bneeds\b", re.IGNORECASE)


def undocumented(commands) -> list[str]:
  """The commands neither in EXECUTED nor accompanied by a "needs ..." statement."""
  return [
    f"{c.source}:{c.line}: {c.text}"
    for c in commands
    if c.text not in EXECUTED and not _NEEDS.search(c.context)
  ]


def test_every_documented_command_is_run_or_says_what_it_needs():
  commands = documented_commands.all_commands()
  assert len(commands) >= 15, [c.text for c in commands]  # README and every config docstring
  assert {c.source for c in commands} >= {
    "README.md",
    "configs/demo.py",
    "configs/movi_e.py",
    "configs/ytvis.py",
    "configs/davis2016.py",
  }
  missing = undocumented(commands)
  assert not missing, (
    "commands run by no test (add them to EXECUTED with the test that runs "
    "them) and with no 'needs ...' statement next to them:\n" + "\n".join(missing)
  )


def test_registry_names_existing_tests_of_documented_commands():
  documented = {c.text for c in documented_commands.all_commands()}
  assert not set(EXECUTED) - documented, "registry entries no document prints any more"
  for test_id, _ in EXECUTED.values():
    path, name = test_id.split("::")
    name = name.split("[")[0]
    tree = ast.parse((Path(REPO) / path).read_text())
    functions = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
    assert name in functions, f"{test_id}: no such test"
  param = re.compile(r"\[(.+)\]$")
  for test_id, _ in EXECUTED.values():
    if test_id.startswith("tests/test_configs.py") and param.search(test_id):
      assert (Path(REPO) / "configs" / param.search(test_id).group(1)).is_file(), test_id


def test_check_fails_on_a_new_undocumented_command():
  """The check itself: a new command, in a code block or inline, fails until it says what it needs
  (or is registered); a bare module name or a usage line of placeholders is no command."""
  text = "\n".join(
    [
      "Command:",
      "",
      "  python -m vosjax.main --config configs/new.py --workdir W \\",
      "      --config.batch_size=4",
      "",
      "Run `python -m vosjax.bench keyframes --frames 24`.",
      "The evaluation is `python -m vosjax.evaluate`; benchmarks: `python -m vosjax.bench NAME`.",
      "",
      "Command (needs the DINO weights, not on this machine):",
      "",
      "  python -m vosjax.main --config configs/other.py --workdir W",
    ]
  )
  commands = documented_commands.commands_in_text(
    text, "new.py", [line.startswith("  ") for line in text.splitlines()]
  )
  assert [c.text for c in commands] == [
    "python -m vosjax.main --config configs/new.py --workdir W --config.batch_size=4",
    "python -m vosjax.bench keyframes --frames 24",
    "python -m vosjax.main --config configs/other.py --workdir W",
  ]
  assert undocumented(commands) == [
    "new.py:3: python -m vosjax.main --config configs/new.py --workdir W --config.batch_size=4",
    "new.py:6: python -m vosjax.bench keyframes --frames 24",
  ]


def _run(argv: list[str], timeout: float) -> str:
  proc = subprocess.run(
    argv, env=subprocess_env(1), capture_output=True, text=True, timeout=timeout, cwd=REPO
  )
  output = proc.stdout + proc.stderr
  assert proc.returncode == 0, output[-5000:]
  return output


def test_bench_data_command(tiny_synthetic_dir, capsys):
  """`python -m vosjax.bench data` on the tiny set, through the command's `main` in this process
  (a child python would spend most of its time importing TensorFlow)."""
  from vosjax import bench  # pylint: disable=g-import-not-at-top

  command = documented_commands.find("README.md", "python -m vosjax.bench data").text
  argv = shlex.split(command)[3:] + [
    "--data_dir",
    tiny_synthetic_dir,
    "--tfds_name",
    TINY_SYNTHETIC,
    "--batch_size",
    "2",
    "--train_batches",
    "2",
  ]
  assert argv[0] == "data" and bench.main(argv) == 0
  output = capsys.readouterr().out
  assert f"build (or open) {TINY_SYNTHETIC}" in output
  assert "'train': 8" in output and "'validation': 4" in output


# Slow: builds vosjax_synthetic/64x64 into /tmp/tfds (as written) when absent (~2.5 min at load 10),
# then 20 steps of a random ViT-S/8 and the evaluation of 8 videos (~1-2 min more). The same
# config's pipeline runs by default in tests/test_configs.py (movi_e.py case, tiny data).
@pytest.mark.slow
def test_movi_e_offline_smoke_command_runs_as_written(tmp_path):
  command = documented_commands.find(
    "configs/movi_e.py",
    "python -m vosjax.main --config configs/movi_e.py --workdir /tmp/betrayed_smoke",
  ).text
  assert command in EXECUTED
  workdir = tmp_path / "betrayed_smoke"
  argv = shlex.split(
    command.replace("python", PYTHON, 1).replace("/tmp/betrayed_smoke", str(workdir))
  )
  output = _run(argv, timeout=1800)
  assert "EVAL " in output
  metrics = json.loads((workdir / "eval_metrics.json").read_text())
  assert metrics["step"] == 20 and metrics["num_videos"] == 8
  for key in ("fg_ari", "miou"):
    assert -1.0 <= metrics[key] <= 1.0, (key, metrics)
  assert sorted(p.name for p in (workdir / "checkpoints").iterdir())[-1] == "20"
