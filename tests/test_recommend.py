"""core.stability.recommend: which member to launch the real run like, on hand-built grids.

The rule: among the healthy members, the lowest final loss of those that touch no exploding or
unstable member (one step along either ordered axis); only when every healthy member touches
one is such a member chosen, with margin "none". Ties: the larger margin along x, then the
first member in sweep order.
"""

from __future__ import annotations

import json
import math
import random
from typing import Any

import pytest

from core.stability import (
    MemberOutcome,
    no_recommendation_reason,
    recommend,
    stability_grid,
)

LR = [0.001, 0.01, 0.1, 1.0]
STD = [0.1, 0.3, 1.0]
H, U, E, S, V = "healthy", "unstable", "exploding", "stalled", "vanishing"


def grid(verdicts: list[list[str]], losses: list[list[float | None]], *,
         x: str = "optimizer.lr", y: str = "model.init.std",
         xs: list[Any] | None = None, ys: list[Any] | None = None,
         extra: dict[str, Any] | None = None, start: int = 0) -> list[MemberOutcome]:
    """Outcomes of a grid: ``verdicts[j][i]`` at ``ys[j]``, ``xs[i]``; members numbered in
    sweep order (y slowest, as core.sweep expands them)."""
    xs, ys = xs or LR, ys or STD
    out = []
    for j, yv in enumerate(ys):
        for i, xv in enumerate(xs):
            out.append(MemberOutcome(
                index=start + len(out), values={y: yv, x: xv, **(extra or {})},
                verdict=verdicts[j][i], first_bad_step=None, peak_to_baseline=None,
                final_loss=losses[j][i], stop_reason="completed",
                job_id=f"job-{start + len(out)}"))
    return out


def test_the_best_healthy_run_next_to_an_exploding_one_loses_to_one_with_a_margin() -> None:
    outcomes = grid([[H, H, H, E],    # lr 0.1 at std 0.1 is the best run but touches lr 1
                     [S, S, S, S],
                     [E, E, E, E]],
                    [[0.5, 0.3, 0.1, 9.0], [1.1] * 4, [9.0] * 4])
    rec = recommend(outcomes, "optimizer.lr", "model.init.std")
    assert rec is not None
    assert rec.values == {"model.init.std": 0.1, "optimizer.lr": 0.01}
    assert rec.job_id == "job-1" and rec.final_loss == 0.3
    assert rec.margin == 2
    assert rec.boundary == {"x": 1.0, "verdict": "exploding", "steps": 2}
    assert rec.reason == ("lr 0.01 with init std 0.1: lowest final loss (0.3) among healthy "
                          "runs clear of the boundary, two steps below the smallest exploding "
                          "lr 1")


def test_a_neighbour_along_y_that_explodes_also_rules_a_cell_out() -> None:
    outcomes = grid([[H, H, S, S],
                     [H, H, S, S],    # std 0.3 is better but std 1.0 above it explodes
                     [H, E, E, E]],
                    [[0.4, 0.35, 1.1, 1.1], [0.2, 0.1, 1.1, 1.1], [0.3, 9, 9, 9]])
    rec = recommend(outcomes, "optimizer.lr", "model.init.std")
    assert rec is not None
    # (0.3, 0.01) touches (1.0, 0.01); (0.3, 0.001) touches nothing: std 1.0 at lr 0.001 is
    # healthy; (1.0, 0.001) touches lr 0.01 exploding
    assert rec.values == {"model.init.std": 0.3, "optimizer.lr": 0.001}
    assert rec.margin is None and rec.boundary is None  # nothing explodes at std 0.3
    assert "no run at init std 0.3 exploded or turned unstable" in rec.reason


def test_when_every_healthy_run_touches_the_boundary_the_best_is_flagged_without_margin(
) -> None:
    outcomes = grid([[H, E, E, E],
                     [E, H, E, E],
                     [E, E, E, E]],
                    [[0.4, 9, 9, 9], [9, 0.2, 9, 9], [9] * 4])
    rec = recommend(outcomes, "optimizer.lr", "model.init.std")
    assert rec is not None
    assert rec.values == {"model.init.std": 0.3, "optimizer.lr": 0.01}
    assert rec.margin == "none"
    assert rec.boundary == {"x": 0.1, "verdict": "exploding", "steps": 1}
    assert rec.reason.endswith("no safety margin")
    assert "every healthy run borders an exploding or unstable one" in rec.reason


def test_unstable_is_part_of_the_boundary_stalled_and_vanishing_are_not() -> None:
    outcomes = grid([[S, H, U, H],
                     [V, S, S, S],
                     [S, S, S, S]],
                    [[1.1, 0.3, 0.2, 0.1], [1.2] * 4, [1.1] * 4])
    rec = recommend(outcomes, "optimizer.lr", "model.init.std")
    # both healthy runs touch the unstable lr 0.1: the better one, without margin
    assert rec is not None and rec.values["optimizer.lr"] == 1.0 and rec.margin == "none"
    assert "(this one: unstable at lr 0.1): no safety margin" in rec.reason
    outcomes = grid([[S, H, S, H],
                     [V, S, S, S],
                     [S, S, S, S]],
                    [[1.1, 0.3, 0.2, 0.1], [1.2] * 4, [1.1] * 4])
    rec = recommend(outcomes, "optimizer.lr", "model.init.std")
    assert rec is not None and rec.values["optimizer.lr"] == 1.0 and rec.margin is None


@pytest.mark.parametrize(("verdicts", "reason"), [
    ([[E] * 4] * 3, "every member exploded"),
    ([[S] * 4, [S, V, S, S], [S] * 4], "none learned: every member stalled or vanished"),
    ([[S] * 4, [U, U, S, S], [E] * 4], "no member is healthy (2 unstable, 4 exploding, "
                                        "6 stalled)"),
])
def test_no_healthy_member_means_no_recommendation_and_says_why(
        verdicts: list[list[str]], reason: str) -> None:
    outcomes = grid(verdicts, [[1.0] * 4] * 3)
    assert recommend(outcomes, "optimizer.lr", "model.init.std") is None
    assert no_recommendation_reason(outcomes) == reason
    g = stability_grid(outcomes, "optimizer.lr", "model.init.std")
    assert g.recommended is None and g.recommended_reason == reason
    assert g.recommended_cell() is None
    body = json.loads(json.dumps(g.to_dict()))
    assert body["recommended"] is None and body["recommended_reason"] == reason
    assert recommend([], "optimizer.lr", "model.init.std") is None
    assert no_recommendation_reason([]) == "no member of this slice has finished"


def test_ties_go_to_the_larger_margin_then_to_sweep_order_whatever_the_input_order() -> None:
    # equal losses: lr 0.001 (3 steps from lr 1) beats lr 0.01 (2 steps)
    outcomes = grid([[H, H, H, E], [S] * 4, [S] * 4],
                    [[0.2, 0.2, 0.5, 9], [1.1] * 4, [1.1] * 4])
    for seed in range(5):
        shuffled = outcomes[:]
        random.Random(seed).shuffle(shuffled)
        rec = recommend(shuffled, "optimizer.lr", "model.init.std")
        assert rec is not None and rec.values["optimizer.lr"] == 0.001 and rec.margin == 3
    # equal losses and margins (no boundary in either row): the first member in sweep order
    outcomes = grid([[H, S, S, S], [H, S, S, S], [S] * 4],
                    [[0.2, 1, 1, 1], [0.2, 1, 1, 1], [1.1] * 4])
    for seed in range(5):
        shuffled = outcomes[:]
        random.Random(seed).shuffle(shuffled)
        rec = recommend(shuffled, "optimizer.lr", "model.init.std")
        assert rec is not None and rec.index == 0


def test_a_missing_or_non_finite_loss_ranks_last() -> None:
    outcomes = grid([[H, H, S, S], [S] * 4, [S] * 4],
                    [[math.nan, 0.9, 1, 1], [1.1] * 4, [1.1] * 4])
    rec = recommend(outcomes, "optimizer.lr", "model.init.std")
    assert rec is not None and rec.values["optimizer.lr"] == 0.01
    outcomes[1].final_loss = None
    rec = recommend(outcomes, "optimizer.lr", "model.init.std")
    assert rec is not None and rec.index == 0  # both unranked: sweep order


def test_an_init_std_x_axis_measures_the_margin_along_init_std_on_either_side() -> None:
    std = [0.05, 0.1, 0.3, 1.0, 3.0]
    # x = init std, y = lr: large stds explode at lr 0.01; at lr 0.1 it is the smallest std
    # that turns unstable, so the nearest boundary of the pick lies below it
    outcomes = grid([[V, H, H, E, E],
                     [U, H, H, H, H]],
                    [[1.2, 0.5, 0.4, 9, 9], [1.1, 0.6, 0.3, 0.2, 0.25]],
                    x="model.init.std", y="optimizer.lr", xs=std, ys=[0.01, 0.1])
    rec = recommend(outcomes, "model.init.std", "optimizer.lr")
    assert rec is not None
    # at lr 0.1, std 1.0 and 3.0 touch the exploding runs below them; std 0.3 touches nothing
    assert rec.values == {"optimizer.lr": 0.1, "model.init.std": 0.3}
    assert rec.margin == 2
    assert rec.boundary == {"x": 0.05, "verdict": "unstable", "steps": 2}
    assert rec.reason.startswith("init std 0.3 with lr 0.1: lowest final loss (0.3)")
    assert rec.reason.endswith("two steps above the largest unstable init std 0.05")


def test_an_unordered_x_axis_has_no_neighbours_along_it() -> None:
    schemes = ["he", "xavier", "normal"]
    outcomes = grid([[H, E, H], [H, H, H]],
                    [[0.1, 9, 0.3], [0.4, 0.5, 0.6]],
                    x="model.init.scheme", y="optimizer.lr", xs=schemes, ys=[0.01, 0.1])
    rec = recommend(outcomes, "model.init.scheme", "optimizer.lr")
    # "he" at lr 0.01 is listed next to the exploding "xavier", but a scheme has no order;
    # along lr it touches nothing (xavier at lr 0.1 is healthy)
    assert rec is not None and rec.values == {"optimizer.lr": 0.01, "model.init.scheme": "he"}
    assert rec.margin is None and rec.boundary is None
    assert rec.reason.endswith("(init scheme has no order, so no margin is measured along it)")


def test_the_grid_recommends_within_the_slice_it_shows() -> None:
    held = {0: [[H, H, S, S], [S] * 4, [S] * 4], 1: [[S] * 4, [S, H, S, S], [E] * 4]}
    outcomes = (grid(held[0], [[0.5, 0.4, 1, 1], [1.1] * 4, [1.1] * 4], extra={"seed": 0})
                + grid(held[1], [[1.1] * 4, [1, 0.05, 1, 1], [9] * 4], extra={"seed": 1},
                       start=12))
    g0 = stability_grid(outcomes, "optimizer.lr", "model.init.std")  # seed held at 0
    assert g0.recommended is not None and g0.recommended.values["seed"] == 0
    assert g0.recommended.index == 1 and g0.recommended_cell() == (1, 0)
    g1 = stability_grid(outcomes, "optimizer.lr", "model.init.std", {"seed": 1})
    assert g1.recommended is not None and g1.recommended.index == 17
    assert g1.recommended_cell() == (1, 1) and g1.recommended.margin == "none"
    body = json.loads(json.dumps(g1.to_dict()))
    assert body["recommended"]["values"] == {"model.init.std": 0.3, "optimizer.lr": 0.01,
                                             "seed": 1}
    assert body["recommended"]["job_id"] == "job-17"
    assert body["recommended_reason"] == body["recommended"]["reason"]
