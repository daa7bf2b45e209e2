"""docs/RESULTS.md is what tools/replication_report.py makes of the committed results (it cannot drift)."""

from __future__ import annotations

import importlib
import shutil

import pytest

from tests.helpers import REPO


@pytest.fixture
def tools(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "tools"))
    return importlib.import_module("replication_report"), importlib.import_module("doc_regions")


def test_results_doc_matches_the_committed_results(tmp_path, tools):
    replication_report, _ = tools
    doc = tmp_path / "RESULTS.md"
    shutil.copy(REPO / "docs/RESULTS.md", doc)
    replication_report.main(
        [str(REPO / "docs/results/replication-40m"), "--doc", str(doc), "--img", str(tmp_path)]
    )
    assert doc.read_text() == (REPO / "docs/RESULTS.md").read_text()
    assert (tmp_path / "repl-loss.png").stat().st_size > 0 and (
        tmp_path / "repl-budget.png"
    ).stat().st_size > 0


def test_rewrite_names_a_missing_region(tools):
    _, doc_regions = tools
    text = "a\n<!-- results:x -->\nold\n<!-- /results:x -->\n"
    assert (
        doc_regions.rewrite(text, "results", {"x": "\nnew\n"})
        == "a\n<!-- results:x -->\nnew\n<!-- /results:x -->\n"
    )
    with pytest.raises(ValueError, match=r"regions \[\] differ from the rendered ones \['y'\]"):
        doc_regions.rewrite("text", "results", {"y": "new"})
