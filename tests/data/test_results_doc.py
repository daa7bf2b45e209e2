"""docs/RESULTS.md is what tools/replication_report.py makes of the committed results (it cannot drift)."""

from __future__ import annotations

import importlib
import re
import shutil

import pytest

from tests.helpers import REPO

RESULTS = REPO / "docs/results/replication-40m"
TABLES = ("main", "budget", "layers", "orderings")


@pytest.fixture
def tools(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "tools"))
    return importlib.import_module("replication_report"), importlib.import_module("doc_regions")


def region(text: str, name: str) -> str:
    return re.search(rf"<!-- results:{name} -->\n(.*?)<!-- /results:{name} -->", text, re.S)[1]


def test_results_doc_matches_the_committed_results(tmp_path, tools):
    replication_report, _ = tools
    doc = tmp_path / "RESULTS.md"
    shutil.copy(REPO / "docs/RESULTS.md", doc)
    replication_report.main([str(RESULTS), "--doc", str(doc), "--img", str(tmp_path)])
    assert doc.read_text() == (REPO / "docs/RESULTS.md").read_text()
    figures = [f"repl-{kind}-{name}.png" for name in ("lr-1e-3", "lr-2e-3") for kind in ("loss", "budget")]
    for figure in [*figures, "repl-stability.png"]:
        assert (tmp_path / figure).stat().st_size > 0, figure


def test_each_set_fills_its_own_regions_and_names_what_it_lacks(tmp_path, tools):
    replication_report, _ = tools
    sets = tmp_path / "sets.yaml"
    sets.write_text(
        "a:\n  full: full-lr-0.001\n  ssa: ssa_lr-0.001\nb:\n  full: full\n  sparse: sparse\n  ssa: ssa\n"
    )
    doc = tmp_path / "doc.md"
    doc.write_text(
        "".join(f"<!-- results:{t}-{s} -->\n<!-- /results:{t}-{s} -->\n" for s in "ab" for t in TABLES)
    )
    replication_report.main([str(RESULTS), "--sets", str(sets), "--doc", str(doc), "--img", str(tmp_path)])
    text, committed = doc.read_text(), (REPO / "docs/RESULTS.md").read_text()
    main_a, main_b = region(text, "main-a"), region(text, "main-b")
    assert "| full | full-lr-0.001 |" in main_a and "| ssa | ssa_lr-0.001 |" in main_a
    assert "| sparse |" not in main_a and "| sparse | sparse |" in main_b and "lr-0.001" not in main_b
    orderings = region(text, "orderings-a").splitlines()
    assert orderings[2].endswith("| not measured | no sparse ppl |")  # ordering 1 needs the sparse run
    assert orderings[-1].endswith("| not measured | no no-fs ppl, no-sf ppl |")
    # ordering 2 needs only full and ssa: the same row as in the full lr-1e-3 set
    assert orderings[3] == region(committed, "orderings-lr-1e-3").splitlines()[3]
    for figure in ("repl-loss-a.png", "repl-budget-a.png", "repl-loss-b.png", "repl-budget-b.png"):
        assert (tmp_path / figure).stat().st_size > 0, figure


@pytest.mark.parametrize(
    "sets, message",
    [
        ("a:\n  full: full\n  ssa: no-such-run\n", r"set a: no runs/<run> for \['no-such-run'\]"),
        ("a:\n  fulll: full\n", r"set a: unknown roles \['fulll'\]"),
        ("a b:\n  full: full\n", r"set name 'a b' must be"),
    ],
)
def test_a_bad_set_is_refused_before_the_doc_is_touched(tmp_path, tools, capsys, sets, message):
    replication_report, _ = tools
    (tmp_path / "sets.yaml").write_text(sets)
    doc = tmp_path / "doc.md"
    doc.write_text("<!-- results:main-a -->\nold\n<!-- /results:main-a -->\n")
    with pytest.raises(SystemExit) as exit_:
        replication_report.main(
            [str(RESULTS), "--sets", str(tmp_path / "sets.yaml"), "--doc", str(doc), "--img", str(tmp_path)]
        )
    assert exit_.value.code == 2 and re.search(message, capsys.readouterr().err)
    assert doc.read_text() == "<!-- results:main-a -->\nold\n<!-- /results:main-a -->\n"
    assert not list(tmp_path.glob("*.png"))


def test_rewrite_names_a_missing_region(tools):
    _, doc_regions = tools
    text = "a\n<!-- results:x -->\nold\n<!-- /results:x -->\n"
    assert (
        doc_regions.rewrite(text, "results", {"x": "\nnew\n"})
        == "a\n<!-- results:x -->\nnew\n<!-- /results:x -->\n"
    )
    with pytest.raises(ValueError, match=r"regions \[\] differ from the rendered ones \['y'\]"):
        doc_regions.rewrite("text", "results", {"y": "new"})
