"""Structured pruning sweep: FFN neurons and attention heads, layer by layer, calibrated.

Why sequential: each block is pruned on activations of the model whose earlier
blocks are already pruned (as the 2:4 methods do), so later blocks compensate
for the error of earlier ones through their bias and refit. Each stage runs the
current (already sliced) model once over the calibration set and keeps only the
moments of one activation, so memory does not grow with the calibration set.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper
from tqdm import tqdm

from runtime.errors import ConfigError
from runtime.sparsity import calibrate
from runtime.sparsity.compensate import (
    Moments,
    choose_damping,
    compensate,
    lowest,
    output_error,
    unit_scores,
)
from runtime.sparsity.heads import greedy_heads
from runtime.sparsity.inputs import Feeds, iter_batches, num_samples, take
from runtime.sparsity.prune import (
    Deviation,
    WeightFedModel,
    _single_threaded_blas,
    deviation,
    float_outputs,
    stop_bound,
)
from runtime.sparsity.structured import (
    AttentionBlock,
    Edit,
    FFNBlock,
    apply_edits,
    attention_edit,
    ffn_edit,
    find_attention_blocks,
    find_ffn_blocks,
    head_columns,
    masked_weights,
)

HEAD_GREEDY_DAMPING = 1.0
"""Damping used while choosing heads greedily (the final refit's damping is re-chosen)."""


@dataclass(frozen=True)
class StructuredConfig:
    """How much to remove and how (mirrors `prune --structured` flags)."""

    ffn_sparsity: float = 0.0
    head_sparsity: float = 0.0
    refit: bool = False
    batch_size: int = 16
    held_out_fraction: float = 0.25
    """Share of calibration samples kept aside to choose the refit damping."""
    max_deviation: float | None = None
    min_cosine: float | None = None
    ffn_levels: Mapping[str, float] | None = None
    """Per-block FFN fraction (block name -> fraction), overriding `ffn_sparsity`."""
    head_levels: Mapping[str, int] | None = None
    """Per-block number of heads to remove, overriding `head_sparsity`."""
    progress: bool = True

    def validate(self) -> None:
        """Raises ConfigError on fractions outside [0, 1) or a bad stop condition."""
        for flag, v in (("--ffn-sparsity", self.ffn_sparsity),
                        ("--head-sparsity", self.head_sparsity)):
            if not 0.0 <= v < 1.0:
                raise ConfigError(f"{flag} must be in [0, 1), got {v}")
        if self.min_cosine is not None and not -1.0 <= self.min_cosine <= 1.0:
            raise ConfigError(f"--min-cosine must be in [-1, 1], got {self.min_cosine}")
        if self.max_deviation is not None and not self.max_deviation >= 0.0:
            raise ConfigError(f"--max-deviation must be >= 0, got {self.max_deviation}")


@dataclass(frozen=True)
class BlockRow:
    """Per-block row of the report."""

    block: str
    kind: str
    """'ffn' or 'heads'."""
    before: int
    after: int
    removed: str
    """What went: neuron count, or the head indices."""
    error: float
    """Relative L2 error of the block's output on the calibration rows."""
    damping: float | None
    pruned: bool = True
    sensitivity: float | None = None
    deviation_after: float | None = None


@dataclass(frozen=True)
class StructuredReport:
    """What `prune_structured` did."""

    rows: tuple[BlockRow, ...]
    deviation: Deviation
    seconds: float
    prune_seconds: float
    cpu_seconds: float
    stop_metric: str = ""
    notes: tuple[str, ...] = field(default_factory=tuple)
    speed: Mapping[str, float] | None = None


@dataclass
class Stage:
    """One block to prune and how much."""

    kind: str
    block: FFNBlock | AttentionBlock
    amount: int
    """Neurons or heads to remove."""

    @property
    def activation(self) -> str:
        return self.block.activation if isinstance(self.block, FFNBlock) else self.block.context


def plan_stages(model: onnx.ModelProto, config: StructuredConfig) -> list[Stage]:
    """Blocks to prune, in graph order, with the amount each loses.

    Raises:
        StructuredError: head pruning asked for on a graph whose attention is not recognised.
        ConfigError: nothing to prune.
    """
    stages: list[Stage] = []
    wants_ffn = config.ffn_sparsity > 0 or bool(config.ffn_levels)
    wants_heads = config.head_sparsity > 0 or bool(config.head_levels)
    if wants_ffn:
        for b in find_ffn_blocks(model):
            frac = (config.ffn_levels or {}).get(b.name, config.ffn_sparsity)
            stages.append(Stage("ffn", b, min(int(round(frac * b.hidden)), b.hidden - 1)))
        if not stages:
            raise ConfigError("--ffn-sparsity: no FFN block (MatMul -> [Add] -> activation -> "
                              "MatMul) found in the graph")
    if wants_heads:
        for a in find_attention_blocks(model):
            n = (config.head_levels or {}).get(a.name,
                                               int(round(config.head_sparsity * a.heads)))
            stages.append(Stage("heads", a, min(n, a.heads - 1)))
    stages.sort(key=lambda s: s.block.position)
    return stages


# ---- running the model -----------------------------------------------------------


def session(model: onnx.ModelProto, extra_outputs: Sequence[str] = (),
            threads: int = 0) -> ort.InferenceSession:
    """A CPU session for `model` with intermediate tensors exposed as outputs."""
    m = model
    if extra_outputs:
        m = onnx.ModelProto()
        m.CopyFrom(model)
        have = {o.name for o in m.graph.output}
        # NOTE: activations take the weights' float type (an fp16 model has fp16 activations)
        elem = next((i.data_type for i in m.graph.initializer if i.data_type in (
            onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE)),
            onnx.TensorProto.FLOAT)
        for name in extra_outputs:
            if name not in have:
                m.graph.output.append(helper.make_tensor_value_info(name, elem, None))
    return ort.InferenceSession(m.SerializeToString(), calibrate.session_options(threads),
                                providers=["CPUExecutionProvider"])


def model_outputs(model: onnx.ModelProto, feeds: Feeds, batch_size: int) -> np.ndarray:
    """Float outputs [samples, F] of `model` on `feeds`."""
    sess = session(model)
    names = [o.name for o in sess.get_outputs()]
    chunks = [float_outputs(dict(zip(names, sess.run(names, b), strict=True)), names)
              for b in iter_batches(feeds, batch_size)]
    return np.concatenate(chunks, axis=0)


def _rows(act: np.ndarray, feeds: Mapping[str, np.ndarray]) -> np.ndarray:
    """Activation rows [tokens, width]; padded tokens (attention mask 0) left out."""
    mask = next((a != 0 for n, a in feeds.items() if "mask" in n.lower() and a.ndim == 2), None)
    if mask is not None and act.ndim == 3 and act.shape[:2] == mask.shape:
        return act[mask]
    return act.reshape(-1, act.shape[-1])


def collect(run_act: Callable[[Feeds], np.ndarray], width: int, calibration: Feeds,
            batch_size: int, held_out_from: int | None) -> tuple[Moments, Moments]:
    """Moments of one activation over calibration samples [0, held_out_from) and the rest."""
    fit, held = Moments(width), Moments(width)
    n = num_samples(calibration)
    cut = n if held_out_from is None else held_out_from
    for start in range(0, n, batch_size):
        batch = take(calibration, slice(start, start + batch_size))
        act = run_act(batch)
        k = max(0, min(act.shape[0], cut - start))
        if k:
            fit.add(_rows(act[:k], take(batch, slice(0, k))))
        if k < act.shape[0]:
            held.add(_rows(act[k:], take(batch, slice(k, None))))
    return fit, held


class MaskedModel:
    """One session for many pruned variants: the blocks' output projections fed as inputs.

    Why: slicing a block and building a session costs a model copy and a graph
    optimisation each time; zeroing the removed rows of the output projection gives
    the same outputs (see `Edit.masked`), so sweeps and sensitivity checks run as
    many variants as they like through one session.
    """

    def __init__(self, model: onnx.ModelProto, fed: Sequence[str],
                 extra_outputs: Sequence[str] = ()) -> None:
        inits = {i.name: i for i in model.graph.initializer}
        self.dense = {n: numpy_helper.to_array(inits[n]) for n in dict.fromkeys(fed)}
        self.runner = WeightFedModel(model, list(self.dense), extra_outputs)

    def run(self, feeds: Feeds, weights: Mapping[str, np.ndarray],
            outputs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        return self.runner.run(feeds, {**self.dense, **weights}, outputs)

    def outputs(self, feeds: Feeds, weights: Mapping[str, np.ndarray],
                batch_size: int) -> np.ndarray:
        """Float model outputs [samples, F] with `weights` in place of the dense ones."""
        names = self.runner.outputs
        return np.concatenate([float_outputs(self.run(b, weights, names), names)
                               for b in iter_batches(feeds, batch_size)], axis=0)


def projection_names(stages: Sequence[Stage]) -> list[str] | None:
    """Output projection weights and biases of the stages; None if one has no bias."""
    names: list[str] = []
    for s in stages:
        b = s.block
        w, bias = (b.w2, b.b2) if isinstance(b, FFNBlock) else (b.wo, b.bo)
        if bias is None:
            return None
        names += [w, bias]
    return names


def _init(model: onnx.ModelProto, name: str | None) -> np.ndarray | None:
    if name is None:
        return None
    for init in model.graph.initializer:
        if init.name == name:
            return numpy_helper.to_array(init)
    raise KeyError(name)


# ---- one block --------------------------------------------------------------------


def prune_block(model: onnx.ModelProto, stage: Stage, fit: Moments, held: Moments,
                refit: bool) -> tuple[Edit, BlockRow]:
    """The edit for one block from its activation moments, and its report row."""
    every = fit.merged(held) if held.n else fit
    if stage.kind == "ffn":
        b = stage.block
        assert isinstance(b, FFNBlock)
        w1, b1, w2, b2 = (_init(model, n) for n in (b.w1, b.b1, b.w2, b.b2))
        assert w1 is not None and w2 is not None
        keep = lowest(unit_scores(every.cov, w2), stage.amount)
        damping = choose_damping(fit, held, w2, b2, keep) if refit and held.n else None
        result = compensate(every, w2, b2, keep, damping)
        err = output_error(every, w2, b2, keep, result)
        edit = ffn_edit(b, keep, w1, b1, result.w_kept.astype(w2.dtype),
                        result.b.astype(w2.dtype))
        row = BlockRow(b.name, "ffn", b.hidden, len(keep), f"{stage.amount} neurons", err,
                       damping)
        return edit, row
    a = stage.block
    assert isinstance(a, AttentionBlock)
    wo, bo = _init(model, a.wo), _init(model, a.bo)
    assert wo is not None
    removed = greedy_heads(every, wo, bo, a.heads, a.head_dim, stage.amount,
                           HEAD_GREEDY_DAMPING if refit else None)
    keep_heads = [h for h in range(a.heads) if h not in removed]
    keep = head_columns(keep_heads, a.head_dim)
    damping = choose_damping(fit, held, wo, bo, keep) if refit and held.n else None
    result = compensate(every, wo, bo, keep, damping)
    err = output_error(every, wo, bo, keep, result)
    weights = {n: _init(model, n) for pair in (a.q, a.k, a.v) for n in pair if n is not None}
    edit = attention_edit(a, keep_heads, weights,  # type: ignore[arg-type]
                          result.w_kept.astype(wo.dtype), result.b.astype(wo.dtype))
    row = BlockRow(a.name, "heads", a.heads, len(keep_heads),
                   "heads " + ",".join(map(str, sorted(removed))), err, damping)
    return edit, row


def sweep(model: onnx.ModelProto, stages: Sequence[Stage], calibration: Feeds,
          config: StructuredConfig) -> tuple[list[Edit], list[BlockRow]]:
    """Prune stage by stage, each on activations of the model pruned so far."""
    n = num_samples(calibration)
    held_from = None
    if config.refit and n >= 2:
        held_from = n - max(1, int(round(n * config.held_out_fraction)))
    active = [s for s in stages if s.amount > 0]
    fed = projection_names(active)
    masked = MaskedModel(model, fed, [s.activation for s in active]) if fed else None
    weights: dict[str, np.ndarray] = {}
    current = model
    edits: list[Edit] = []
    rows: list[BlockRow] = []
    for stage in tqdm(active, desc="structured", disable=not config.progress):
        width = stage.block.hidden if isinstance(stage.block, FFNBlock) else (
            stage.block.heads * stage.block.head_dim)
        if masked is not None:
            def run_act(batch: Feeds, name: str = stage.activation) -> np.ndarray:
                return masked.run(batch, weights, [name])[name]  # type: ignore[union-attr]
        else:
            sess = session(current, [stage.activation])

            def run_act(batch: Feeds, name: str = stage.activation,
                        sess: ort.InferenceSession = sess) -> np.ndarray:
                return sess.run([name], batch)[0]
        fit, held = collect(run_act, width, calibration, config.batch_size, held_from)
        edit, row = prune_block(model, stage, fit, held, config.refit)
        if masked is not None and edit.masked is not None:
            weights.update(edit.masked)
        else:
            current = apply_edits(current, [edit])
        edits.append(edit)
        rows.append(row)
    return edits, rows


# ---- the whole model --------------------------------------------------------------


def prune_structured(model: onnx.ModelProto, config: StructuredConfig, calibration: Feeds,
                     evaluation: Feeds, holdout: Feeds | None = None
                     ) -> tuple[onnx.ModelProto, StructuredReport]:
    """Remove FFN neurons and attention heads; measure the output deviation.

    Args:
        model: the dense model (not modified).
        config: amounts, refit, stop condition.
        calibration: inputs the statistics come from.
        evaluation: inputs for the final deviation.
        holdout: inputs the stop condition measures on (default: `evaluation`).

    Raises:
        ConfigError / StructuredError: bad settings, or a graph that cannot be pruned safely.
    """
    config.validate()
    start, cpu0 = time.perf_counter(), time.process_time()
    stages = plan_stages(model, config)
    with _single_threaded_blas():
        edits, rows = sweep(model, stages, calibration, config)
    prune_seconds = time.perf_counter() - start
    stop_metric = ""
    chosen = edits
    if edits and (config.min_cosine is not None or config.max_deviation is not None):
        chosen, rows, stop_metric = _stop_condition(
            model, edits, rows, holdout if holdout is not None else evaluation, config)
    pruned = apply_edits(model, chosen)
    dense_out = model_outputs(model, evaluation, config.batch_size)
    final = deviation(dense_out, model_outputs(pruned, evaluation, config.batch_size))
    report = StructuredReport(
        rows=tuple(rows), deviation=final, seconds=time.perf_counter() - start,
        prune_seconds=prune_seconds, cpu_seconds=time.process_time() - cpu0,
        stop_metric=stop_metric,
    )
    return pruned, report


def _stop_condition(model: onnx.ModelProto, edits: Sequence[Edit], rows: Sequence[BlockRow],
                    holdout: Feeds, config: StructuredConfig
                    ) -> tuple[list[Edit], list[BlockRow], str]:
    """Greedy: least sensitive blocks first; a block that breaks the bound stays dense."""
    ref = model_outputs(model, holdout, config.batch_size)
    metric, value, ok = stop_bound(config.min_cosine, config.max_deviation)

    fed = [n for e in edits for n in (e.masked or {})]
    masked = MaskedModel(model, fed) if all(e.masked for e in edits) else None

    def measure(chosen: Sequence[Edit]) -> Deviation:
        weights = masked_weights(chosen)
        if masked is not None and weights is not None:
            return deviation(ref, masked.outputs(holdout, weights, config.batch_size))
        return deviation(ref, model_outputs(apply_edits(model, chosen), holdout,
                                            config.batch_size))

    sens = [measure([e]).rel_l2 for e in tqdm(edits, desc="sensitivity",
                                              disable=not config.progress)]
    order = sorted(range(len(edits)), key=lambda i: (sens[i], i))
    chosen: list[int] = []
    out_rows: list[BlockRow] = []
    for i in tqdm(order, desc="stop condition", disable=not config.progress):
        d = measure([edits[j] for j in sorted([*chosen, i])])
        keep = ok(d)
        if keep:
            chosen.append(i)
        r = rows[i]
        out_rows.append(BlockRow(r.block, r.kind, r.before, r.after if keep else r.before,
                                 r.removed if keep else "-", r.error, r.damping, keep, sens[i],
                                 value(d)))
    return [edits[j] for j in sorted(chosen)], out_rows, metric
