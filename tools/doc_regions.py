"""Generated regions of a markdown document: the text between `<!-- TAG:NAME -->` and `<!-- /TAG:NAME -->`.

The tools that keep numbers in the docs (`readme_numbers.py`, `replication_report.py`) render each region's
body from committed data and write it back here, so a document cannot drift from its data.
"""

from __future__ import annotations

import re


def rewrite(text: str, tag: str, regions: dict[str, str]) -> str:
    """`text` with the body of every `tag` region replaced by `regions[NAME]`; every region must be rendered
    and every rendered one present (a ValueError names both lists otherwise)."""
    pattern = re.compile(rf"(<!-- {tag}:(?P<name>[\w-]+) -->)(?P<body>.*?)(<!-- /{tag}:(?P=name) -->)", re.S)
    found = [m["name"] for m in pattern.finditer(text)]
    if sorted(found) != sorted(regions):
        raise ValueError(f"the {tag} regions {sorted(found)} differ from the rendered ones {sorted(regions)}")
    return pattern.sub(lambda m: m.group(1) + regions[m["name"]] + m.group(4), text)
