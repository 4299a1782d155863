"""The image SSL evidence table's pieces: budget calibration, flag passing and the table cells."""

from __future__ import annotations

import importlib.util
import sys

from tests.conftest import REPO_ROOT


def _module():
    spec = importlib.util.spec_from_file_location("vision_ssl_table", REPO_ROOT / "benchmarks" / "vision_ssl_table.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_calibration_flags_and_cells():
    table = _module()
    args = table.parse(["--workdir", "/tmp/x", "--task_flags", "dino=--num_local_crops 2 --num_prototypes 64"])
    flags = table.task_flags(args)
    assert flags == {"dino": ["--num_local_crops", "2", "--num_prototypes", "64"]}
    # The recipe's own flag handling gives the objective options the calibration builds.
    assert table.recipe_options("dino", flags["dino"]) == {"num_local_crops": 2, "num_prototypes": 64}
    cheap, dear = table.cpu_seconds_per_step("rotation", {}, 2), table.cpu_seconds_per_step("contrastive", {}, 2)
    assert 0 < cheap < dear                     # two views per image cost more than one rotated image
    assert table.cell([0.5]) == "50.0" and table.cell([0.5, 0.7]) == "60.0 ± 14.1" and table.cell([]) == "-"
    # The flagged column applies the training monitor's rule, random init as the start (figures of the RESULTS table).
    from hfssl.evaluation.knn_monitor import collapse_verdict

    start = {"feature_spread": 0.071, "rankme": 2.5}
    assert [collapse_verdict({"feature_spread": s, "rankme": r}, start) is not None
            for s, r in [(0.144, 5.1), (0.763, 30.2), (0.055, 1.9), (0.060, 1.6), (0.019, 1.4), (0.07, 2.4),
                         (0.058, 2.5)]] == [False, False, True, True, True, False, False]
