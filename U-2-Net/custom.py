"""Custom models: any single-input segmentation network in ONNX, described by a JSON file beside it.

`U2NET_MODEL=/models/birefnet.onnx` runs that file through the same pipeline as the built-in
models (decode, resize, forward, mask, post-processing, encode, atomic write). What the pipeline
must know about it, and cannot read from the graph, comes from `birefnet.onnx.json`:

    {"input_size": 1024, "resize": "bilinear", "mean": [0.485, 0.456, 0.406],
     "std": [0.229, 0.224, 0.225], "output": 0, "sigmoid": true, "normalise": "minmax"}

It is read and checked once at load; each error names the field, what was wrong and what to write
instead, and the graph is checked against it (one 4-D image input, the output that exists, the
input size when the graph fixes one). ONNX Runtime runs it: with the CUDA execution provider when
`onnxruntime-gpu` and a GPU are there, else on CPU (a warning says so when a GPU was there).
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .engine import onnx_session
from .registry import ModelLoadError, ModelSpec
from .transforms import normalise_prediction

log = logging.getLogger(__name__)

RESIZES = ("bilinear", "antialiased")
NORMALISATIONS = ("minmax", "none")
EXAMPLE = ('{"input_size": 1024, "resize": "bilinear", "mean": [0.485, 0.456, 0.406], '
           '"std": [0.229, 0.224, 0.225], "output": 0, "sigmoid": true, "normalise": "minmax"}')
_FIELDS = {
    "input_size": "the square side the network sees, in pixels (e.g. 1024)",
    "resize": f"how a photo is brought to that size: one of {', '.join(RESIZES)}",
    "mean": "3 numbers subtracted per channel after scaling pixels to [0, 1]",
    "std": "3 positive numbers the result is divided by",
    "output": "which output is the mask: its index (0 is the first) or its name",
    "sigmoid": "true if that output is logits (before the sigmoid)",
    "normalise": "minmax (stretch each mask to [0, 1], as U²-Net does) or none (clip to [0, 1])",
    "name": "the name the service reports (default: the file's name without .onnx)",
    "description": "one line about the model",
    "licence": "the weights' licence, as published",
}
_REQUIRED = ("input_size", "mean", "std")


class CustomModelError(ModelLoadError):
    """A custom model's file or description cannot be used; the message says how to fix it."""


@dataclass(frozen=True)
class CustomOutput:
    """How a custom model's output becomes a mask in [0, 1]."""

    output: int | str = 0
    sigmoid: bool = False
    normalise: str = "minmax"


def description_path(onnx_path: Path) -> Path:
    return onnx_path.with_name(onnx_path.name + ".json")


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_triple(v) -> bool:
    return isinstance(v, list) and len(v) == 3 and all(_is_number(x) for x in v)


_CHECKS = {
    "input_size": lambda v: isinstance(v, int) and not isinstance(v, bool) and 16 <= v <= 8192,
    "resize": lambda v: v in RESIZES,
    "mean": _is_triple,
    "std": lambda v: _is_triple(v) and all(x > 0 for x in v),
    "output": lambda v: isinstance(v, str) or (isinstance(v, int) and not isinstance(v, bool)
                                                and v >= 0),
    "sigmoid": lambda v: isinstance(v, bool),
    "normalise": lambda v: v in NORMALISATIONS,
    "name": lambda v: isinstance(v, str),
    "description": lambda v: isinstance(v, str),
    "licence": lambda v: isinstance(v, str),
}
_DEFAULTS = {"resize": "bilinear", "output": 0, "sigmoid": False, "normalise": "minmax",
             "name": "", "description": "", "licence": ""}


def _load_json(onnx_path: Path) -> dict:
    """The description's JSON object, with every field present and checked."""
    if not onnx_path.is_file():
        raise CustomModelError(f"custom model {onnx_path}: no such file")
    where = description_path(onnx_path)
    if not where.is_file():
        raise CustomModelError(f"custom model {onnx_path} needs a description beside it, {where}, "
                               f"for example: {EXAMPLE}")
    try:
        data = json.loads(where.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise CustomModelError(f"{where} is not valid JSON ({exc}); for example: {EXAMPLE}") from None
    if not isinstance(data, dict):
        raise CustomModelError(f"{where} must hold one JSON object; for example: {EXAMPLE}")
    unknown = sorted(set(data) - set(_FIELDS))
    if unknown:
        raise CustomModelError(f"{where}: unknown field(s) {', '.join(unknown)}; the fields are: "
                               + "; ".join(f"{k} ({v})" for k, v in _FIELDS.items()))
    missing = [k for k in _REQUIRED if k not in data]
    if missing:
        raise CustomModelError(f"{where}: missing {', '.join(missing)}: "
                               + "; ".join(f"{k} is {_FIELDS[k]}" for k in missing))
    values = {**_DEFAULTS, **data}
    for field, value in values.items():
        if not _CHECKS[field](value):
            raise CustomModelError(f"{where}: {field} is {_FIELDS[field]}, got {json.dumps(value)}")
    return values


def read_description(onnx_path: Path) -> tuple[ModelSpec, CustomOutput]:
    """The model's spec (input size, resize, normalisation, name) and output handling, from its
    JSON description. Raises CustomModelError."""
    v = _load_json(onnx_path)
    spec = ModelSpec(
        name=v["name"] or onnx_path.name[: -len(".onnx")],
        architecture="onnx", filename=onnx_path.name,
        size_mb=round(onnx_path.stat().st_size / 2**20, 1), sources=(),
        description=v["description"] or f"custom ONNX model {onnx_path.name}",
        licence=v["licence"] or "see the model's publisher", input_size=v["input_size"],
        mean=tuple(float(x) for x in v["mean"]), std=tuple(float(x) for x in v["std"]),  # type: ignore[arg-type]  # 3 numbers, checked
        resize=v["resize"])
    return spec, CustomOutput(output=v["output"], sigmoid=v["sigmoid"], normalise=v["normalise"])


def providers_for(device: torch.device) -> list[str]:
    """ONNX Runtime's execution providers for `device`: CUDA first when asked for and present."""
    import onnxruntime as ort

    if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        return [("CUDAExecutionProvider", {"device_id": device.index or 0}),  # type: ignore[list-item]
                "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class CustomOnnxPredictor:
    """A custom model run by ONNX Runtime: (n, 3, S, S) float32 in, (n, h, w) masks in [0, 1] out."""

    engine = "onnxruntime"
    precision = "fp32"

    def __init__(self, onnx_path: Path, spec: ModelSpec, output: CustomOutput,
                 device: torch.device, threads: int | None = None):
        try:
            self.session = onnx_session(str(onnx_path), providers_for(device), threads)
        except Exception as exc:  # onnxruntime raises its own exception types
            raise CustomModelError(f"ONNX Runtime cannot load {onnx_path}: {exc}") from None
        ran_on = self.session.get_providers()[0]
        self.device = torch.device(device if ran_on == "CUDAExecutionProvider" else "cpu")
        if self.device.type == "cpu" and torch.cuda.is_available():
            log.warning("a GPU is present but %s runs on ONNX Runtime's CPU provider: install "
                        "onnxruntime-gpu for its CUDA provider", onnx_path.name)
        self.provider = ran_on
        self.output = output
        self._input, self._fixed_batch = self._check_input(onnx_path, spec)
        self._output_index = self._check_output(onnx_path, output.output)

    def _check_input(self, onnx_path: Path, spec: ModelSpec) -> tuple[str, bool]:
        inputs = self.session.get_inputs()
        where = f"{onnx_path.name}"
        if len(inputs) != 1 or len(inputs[0].shape) != 4:
            shapes = ", ".join(f"{i.name} {i.shape}" for i in inputs)
            raise CustomModelError(f"{where}: a custom model needs one image input shaped "
                                   f"(batch, 3, height, width); this one has: {shapes}")
        batch, channels, height, width = inputs[0].shape
        if isinstance(channels, int) and channels != 3:
            raise CustomModelError(f"{where}: its input has {channels} channels; RGB needs 3")
        for side in (height, width):
            if isinstance(side, int) and side != spec.input_size:
                raise CustomModelError(
                    f"{description_path(onnx_path)}: input_size is {spec.input_size} but the "
                    f"graph's input is {height}x{width}; set \"input_size\": {side}")
        return inputs[0].name, isinstance(batch, int)

    def _check_output(self, onnx_path: Path, wanted: int | str) -> int:
        names = [o.name for o in self.session.get_outputs()]
        if isinstance(wanted, int) and wanted < len(names):
            return wanted
        if isinstance(wanted, str) and wanted in names:
            return names.index(wanted)
        listed = ", ".join(f"{i} ({n})" for i, n in enumerate(names))
        raise CustomModelError(f"{description_path(onnx_path)}: output is {json.dumps(wanted)}, "
                               f"but the graph's outputs are: {listed}")

    def _run(self, batch: np.ndarray) -> np.ndarray:
        name = self.session.get_outputs()[self._output_index].name
        return self.session.run([name], {self._input: batch})[0]

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        if self._fixed_batch and len(batch) > 1:  # a graph exported for one image at a time
            raw = np.concatenate([self._run(batch[i:i + 1]) for i in range(len(batch))])
        else:
            raw = self._run(batch)
        maps = _as_maps(raw.astype(np.float32, copy=False), len(batch))
        if self.output.sigmoid:
            maps = 1.0 / (1.0 + np.exp(-maps))
        if self.output.normalise == "minmax":
            return np.stack([normalise_prediction(m) for m in maps])
        return np.clip(maps, 0.0, 1.0)


def _as_maps(raw: np.ndarray, n: int) -> np.ndarray:
    """(n, 1, h, w), (n, h, w) or (n, h, w, 1) -> (n, h, w)."""
    if raw.ndim == 4 and raw.shape[1] == 1:
        return raw[:, 0]
    if raw.ndim == 4 and raw.shape[3] == 1:
        return raw[..., 0]
    if raw.ndim == 3:
        return raw
    raise CustomModelError(f"the mask output is shaped {raw.shape}; expected one map per image "
                           f"({n}, 1, height, width)")
