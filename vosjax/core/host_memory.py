"""Transparent huge pages for XLA:CPU's large host buffers (Linux with glibc >= 2.35).

XLA:CPU allocates each run's temporary buffer with one `malloc` (about 1 GB for a ViT-S/16
training step on 8 frames). glibc serves it with `mmap` and returns it with `munmap`, so every step
faults its pages in again, 4 KiB at a time: hundreds of thousands of page faults, a noticeable part
of the step. With the glibc tunable `glibc.malloc.hugetlb=1`, malloc asks for transparent huge
pages (`madvise(MADV_HUGEPAGE)`): 2 MiB pages, far fewer faults, a shorter step, and the same peak
memory (docs/performance.md, "Huge pages").

glibc reads tunables only at process start, so the `python -m vosjax.<command>` entry points
re-execute themselves once with the tunable added to `GLIBC_TUNABLES`: each command's `main()`
calls `reexec_with_huge_pages` first (process setup; importing vosjax changes nothing). Nothing
happens when the kernel's THP mode is not `madvise` (`always` already gives huge pages, `never`
cannot), when glibc is older than 2.35 or absent, when the tunable is already set, or when
`VOSJAX_NO_HUGE_PAGES=1`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence

TUNABLE = "glibc.malloc.hugetlb"
OPT_OUT = "VOSJAX_NO_HUGE_PAGES"
THP_MODE_FILE = "/sys/kernel/mm/transparent_hugepage/enabled"


def transparent_huge_page_mode(path: str = THP_MODE_FILE) -> str | None:
  """The kernel's selected THP mode ("always", "madvise", "never"), or None if unknown."""
  try:
    with open(path) as mode_file:
      text = mode_file.read()
  except OSError:
    return None
  start, end = text.find("["), text.find("]")
  return text[start + 1 : end] if 0 <= start < end else None


def glibc_version() -> tuple[int, int] | None:
  """(major, minor) of the glibc this process runs on, else None (musl, macOS, Windows).

  The running library's own answer (`confstr`), not `platform.libc_ver()`, which reports the
  newest glibc symbol the Python executable was linked against (2.17 for a manylinux-style
  build running on 2.36).
  """
  try:
    library, version = os.confstr("CS_GNU_LIBC_VERSION").split()
    major, minor = version.split(".")[:2]
    return (int(major), int(minor)) if library == "glibc" else None
  except (AttributeError, ValueError, OSError):  # no confstr, unknown name, or another format
    return None


def _hugetlb_settings(tunables: str) -> list[str]:
  """The `glibc.malloc.hugetlb=...` entries of a `GLIBC_TUNABLES` value."""
  return [part for part in tunables.split(":") if part.startswith(TUNABLE + "=")]


def huge_page_environment(
  environ: Mapping[str, str], thp_mode: str | None, glibc: tuple[int, int] | None
) -> dict[str, str] | None:
  """The environment to re-execute with, or None when re-executing would change nothing.

  Args:
    environ: the current environment.
    thp_mode: `transparent_huge_page_mode()`.
    glibc: `glibc_version()`.

  Returns:
    A copy of `environ` with `glibc.malloc.hugetlb=1` appended to `GLIBC_TUNABLES` (existing
    tunables kept), or None.
  """
  tunables = environ.get("GLIBC_TUNABLES", "")
  if (
    environ.get(OPT_OUT, "") not in ("", "0")
    or thp_mode != "madvise"
    or glibc is None
    or glibc < (2, 35)
    or _hugetlb_settings(tunables)
  ):
    return None
  updated = dict(environ)
  updated["GLIBC_TUNABLES"] = ":".join(part for part in (tunables, f"{TUNABLE}=1") if part)
  return updated


def vosjax_command(original_argv: Sequence[str]) -> bool:
  """Whether this process was started as `python [options] -m vosjax...` (so that executing its
  command line again runs the same command; a `main()` called by a test or a notebook is not)."""
  if "-m" not in original_argv:
    return False
  module = original_argv[list(original_argv).index("-m") + 1 :][:1]
  return bool(module) and (module[0] == "vosjax" or module[0].startswith("vosjax."))


def reexec_with_huge_pages() -> None:
  """Re-executes `python -m vosjax.<command> ...` with the tunable if it would help (see above);
  a command's `main()` calls it first.

  Returns only when there is nothing to do or the exec failed (the command then runs as is).
  """
  if not vosjax_command(sys.orig_argv) or not sys.executable:
    return
  environ = huge_page_environment(os.environ, transparent_huge_page_mode(), glibc_version())
  if environ is None:
    return
  try:
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], environ)
  except OSError:
    return


def describe() -> str:
  """One line for benchmark reports: whether this process runs with the tunable, and why not."""
  settings = _hugetlb_settings(os.environ.get("GLIBC_TUNABLES", ""))
  if settings == [f"{TUNABLE}=1"]:
    return f"{TUNABLE}=1 (transparent huge pages for large buffers)"
  if settings:
    return f"{settings[-1]} (set by the user)"
  return (
    f"{TUNABLE} not set (THP mode {transparent_huge_page_mode()}, glibc "
    f"{glibc_version()}, {OPT_OUT}={os.environ.get(OPT_OUT, '')!r})"
  )
