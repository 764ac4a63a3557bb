"""Regenerate the small sample checkpoints in this folder (deterministic).

    python sample_checkpoints/make_samples.py

Writes:
  tiny_cnn.safetensors / tiny_cnn.pt   a healthy conv + BatchNorm + linear model
  uninit_cnn.safetensors / uninit_cnn.pt
                                       the same model where some parameters were made with
                                       nn.Parameter(torch.empty(...)) and never initialized:
                                       deterministic garbage (subnormals, huge values, a NaN,
                                       an all-zero weight, a constant weight, a duplicated buffer)
  lightning.ckpt                       a Lightning-style nested training checkpoint: state_dict,
                                       Adam optimizer state, hyper-parameters holding a
                                       pathlib.PosixPath and an argparse.Namespace
  sharded/                             a Hugging Face sharded safetensors checkpoint with its index
  tied_lm.pt                           a small language model whose embedding and output weights
                                       share storage (tied)
  legacy.pt                            the tiny CNN in torch's legacy (non-zip) pickle format
"""

from __future__ import annotations

import argparse
import json
import pathlib
from collections import OrderedDict
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

HERE = Path(__file__).resolve().parent


class TinyCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, 10)


class TinyLM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(64, 16)
        self.norm = nn.LayerNorm(16)
        self.proj = nn.Linear(16, 16)
        self.lm_head = nn.Linear(16, 64, bias=False)
        self.lm_head.weight = self.embed.weight


def garbage(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """What an uninitialized torch.empty might hold: bit patterns spanning the whole float32 range."""
    g = torch.Generator().manual_seed(seed)
    bits = torch.randint(0, 2**31 - 1, shape, generator=g, dtype=torch.int64)
    # Clear exponent bits on a third of the values (subnormals), keep others as-is (huge and tiny).
    bits = torch.where(bits % 3 == 0, bits & 0x807FFFFF, bits)
    # Keep NaN/Inf out of this tensor: exponent 255 becomes 254.
    exp = (bits >> 23) & 0xFF
    bits = torch.where(exp == 0xFF, bits & ~(1 << 23), bits)
    return bits.to(torch.int32).view(torch.float32).clone()


def main() -> None:
    torch.manual_seed(0)
    cnn = TinyCNN()
    sd = cnn.state_dict()
    save_file(sd, HERE / "tiny_cnn.safetensors", metadata={"format": "pt", "source": "make_samples.py"})
    torch.save(sd, HERE / "tiny_cnn.pt")
    torch.save(sd, HERE / "legacy.pt", _use_new_zipfile_serialization=False)

    bad = OrderedDict((k, v.clone()) for k, v in sd.items())
    bad["conv2.weight"] = garbage(tuple(sd["conv2.weight"].shape), seed=1)  # subnormals and huge values
    fc = sd["fc.weight"].clone()
    fc[3, 7] = float("nan")
    bad["fc.weight"] = fc
    bad["conv1.weight"] = torch.zeros_like(sd["conv1.weight"])  # all zero
    bad["bn2.weight"] = torch.zeros_like(sd["bn2.weight"])  # a 1-D zero: normal, not flagged
    bad["fc.bias"] = torch.zeros_like(sd["fc.bias"])
    bad["extra.proj.weight"] = torch.full((4, 4), 0.25)  # constant
    bad["extra.copy.weight"] = sd["conv2.weight"].clone()  # duplicate of the healthy conv2 ...
    bad["extra.copy2.weight"] = sd["conv2.weight"].clone()  # ... twice (a reused buffer)
    save_file(bad, HERE / "uninit_cnn.safetensors")
    torch.save(bad, HERE / "uninit_cnn.pt")

    params = list(cnn.parameters())
    opt_state = {
        i: {
            "step": torch.tensor(120.0),
            "exp_avg": torch.randn_like(p) * 1e-3,
            "exp_avg_sq": torch.rand_like(p) * 1e-6,
        }
        for i, p in enumerate(params)
    }
    ckpt = {
        "epoch": 3,
        "global_step": 120,
        "pytorch-lightning_version": "2.4.0",
        "state_dict": OrderedDict((f"model.{k}", v) for k, v in sd.items()),
        "optimizer_states": [
            {
                "state": opt_state,
                "param_groups": [
                    {
                        "lr": 1e-3,
                        "betas": (0.9, 0.999),
                        "eps": 1e-8,
                        "weight_decay": 0.0,
                        "params": list(range(len(params))),
                    }
                ],
            }
        ],
        "lr_schedulers": [],
        "hyper_parameters": {
            "lr": 1e-3,
            "data_dir": pathlib.PosixPath("/data/cifar10"),
            "args": argparse.Namespace(batch_size=32, precision="bf16-mixed"),
        },
    }
    torch.save(ckpt, HERE / "lightning.ckpt")

    shard_dir = HERE / "sharded"
    shard_dir.mkdir(exist_ok=True)
    names = list(sd)
    half = len(names) // 2
    weight_map = {}
    for i, part in enumerate((names[:half], names[half:]), start=1):
        fname = f"model-0000{i}-of-00002.safetensors"
        save_file({k: sd[k].contiguous() for k in part}, shard_dir / fname, metadata={"format": "pt"})
        weight_map.update({k: fname for k in part})
    total = sum(v.numel() * v.element_size() for v in sd.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (shard_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")

    torch.manual_seed(1)
    lm = TinyLM()
    torch.save(lm.state_dict(), HERE / "tied_lm.pt")


if __name__ == "__main__":
    main()
