"""A structurally pruned model against its dense parent: which weights shrank, by how much.

Why: after `prune --structured` the model is a smaller dense model; sparsity
figures say nothing about it. What a user checks is the FFN widths and head
counts per block, and the weights and parameter count against the parent.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx

from runtime.sparsity.structured import StructuredError, find_attention_blocks, find_ffn_blocks


@dataclass(frozen=True)
class ShapeRow:
    """One initializer whose shape differs from the parent's."""

    name: str
    parent_shape: tuple[int, ...]
    shape: tuple[int, ...]

    @property
    def kept(self) -> float:
        a = b = 1
        for d in self.parent_shape:
            a *= d
        for d in self.shape:
            b *= d
        return b / a if a else 1.0


@dataclass(frozen=True)
class BlockWidth:
    """FFN width or head count of one block, parent vs this model."""

    block: str
    kind: str
    parent: int
    now: int


@dataclass(frozen=True)
class StructureDiff:
    """Shapes and widths of a model against its dense parent."""

    rows: tuple[ShapeRow, ...]
    blocks: tuple[BlockWidth, ...]
    parent_params: int
    params: int
    missing: tuple[str, ...]
    """Parent weights this model does not have (a different model, or renamed weights)."""

    def as_dict(self) -> dict[str, object]:
        return {
            "parent_params": self.parent_params, "params": self.params,
            "params_kept": self.params / self.parent_params if self.parent_params else 1.0,
            "weights": [{"name": r.name, "parent_shape": list(r.parent_shape),
                         "shape": list(r.shape), "kept": r.kept} for r in self.rows],
            "blocks": [b.__dict__ for b in self.blocks],
            "missing": list(self.missing),
        }


def _shapes(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    return {i.name: tuple(int(d) for d in i.dims) for i in model.graph.initializer}


def _count(shapes: dict[str, tuple[int, ...]]) -> int:
    total = 0
    for shape in shapes.values():
        n = 1
        for d in shape:
            n *= d
        total += n
    return total


def _attention(model: onnx.ModelProto) -> dict[str, int]:
    try:
        return {a.wo: a.heads for a in find_attention_blocks(model)}
    except StructuredError:
        return {}


def compare_structure(parent: onnx.ModelProto, model: onnx.ModelProto) -> StructureDiff:
    """Initializers whose shape changed, per-block widths, and parameter counts."""
    ps, ms = _shapes(parent), _shapes(model)
    rows = tuple(ShapeRow(n, ps[n], ms[n]) for n in ps if n in ms and ps[n] != ms[n])
    missing = tuple(n for n in ps if n not in ms)
    blocks: list[BlockWidth] = []
    now_ffn = {b.w1: b.hidden for b in find_ffn_blocks(model)}
    for b in find_ffn_blocks(parent):
        if b.w1 in now_ffn:
            blocks.append(BlockWidth(b.name, "ffn", b.hidden, now_ffn[b.w1]))
    now_heads = _attention(model)
    parent_att = {}
    try:
        parent_att = {a.wo: a for a in find_attention_blocks(parent)}
    except StructuredError:
        pass
    for wo, a in parent_att.items():
        if wo in now_heads:
            blocks.append(BlockWidth(a.name, "heads", a.heads, now_heads[wo]))
    return StructureDiff(rows, tuple(blocks), _count(ps), _count(ms), missing)


def format_diff(diff: StructureDiff) -> str:
    """Table of changed weights, per-block widths, and the parameter summary."""
    lines = ["", "against the dense parent:"]
    if diff.blocks:
        rows = [("block", "kind", "parent", "now")]
        rows += [(b.block, b.kind, str(b.parent), str(b.now)) for b in diff.blocks]
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                  for r in rows]
        lines.append("")
    rows2 = [("weight", "parent shape", "shape", "kept")]
    rows2 += [(r.name, "x".join(map(str, r.parent_shape)), "x".join(map(str, r.shape)),
               f"{r.kept:.1%}") for r in diff.rows]
    widths = [max(len(r[i]) for r in rows2) for i in range(4)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
              for r in rows2]
    kept = diff.params / diff.parent_params if diff.parent_params else 1.0
    lines.append(f"parameters: parent {diff.parent_params:,}, now {diff.params:,} ({kept:.1%}); "
                 f"{len(diff.rows)} weights changed shape")
    if diff.missing:
        lines.append(f"warning: {len(diff.missing)} parent weights are not in this model "
                     f"(e.g. {diff.missing[0]!r}): is it really its parent?")
    return "\n".join(lines)
