"""Write one ``## `` section of benchmarks/RESULTS.md, replacing that section if present."""

from __future__ import annotations

from pathlib import Path

RESULTS = Path(__file__).with_name("RESULTS.md")


def write_section(title: str, body: str, path: Path = RESULTS) -> None:
    """Replace (or append) the section headed ``## {title}`` with ``body``."""
    header = f"## {title}"
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    block = f"{header}\n\n{body.strip()}\n"
    start = text.find(header + "\n")
    if start < 0:
        text = text.rstrip("\n") + "\n\n" + block
    else:
        nxt = text.find("\n## ", start + len(header))
        rest = "" if nxt < 0 else "\n" + text[nxt + 1 :]
        text = text[:start] + block + rest
    path.write_text(text)


def replace_section(path: Path, header: str, body: str) -> None:
    """Replace the text from ``header`` up to the next ``## `` with ``body`` (which starts
    with the header), or append ``body`` when ``header`` is not in the file."""
    text = path.read_text() if path.exists() else "# Benchmark results\n\n"
    body = body.rstrip("\n") + "\n"  # one blank line before the next section, always
    if header in text:
        start = text.index(header)
        nxt = text.find("\n## ", start + len(header))
        text = text[:start] + body + ("" if nxt < 0 else "\n" + text[nxt + 1 :])
    else:
        text = text.rstrip("\n") + "\n\n" + body
    path.write_text(text)
