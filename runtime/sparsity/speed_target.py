"""`--target-speedup X`: how much to remove in each block, chosen by measured sensitivity.

Why not a uniform ratio: blocks differ a lot in how much their removal hurts
(an early FFN carries more of the embedding than a late one, some layers' heads
are nearly redundant). Steps:

1. time cost: onnxruntime CPU latency of the dense model, of every FFN block
   halved and of every attention block halved, timed side by side; an encoder's
   blocks all cost the same per neuron / per head, so time falls linearly in the
   neurons and heads removed (slope per kind from those three timings);
2. sensitivity: each block alone pruned at each level (from the dense model's
   calibration statistics, with compensation and refit as configured), the loss
   being 1 - mean output cosine to the dense model on held-out calibration rows;
3. allocation: per block, the level minimising loss - lambda * time saved, with
   lambda the smallest that reaches X (a Lagrangian knapsack over additive losses);
4. the sequential sweep at those levels; the speed-up is then measured and reported
   beside the predicted one (no second round: on a shared host one measurement is
   too noisy to steer by).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import replace

import numpy as np
import onnx

from runtime.errors import ConfigError
from runtime.sparsity.compensate import Moments
from runtime.sparsity.inputs import Feeds, iter_batches, num_samples
from runtime.sparsity.prune import _single_threaded_blas, deviation
from runtime.sparsity.speed import speedups
from runtime.sparsity.structured import (
    AttentionBlock,
    Edit,
    FFNBlock,
    StructuredError,
    apply_edits,
    attention_edit,
    ffn_edit,
    head_columns,
)
from runtime.sparsity.structured_prune import (
    MaskedModel,
    Stage,
    StructuredConfig,
    StructuredReport,
    _init,
    _rows,
    model_outputs,
    plan_stages,
    projection_names,
    prune_block,
    prune_structured,
    session,
)

FFN_LEVELS: tuple[float, ...] = (0.25, 0.5, 0.75)
HEAD_LEVELS: tuple[float, ...] = (1 / 6, 1 / 3, 1 / 2)


def _amounts(stage: Stage) -> list[int]:
    if isinstance(stage.block, FFNBlock):
        return [int(round(f * stage.block.hidden)) for f in FFN_LEVELS]
    return [int(round(f * stage.block.heads)) for f in HEAD_LEVELS]


def _plain_edit(model: onnx.ModelProto, stage: Stage, amount: int) -> Edit:
    """Slicing only (first units kept): for timing, where values do not matter."""
    b = stage.block
    if isinstance(b, FFNBlock):
        keep = np.arange(b.hidden - amount)
        w2 = _init(model, b.w2)
        assert w2 is not None
        return ffn_edit(b, keep, _init(model, b.w1), _init(model, b.b1),  # type: ignore[arg-type]
                        w2[keep], _init(model, b.b2))
    assert isinstance(b, AttentionBlock)
    keep_heads = list(range(b.heads - amount))
    wo = _init(model, b.wo)
    assert wo is not None
    weights = {n: _init(model, n) for pair in (b.q, b.k, b.v) for n in pair if n is not None}
    return attention_edit(b, keep_heads, weights,  # type: ignore[arg-type]
                          wo[head_columns(keep_heads, b.head_dim)], _init(model, b.bo))


def time_slopes(model: onnx.ModelProto, stages: Sequence[Stage], threads: int
                ) -> tuple[float, dict[str, float]]:
    """(dense ms, ms saved per removed unit for 'ffn' and 'heads'), measured side by side."""
    variants: dict[str, onnx.ModelProto] = {}
    removed: dict[str, int] = {}
    for kind in ("ffn", "heads"):
        mine = [s for s in stages if s.kind == kind]
        if not mine:
            continue
        half = [(s, (s.block.hidden if kind == "ffn" else s.block.heads) // 2)  # type: ignore
                for s in mine]
        variants[kind] = apply_edits(model, [_plain_edit(model, s, n) for s, n in half])
        removed[kind] = sum(n for _, n in half)
    ratios = speedups(model, variants, threads=threads, rounds=8, runs=3)
    dense_ms = ratios["__dense_ms__"]
    slopes = {k: max(dense_ms - dense_ms / ratios[k], 1e-6) / removed[k] for k in variants}
    return dense_ms, slopes


def dense_moments(model: onnx.ModelProto, stages: Sequence[Stage], calibration: Feeds,
                  batch_size: int, held_out_from: int | None
                  ) -> dict[str, tuple[Moments, Moments]]:
    """Moments of every stage's activation on the dense model, in one pass."""
    names = [s.activation for s in stages]
    sess = session(model, names)
    out: dict[str, tuple[Moments, Moments]] = {}
    n = num_samples(calibration)
    cut = n if held_out_from is None else held_out_from
    for start, batch in zip(range(0, n, batch_size), iter_batches(calibration, batch_size),
                            strict=True):
        acts = dict(zip(names, sess.run(names, batch), strict=True))
        for s in stages:
            act = acts[s.activation]
            if s.activation not in out:
                out[s.activation] = (Moments(act.shape[-1]), Moments(act.shape[-1]))
            fit, held = out[s.activation]
            k = max(0, min(batch_size, cut - start))
            if k:
                fit.add(_rows(act[:k], {a: v[:k] for a, v in batch.items()}))
            if k < act.shape[0]:
                held.add(_rows(act[k:], {a: v[k:] for a, v in batch.items()}))
    return out


def allocate(losses: Mapping[int, Sequence[float]], savings: Mapping[int, Sequence[float]],
             needed: float) -> dict[int, int]:
    """Level index per stage (0 = untouched) minimising total loss with savings >= needed.

    `losses[i][l]` and `savings[i][l]` include level 0 (0 loss, 0 saving).
    Lagrangian relaxation: bisect lambda; the result may save more than needed.
    """
    def pick(lam: float) -> dict[int, int]:
        return {i: int(np.argmin([loss - lam * sav for loss, sav in
                                  zip(losses[i], savings[i], strict=True)])) for i in losses}

    def saved(choice: Mapping[int, int]) -> float:
        return sum(savings[i][level] for i, level in choice.items())

    hi = 1.0
    while saved(pick(hi)) < needed and hi < 1e12:
        hi *= 4.0
    if saved(pick(hi)) < needed:
        return {i: len(losses[i]) - 1 for i in losses}
    lo = 0.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if saved(pick(mid)) >= needed:
            hi = mid
        else:
            lo = mid
    return pick(hi)


def prune_to_speed(model: onnx.ModelProto, config: StructuredConfig, target: float,
                   calibration: Feeds, evaluation: Feeds, holdout: Feeds | None,
                   threads: int = 1) -> tuple[onnx.ModelProto, StructuredReport]:
    """Prune to `target` times the dense speed with the least measured loss.

    Raises:
        ConfigError: a target <= 1, or nothing to prune.
    """
    if not target > 1.0:
        raise ConfigError(f"--target-speedup must be > 1, got {target}")
    start, cpu0 = time.perf_counter(), time.process_time()
    holdout = holdout if holdout is not None else evaluation
    notes: list[str] = []
    base = replace(config, ffn_sparsity=0.5, head_sparsity=1 / 3, min_cosine=None,
                   max_deviation=None)
    try:
        stages = plan_stages(model, base)
    except StructuredError as exc:
        stages = plan_stages(model, replace(base, head_sparsity=0.0))
        notes.append(f"FFN only: {exc}")
    dense_ms, slopes = time_slopes(model, stages, threads)
    n = num_samples(calibration)
    held_from = n - max(1, int(round(n * config.held_out_fraction))) if config.refit else None
    with _single_threaded_blas():
        moments = dense_moments(model, stages, calibration, config.batch_size, held_from)
    ref = model_outputs(model, holdout, config.batch_size)
    fed = projection_names(stages)
    masked = MaskedModel(model, fed) if fed else None
    losses: dict[int, list[float]] = {}
    savings: dict[int, list[float]] = {}
    for i, stage in enumerate(stages):
        losses[i], savings[i] = [0.0], [0.0]
        fit, held = moments[stage.activation]
        for amount in _amounts(stage):
            with _single_threaded_blas():
                edit, _ = prune_block(model, replace(stage, amount=amount), fit, held,
                                      config.refit)
            if masked is not None and edit.masked is not None:
                out = masked.outputs(holdout, edit.masked, config.batch_size)
            else:
                out = model_outputs(apply_edits(model, [edit]), holdout, config.batch_size)
            losses[i].append(1.0 - deviation(ref, out).cosine)
            savings[i].append(slopes[stage.kind] * amount)
    needed = dense_ms * (1.0 - 1.0 / target)
    choice = allocate(losses, savings, needed)
    ffn_levels = {s.block.name: (FFN_LEVELS[choice[i] - 1] if choice[i] else 0.0)
                  for i, s in enumerate(stages) if s.kind == "ffn"}
    head_levels = {s.block.name: (_amounts(s)[choice[i] - 1] if choice[i] else 0)
                   for i, s in enumerate(stages) if s.kind == "heads"}
    predicted = dense_ms / max(dense_ms - sum(savings[i][lv] for i, lv in choice.items()), 1e-9)
    chosen = replace(config, ffn_sparsity=0.0, head_sparsity=0.0, ffn_levels=ffn_levels,
                     head_levels=head_levels)
    pruned, report = prune_structured(model, chosen, calibration, evaluation, holdout)
    measured = speedups(model, {"pruned": pruned}, threads=threads, rounds=10, runs=3)
    got = measured["pruned"]
    speed = {"speedup": got, "predicted": predicted, "target": target,
             "threads": float(threads), "batch": 1.0,
             "sequence": 128.0, "dense_ms": measured["__dense_ms__"]}
    report = replace(report, seconds=time.perf_counter() - start,
                     cpu_seconds=time.process_time() - cpu0, speed=speed,
                     notes=(*report.notes, *notes,
                            "levels chosen by sensitivity: 1 - mean cosine on held-out rows, "
                            "each block alone"))
    return pruned, report
