"""The models this service can run, each with everything that must stay consistent with its weights.

One `ModelSpec` per released checkpoint: architecture, file name, size, the places its weights can
be fetched from (each with that file's checksum where one is published), and the preprocessing the
weights were trained with. The code that
feeds a model reads these fields, so input size and normalisation cannot drift from the weights.
"""
from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Source:
    """One place a model's weights can be fetched from, with the checksum of that very file.

    `kind` is "pth" (a state dict, loaded strictly) or "onnx" (an export, imported into the
    architecture by u2net.onnx_import and proved against ONNX Runtime before it is kept). Where no
    checksum is published (the authors' own Drive files) the strict load is the only check.
    """
    url: str
    host: str  # who publishes it, for messages: "authors' Google Drive", "rembg's GitHub release"
    kind: str = "pth"
    sha256: str | None = None
    md5: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in SOURCE_KINDS:
            raise ValueError(f"source kind must be one of {SOURCE_KINDS}, not {self.kind!r}")


SOURCE_KINDS = ("pth", "onnx")


def source_kind(url: str) -> str:
    """The kind of a source given only by its URL (`bgremove download --url`): by its suffix."""
    path = url.split("?", 1)[0].split("#", 1)[0]
    return "onnx" if path.lower().endswith(".onnx") else "pth"


@dataclass(frozen=True)
class ModelSpec:
    name: str
    architecture: str  # key of model.ARCHITECTURES
    filename: str
    size_mb: float  # approximate, for the progress bar and the docs
    sources: tuple[Source, ...]  # tried in order by `bgremove download`
    description: str = ""
    licence: str = "Apache-2.0"
    input_size: int = 320  # square side the network sees (authors' RescaleT(320))
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)  # ImageNet, after dividing by max
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    # How the authors brought a photo to the input (transforms.to_model_input): "antialiased"
    # (U²-Net: skimage's resize, then divided by the image's maximum) or "bilinear" (IS-Net: a
    # plain bilinear resize truncated back to 8 bits, then divided by 255).
    resize: str = "antialiased"
    # Refine's parameters that differ for this model's masks from Image_PostProcesser.REFINE (which
    # was chosen on U2NETP's): (name, value) pairs of RefineParams fields.
    refine: tuple[tuple[str, float], ...] = ()


def _google_drive(file_id: str) -> str:
    # The usercontent endpoint with confirm=t serves large files without the virus-scan page.
    return f"https://drive.usercontent.google.com/download?id={file_id}&export=download&confirm=t"


def _drive(file_id: str, md5: str | None = None) -> Source:
    return Source(_google_drive(file_id), "the authors' Google Drive", md5=md5)


# rembg's ONNX exports, with the MD5s rembg itself checks (rembg/sessions/*.py). Drive often refuses
# automated downloads ("quota exceeded"; rembg issues #2, #39, #187, #318, #328): these are the
# checksummed fallback, imported into the architecture after the checksum matches.
_REMBG = "https://github.com/danielgatis/rembg/releases/download/v0.0.0/"


def _rembg(filename: str, md5: str) -> Source:
    return Source(_REMBG + filename, "rembg's GitHub release (ONNX)", kind="onnx", md5=md5)


def _hugging_face(repo: str, filename: str, sha256: str) -> Source:
    # The SHA-256 Hugging Face publishes for the file (its LFS object id). Whether these mirrors
    # equal the authors' Drive files is unconfirmed; the strict load checks the architecture.
    return Source(f"https://huggingface.co/{repo}/resolve/main/{filename}",
                  f"Hugging Face mirror {repo}", sha256=sha256)


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            name="u2net_human_seg",
            architecture="U2NET",
            filename="u2net_human_seg.pth",
            size_mb=176.3,
            sources=(
                _drive("1m_Kgs91b21gayc2XLW0ou8yugAIadWVP"),
                _hugging_face("damli/u2net", "u2net_human_seg.pth",
                              "13f0396e3f6fbc1d7ab55a8558640bef306a59b9110a5c595eb949ff69cf2414"),
                _rembg("u2net_human_seg.onnx", "c09ddc2e0104f800e3e1bb4652583d1f"),
            ),
            description="Full U2NET trained for human segmentation (the OpenClone model).",
        ),
        ModelSpec(
            name="u2net",
            architecture="U2NET",
            filename="u2net.pth",
            size_mb=176.3,
            sources=(
                _drive("1ao1ovG1Qtx4b7EoskHXmi2E9rp5CHLcZ"),
                _hugging_face("akhaliq/U-2-Net", "u2net.pth",
                              "10025a17f49cd3208afc342b589890e402ee63123d6f2d289a4a0903695cce58"),
                _rembg("u2net.onnx", "60024c5c889badc19c04ad937298a77b"),
            ),
            description="Full U2NET for salient objects (general-purpose).",
        ),
        ModelSpec(
            name="u2netp",
            architecture="U2NETP",
            filename="u2netp.pth",
            size_mb=4.7,
            sources=(
                # The one MD5 every public downloader agrees on for the Drive file.
                _drive("1rbSTGKAE-MTxBYHd-51l2hMOQPT_7EPy", md5="e4f636406ca4e2af789941e7f139ee2e"),
                _rembg("u2netp.onnx", "8e83ca70e441ab06c318d82300c84806"),
            ),
            description="U2NETP, the 1.1 M-parameter variant (salient objects).",
        ),
        ModelSpec(
            name="isnet-general-use",
            architecture="ISNetDIS",
            filename="isnet-general-use.pth",
            size_mb=176.6,
            sources=(
                # Checksummed first: the DIS README names this file with two Drive ids (and a
                # third, broken link), so the Drive copies are only candidates.
                _rembg("isnet-general-use.onnx", "fc16ebd8b0c10d971d3513d564d01e29"),
                _drive("1XHIzgTzY5BQHw140EDIgwIb53K659ENH"),
                _drive("1nV57qKuy--d5u1yvkng9aXW1KS4sOpOi"),
            ),
            description="IS-Net general use (ECCV 2022): salient objects, sharper and better at "
                        "people than U²-Net, at 1024x1024 (several times the compute).",
            input_size=1024,
            mean=(0.5, 0.5, 0.5),
            std=(1.0, 1.0, 1.0),
            resize="bilinear",
            # IS-Net's 1024 px map is already sharp: a smaller window on a finer coarse copy
            # keeps its edges. Chosen on a small grid (README "IS-Net"): on the portraits SAD
            # 10.47 and gradient 9.70 against soft's 11.20 and 10.45 (the U2NETP values gave
            # 11.56 and 9.88); DAVIS IoU 0.728 against soft's 0.729 (U2NETP values: 0.722).
            # Its confident masks need no bound: bounding moved SAD to 10.93, gradient to 9.57,
            # stray alpha from 2.20 to 2.15 (soft: 2.31).
            refine=(("radius_frac", 0.01), ("coarse_side", 200), ("bound_frac", 0.0)),
        ),
    )
}

DEFAULT_MODEL = "u2net_human_seg"

# How a model may run; here (no torch import) so that the settings can check them at start.
ENGINES = ("auto", "torch", "onnxruntime")  # auto: ONNX Runtime on CPU, PyTorch on CUDA
# auto: fp32, or on a CPU with bf16 matrix units the faster of centred bf16 and fp32 (engine.candidates)
PRECISIONS = ("auto", "fp32", "tf32", "bf16", "fp16")
DEVICES = "auto, cpu, cuda or cuda:N"
_DEVICE = re.compile(r"^(auto|cpu|cuda(:[0-9]+)?)$")


def is_custom_model(model: str) -> bool:
    """Whether a model setting names an ONNX file (u2net/custom.py) rather than a registry entry."""
    return model.lower().endswith(".onnx")


def is_device_name(name: str) -> bool:
    return bool(_DEVICE.match(name))


def engine_precision_error(engine: str, precision: str) -> str | None:
    """Why `engine` cannot run `precision`, or None when it can."""
    if engine == "onnxruntime" and precision not in ("fp32", "auto"):
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
