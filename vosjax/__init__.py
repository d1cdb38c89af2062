"""vosjax: self-supervised video object segmentation in JAX/Flax."""

import sys as _sys

if _sys.argv[:1] == ["-m"]:  # `python -m vosjax.<command>`, before the command imports JAX
  from vosjax.core import host_memory as _host_memory

  _host_memory.reexec_with_huge_pages()

__version__ = "0.1.0"
