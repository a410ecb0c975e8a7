"""ckptmap.solver: a CP-SAT mapping from two parameter trees (see solve.py for the steps)."""

from ckptmap.solver.solve import Problem, SolveResult, solve

__all__ = ["solve", "SolveResult", "Problem"]
