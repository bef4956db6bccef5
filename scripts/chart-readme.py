#!/usr/bin/env python3
"""The values table of charts/wsingress/README.md, generated from the comments in values.yaml.

Each key's description is the comment block right above it (no blank line between). Comment
lines indented further than the block's first line are examples: the table says where to look
instead of squeezing YAML into a cell. The table sits between the markers
<!-- values:start --> and <!-- values:end -->; the rest of the README is written by hand.

    python3 scripts/chart-readme.py           # rewrite the table
    python3 scripts/chart-readme.py --check   # exit 1 when the README is out of date (tests/chart.rs)
"""

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VALUES = ROOT / "charts/wsingress/values.yaml"
README = ROOT / "charts/wsingress/README.md"
START, END = "<!-- values:start -->", "<!-- values:end -->"
KEY = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z0-9_]+):(?P<value>.*)$")
COMMENT = re.compile(r"^(?P<indent> *)#(?P<text>.*)$")


def describe(block):
    """Prose of a comment block; indented lines (examples) become one pointer."""
    if not block:
        return ""
    words, example = [], False
    for text in block:
        body = text[1:] if text.startswith(" ") else text
        if body.startswith("  ") and words:
            example = True
            continue
        words.append(body.strip())
    prose = " ".join(w for w in words if w)
    if example:
        prose += " (example in values.yaml)"
    return prose


def cell(text):
    return text.replace("|", "\\|")


def rows():
    out, stack, block = [], [], []
    for line in VALUES.read_text().splitlines():
        if not line.strip():
            block = []
            continue
        m = COMMENT.match(line)
        if m:
            block.append(m.group("text"))
            continue
        m = KEY.match(line)
        if not m:  # list items and continuation lines belong to the key above
            block = []
            continue
        indent = len(m.group("indent"))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, m.group("key")))
        path = ".".join(k for _, k in stack)
        value = m.group("value").split(" #")[0].strip()
        desc = describe(block)
        block = []
        if not value:  # a mapping: a row only when it says something
            if desc:
                out.append(f"| `{path}` | | {cell(desc)} |")
            continue
        out.append(f"| `{path}` | `{cell(value)}` | {cell(desc)} |")
    return out


def table():
    head = ["| value | default | description |", "|---|---|---|"]
    return "\n".join([START, *head, *rows(), END])


def main():
    text = README.read_text()
    if START not in text or END not in text:
        sys.exit(f"{README}: the markers {START} and {END} are missing")
    before, rest = text.split(START, 1)
    _, after = rest.split(END, 1)
    new = before + table() + after
    if "--check" in sys.argv[1:]:
        if new != text:
            print(f"{README.relative_to(ROOT)} is out of date; run: python3 scripts/chart-readme.py")
            sys.exit(1)
        print(f"{README.relative_to(ROOT)}: values table up to date ({len(rows())} rows)")
        return
    README.write_text(new)
    print(f"{README.relative_to(ROOT)}: {len(rows())} rows written")


if __name__ == "__main__":
    main()
