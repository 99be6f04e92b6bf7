"""The models this service can run, each with everything that must stay consistent with its weights.

One `ModelSpec` per released checkpoint: architecture, file name, size, checksum where a trustworthy
one is known, official source, and the preprocessing the weights were trained with. The code that
feeds a model reads these fields, so input size and normalisation cannot drift from the weights.
"""
from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class ModelSpec:
    name: str
    architecture: str  # key of model.ARCHITECTURES
    filename: str
    size_mb: float  # approximate, for the progress bar and the docs
    urls: tuple[str, ...]  # official source first
    # Checksums of the official file. None where no authoritative value is published: the U-2-Net
    # authors publish none, and public downloaders disagree on which MD5 belongs to u2net and which
    # to u2net_human_seg. A deployment pins one with `download --sha256` / U2NET_WEIGHTS_SHA256.
    sha256: str | None = None
    md5: str | None = None
    description: str = ""
    input_size: int = 320  # square side the network sees (authors' RescaleT(320))
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)  # ImageNet, after dividing by max
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    # How the authors brought a photo to the input (transforms.to_model_input): "antialiased"
    # (U²-Net: skimage's resize, then divided by the image's maximum) or "bilinear" (IS-Net: a
    # plain bilinear resize truncated back to 8 bits, then divided by 255).
    resize: str = "antialiased"


def _google_drive(file_id: str) -> str:
    # The usercontent endpoint with confirm=t serves large files without the virus-scan page.
    return f"https://drive.usercontent.google.com/download?id={file_id}&export=download&confirm=t"


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            name="u2net_human_seg",
            architecture="U2NET",
            filename="u2net_human_seg.pth",
            size_mb=176.3,
            urls=(_google_drive("1m_Kgs91b21gayc2XLW0ou8yugAIadWVP"),),
            description="Full U2NET trained for human segmentation (the OpenClone model).",
        ),
        ModelSpec(
            name="u2net",
            architecture="U2NET",
            filename="u2net.pth",
            size_mb=176.3,
            urls=(_google_drive("1ao1ovG1Qtx4b7EoskHXmi2E9rp5CHLcZ"),),
            description="Full U2NET for salient objects (general-purpose).",
        ),
        ModelSpec(
            name="u2netp",
            architecture="U2NETP",
            filename="u2netp.pth",
            size_mb=4.7,
            urls=(_google_drive("1rbSTGKAE-MTxBYHd-51l2hMOQPT_7EPy"),),
            # The one MD5 every public downloader agrees on.
            md5="e4f636406ca4e2af789941e7f139ee2e",
            description="U2NETP, the 1.1 M-parameter variant (salient objects).",
        ),
        ModelSpec(
            name="isnet-general-use",
            architecture="ISNetDIS",
            filename="isnet-general-use.pth",
            size_mb=176.6,
            # The DIS README names this file with two Drive ids; both are listed (issue 11 will
            # add checksummed mirrors).
            urls=(_google_drive("1XHIzgTzY5BQHw140EDIgwIb53K659ENH"),
                  _google_drive("1nV57qKuy--d5u1yvkng9aXW1KS4sOpOi")),
            description="IS-Net general use (ECCV 2022): salient objects, sharper and better at "
                        "people than U²-Net, at 1024x1024 (several times the compute).",
            input_size=1024,
            mean=(0.5, 0.5, 0.5),
            std=(1.0, 1.0, 1.0),
            resize="bilinear",
        ),
    )
}

DEFAULT_MODEL = "u2net_human_seg"

# How a model may run; here (no torch import) so that the settings can check them at start.
ENGINES = ("auto", "torch", "onnxruntime")  # auto: ONNX Runtime on CPU, PyTorch on CUDA
PRECISIONS = ("fp32", "tf32", "bf16", "fp16")
DEVICES = "auto, cpu, cuda or cuda:N"
_DEVICE = re.compile(r"^(auto|cpu|cuda(:[0-9]+)?)$")


def is_device_name(name: str) -> bool:
    return bool(_DEVICE.match(name))


def engine_precision_error(engine: str, precision: str) -> str | None:
    """Why `engine` cannot run `precision`, or None when it can."""
    if engine == "onnxruntime" and precision != "fp32":
        return "the onnxruntime engine runs fp32 only; use U2NET_ENGINE=torch (or auto)"
    return None


class ModelLoadError(Exception):
    """The configured model cannot be loaded (unknown name, missing or bad weights): the service
    refuses to start, with a message that says what to do."""


class UnknownModel(ModelLoadError, ValueError):
    pass


def get_spec(name: str) -> ModelSpec:
    """The spec named `name`; an unknown name raises an error listing the valid ones."""
    try:
        return MODELS[name]
    except KeyError:
        valid = ", ".join(sorted(MODELS))
        raise UnknownModel(f"unknown model {name!r}; choose one of: {valid}") from None
