"""framework.tables through the sweep summary: best first, the best starred, missing values as '-'."""

from __future__ import annotations

from framework.sweep import JobSummary, format_summary


def test_sweep_summary_ranks_and_marks_the_best() -> None:
    rows = [
        JobSummary("optim.lr=1e-3", "COMPLETED", eval_loss=2.5),
        JobSummary("optim.lr=1e-2", "FAILED"),
        JobSummary("optim.lr=1e-4", "COMPLETED", eval_loss=2.1, tokens_per_s=1234.4),
    ]
    lines = format_summary(rows).splitlines()
    assert lines[0] == "Sweep summary (best first):"
    assert lines[1].split() == ["overrides", "status", "eval_loss", "tokens/s", "wall_s", "run_dir"]
    assert lines[2].startswith("*") and "optim.lr=1e-4" in lines[2] and "2.1000 " in lines[2]
    assert "1234 " in lines[2]
    assert "optim.lr=1e-3" in lines[3] and not lines[3].startswith("*")
    assert "optim.lr=1e-2" in lines[4] and lines[4].split()[-4:] == ["-", "-", "-", "-"]
    # columns line up: every row's status starts where the header's does
    col = lines[1].index("status")
    assert all(line[col - 2 : col] == "  " for line in lines[2:])
