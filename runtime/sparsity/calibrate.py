"""Sequential calibration: one forward pass, cut into segments at each pruning stage.

Why: re-running the whole model for every stage costs (stages x full passes);
on MiniLM that is 24 passes. Instead the graph is cut just before each stage's
first layer; each segment runs once per batch from the live tensors left by the
segment before it (for a transformer: the residual stream and the attention
mask), with the weights already pruned. Activations of stage j therefore come
from the pruned layers before it, as the papers require, at the cost of one pass.
Models this cannot cut (control-flow subgraphs, untyped intermediate tensors)
fall back to full re-runs per stage.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper

from runtime.sparsity.inputs import Feeds, iter_batches

LOGGER = logging.getLogger(__name__)


def session_options(threads: int = 0) -> ort.SessionOptions:
    """CPU session options that do not spin between runs (numpy needs the cores then)."""
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return opts


def _elem_types(model: onnx.ModelProto) -> dict[str, int]:
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - inference is best effort
        inferred = model
    types: dict[str, int] = {}
    g = inferred.graph
    for vi in [*g.input, *g.value_info, *g.output]:
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type:
            types[vi.name] = vi.type.tensor_type.elem_type
    for init in g.initializer:
        types[init.name] = init.data_type
    return types


class SegmentedModel:
    """The model cut at given node indices into consecutive runnable segments."""

    def __init__(self, model: onnx.ModelProto, cuts: Sequence[int], fed_weights: Sequence[str],
                 threads: int = 0) -> None:
        """Build one session per segment [cut_{i-1}, cut_i).

        Raises:
            ValueError: the graph cannot be cut (subgraphs or unknown tensor types).
        """
        graph = model.graph
        nodes = list(graph.node)
        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
               for n in nodes for a in n.attribute):
            raise ValueError("graph has control-flow subgraphs")
        types = _elem_types(model)
        inits = {init.name: init for init in graph.initializer}
        fed = set(fed_weights)
        graph_inputs = [vi.name for vi in graph.input if vi.name not in inits]
        last_use: dict[str, int] = {}
        for i, node in enumerate(nodes):
            for name in node.input:
                if name:
                    last_use[name] = i
        self.segments: list[tuple[ort.InferenceSession | None, list[str], list[str], list[str]]]
        self.segments = []
        self.live_after: list[list[str]] = []
        live = list(graph_inputs)
        start = 0
        for cut in cuts:
            seg = nodes[start:cut]
            produced = {o for n in seg for o in n.output if o}
            seg_inputs: list[str] = []
            seg_weights: list[str] = []
            seg_inits = []
            for name in dict.fromkeys(i for n in seg for i in n.input if i):
                if name in produced:
                    continue
                if name in fed:
                    seg_weights.append(name)
                elif name in inits:
                    seg_inits.append(inits[name])
                else:
                    seg_inputs.append(name)
            new_live = [t for t in dict.fromkeys([*live, *produced]) if last_use.get(t, -1) >= cut]
            outputs = [t for t in new_live if t in produced]
            missing = [t for t in [*seg_inputs, *outputs] if t not in types]
            if missing:
                raise ValueError(f"unknown element type for {missing[:3]}")
            if not seg:
                self.segments.append((None, [], [], []))
                self.live_after.append(new_live)
                live, start = new_live, cut
                continue
            sub = helper.make_graph(
                seg, f"segment_{start}_{cut}",
                [helper.make_tensor_value_info(t, types[t], None) for t in seg_inputs]
                + [helper.make_tensor_value_info(w, inits[w].data_type, inits[w].dims)
                   for w in seg_weights],
                [helper.make_tensor_value_info(t, types[t], None) for t in outputs],
                initializer=seg_inits,
            )
            sub_model = helper.make_model(sub, opset_imports=model.opset_import)
            sub_model.ir_version = model.ir_version
            session = ort.InferenceSession(sub_model.SerializeToString(), session_options(threads),
                                           providers=["CPUExecutionProvider"])
            self.segments.append((session, seg_inputs, seg_weights, outputs))
            self.live_after.append(new_live)
            live, start = new_live, cut

    def advance(self, index: int, state: Mapping[str, np.ndarray],
                weights: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run segment `index` from `state` (live tensors) and return the next state."""
        session, inputs, seg_weights, outputs = self.segments[index]
        feeds = {t: state[t] for t in inputs}
        feeds.update({w: weights[w] for w in seg_weights})
        results: dict[str, np.ndarray] = {}
        if session is not None and outputs:
            results = dict(zip(outputs, session.run(outputs, feeds), strict=True))
        return {t: results[t] if t in results else state[t] for t in self.live_after[index]}


def node_index(model: onnx.ModelProto, weight_name: str) -> int:
    """Index of the first node that takes `weight_name` as an input."""
    for i, node in enumerate(model.graph.node):
        if weight_name in node.input:
            return i
    raise ValueError(f"no node consumes {weight_name!r}")


def sweep(
    model: onnx.ModelProto,
    stage_cuts: Sequence[int],
    stage_activations: Sequence[Sequence[str]],
    weights: dict[str, np.ndarray],
    calibration: Feeds,
    batch_size: int,
    on_batch: Callable[[int, Feeds, Mapping[str, np.ndarray]], None],
    on_stage_done: Callable[[int], None],
    fallback: Callable[[], object],
    progress: Callable[[int], None] | None = None,
) -> None:
    """Drive the sequential sweep.

    For each stage j: every calibration batch is advanced to cut j and
    `on_batch(j, original_batch, activations)` is called; then `on_stage_done(j)`
    prunes the stage (updating `weights` in place) before the next segment runs.
    If the model cannot be segmented, `fallback()` is called instead.
    """
    try:
        seg = SegmentedModel(model, stage_cuts, list(weights))
    except (ValueError, onnx.checker.ValidationError, ort.capi.onnxruntime_pybind11_state.Fail
            ) as exc:  # type: ignore[attr-defined]
        LOGGER.info("cannot segment the graph (%s); re-running the full model per stage", exc)
        fallback()
        return
    batches = list(iter_batches(calibration, batch_size))
    states: list[dict[str, np.ndarray]] = [dict(b) for b in batches]
    for j in range(len(stage_cuts)):
        for b, batch in enumerate(batches):
            states[b] = seg.advance(j, states[b], weights)
            on_batch(j, batch, {a: states[b][a] for a in stage_activations[j]})
        on_stage_done(j)
        if progress:
            progress(j)
