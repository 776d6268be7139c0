"""The failure matrix for every backend: the rendered objects under each controller's rules (tests/k8s/controllers.py
writes down the rules and versions modelled), fed the exit codes the pods really produce (framework-torchrun's
mapping, checked with real processes in tests/integration/test_k8s_pods.py).

Spec (README "Failure semantics"): exit 2 fails at once; any other failure restarts the gang, one budget unit
per incident, launcher.backoff_limit of them; 143 and disruptions cost nothing; 137 is reported as OOM.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra_plugins.kubernetes_launcher._render import job_name, main_object, render
from hydra_plugins.kubernetes_launcher.torchrun import charge_budget, exit_code, record_exit

from tests.k8s.compose import compose
from tests.k8s.controllers import JobSetModel, model_for

BACKENDS = ("indexed_job", "jobset", "pytorchjob")
BUDGET = 3


def job(backend: str, nodes: int) -> dict:
    cfg = compose(
        f"launcher.backend={backend}", f"hardware.nodes={nodes}", f"launcher.backoff_limit={BUDGET}"
    )
    name = job_name("r", sweep_id="s0", job_index=0, backend=backend, nodes=nodes)
    return main_object(render(cfg, job_name=name, sweep_id="s0", job_index=0, git_commit=None))


def crash_code(obj: dict) -> int:
    """What a pod whose workers failed exits with (FRAMEWORK_CRASH_EXIT where the backend sets it)."""
    from hydra_plugins.kubernetes_launcher._render import pod_templates

    env = {e["name"]: e.get("value") for e in pod_templates(obj)[0]["spec"]["containers"][0]["env"]}
    return int(env.get("FRAMEWORK_CRASH_EXIT") or 1)


def incident(obj: dict, nodes: int, scenario: str, where: int = 1) -> tuple[dict[int, int], set[int]]:
    """Each pod's exit code in one incident (the pod ``where`` is hit; the others are its peers)."""
    crash = crash_code(obj)
    peer = exit_code([1], crash)  # a peer's workers fail in the broken collective
    if scenario in ("sigkill_worker", "oom"):
        hit = exit_code([-9, 1], crash)  # torchrun saw one worker killed by SIGKILL
        return {r: hit if r == where else peer for r in range(nodes)}, set()
    if scenario in ("sigterm_pid1", "sigterm_all", "disruption"):
        # Every rank agrees to stop at the step boundary, checkpoints, and exits 143.
        return {r: 143 for r in range(nodes)}, ({where} if scenario == "disruption" else set())
    if scenario == "exit2":
        return {r: exit_code([2], crash) if r == where else peer for r in range(nodes)}, set()
    raise KeyError(scenario)


def run_incidents(backend: str, nodes: int, scenario: str, tmp_path: Path, n: int) -> list[str]:
    """Phases after each of ``n`` incidents; PyTorchJob's budget held by node rank 0's ledger as in the pods."""
    obj = job(backend, nodes)
    model = model_for(obj)
    phases = []
    run_dir = str(tmp_path / "run")
    Path(run_dir).mkdir(exist_ok=True)
    if backend == "pytorchjob":
        charge_budget(run_dir, BUDGET, [])  # the first attempt starts
    for _ in range(n):
        exits, disrupted = incident(obj, nodes, scenario)
        out = model.pods_ended(exits, disrupted)
        if backend == "pytorchjob" and out.phase == "Running":
            record_exit(run_dir, exits[0], [])  # node rank 0's framework-torchrun on its way out
            within, _ = charge_budget(run_dir, BUDGET, [])  # and its replacement starting
            if not within:
                out = model.pods_ended({0: 1})  # over budget: node rank 0 exits 1, permanent
        phases.append(out.phase if out.phase == "Failed" else f"{out.phase}:{sorted(out.replaced)}")
        if out.phase == "Failed":
            break
    return phases


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("nodes", [2, 4])
@pytest.mark.parametrize("scenario", ["sigkill_worker", "oom"])
def test_a_crash_restarts_the_gang_and_the_budget_counts_incidents(
    backend: str, nodes: int, scenario: str, tmp_path: Path
) -> None:
    phases = run_incidents(backend, nodes, scenario, tmp_path, BUDGET + 1)
    everyone = f"Running:{list(range(nodes))}"
    assert phases[:BUDGET] == [everyone] * BUDGET  # each incident: every pod replaced, budget -1
    assert phases[BUDGET] == "Failed"  # the budget holds: BUDGET incidents, not BUDGET pod failures


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("scenario", ["sigterm_pid1", "sigterm_all", "disruption"])
def test_sigterm_and_disruptions_are_free(backend: str, scenario: str, tmp_path: Path) -> None:
    phases = run_incidents(backend, 2, scenario, tmp_path, 3 * BUDGET)
    assert phases == ["Running:[0, 1]"] * (3 * BUDGET)  # never counted


@pytest.mark.parametrize("backend", BACKENDS)
def test_exit_2_fails_at_once(backend: str, tmp_path: Path) -> None:
    assert run_incidents(backend, 2, "exit2", tmp_path, 1) == ["Failed"]


def test_jobset_restart_is_blocking_and_counts_one_per_incident() -> None:
    obj = job("jobset", 4)
    assert obj["spec"]["failurePolicy"]["restartStrategy"] == "BlockingRecreate"
    model = model_for(obj)
    assert isinstance(model, JobSetModel)
    exits, _ = incident(obj, 4, "sigkill_worker")
    assert model.pods_ended(exits).gang and model.restarts == 1


# ------------------------------------------------------------------------------------ framework-torchrun
def test_torchrun_exit_codes() -> None:
    assert exit_code([-9, 1]) == 137 and exit_code([137]) == 137  # OOM kill reported as such
    assert exit_code([1, -15]) == 1 and exit_code([1], crash=200) == 200
    assert exit_code([2, -9]) == 2  # bad config wins
    assert exit_code([143, -15]) == 143


def test_ledger_counts_crashes_not_preemptions(tmp_path: Path) -> None:
    run = str(tmp_path)
    assert charge_budget(run, 1, [])[0]  # attempt 1
    record_exit(run, 143, [])
    within, ledger = charge_budget(run, 1, [])  # after a preemption: free
    assert within and ledger["incidents"] == 0
    record_exit(run, 200, [])
    within, ledger = charge_budget(run, 1, [])  # after a crash: 1 of 1
    assert within and ledger["incidents"] == 1
    # node rank 0 itself killed: no exit recorded, counted too
    within, ledger = charge_budget(run, 1, [])
    assert not within and ledger["incidents"] == 2 and ledger["attempts"] == 4
    assert json.loads((tmp_path / "restarts.json").read_text())["attempts"] == 4
