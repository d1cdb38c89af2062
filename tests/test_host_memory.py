"""The `python -m vosjax.<command>` re-exec that turns on huge pages for XLA:CPU's large buffers."""

import os
import subprocess
import sys

import pytest

from vosjax.core import host_memory

TUNABLE = "glibc.malloc.hugetlb=1"


@pytest.mark.parametrize(
  "environ,thp,glibc,expected",
  [
    ({}, "madvise", (2, 36), TUNABLE),
    (
      {"GLIBC_TUNABLES": "glibc.malloc.tcache_count=0"},
      "madvise",
      (2, 39),
      "glibc.malloc.tcache_count=0:" + TUNABLE,
    ),
    ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, "madvise", (2, 36), None),  # the user's choice
    ({}, "always", (2, 36), None),  # huge pages already
    ({}, "never", (2, 36), None),
    ({}, None, (2, 36), None),
    ({}, "madvise", (2, 34), None),  # no such tunable before glibc 2.35
    ({}, "madvise", None, None),  # musl, macOS
    ({"VOSJAX_NO_HUGE_PAGES": "1"}, "madvise", (2, 36), None),
    ({"VOSJAX_NO_HUGE_PAGES": "0"}, "madvise", (2, 36), TUNABLE),
  ],
)
def test_huge_page_environment(environ, thp, glibc, expected):
  updated = host_memory.huge_page_environment(environ, thp, glibc)
  if expected is None:
    assert updated is None
  else:
    assert updated == {**environ, "GLIBC_TUNABLES": expected}


def test_only_vosjax_commands_reexecute():
  python = "/usr/bin/python3"
  assert host_memory.vosjax_command([python, "-u", "-m", "vosjax.main", "--config", "c"])
  assert host_memory.vosjax_command([python, "-m", "vosjax.bench", "x"])
  assert not host_memory.vosjax_command([python, "-m", "pytest"])
  assert not host_memory.vosjax_command([python, "-m", "vosjaxother.main"])
  assert not host_memory.vosjax_command([python, "-c", "import vosjax"])
  assert not host_memory.vosjax_command([python, "/usr/bin/pytest"])


def test_importing_vosjax_does_not_reexecute():
  """Process setup is the commands' (`main()`), not the package's: an import during
  `python -m vosjax...` (as `sys.argv` and `sys.orig_argv` read then) executes nothing."""
  environ = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
  environ["VOSJAX_NO_HUGE_PAGES"] = ""
  code = (
    "import sys; sys.argv[:] = ['-m']; sys.orig_argv = [sys.executable, '-m', 'vosjax.bench']; "
    "import vosjax, vosjax.bench, vosjax.segment; print('imported')"
  )
  run = subprocess.run(
    [sys.executable, "-c", code], capture_output=True, text=True, env=environ, timeout=120
  )
  assert run.returncode == 0, run.stderr
  assert run.stdout.strip() == "imported" and "usage" not in run.stderr


def test_describe_reports_the_setting(monkeypatch):
  monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.tcache_count=0:" + TUNABLE)
  assert host_memory.describe().startswith(TUNABLE + " (transparent huge pages")
  monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.hugetlb=0")
  assert host_memory.describe() == "glibc.malloc.hugetlb=0 (set by the user)"
  monkeypatch.delenv("GLIBC_TUNABLES")
  monkeypatch.setenv("VOSJAX_NO_HUGE_PAGES", "1")
  assert host_memory.describe().startswith("glibc.malloc.hugetlb not set (THP mode")


@pytest.mark.parametrize(
  "answer,expected",
  [("glibc 2.36", (2, 36)), ("glibc 2.39.9000", (2, 39)), ("musl 1.2", None), ("", None)],
)
def test_glibc_version_is_the_running_library(monkeypatch, answer, expected):
  monkeypatch.setattr(host_memory.os, "confstr", lambda name: answer)
  assert host_memory.glibc_version() == expected


def test_no_glibc_version_where_confstr_does_not_know_the_name(monkeypatch):
  def unknown(name):
    raise ValueError(f"unrecognized configuration name {name}")

  monkeypatch.setattr(host_memory.os, "confstr", unknown)
  assert host_memory.glibc_version() is None


def test_thp_mode_parsing(tmp_path):
  mode_file = tmp_path / "enabled"
  mode_file.write_text("always [madvise] never\n")
  assert host_memory.transparent_huge_page_mode(str(mode_file)) == "madvise"
  assert host_memory.transparent_huge_page_mode(str(tmp_path / "absent")) is None


@pytest.mark.parametrize("opt_out", ["", "1"])
def test_a_command_runs_with_the_tunable_when_it_helps(opt_out):
  """A real `python -m vosjax.bench` (its usage line reports the host memory setting)."""
  environ = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES",)}
  environ["VOSJAX_NO_HUGE_PAGES"] = opt_out
  run = subprocess.run(
    [sys.executable, "-m", "vosjax.bench"],
    capture_output=True,
    text=True,
    env=environ,
    timeout=120,
    check=False,
  )
  assert run.returncode == 2, run.stderr
  helps = (
    host_memory.huge_page_environment(
      {"VOSJAX_NO_HUGE_PAGES": opt_out},
      host_memory.transparent_huge_page_mode(),
      host_memory.glibc_version(),
    )
    is not None
  )
  assert ("host memory: " + TUNABLE in run.stderr) == helps, run.stderr
  assert ("host memory: glibc.malloc.hugetlb not set" in run.stderr) == (not helps), run.stderr
  assert run.stderr.count("usage: python -m vosjax.bench") == 1  # the command ran once
