"""`python -m framework.report`: curves PNG and final-metrics table from synthetic run and sweep dirs."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import fsspec
import pytest
import yaml

from framework.report import format_table, load_jobs, main

ROOT = Path(__file__).resolve().parents[2]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def write_run(
    run_dir: Path, lr: float, final_eval: float, steps: int = 20, overrides: list[str] | None = None
) -> None:
    """A run dir as the training loop writes it: train lines every step, an eval line every 5 steps."""
    run_dir.mkdir(parents=True, exist_ok=True)
    lines = []
    for step in range(1, steps + 1):
        lines.append(
            {
                "step": step,
                "loss": 5.0 * math.exp(-lr * 200 * step) + 1.0,
                "lr": lr,
                "tokens_per_s": 1000.0 + step,
            }
        )
        if step % 5 == 0:
            eval_loss = final_eval + (steps - step) * 0.05
            lines.append({"step": step, "eval_loss": eval_loss, "perplexity": math.exp(eval_loss)})
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    (run_dir / "config.yaml").write_text(
        yaml.safe_dump({"optim": {"lr": lr}, "model": {"name": "tiny_llama"}})
    )
    if overrides is not None:
        (run_dir / ".hydra").mkdir()
        (run_dir / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    """A Hydra multirun dir with two jobs; job 1 (lr=0.0001) ends with the lower eval loss."""
    root = tmp_path / "multirun" / "lora_llama-tiny_llama" / "2026-01-01_00-00-00"
    write_run(root / "0", 0.001, final_eval=2.40, overrides=["model=tiny_llama", "optim.lr=0.001"])
    write_run(root / "1", 0.0001, final_eval=2.10, overrides=["model=tiny_llama", "optim.lr=0.0001"])
    (root / "multirun.yaml").write_text("hydra: {}\n")
    return root


def test_sweep_png_and_table_best_first(
    sweep: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "report.png"
    assert main([str(sweep), "--out", str(out)]) == 0
    data = out.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 20_000  # two panels with curves, not a blank canvas
    table = capsys.readouterr().out.splitlines()
    assert table[0] == "Final metrics (best eval_loss first):"
    header, best, second = table[1], table[2], table[3]
    assert header.split()[:3] == ["job", "overrides", "eval_loss"]
    assert best.startswith("*") and best.split()[1:4] == ["1", "optim.lr=0.0001", "2.1000"]
    assert second.split()[:3] == ["0", "optim.lr=0.001", "2.4000"]  # shared override model=... dropped
    assert f"{math.exp(2.1):.3f}" in best and "1010" in best  # perplexity, mean tokens/s
    assert table[-1] == f"Plot: {out}"


def test_default_out_is_inside_a_local_dir(sweep: Path) -> None:
    assert main([str(sweep)]) == 0
    assert (sweep / "report.png").read_bytes().startswith(PNG_MAGIC)


def test_labels_from_config_differences_without_hydra_dir(tmp_path: Path) -> None:
    write_run(tmp_path / "0", 0.001, final_eval=2.5)
    write_run(tmp_path / "1", 0.0003, final_eval=2.2)
    jobs = load_jobs(str(tmp_path))
    assert [(j.name, j.label) for j in jobs] == [("0", "optim.lr=0.001"), ("1", "optim.lr=0.0003")]


def test_jobs_with_nested_run_dirs_in_numeric_order(tmp_path: Path) -> None:
    for n in (0, 2, 10):
        write_run(
            tmp_path / str(n) / "run", 0.001 * (n + 1), final_eval=3.0 - n * 0.1, overrides=[f"seed={n}"]
        )
    jobs = load_jobs(str(tmp_path))
    assert [j.name for j in jobs] == ["0", "2", "10"]
    assert [j.label for j in jobs] == ["seed=0", "seed=2", "seed=10"]


def test_single_run_dir_resumed_and_torn_lines(tmp_path: Path) -> None:
    run = tmp_path / "run"
    write_run(run, 0.001, final_eval=2.0, steps=10)
    with (run / "metrics.jsonl").open("a") as f:  # a restart re-logs step 10, then a torn last line
        f.write(json.dumps({"step": 10, "loss": 1.5, "lr": 0.001, "tokens_per_s": 900.0}) + "\n")
        f.write('{"step": 11, "lo')
    (job,) = load_jobs(str(run))
    assert job.label == "run" and job.bad_lines == 1
    assert [s for s, _ in job.train] == list(range(1, 11)) and job.final_loss == 1.5
    assert job.final_eval_loss == pytest.approx(2.0) and job.last_step == 10
    assert "*" in format_table([job]).splitlines()[2]


def test_remote_uri_via_fsspec(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fs = fsspec.filesystem("memory")
    local = tmp_path / "s"
    write_run(local / "0", 0.001, final_eval=2.3, overrides=["optim.lr=0.001"])
    write_run(local / "1", 0.0001, final_eval=2.6, overrides=["optim.lr=0.0001"])
    for path in local.rglob("*"):
        if path.is_file():
            fs.pipe_file(f"/bucket/sweep/{path.relative_to(local).as_posix()}", path.read_bytes())
    try:
        out = tmp_path / "remote.png"
        assert main(["memory://bucket/sweep", "--out", str(out)]) == 0
        assert out.read_bytes().startswith(PNG_MAGIC)
        rows = capsys.readouterr().out.splitlines()
        assert rows[2].split()[1:3] == ["0", "optim.lr=0.001"]
        run_dir = load_jobs("memory://bucket/sweep")[0].run_dir
        assert run_dir.startswith("memory://") and run_dir.endswith("/bucket/sweep/0")
    finally:
        fs.rm("/bucket", recursive=True)


def test_no_metrics_is_exit_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty" / "0").mkdir(parents=True)
    for path in (tmp_path / "empty", tmp_path / "missing"):
        assert main([str(path)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert (
            len(err) == 1
            and str(path) in err[0]
            and "metrics.jsonl" in err[0]
            and "pass a run directory" in err[0]
        )


def test_module_entry_point_exit_code(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "framework.report", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and proc.stderr.startswith("report: error:")


def test_one_level_above_sweeps_lists_every_job(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """multirun/<name>/ holding two sweeps: all four jobs are reported, labelled by what differs only."""
    above = tmp_path / "multirun" / "lora_llama-tiny_llama"
    for sweep, seed in (("2026-01-01_00-00-00", 1), ("2026-01-02_00-00-00", 2)):
        for job, lr in (("0", 0.001), ("1", 0.0003)):
            overrides = ["model=tiny_llama", f"optim.lr={lr}", f"train.seed={seed}"]
            write_run(above / sweep / job, lr, final_eval=2.0 + lr * 100 + seed / 10, overrides=overrides)
    jobs = load_jobs(str(above))
    assert [j.name for j in jobs] == [
        "2026-01-01_00-00-00/0", "2026-01-01_00-00-00/1", "2026-01-02_00-00-00/0", "2026-01-02_00-00-00/1",
    ]  # fmt: skip
    assert [j.label for j in jobs] == [
        "optim.lr=0.001 train.seed=1", "optim.lr=0.0003 train.seed=1",
        "optim.lr=0.001 train.seed=2", "optim.lr=0.0003 train.seed=2",
    ]  # fmt: skip
    assert main([str(above), "--out", str(tmp_path / "r.png")]) == 0
    assert len([ln for ln in capsys.readouterr().out.splitlines() if "optim.lr=" in ln]) == 4


def test_legend_labels_drop_what_every_job_shares(tmp_path: Path) -> None:
    write_run(tmp_path / "0", 0.001, final_eval=2.5, overrides=["model=tiny_llama", "optim.lr=0.001"])
    write_run(
        tmp_path / "1", 0.001, final_eval=2.4, overrides=["model=tiny_llama", "optim.lr=0.001", "lora.r=16"]
    )
    jobs = load_jobs(str(tmp_path))
    assert [j.label for j in jobs] == ["lora.r=<unset>", "lora.r=16"]
