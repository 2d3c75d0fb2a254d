"""Official checkpoints -> ours: QgZhan/ESVAE's ESVAE(Large), FSVAE(Large) and VanillaVAE(Large).

One explicit key table per model maps every official state_dict key to ours. The table is checked both ways:
every official key is used or knowingly dropped, every key of ours is filled, shapes are equal; anything else
is refused with one line naming the first missing or unexpected key (`ConversionError`).
- The official temporal convolutions are Conv3d / ConvTranspose3d with kernel (3, 3, 1) on time-last tensors;
  their weights lose the trailing time axis of size 1 (a 2-D conv shared over T is the same map).
- Dropped, with a check: `membrane_output_layer.coef` (must be the fixed readout 0.8^(T-1-t); its length
  is T), FSVAE's `*.initial_input` (must be zero: the official z_{-1}), and the FSVAE prior and posterior that
  the official ESVAE builds but never uses (`prior.*`, `posterior.*`).
- Official files: a plain `net.state_dict()` (checkpoint.pth, best.pth, the demo checkpoints) or
  `{'net': state_dict, 'epoch': e}` (best_fid.pth and its siblings); read with torch.load(weights_only=True).
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch

from .atomic import sha256_file
from .checkpoint import save_checkpoint
from .data import dataset_spec
from .models import build_model
from .presets import get_preset

__all__ = ["ConversionError", "OFFICIAL_CLASSES", "key_table", "load_official", "convert_state_dict",
           "convert_official"]

REPOSITORY = "https://github.com/QgZhan/ESVAE"
OFFICIAL_CLASSES = {  # ours -> (official class at 32x32, at 64x64)
    "esvae": ("ESVAE", "ESVAELarge"), "fsvae": ("FSVAE", "FSVAELarge"),
    "ann-vae": ("VanillaVAE", "VanillaVAELarge")}
MEMBRANE_DECAY = 0.8  # the official MembraneOutputLayer's fixed coefficient base
BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
WEIGHT = ("weight", "bias")

Row = Tuple[str, Optional[str]]  # (official key, our key); our key None: dropped after its check


class ConversionError(ValueError):
    """An official checkpoint that cannot be converted; the message is one line saying why and what to do."""


# ----------------------------------------------------------------------------------------- key tables
def _block(official: str, ours: str, leaves=WEIGHT) -> List[Row]:
    return [(f"{official}.{leaf}", f"{ours}.{leaf}") for leaf in leaves]


def _temporal(official: str, ours: str, bn: bool = True) -> List[Row]:
    """An official tdConv / tdConvTranspose / tdLinear (weight, bias, optional tdBN) -> our _TemporalBlock."""
    rows = _block(official, f"{ours}.weight_layer")
    return rows + (_block(f"{official}.bn", f"{ours}.bn", BN) if bn else [])


def _spiking_backbone(stages: int) -> List[Row]:
    """ESVAE / FSVAE encoder and decoder (reference_spec 2): `stages` conv stages (4 at 32x32, 5 at 64x64)."""
    rows = []
    for i in range(stages):
        rows += _temporal(f"encoder.{i}", f"encoder.convs.{i}")
    rows += _temporal("before_latent_layer", "encoder.before_latent")
    rows += _temporal("decoder_input", "decoder.decoder_input")
    for i in range(stages - 1):
        rows += _temporal(f"decoder.{i}", f"decoder.deconvs.{i}")
    rows += _temporal("final_layer.0", f"decoder.deconvs.{stages - 1}")
    rows += _temporal("final_layer.1", "decoder.to_image", bn=False)
    return rows + [("membrane_output_layer.coef", None)]


def _fsvae_latent(ours: bool = True) -> List[Row]:
    """FSVAE's posterior and prior MLPs (three tdLinear + tdBN + LIF each) and their zero start buffers."""
    rows = []
    for part in ("posterior", "prior"):
        for j in range(3):
            rows += [(k, v if ours else None) for k, v in _temporal(f"{part}.layers.{j}", f"{part}.mlp.{j}")]
        rows.append((f"{part}.initial_input", None))
    return rows


def _ann_vae(stages: int) -> List[Row]:
    """VanillaVAE(Large): conv stages (Conv2d, BatchNorm2d), fc_mu / fc_var, decoder, final_layer."""
    rows = []
    for i in range(stages):
        rows += _block(f"encoder.{i}.0", f"encoder.{i}.0") + _block(f"encoder.{i}.1", f"encoder.{i}.1", BN)
    rows += _block("fc_mu", "fc_mu") + _block("fc_var", "fc_var") + _block("decoder_input", "decoder_input")
    for i in range(stages - 1):
        rows += _block(f"decoder.{i}.0", f"decoder.{i}.0") + _block(f"decoder.{i}.1", f"decoder.{i}.1", BN)
    last = f"decoder.{stages - 1}"
    return rows + _block("final_layer.0", f"{last}.0") + _block("final_layer.1", f"{last}.1", BN) \
        + _block("final_layer.3", "to_image")


def key_table(model: str, stages: int) -> List[Row]:
    """The (official key, our key) rows of `model` with `stages` conv stages; our key None: dropped."""
    if model == "esvae":
        return _spiking_backbone(stages) + _block("sample_layer.0", "prior_layer") + _fsvae_latent(ours=False)
    if model == "fsvae":
        return _spiking_backbone(stages) + _fsvae_latent()
    if model == "ann-vae":
        return _ann_vae(stages)
    raise ConversionError(f"unknown model {model!r}; choose one of {', '.join(OFFICIAL_CLASSES)}")


# Keys that only dropped rows of ESVAE may lack: the unused FSVAE modules (a trimmed file still converts).
def _optional(model: str, official_key: str) -> bool:
    return model == "esvae" and official_key.startswith(("prior.", "posterior."))


# ----------------------------------------------------------------------------------------- reading files
def _load_error(path: Path, err: Exception) -> ConversionError:
    """One line for a file that torch.load(weights_only=True) refused: code, truncated, or no checkpoint."""
    text = str(err)
    found = _global_name(text)
    if found is not None:
        return ConversionError(f"{path} holds a Python object ({found}) that loading would import and call, "
                               "so it could run code: refused (only tensors and plain containers are read)")
    with open(path, "rb") as f:
        head = f.read(4)
    if head.startswith(b"PK"):
        return ConversionError(f"{path} is a truncated or corrupt PyTorch file (its zip archive cannot be "
                               "read); copy it again from where it was saved")
    if head[:1] == b"\x80" and _plain_pickle_imports(path):
        return ConversionError(f"{path} is a plain Python pickle that imports code when loaded: refused "
                               "(only torch.save files of tensors are read)")
    return ConversionError(f"{path} is not a PyTorch checkpoint file; pass the .pth file that the official "
                           "code saved (checkpoint.pth, best.pth, best_fid.pth, ...)")


def _global_name(text: str) -> Optional[str]:
    """The module.name in a weights-only refusal such as 'unsupported GLOBAL posix.system', else None."""
    marker = "GLOBAL "
    if marker not in text:
        return None
    return text.split(marker, 1)[1].split()[0].rstrip(".,:")


def _plain_pickle_imports(path: Path) -> bool:
    """Whether a plain pickle file imports a global (read op by op with pickletools; nothing is executed)."""
    import pickletools
    try:
        with open(path, "rb") as f:
            return any(op.name in ("GLOBAL", "STACK_GLOBAL", "INST") for op, _, _ in pickletools.genops(f))
    except Exception:  # not a complete pickle: say "not a checkpoint"
        return False


def load_official(path) -> Tuple[Dict[str, torch.Tensor], dict]:
    """Read an official file with ``torch.load(weights_only=True)``; return ``(state_dict, info)`` where info
    holds ``layout`` ("state_dict" or "{'net', 'epoch'}") and ``official_epoch`` (None for a state_dict)."""
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"{path} does not exist or is not a file; pass the official .pth checkpoint")
    with open(path, "rb") as f:  # an unreadable file (permissions) fails here, as the OSError it is
        if not f.read(1):
            raise ConversionError(f"{path} is empty, not a checkpoint; copy it again from where it was saved")
    try:
        with warnings.catch_warnings():  # torch's notes on pickle protocols are not the user's business
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # weights-only refusal, truncated zip (RuntimeError, OSError), other bytes
        raise _load_error(path, err) from None
    info = {"layout": "state_dict", "official_epoch": None}
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict) and isinstance(obj.get("config"), dict):
        raise ConversionError(f"{path} is already a spikingjelly-vae checkpoint: pass it to --checkpoint "
                              "as it is")
    if isinstance(obj, dict) and isinstance(obj.get("net"), dict):
        epoch = obj.get("epoch")
        epoch = int(epoch) if isinstance(epoch, int) else None
        info = {"layout": "{'net', 'epoch'}", "official_epoch": epoch}
        obj = obj["net"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                       for k, v in obj.items()):
        raise ConversionError(f"{path} is a PyTorch file but not an official checkpoint: expected "
                              "net.state_dict() (a dict of tensors) or {'net': state_dict, 'epoch': e}")
    return dict(obj), info


# ----------------------------------------------------------------------------------------- architecture
def detect_model(state: Dict[str, torch.Tensor]) -> Optional[str]:
    """Which official model a state_dict is, from its distinctive keys (None: none of them)."""
    if "sample_layer.0.weight" in state:
        return "esvae"
    if "fc_mu.weight" in state:
        return "ann-vae"
    if "posterior.layers.0.weight" in state:
        return "fsvae"
    return None


def _need(state, key: str, cls: str) -> torch.Tensor:
    if key not in state:
        raise ConversionError(f"not an official {cls} state_dict: missing key {key!r}")
    return state[key]


def _architecture(model: str, state: Dict[str, torch.Tensor]) -> dict:
    """in_channels, hidden, image_size, latent_dim (and T; FSVAE: k) as the official tensors' shapes say."""
    cls = OFFICIAL_CLASSES[model][0]
    conv = "encoder.{}.0.weight" if model == "ann-vae" else "encoder.{}.weight"
    first = _need(state, conv.format(0), cls)
    hidden = []
    while conv.format(len(hidden)) in state:
        hidden.append(int(state[conv.format(len(hidden))].shape[0]))
    arch = {"in_channels": int(first.shape[1]), "hidden": hidden, "image_size": 2 * 2 ** len(hidden)}
    if model == "ann-vae":
        return {**arch, "latent_dim": int(_need(state, "fc_mu.weight", cls).shape[0])}
    latent = int(_need(state, "before_latent_layer.weight", cls).shape[0])
    arch.update(latent_dim=latent, T=int(_need(state, "membrane_output_layer.coef", cls).numel()))
    if model == "fsvae":
        arch["k"] = int(_need(state, "posterior.layers.2.weight", cls).shape[0]) // latent
    return arch


def _check_buffers(model: str, state: Dict[str, torch.Tensor], T: int) -> None:
    """The dropped buffers hold the official constants: coef = 0.8^(T-1-t), FSVAE initial_input = 0."""
    if model == "ann-vae":
        return
    coef = state["membrane_output_layer.coef"].double().flatten()
    want = MEMBRANE_DECAY ** torch.arange(T - 1, -1, -1, dtype=torch.float64)
    if not torch.allclose(coef, want, rtol=1e-6, atol=0):
        raise ConversionError("membrane_output_layer.coef is not the official readout 0.8^(T-1-t): this is "
                              "not a checkpoint of the official code")
    if model == "fsvae":
        for key in ("posterior.initial_input", "prior.initial_input"):
            if state[key].count_nonzero():
                raise ConversionError(f"{key} is not zero (the official z_(-1)): this is not a checkpoint of "
                                      "the official code")


# ----------------------------------------------------------------------------------------- conversion
def _check_model(model: str, state) -> None:
    if model not in OFFICIAL_CLASSES:
        raise ConversionError(f"unknown model {model!r}; choose one of {', '.join(OFFICIAL_CLASSES)}")
    found = detect_model(state)
    if found is not None and found != model:
        raise ConversionError(f"this is an official {OFFICIAL_CLASSES[found][0]} checkpoint, not "
                              f"{OFFICIAL_CLASSES[model][0]}: pass --model {found}")


def _check_dataset(model: str, arch: dict, dataset: str) -> str:
    """The official class for the image size; refuse a dataset whose images the network does not take."""
    spec = dataset_spec(dataset)
    c, s = arch["in_channels"], arch["image_size"]
    large = s == 64
    cls = OFFICIAL_CLASSES[model][int(large)]
    if (c, s) != (spec.in_channels, spec.image_size):
        want = f"{spec.in_channels}x{spec.image_size}x{spec.image_size}"
        raise ConversionError(f"this official {cls} takes {c}x{s}x{s} images but {dataset} images are "
                              f"{want}: pass the --dataset it was trained on")
    return cls


def _as_ours(tensor: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Official Conv3d weights (k, k, 1) lose their time axis; everything else is taken as it is."""
    if tensor.dim() == 5 and target.dim() == 4 and tensor.shape[-1] == 1:
        return tensor[..., 0]
    return tensor


def convert_state_dict(state: Dict[str, torch.Tensor], model: str, dataset: str):
    """Official state_dict -> ``(our model in eval mode, report)``; ConversionError (one line) when it does
    not fit. report: official class, config, used and dropped key counts."""
    _check_model(model, state)
    arch = _architecture(model, state)
    cls = _check_dataset(model, arch, dataset)
    config = {**get_preset(model, dataset)["model"], **arch, "model": model}
    net = build_model(config)
    ours = net.state_dict()
    rows = key_table(model, len(arch["hidden"]))
    mapped, known, dropped = {}, set(), 0
    for official, our in rows:
        known.add(official)
        if official not in state:
            if our is None and _optional(model, official):
                continue
            raise ConversionError(f"not an official {cls} state_dict: missing key {official!r}")
        if our is None:
            dropped += 1
            continue
        value = _as_ours(state[official], ours[our])
        if value.shape != ours[our].shape:
            raise ConversionError(f"{official} has shape {tuple(state[official].shape)}, but the official "
                                  f"{cls} of this file needs {tuple(ours[our].shape)}: not an official "
                                  "checkpoint")
        mapped[our] = value
    unexpected = next((k for k in state if k not in known), None)
    if unexpected is not None:
        raise ConversionError(f"not an official {cls} state_dict: unexpected key {unexpected!r}")
    unfilled = next((k for k in ours if k not in mapped), None)
    if unfilled is not None:  # a defect of the key table, not of the file
        raise ConversionError(f"the {model} key table fills no value for our key {unfilled!r}")
    _check_buffers(model, state, arch.get("T", 0))
    net.load_state_dict(mapped, strict=True)
    report = {"class": cls, "config": dict(net.config), "used_keys": len(mapped), "dropped_keys": dropped}
    return net.eval(), report


def convert_official(src, model: str, dataset: str, out, *, force: bool = False) -> dict:
    """Convert the official checkpoint ``src`` into our checkpoint ``out`` (for every ``--checkpoint``);
    it records the config, the dataset and the provenance (source file, its sha256, official class, epoch).
    An existing ``out`` is kept unless ``force``; ``out`` may never be ``src`` itself."""
    src, out = Path(src), Path(out)
    if out.exists() and src.exists() and out.resolve() == src.resolve():
        raise ConversionError(f"--out {out} is the official file itself: choose another path (it is never "
                              "replaced)")
    if out.exists() and not force:
        raise ConversionError(f"{out} already exists: pass --force to replace it, or choose another --out")
    state, info = load_official(src)
    try:
        net, report = convert_state_dict(state, model, dataset)
    except ConversionError as err:
        raise ConversionError(f"{src}: {err}") from None
    epoch = info["official_epoch"]
    provenance = {"repository": REPOSITORY, "class": report["class"], "source": src.name,
                  "source_sha256": sha256_file(src), **info, "used_keys": report["used_keys"],
                  "dropped_keys": report["dropped_keys"]}
    completed = None if epoch is None else epoch + 1  # ours: epochs completed; the official e is 0-based
    save_checkpoint(out, {"model": net.state_dict(), "optimizer": None, "epoch": completed,
                          "config": report["config"], "metrics": {}, "dataset": dataset,
                          "official": provenance})
    return {"out": str(out), "dataset": dataset, **provenance, "config": report["config"]}
