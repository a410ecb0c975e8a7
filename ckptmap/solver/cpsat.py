"""The assignment model in OR-Tools CP-SAT: pick candidates so that every target is covered at most once
(a target left uncovered costs nothing here; the solver reports it, and may fill or share it afterwards),
every source is read at most once, and the total score is highest. Building the model, solving it and reading the solution back are kept apart.
"""

from __future__ import annotations

from dataclasses import dataclass

from ortools.sat.python import cp_model

SCALE = 1000  # scores are floats; CP-SAT's objective is integer: milli-points


@dataclass
class AssignmentModel:
    model: cp_model.CpModel
    pick: dict[int, cp_model.IntVar]  # candidate index -> chosen?


def build_model(candidates, cand_ids: list[int], target_ids: list[int], source_ids: list[int],
                shared_sources: frozenset[int] = frozenset()) -> AssignmentModel:
    m = cp_model.CpModel()
    pick = {k: m.NewBoolVar(f"pick_{k}") for k in cand_ids}
    covering_target: dict[int, list] = {t: [] for t in target_ids}
    reading_source: dict[int, list] = {s: [] for s in source_ids}
    for k in cand_ids:
        c = candidates[k]
        for t in c.targets:
            covering_target[t].append(pick[k])
        for s in c.sources:
            reading_source[s].append(pick[k])
    for t, vs in covering_target.items():
        if vs:
            m.Add(sum(vs) <= 1)
    for s, vs in reading_source.items():
        if vs and s not in shared_sources:
            m.Add(sum(vs) <= 1)
    m.Maximize(sum(int(round(candidates[k].score * SCALE)) * pick[k] for k in cand_ids))
    return AssignmentModel(m, pick)


def solve_ranked(am: AssignmentModel, k: int = 1, time_limit_s: float = 10.0) -> list[list[int]]:
    """The best assignment and up to k-1 next distinct ones (each excluded in turn by a no-good cut)."""
    solutions: list[list[int]] = []
    for _ in range(k):
        solver = cp_model.CpSolver()
        solver.parameters.max_time_in_seconds = time_limit_s
        solver.parameters.num_search_workers = 1
        status = solver.Solve(am.model)
        if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
            break
        chosen = [c for c, v in am.pick.items() if solver.Value(v)]
        solutions.append(chosen)
        if not chosen:
            break
        am.model.Add(sum(am.pick[c] for c in chosen) <= len(chosen) - 1)
    return solutions
