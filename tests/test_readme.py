"""README.md is the map of the repository: its Architecture block names every part of `methods/`.

The block is the fenced code block under "## Architecture". It must name every method package
(`name/`) and every module (`name.py`) under `vosjax/methods/`, every capability Protocol of
`vosjax/methods/interface.py` (in backquotes) and every subpackage of `vosjax/` (`name/`), so that
a new method, module or capability cannot land without its line on the map. The docs/ pages the
README links to must exist.
"""

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def architecture_block(readme_text: str) -> str:
  """The first ``` fenced block after the "## Architecture" heading, before the next heading."""
  match = re.search(r"^## Architecture\s*$(.*?)(?=^## |\Z)", readme_text, re.M | re.S)
  if match is None:
    raise AssertionError('README.md has no "## Architecture" section')
  block = re.search(r"^```[^\n]*\n(.*?)^```", match.group(1), re.M | re.S)
  if block is None:
    raise AssertionError('README.md\'s "## Architecture" section has no ``` code block')
  return block.group(1)


def method_parts(repo: Path) -> list[str]:
  """`name/` of each package and `name.py` of each module under vosjax/methods/."""
  methods = repo / "vosjax" / "methods"
  packages = [f"{p.name}/" for p in methods.iterdir() if (p / "__init__.py").is_file()]
  modules = [p.name for p in methods.glob("*.py") if p.name != "__init__.py"]
  return sorted(packages) + sorted(modules)


def capabilities(repo: Path) -> list[str]:
  """Names of the Protocol classes of methods/interface.py other than `Method` itself."""
  tree = ast.parse((repo / "vosjax" / "methods" / "interface.py").read_text())
  names = []
  for node in tree.body:
    if isinstance(node, ast.ClassDef) and any(
      isinstance(base, ast.Name) and base.id == "Protocol" for base in node.bases
    ):
      names.append(node.name)
  assert "Method" in names, "interface.py no longer defines the Method Protocol"
  return [name for name in names if name != "Method"]


def subpackages(repo: Path) -> list[str]:
  """`name/` of each package directly under vosjax/."""
  return sorted(f"{p.name}/" for p in (repo / "vosjax").iterdir() if (p / "__init__.py").is_file())


def missing_from_architecture(repo: Path) -> list[str]:
  block = architecture_block((repo / "README.md").read_text())
  missing = []
  for part in method_parts(repo):
    if not re.search(rf"(?<![\w/.]){re.escape(part)}", block):
      missing.append(f"vosjax/methods/{part}")
  for name in capabilities(repo):
    if f"`{name}`" not in block:
      missing.append(f"capability {name} (vosjax/methods/interface.py)")
  for part in subpackages(repo):
    if not re.search(rf"^  {re.escape(part)}", block, re.M):
      missing.append(f"vosjax/{part}")
  return missing


def test_architecture_block_names_every_method_part_and_capability():
  assert len(method_parts(REPO)) >= 6  # four method packages, interface.py, checkpoints.py, ...
  assert len(capabilities(REPO)) >= 7
  missing = missing_from_architecture(REPO)
  assert not missing, "README.md's Architecture block does not name: " + ", ".join(missing)


def test_check_fails_when_a_part_is_missing(tmp_path):
  """The check itself, on a copy whose README drops a method package and a capability."""
  (tmp_path / "vosjax" / "methods").mkdir(parents=True)
  readme = (REPO / "README.md").read_text()
  block = architecture_block(readme)
  assert "smtc/" in block and "`ProposesCandidates`" in block
  (tmp_path / "README.md").write_text(
    readme.replace(block, block.replace("smtc/", "").replace("`ProposesCandidates`", ""))
  )
  for path in (REPO / "vosjax" / "methods").rglob("*.py"):
    target = tmp_path / path.relative_to(REPO)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(path.read_text())
  for package in subpackages(REPO):
    (tmp_path / "vosjax" / package).mkdir(exist_ok=True)
    (tmp_path / "vosjax" / package / "__init__.py").touch()
  assert missing_from_architecture(tmp_path) == [
    "vosjax/methods/smtc/",
    "capability ProposesCandidates (vosjax/methods/interface.py)",
  ]
  # A new method package is missing until the README names it.
  (tmp_path / "vosjax" / "methods" / "new_method").mkdir()
  (tmp_path / "vosjax" / "methods" / "new_method" / "__init__.py").touch()
  assert "vosjax/methods/new_method/" in missing_from_architecture(tmp_path)


def test_architecture_section_must_exist():
  with pytest.raises(AssertionError, match="Architecture"):
    architecture_block("# vosjax\n\n## Usage\n\n```\nx\n```\n")


def test_documentation_links_point_to_existing_files():
  readme = (REPO / "README.md").read_text()
  links = re.findall(r"\]\(((?:docs|launch)/[^)#]+)(?:#[^)]*)?\)", readme)
  assert any(link.startswith("docs/") for link in links)
  for link in links:
    assert (REPO / link).is_file(), f"README.md links to {link}, which does not exist"
  pages = {p.name for p in (REPO / "docs").glob("*.md")}
  for page in pages:
    assert f"docs/{page}" in readme, f"docs/{page} is not linked from README.md"
