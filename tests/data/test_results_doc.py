"""docs/RESULTS.md is what tools/replication_report.py makes of the committed results (it cannot drift)."""

from __future__ import annotations

import importlib.util
import shutil

from tests.helpers import REPO

_spec = importlib.util.spec_from_file_location("replication_report", REPO / "tools" / "replication_report.py")
replication_report = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(replication_report)


def test_results_doc_matches_the_committed_results(tmp_path):
    doc = tmp_path / "RESULTS.md"
    shutil.copy(REPO / "docs/RESULTS.md", doc)
    replication_report.main(
        [str(REPO / "docs/results/replication-40m"), "--doc", str(doc), "--img", str(tmp_path)]
    )
    assert doc.read_text() == (REPO / "docs/RESULTS.md").read_text()
    assert (tmp_path / "repl-loss.png").stat().st_size > 0 and (
        tmp_path / "repl-budget.png"
    ).stat().st_size > 0


def test_replace_marked_names_a_missing_region():
    import pytest

    assert replication_report.replace_marked(
        "a\n<!-- results:x -->\nold\n<!-- /results:x -->\n", "x", "new"
    ) == ("a\n<!-- results:x -->\nnew\n<!-- /results:x -->\n")
    with pytest.raises(SystemExit, match="no <!-- results:y -->"):
        replication_report.replace_marked("text", "y", "new")
