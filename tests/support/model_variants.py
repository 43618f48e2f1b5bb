"""Cheaper copies of a model that a dishonest host might serve under its name, built offline from the real one.

Run in the engine's virtualenv (torch, safetensors): ``python tests/support/model_variants.py KIND SOURCE TARGET``.

- ``int4`` / ``int8``: every linear layer's weights fake-quantised (round to nearest, symmetric, one scale per
  group of 128) and saved again in bf16: what the model computes is what a 4- or 8-bit copy computes.
- ``pruned``: every third transformer layer dropped: another, smaller model with the same tokenizer and vocabulary.
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

GROUP = 128
KINDS = ("int4", "int8", "pruned")
DONE = ".variant-complete"


def fake_quantised(weight, bits: int):
    import torch

    shape = weight.shape
    grouped = weight.float().reshape(-1, GROUP)
    top = 2 ** (bits - 1) - 1
    scale = grouped.abs().amax(dim=1, keepdim=True).clamp(min=1e-8) / top
    return (torch.clamp(torch.round(grouped / scale), -top - 1, top) * scale).reshape(shape)


def quantised(weights: dict, bits: int) -> dict:
    # Linear layers only: embeddings (tied to the output head here) and norms stay as they were.
    return {name: fake_quantised(w, bits) if w.ndim == 2 and "embed" not in name else w for name, w in weights.items()}


def pruned(weights: dict, config: dict) -> dict:
    layers = config["num_hidden_layers"]
    keep = [i for i in range(layers) if i % 3 != 1]
    kept = {}
    for name, weight in weights.items():
        if ".layers." not in name:
            kept[name] = weight
            continue
        index = int(name.split(".layers.")[1].split(".")[0])
        if index in keep:
            kept[name.replace(f".layers.{index}.", f".layers.{keep.index(index)}.")] = weight
    config["num_hidden_layers"] = len(keep)
    return kept


def build(kind: str, source: Path, target: Path) -> Path:
    import torch
    from safetensors.torch import load_file, save_file

    if (target / DONE).exists():
        return target
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("model.safetensors", ".gpushare-complete"))
    config = json.loads((source / "config.json").read_text())
    weights = load_file(source / "model.safetensors")
    if kind == "pruned":
        weights = pruned(weights, config)
    else:
        weights = quantised(weights, 4 if kind == "int4" else 8)
    save_file({name: w.to(torch.bfloat16).contiguous() for name, w in weights.items()}, target / "model.safetensors",
              metadata={"format": "pt"})
    (target / "config.json").write_text(json.dumps(config))
    (target / DONE).write_text(kind)
    return target


if __name__ == "__main__":
    kind, source, target = sys.argv[1:4]
    if kind not in KINDS:
        sys.exit(f"unknown variant {kind!r}; one of {', '.join(KINDS)}")
    print(build(kind, Path(source), Path(target)))
