"""The KerasHub benchmark (ckptmap/benchmarks/keras_truth.py): KerasHub's own converter is the truth, trees-only solve maps it."""

from __future__ import annotations

import importlib.util

import pytest

from ortools.sat.python import cp_model  # noqa: F401  (before KerasHub: the other order crashes CP-SAT)

if importlib.util.find_spec("keras_hub") is None:  # found, not imported: Keras picks its backend on import
    pytest.skip("KerasHub is not installed", allow_module_level=True)


@pytest.mark.slow
def test_llama3_trees_only_is_fully_structural_against_kerashubs_converter():
    from ckptmap.benchmarks import keras_truth

    row = keras_truth.run_case(keras_truth.CASES["llama3"])
    assert row["targets"] == 21 and row["not_in_keras_conversion"] == 0
    assert row["trees_structural"] >= 100.0, row["misses"]
