"""The quality targets, on the real U2NETP weights and the shared ground truth (runs in CI)."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import shared_path

from bgservice.evaluate import ModeSpec, evaluate, summarise

pytestmark = pytest.mark.slow


def stats(data_dir, runtime, modes=("soft", "refine")):
    rows, _, _ = evaluate(data_dir, [ModeSpec.parse(m) for m in modes], runtime.mask_for,
                          log=lambda *_: None)
    return {(s["mode"], s["stat"]): s for s in summarise(rows)}


def test_refine_meets_the_soft_edge_targets_on_alphamatting(real_u2netp):
    s = stats(shared_path("data", "alphamatting"), real_u2netp, ("soft", "refine", "refine+filter"))
    refine, soft = s[("refine", "mean")], s[("soft", "mean")]
    filtered = s[("refine+filter", "mean")]  # the subject filter does not hurt fine mattes
    assert filtered["sad_unknown"] < 1.01 * refine["sad_unknown"], filtered
    assert filtered["grad_unknown"] < 1.01 * refine["grad_unknown"], filtered
    # measured 15.17 and 22.21 (issue 17: 15.17 and 21.78 before refine was bounded by the mask)
    assert refine["sad_unknown"] < 15.2 and refine["grad_unknown"] < 22.3, refine
    assert refine["sad_unknown"] < soft["sad_unknown"]
    assert refine["grad_unknown"] < soft["grad_unknown"]
    # the table
    assert abs(soft["sad_unknown"] - 16.3) < 0.2 and abs(soft["grad_unknown"] - 25.7) < 0.3


def test_refine_keeps_davis_iou_at_least_as_good_as_soft(real_u2netp):
    s = stats(shared_path("data", "davis-people"), real_u2netp, ("soft", "refine", "refine+filter"))
    assert s[("refine", "mean")]["iou"] >= s[("soft", "mean")]["iou"]
    assert s[("refine", "mean")]["iou"] >= 0.640  # measured 0.6407; 0.640 before the bound
    # The subject filter's measured gain (mean IoU 0.6407 -> 0.6450, boundary F 0.558 -> 0.562).
    for metric in ("iou", "boundary_f"):
        assert s[("refine+filter", "mean")][metric] > s[("refine", "mean")][metric]
    assert s[("refine+filter", "p10")]["iou"] >= s[("refine", "p10")]["iou"]
    assert s[("refine", "p10")]["iou"] >= s[("soft", "p10")]["iou"]
    assert np.isclose(s[("soft", "mean")]["iou"], 0.64, atol=0.01)  # the table


def test_on_portraits_refine_is_never_worse_than_the_plain_mask(real_u2netp):
    """The users' photos (../shared/data/portraits, 30 half-body portraits with fractional
    mattes): refine at least matches soft on IoU, SAD and gradient error. Measured: IoU 0.965
    against 0.965, SAD 9.79 against 10.31, gradient 7.62 against 7.64."""
    s = stats(shared_path("data", "portraits"), real_u2netp)  # photos as they are: no composites
    refine, soft = s[("refine", "mean")], s[("soft", "mean")]
    assert refine["iou"] >= soft["iou"] - 1e-3
    assert refine["sad"] <= soft["sad"] and refine["grad"] <= soft["grad"], (refine, soft)


def test_on_portrait_composites_refined_threshold_edges_meet_the_websites_target(real_u2netp):
    """6 portraits put on green and blue (and generated scenes), cut out, composited on grey,
    white and black (bgservice.composites). The website's threshold 200 with
    U2NET_THRESHOLD_EDGES=refined: edge-band error at most 7/255 on the plain backgrounds with
    IoU at least the hard cut's; refine about 5/255 (the issue's target, at most 5.0 on all 30
    portraits: 4.86 measured there; these 6 measure 5.07, and measured 6.45 before refine
    unmixed its colours) and under half of soft's. Measured on all 30, plain backgrounds: refine
    4.86, refined threshold 4.94, soft 10.05, hard 17.09."""
    modes = [ModeSpec.parse(m) for m in ("soft", "refine", "threshold:200",
                                           "threshold:200+refined")]
    rows, _, _ = evaluate(shared_path("data", "portraits"), modes, real_u2netp.mask_for,
                          log=lambda *_: None, composites=True, limit=6,
                          backgrounds=("green", "blue"))
    plain = [r for r in rows if r["background"] in ("green", "blue")]
    assert len(plain) == len(rows) == 6 * 2 * len(modes)

    def mean(mode, metric):
        return float(np.mean([r[metric] for r in plain if r["mode"] == mode]))

    print({m.label: round(mean(m.label, "composite_edge"), 2) for m in modes})
    assert mean("threshold:200+refined", "composite_edge") <= 7.0
    assert mean("threshold:200+refined", "iou") >= mean("threshold:200", "iou")
    assert mean("threshold:200+refined", "composite_edge") < 0.5 * mean("threshold:200", "composite_edge")
    assert mean("refine", "composite_edge") <= 5.15
    assert mean("refine", "composite_edge") < 0.5 * mean("soft", "composite_edge")
