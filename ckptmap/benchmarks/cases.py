"""One benchmark case: a fixture family at one scan setting, its two trees and MaxText's ground truth.

The HF tree is the fixture's `hf_params.json`; the MaxText tree is the one the ground truth was converted into
(the fixture's `maxtext_params.scan{s}.json`, or MaxText's abstract model where the fixture disagrees with it,
see `ckptmap.benchmarks.ground_truth`). Both are read with `ckptmap.trees.read_tree`, so the solver sees the dims
the tree readers find beside the file.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass

from ckptmap.benchmarks import gt_store
from ckptmap.benchmarks.gt_store import GroundTruth
from ckptmap.trees import ParamTree, read_tree

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.realpath(__file__))))
FIXTURES = os.path.join(REPO, "tests", "data", "maxtext_tiny")
DERIVED_PREFIX = "derived/"  # derived cases (ckptmap.benchmarks.derived) are families `derived/<name>`


@dataclass
class Case:
    """Everything a method needs to be scored on one family x scan."""

    family: str
    scan: int
    src: ParamTree  # HF
    tgt: ParamTree  # MaxText
    gt: GroundTruth

    @property
    def hf_shapes(self) -> dict[str, tuple[int, ...]]:
        return self.src.shapes()

    @property
    def label(self) -> str:
        return f"{self.family}/scan{self.scan}"

    @property
    def derived(self) -> bool:
        """A model in no fixture, derived from its real configs (ckptmap/benchmarks/data/derived/<name>)."""
        return is_derived(self.family)


def fixture_families(fixtures: str = FIXTURES) -> list[str]:
    if not os.path.isdir(fixtures):
        return []
    return sorted(d for d in os.listdir(fixtures) if os.path.exists(os.path.join(fixtures, d, "config.json")))


def is_derived(family: str) -> bool:
    return family.startswith(DERIVED_PREFIX)


def derived_families(data_dir: str = gt_store.DATA_DIR) -> list[str]:
    """`derived/<name>` for every derived case folder under `data_dir`/derived that has its ground truth."""
    root = os.path.join(data_dir, "derived")
    return [DERIVED_PREFIX + name for name in fixture_families(root)
            if os.path.exists(os.path.join(root, name, "ground_truth.scan0.json"))]


def case_dir(family: str, fixtures: str = FIXTURES, data_dir: str = gt_store.DATA_DIR) -> str:
    """The folder holding a family's trees and config.json: the fixture's, or the derived case's own."""
    return os.path.join(data_dir, family) if is_derived(family) else os.path.join(fixtures, family)


def _read_json(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def target_tree(fixture_dir: str, gt: GroundTruth) -> ParamTree:
    """The MaxText tree the ground truth covers, read like any other tree file."""
    path = os.path.join(fixture_dir, f"maxtext_params.scan{gt.scan}.json")
    if os.path.exists(path) and _read_json(path) == gt.target_shapes:
        return read_tree(path)
    with tempfile.TemporaryDirectory(prefix="ckptmap-bench-") as tmp:
        shutil.copy(os.path.join(fixture_dir, "config.json"), os.path.join(tmp, "config.json"))
        tmp_path = os.path.join(tmp, os.path.basename(path))
        with open(tmp_path, "w") as f:
            json.dump(gt.target_shapes, f)
        tree = read_tree(tmp_path)
    tree.origin = f"{path} (replaced by MaxText's abstract model: {gt.target_note})"
    return tree


def load_case(family: str, scan: int, *, fixtures: str = FIXTURES, data_dir: str = gt_store.DATA_DIR) -> Case | str:
    """The case, or a one-line reason why it cannot be benchmarked (MaxText cannot map it, no files)."""
    fixture_dir = case_dir(family, fixtures, data_dir)
    if not os.path.isdir(fixture_dir):
        return f"no fixture folder {fixture_dir}"
    try:
        gt = gt_store.load(family, scan, data_dir=data_dir)
    except gt_store.GroundTruthError as e:
        return e.one_line()
    if not gt.ok:
        return f"MaxText cannot map it: {gt.reason}"
    src = read_tree(os.path.join(fixture_dir, "hf_params.json"))
    return Case(family=family, scan=scan, src=src, tgt=target_tree(fixture_dir, gt), gt=gt)
