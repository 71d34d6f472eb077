"""Reading text files line by line the way every seaflow reader does."""

from __future__ import annotations


def physical_lines(text: str) -> list[str]:
    """Lines split at ``\\n`` (and ``\\r\\n``) only: U+2028, U+0085 and other separators inside a
    line (valid in a JSON string, or in a prompt) are text, not line breaks."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]
