"""Prune an ONNX model's GEMM weights: magnitude, Wanda or SparseGPT, 2:4 or unstructured.

Calibrated methods run the model on onnxruntime with every prunable weight fed as
a graph input and every prunable layer's input activation exposed as an extra
output, so one session serves the whole sequential sweep: layers sharing an input
(q/k/v) form a stage, and each stage is calibrated on the outputs of the stages
already pruned, as in the SparseGPT and Wanda papers. Hessians accumulate batch
by batch, so memory does not grow with the calibration set.
"""

from __future__ import annotations

import contextlib
import fnmatch
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper
from tqdm import tqdm

from runtime.errors import ConfigError
from runtime.sparsity import calibrate, methods
from runtime.sparsity.analysis import analyze_model, find_gemm_weights, k_axis_for
from runtime.sparsity.inputs import Feeds, input_specs, iter_batches, num_samples
from runtime.sparsity.masks import magnitude_prune_unstructured

LOGGER = logging.getLogger(__name__)

METHODS: tuple[str, ...] = ("magnitude", "wanda", "sparsegpt")
_CALIBRATED_OPS = frozenset({"MatMul", "Gemm", "Conv"})


@dataclass(frozen=True)
class PruneConfig:
    """What to prune and how (mirrors the `prune` CLI flags)."""

    pattern: str | None = "2:4"
    sparsity: float = 0.5
    global_threshold: bool = False
    method: str = "magnitude"
    exclude: tuple[str, ...] = ()
    include: tuple[str, ...] = ()
    damp: float = 0.01
    blocksize: int = 128
    mask_selection: str = "obs"
    batch_size: int = 16
    max_deviation: float | None = None
    min_cosine: float | None = None
    progress: bool = True

    def validate(self) -> None:
        """Reject inconsistent settings early.

        Raises:
            ConfigError: unknown method/pattern or incompatible flags.
        """
        if self.method not in METHODS:
            raise ConfigError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.pattern not in ("2:4", None):
            raise ConfigError(f"pattern must be 2:4, got {self.pattern!r}")
        if self.pattern is None and not 0.0 < self.sparsity < 1.0:
            raise ConfigError(f"sparsity must be in (0, 1), got {self.sparsity}")
        if self.global_threshold and (self.pattern or self.method != "magnitude"):
            raise ConfigError("--global applies to unstructured magnitude pruning only")
        if self.mask_selection not in ("obs", "diag"):
            raise ConfigError("mask selection must be obs or diag")
        if self.min_cosine is not None and not -1.0 <= self.min_cosine <= 1.0:
            raise ConfigError(f"--min-cosine must be in [-1, 1], got {self.min_cosine}")
        if self.max_deviation is not None and not self.max_deviation >= 0.0:
            raise ConfigError(f"--max-deviation must be >= 0, got {self.max_deviation}")


@dataclass(frozen=True)
class Deviation:
    """Output deviation of a pruned model from the dense one over a set of inputs."""

    max_abs: float
    rel_l2: float
    cosine: float
    min_cosine: float

    def as_dict(self) -> dict[str, float]:
        """JSON-ready form."""
        return {"max_abs": self.max_abs, "rel_l2": self.rel_l2, "cosine": self.cosine,
                "min_cosine": self.min_cosine}


def stop_bound(
    min_cosine: float | None, max_deviation: float | None
) -> tuple[str, Callable[[Deviation], float], Callable[[Deviation], bool]]:
    """The stop condition's (description, measured value, holds) for --min-cosine, else
    --max-deviation: one bound for the 2:4 and the structured greedy passes."""
    if min_cosine is not None:
        bound = min_cosine
        return (f"mean cosine >= {bound:g}", lambda d: d.cosine, lambda d: d.cosine >= bound)
    assert max_deviation is not None
    limit = max_deviation
    return (f"relative L2 <= {limit:g}", lambda d: d.rel_l2, lambda d: d.rel_l2 <= limit)


@dataclass(frozen=True)
class Layer:
    """One prunable GEMM weight and where its input activation comes from."""

    weight_name: str
    node_name: str
    op: str
    k_axis: int
    activation: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class LayerResult:
    """Per-layer row of the prune report."""

    weight_name: str
    node_name: str
    pruned: bool
    sparsity: float
    sensitivity: float | None = None
    deviation_after: float | None = None


@dataclass(frozen=True)
class PruneReport:
    """What `prune_model` did, for printing and JSON."""

    method: str
    pattern: str
    layers: tuple[LayerResult, ...]
    deviation: Deviation
    seconds: float
    stop_metric: str = ""
    notes: tuple[str, ...] = field(default_factory=tuple)
    prune_seconds: float = 0.0


# ---- layer discovery ---------------------------------------------------------


def prunable_layers(model: onnx.ModelProto, config: PruneConfig) -> list[Layer]:
    """GEMM weights to prune, in graph order, after --include/--exclude globs.

    2:4 prunes only layers eligible for sparse tensor cores; unstructured prunes
    every float GEMM weight. Globs match the weight name or the node name.
    """
    profile = {layer.weight_name: layer for layer in analyze_model(model).layers}
    gemm = find_gemm_weights(model.graph)
    inits = {init.name: init for init in model.graph.initializer}
    layers = []
    seen = set()
    for node in model.graph.node:
        if node.op_type not in _CALIBRATED_OPS or len(node.input) < 2:
            continue
        name = node.input[1]
        if name not in gemm or name in seen or name not in profile:
            continue
        prof = profile[name]
        if prof.dtype not in ("float32", "float16", "float64"):
            continue
        if config.pattern == "2:4" and not prof.eligible:
            continue
        node_name = node.name or node.output[0]
        if config.include and not any(
            fnmatch.fnmatchcase(n, p) for p in config.include for n in (name, node_name)
        ):
            continue
        if any(fnmatch.fnmatchcase(n, p) for p in config.exclude for n in (name, node_name)):
            continue
        if node.op_type == "Gemm" and _attr(node, "transA", 0):
            continue
        if node.op_type == "Conv" and (prof.shape[2:] and any(d != 1 for d in prof.shape[2:])):
            if config.method != "magnitude":
                continue
        k_axis = k_axis_for(node.op_type, tuple(inits[name].dims), gemm[name].attrs)
        if k_axis is None:
            continue
        seen.add(name)
        layers.append(Layer(name, node_name, node.op_type, k_axis, node.input[0], prof.shape))
    return layers


def _attr(node: onnx.NodeProto, name: str, default: int) -> int:
    for a in node.attribute:
        if a.name == name:
            return int(helper.get_attribute_value(a))
    return default


def to_nk(weight: np.ndarray, layer: Layer) -> np.ndarray:
    """Weight as float64 [N, K] (K last)."""
    if layer.op == "Conv":
        return weight.reshape(weight.shape[0], -1).astype(np.float64)
    return np.moveaxis(weight, layer.k_axis, -1).reshape(-1, weight.shape[layer.k_axis]).astype(
        np.float64
    )


def from_nk(w: np.ndarray, layer: Layer, dtype: np.dtype) -> np.ndarray:
    """Inverse of `to_nk`, cast back to the stored dtype."""
    if layer.op == "Conv":
        return w.reshape(layer.shape).astype(dtype)
    moved = list(layer.shape)
    k = moved.pop(layer.k_axis)
    moved.append(k)
    return np.ascontiguousarray(np.moveaxis(w.reshape(moved), -1, layer.k_axis)).astype(dtype)


# ---- onnxruntime with weights fed as inputs ----------------------------------


class WeightFedModel:
    """One onnxruntime session where chosen weights are inputs and activations are outputs."""

    def __init__(self, model: onnx.ModelProto, weights: Sequence[str],
                 extra_outputs: Sequence[str] = (), threads: int = 0) -> None:
        """Rewrite a copy of `model` and build the session."""
        m = onnx.ModelProto()
        m.CopyFrom(model)
        graph = m.graph
        wanted = set(weights)
        keep = [init for init in graph.initializer if init.name not in wanted]
        moved = [init for init in graph.initializer if init.name in wanted]
        del graph.initializer[:]
        graph.initializer.extend(keep)
        for init in moved:
            graph.input.append(helper.make_tensor_value_info(init.name, init.data_type, init.dims))
        self.graph_inputs = {vi.name for vi in graph.input}
        self.outputs = [o.name for o in graph.output]
        existing = set(self.outputs)
        elem = {init.name: init.data_type for init in moved}
        default_elem = next(iter(elem.values()), onnx.TensorProto.FLOAT)
        for name in dict.fromkeys(extra_outputs):
            if name in existing or name in self.graph_inputs:
                continue
            graph.output.append(helper.make_tensor_value_info(name, default_elem, None))
            existing.add(name)
        opts = calibrate.session_options(threads)
        self.session = ort.InferenceSession(
            m.SerializeToString(), opts, providers=["CPUExecutionProvider"]
        )

    def run(self, feeds: Mapping[str, np.ndarray], weights: Mapping[str, np.ndarray],
            outputs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Run with the given weights; graph inputs among `outputs` are echoed from feeds."""
        names = list(outputs) if outputs is not None else self.outputs
        fetch = [n for n in names if n not in self.graph_inputs]
        results: dict[str, np.ndarray] = {}
        if fetch:  # NOTE: an empty fetch list would make onnxruntime return every output
            results = dict(zip(fetch, self.session.run(fetch, {**feeds, **weights}), strict=True))
        for n in names:
            if n in self.graph_inputs:
                results[n] = np.asarray(feeds[n])
        return results


def _token_mask(feeds: Mapping[str, np.ndarray]) -> np.ndarray | None:
    for name, arr in feeds.items():
        if "mask" in name.lower() and arr.ndim == 2:
            return arr != 0
    return None


def activation_rows(act: np.ndarray, layer: Layer, mask: np.ndarray | None) -> np.ndarray:
    """Activation as [rows, K]; padded tokens (attention mask 0) are dropped."""
    if layer.op == "Conv":
        k = act.shape[1]
        return np.moveaxis(act, 1, -1).reshape(-1, k)
    if mask is not None and act.ndim == 3 and act.shape[:2] == mask.shape:
        return act[mask]
    return act.reshape(-1, act.shape[-1])


# ---- deviation ---------------------------------------------------------------


def float_outputs(outs: Mapping[str, np.ndarray], names: Sequence[str]) -> np.ndarray:
    parts = [np.asarray(outs[n], dtype=np.float64) for n in names if outs[n].dtype.kind == "f"]
    rows = parts[0].shape[0] if parts and parts[0].ndim else 1
    return np.concatenate([p.reshape(rows, -1) for p in parts], axis=1)


def deviation(ref: np.ndarray, got: np.ndarray) -> Deviation:
    """Max abs, relative L2 and per-sample cosine of `got` against `ref` ([samples, F])."""
    diff = got - ref
    norm = np.linalg.norm(ref)
    num = np.sum(ref * got, axis=1)
    den = np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1)
    cos = np.where(den > 0, num / np.where(den > 0, den, 1.0), 1.0)
    return Deviation(
        max_abs=float(np.max(np.abs(diff))) if diff.size else 0.0,
        rel_l2=float(np.linalg.norm(diff) / norm) if norm else float(np.linalg.norm(diff)),
        cosine=float(np.mean(cos)),
        min_cosine=float(np.min(cos)),
    )


class _Evaluator:
    """Outputs of the model on fixed inputs for any weight assignment."""

    def __init__(self, runner: WeightFedModel, feeds: Feeds, batch_size: int,
                 dense: Mapping[str, np.ndarray]) -> None:
        self.runner, self.feeds, self.batch_size = runner, feeds, batch_size
        self.ref = self.outputs(dense)

    def outputs(self, weights: Mapping[str, np.ndarray]) -> np.ndarray:
        chunks = [
            float_outputs(self.runner.run(b, weights), self.runner.outputs)
            for b in iter_batches(self.feeds, self.batch_size)
        ]
        return np.concatenate(chunks, axis=0)

    def deviation(self, weights: Mapping[str, np.ndarray]) -> Deviation:
        return deviation(self.ref, self.outputs(weights))


# ---- the sweep ---------------------------------------------------------------


def _stages(layers: Sequence[Layer]) -> list[list[Layer]]:
    """Group layers that share an input activation, in graph order."""
    groups: dict[str, list[Layer]] = {}
    for layer in layers:
        groups.setdefault(layer.activation, []).append(layer)
    return list(groups.values())


def _prune_one(w: np.ndarray, layer: Layer, config: PruneConfig,
               acc: methods.HessianAccumulator | None,
               prepared: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    nk = to_nk(w, layer)
    if config.method == "magnitude" or acc is None:
        out = methods.magnitude(nk, config.pattern, config.sparsity)
    elif config.method == "wanda":
        out = methods.wanda(nk, acc.column_norms(), config.pattern, config.sparsity)
    else:
        out = methods.sparsegpt(nk, acc.hessian(), config.pattern, config.sparsity,
                                config.blocksize, config.damp, config.mask_selection, prepared)
    if config.pattern == "2:4":
        # NOTE: float casts can turn a tiny kept value into 0 but never a 0 into non-zero,
        # so the result stays 2:4; re-zero explicitly for safety.
        out = np.where(out != 0, out, 0.0)
    return from_nk(out, layer, w.dtype)


def prune_model(
    model: onnx.ModelProto,
    config: PruneConfig,
    calibration: Feeds | None = None,
    evaluation: Feeds | None = None,
    holdout: Feeds | None = None,
) -> tuple[onnx.ModelProto, PruneReport]:
    """Prune `model` and measure the output deviation.

    Args:
        model: the dense ONNX model (not modified).
        config: method, pattern, selection and stop condition.
        calibration: inputs for Wanda/SparseGPT (required for them).
        evaluation: inputs for the final deviation report.
        holdout: inputs the stop condition measures on (defaults to `evaluation`).

    Returns:
        The pruned model and the report.

    Raises:
        ConfigError: bad configuration or missing calibration data.
    """
    config.validate()
    with _single_threaded_blas():
        return _prune_model(model, config, calibration, evaluation, holdout)


@contextlib.contextmanager
def _single_threaded_blas() -> Iterator[None]:
    """Run numpy's BLAS on one thread while pruning, when threadpoolctl is installed.

    # NOTE: the matrices here are small (K <= a few thousand) and onnxruntime runs
    # between them; multi-threaded OpenBLAS spin-waits and was 40x slower for a
    # 384x384 Cholesky on a busy 2-core host than a single thread.
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield


def _prune_model(
    model: onnx.ModelProto,
    config: PruneConfig,
    calibration: Feeds | None,
    evaluation: Feeds | None,
    holdout: Feeds | None,
) -> tuple[onnx.ModelProto, PruneReport]:
    start = time.perf_counter()
    layers = prunable_layers(model, config)
    if not layers:
        raise ConfigError("no prunable layers (check --exclude/--include and layer eligibility)")
    if config.method != "magnitude" and calibration is None:
        raise ConfigError(f"--method {config.method} needs --calibration or --calibration-text")
    inits = {init.name: init for init in model.graph.initializer}
    dense = {layer.weight_name: numpy_helper.to_array(inits[layer.weight_name])
             for layer in layers}
    notes: list[str] = []
    runner = WeightFedModel(model, list(dense), [layer.activation for layer in layers])
    current = dict(dense)
    if config.method == "magnitude":
        if config.global_threshold:
            allw = np.concatenate([np.abs(w.astype(np.float64)).ravel() for w in dense.values()])
            n_zero = int(round(config.sparsity * allw.size))
            threshold = float(np.partition(allw, n_zero - 1)[n_zero - 1]) if n_zero else -1.0
            for layer in layers:
                current[layer.weight_name] = magnitude_prune_unstructured(
                    dense[layer.weight_name], config.sparsity, threshold
                )
        else:
            for layer in tqdm(layers, desc="prune", disable=not config.progress):
                current[layer.weight_name] = _prune_one(dense[layer.weight_name], layer, config,
                                                        None)
    else:
        assert calibration is not None
        _calibrated_sweep(model, layers, dense, current, calibration, config, runner)
    prune_seconds = time.perf_counter() - start
    if evaluation is None:
        from runtime.sparsity.inputs import generate_inputs

        evaluation = generate_inputs(model)
        notes.append("deviation measured on generated random inputs")
    results: list[LayerResult] = []
    stop_metric = ""
    chosen = dict(current)
    if config.max_deviation is not None or config.min_cosine is not None:
        chosen, results, stop_metric = _apply_stop_condition(
            runner, layers, dense, current, holdout if holdout is not None else evaluation,
            config,
        )
    else:
        for layer in layers:
            w = current[layer.weight_name]
            results.append(LayerResult(layer.weight_name, layer.node_name, True,
                                       1.0 - np.count_nonzero(w) / w.size))
    final = _Evaluator(runner, evaluation, config.batch_size, dense).deviation(chosen)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for init in out.graph.initializer:
        if init.name in chosen and results_pruned(results, init.name):
            init.CopyFrom(numpy_helper.from_array(chosen[init.name], init.name))
    report = PruneReport(
        method=config.method,
        pattern=config.pattern or f"unstructured {config.sparsity:g}"
        + (" global" if config.global_threshold else ""),
        layers=tuple(results),
        deviation=final,
        seconds=time.perf_counter() - start,
        prune_seconds=prune_seconds,
        stop_metric=stop_metric,
        notes=tuple(notes),
    )
    return out, report


def _calibrated_sweep(model: onnx.ModelProto, layers: Sequence[Layer],
                      dense: Mapping[str, np.ndarray], current: dict[str, np.ndarray],
                      calibration: Feeds, config: PruneConfig, runner: WeightFedModel) -> None:
    """Prune stage by stage, each calibrated on the outputs of the stages pruned before it."""
    stages = _stages(layers)
    # NOTE: layers of a stage share one input (q/k/v), so one Hessian and one
    # factorization serve them all.
    accs: dict[str, methods.HessianAccumulator] = {}

    def start(stage: Sequence[Layer]) -> None:
        layer = stage[0]
        accs[layer.activation] = methods.HessianAccumulator(
            to_nk(dense[layer.weight_name], layer).shape[1]
        )

    def on_batch(j: int, batch: Feeds, acts: Mapping[str, np.ndarray]) -> None:
        if not accs:
            start(stages[j])
        layer = stages[j][0]
        accs[layer.activation].add(activation_rows(acts[layer.activation], layer,
                                                   _token_mask(batch)))

    def done(j: int) -> None:
        if not accs:
            start(stages[j])
        acc = accs[stages[j][0].activation]
        prepared = None
        if config.method == "sparsegpt":
            prepared = methods.prepare_hessian(acc.hessian(), config.damp)
        for layer in stages[j]:
            current[layer.weight_name] = _prune_one(
                dense[layer.weight_name], layer, config, acc, prepared
            )
        accs.clear()

    def fallback() -> None:
        for j, stage in enumerate(stages):
            names = list(dict.fromkeys(layer.activation for layer in stage))
            for batch in iter_batches(calibration, config.batch_size):
                on_batch(j, batch, runner.run(batch, current, names))
            done(j)
            bar.update(1)

    cuts = [min(calibrate.node_index(model, layer.weight_name) for layer in stage)
            for stage in stages]
    acts = [list(dict.fromkeys(layer.activation for layer in stage)) for stage in stages]
    with tqdm(total=len(stages), desc=f"{config.method} stages",
              disable=not config.progress) as bar:
        calibrate.sweep(model, cuts, acts, current, calibration, config.batch_size, on_batch,
                        done, fallback, lambda _j: bar.update(1))


def results_pruned(results: Sequence[LayerResult], name: str) -> bool:
    """True when the report marks weight `name` as pruned."""
    return any(r.weight_name == name and r.pruned for r in results)


def _apply_stop_condition(
    runner: WeightFedModel,
    layers: Sequence[Layer],
    dense: Mapping[str, np.ndarray],
    pruned: Mapping[str, np.ndarray],
    holdout: Feeds,
    config: PruneConfig,
) -> tuple[dict[str, np.ndarray], list[LayerResult], str]:
    """Greedy: least sensitive layers first; a layer that breaks the bound stays dense."""
    ev = _Evaluator(runner, holdout, config.batch_size, dense)
    metric, value, ok = stop_bound(config.min_cosine, config.max_deviation)

    sens: dict[str, float] = {}
    for layer in tqdm(layers, desc="sensitivity", disable=not config.progress):
        d = ev.deviation({**dense, layer.weight_name: pruned[layer.weight_name]})
        sens[layer.weight_name] = d.rel_l2
    order = sorted(layers, key=lambda layer: (sens[layer.weight_name], layer.weight_name))
    chosen = dict(dense)
    rows: dict[str, LayerResult] = {}
    for layer in tqdm(order, desc="stop condition", disable=not config.progress):
        trial = {**chosen, layer.weight_name: pruned[layer.weight_name]}
        d = ev.deviation(trial)
        keep = ok(d)
        if keep:
            chosen = trial
        w = chosen[layer.weight_name]
        rows[layer.weight_name] = LayerResult(
            layer.weight_name, layer.node_name, keep, 1.0 - np.count_nonzero(w) / w.size,
            sens[layer.weight_name], value(d),
        )
    return chosen, [rows[layer.weight_name] for layer in order], metric


def count_samples(feeds: Feeds | None) -> int:
    """Samples in a feed dict (0 for None)."""
    return 0 if feeds is None else num_samples(feeds)


def model_input_names(model: onnx.ModelProto) -> list[str]:
    """Names of the model's real inputs (for messages)."""
    return [s.name for s in input_specs(model)]
