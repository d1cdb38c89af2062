"""The `python -m vosjax...` commands that configs/*.py docstrings, README.md and docs/*.md print.

A command is
  * a line of a code block (README ```` ``` ```` fences, indented docstring lines) that starts with
    `python -m vosjax` or has `&& python -m vosjax` in it, joined with its backslash continuations;
  * an inline code span (`` `python -m vosjax...` ``) in prose or a table row, unless it only names
    a module or its usage (no argument, or only UPPERCASE placeholders such as NAME).
Each comes with its context: the lines a "needs ..." statement about it must be in (the comment
and prose lines right above and below a code-block command, up to a blank line or another
command; the paragraph or table row of an inline one).
"""

from __future__ import annotations

import ast
import dataclasses
import re
from pathlib import Path

from helpers.environment import REPO

# In a code line: at the line's start or after `&&` (not inside a listing's backquotes).
_START = re.compile(r"(?:^\s*|&&\s*)(python3? -m vosjax\b)")
_INLINE = re.compile(r"`(python -m vosjax[^`]*)`")


@dataclasses.dataclass(frozen=True)
class Command:
  source: str  # path relative to the repository
  line: int  # 1-based line of its first line
  text: str  # whitespace-normalised command
  context: str  # where a "needs ..." statement about it may stand


def _normalise(text: str) -> str:
  return " ".join(text.replace("\\\n", " ").split())


def _is_placeholder_usage(command: str) -> bool:
  args = command.split()[3:]  # after "python -m vosjax.x"
  return all(re.fullmatch(r"[A-Z_]+|\[.*|\.\.\.", a) for a in args)


def _code_commands(lines: list[str], is_code: list[bool]) -> list[tuple[int, int, str]]:
  """(first, last, text) of each command in code lines; `python -m vosjax` from its start."""
  found, i = [], 0
  while i < len(lines):
    match = _START.search(lines[i]) if is_code[i] else None
    if match is None:
      i += 1
      continue
    first, parts = i, [lines[i][match.start(1) :]]
    while parts[-1].rstrip().endswith("\\") and i + 1 < len(lines):
      i += 1
      parts[-1] = parts[-1].rstrip()[:-1]
      parts.append(lines[i])
    found.append((first, i, _normalise(" ".join(parts))))
    i += 1
  return found


def _context(lines: list[str], first: int, last: int, taken: set[int]) -> str:
  """Lines first..last widened up and down to a blank line, a code fence or a line of another
  command; and the paragraph above, across one blank line, when it introduces them (ends in ":")."""

  def stop(n):
    return not lines[n].strip() or lines[n].startswith("```") or n in taken

  start, end = first, last
  while start > 0 and not stop(start - 1):
    start -= 1
  while end + 1 < len(lines) and not stop(end + 1):
    end += 1
  if (
    start >= 2
    and not lines[start - 1].strip()
    and lines[start - 2].rstrip().endswith(":")
    and start - 2 not in taken
  ):
    start -= 2
    while start > 0 and not stop(start - 1):
      start -= 1
  return "\n".join(lines[start : end + 1])


def commands_in_text(text: str, source: str, code: list[bool]) -> list[Command]:
  lines = text.splitlines()
  block = _code_commands(lines, code)
  taken = {n for first, last, _ in block for n in range(first, last + 1)}
  commands = [
    Command(source, first + 1, command, _context(lines, first, last, taken))
    for first, last, command in block
  ]
  for n, line in enumerate(lines):
    if code[n]:
      continue
    for match in _INLINE.finditer(line):
      command = _normalise(match.group(1))
      if _is_placeholder_usage(command):
        continue
      if line.lstrip().startswith("|"):  # a table row is its own context
        context = line
      else:
        context = _context(lines, n, n, taken)
      commands.append(Command(source, n + 1, command, context))
  return sorted(commands, key=lambda c: c.line)


def markdown_commands(path: Path) -> list[Command]:
  """Commands of a Markdown file (README.md, docs/*.md); its ``` fences are the code blocks."""
  text = path.read_text()
  code, inside = [], False
  for line in text.splitlines():
    if line.startswith("```"):
      inside = not inside
      code.append(False)
    else:
      code.append(inside)
  return commands_in_text(text, str(path.relative_to(REPO)), code)


def readme_commands() -> list[Command]:
  return markdown_commands(Path(REPO) / "README.md")


def config_commands(path: Path) -> list[Command]:
  """Commands of a config's module docstring, read from the source lines (a backslash continuation
  is then seen as written); indented lines are its code blocks."""
  tree = ast.parse(path.read_text())
  node = tree.body[0] if tree.body else None
  if not (
    isinstance(node, ast.Expr)
    and isinstance(node.value, ast.Constant)
    and isinstance(node.value.value, str)
  ):
    return []
  lines = path.read_text().splitlines()[node.lineno - 1 : node.end_lineno]
  code = [line.startswith("  ") for line in lines]
  rel = str(path.relative_to(REPO))
  return [
    dataclasses.replace(c, line=c.line + node.lineno - 1)
    for c in commands_in_text("\n".join(lines), rel, code)
  ]


def all_commands() -> list[Command]:
  commands = readme_commands()
  for path in sorted((Path(REPO) / "docs").glob("*.md")):
    commands += markdown_commands(path)
  for path in sorted((Path(REPO) / "configs").glob("*.py")):
    commands += config_commands(path)
  return commands


def find(source: str, prefix: str) -> Command:
  """The one documented command of `source` that starts with `prefix` (normalised)."""
  matches = [c for c in all_commands() if c.source == source and c.text.startswith(prefix)]
  if len(matches) != 1:
    raise LookupError(f"{len(matches)} commands in {source} start with {prefix!r}")
  return matches[0]
