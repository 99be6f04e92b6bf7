"""Finding, verifying, loading and downloading checkpoints.

Loading is strict and safe: `torch.load(weights_only=True)` (no pickle code runs) and
`load_state_dict(strict=True)` (a checkpoint for another architecture fails loudly instead of
producing garbage masks). Downloads go to a temporary file beside the destination and are renamed
into place only after the checksum and a strict load pass, so no partial file is ever left behind.
"""
from __future__ import annotations

import hashlib
import logging
import os
import sys
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import torch

from .model import ARCHITECTURES, U2Net
from .registry import ModelLoadError, ModelSpec

log = logging.getLogger(__name__)

_PREFIXES = ("module.", "_orig_mod.")  # DataParallel / torch.compile wrappers


class WeightsError(ModelLoadError, RuntimeError):
    """Weights missing, unreadable, for the wrong architecture, or failing their checksum."""


def fetch_command(spec: ModelSpec) -> str:
    return f"bgremove download {spec.name}"


def default_weights_path(models_dir: Path, spec: ModelSpec) -> Path:
    return Path(models_dir) / spec.name / spec.filename


def resolve_weights(spec: ModelSpec, models_dir: Path, override: Path | None = None) -> Path:
    """The weights file to use: `override` if given, else saved_models/<name>/<name>.pth."""
    path = Path(override) if override else default_weights_path(models_dir, spec)
    if not path.is_file():
        hint = (
            "check U2NET_WEIGHTS" if override
            else f"fetch it with: {fetch_command(spec)}  (or set U2NET_WEIGHTS to your own .pth)"
        )
        raise WeightsError(f"weights for model {spec.name!r} not found at {path}; {hint}")
    return path


def file_digest(path: Path, algorithm: str = "sha256") -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def clean_state_dict(state: dict) -> dict:
    """Strip wrapper prefixes (`module.`, `_orig_mod.`) so any saved copy of a model loads."""
    cleaned = {}
    for key, value in state.items():
        for prefix in _PREFIXES:
            while key.startswith(prefix):
                key = key[len(prefix):]
        cleaned[key] = value
    return cleaned


def build_model(spec: ModelSpec, path: Path) -> U2Net:
    """The network of `spec` with the weights in `path`, loaded strictly, in eval mode, on CPU."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling / zip errors have many types
        raise WeightsError(f"cannot read weights file {path}: {exc}") from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]  # training checkpoints that wrap the weights
    if not isinstance(state, dict):
        raise WeightsError(f"weights file {path} does not hold a state_dict")
    net = ARCHITECTURES[spec.architecture]()
    try:
        result = net.load_state_dict(clean_state_dict(state), strict=False)
        problem = _describe_mismatch(result.missing_keys, result.unexpected_keys)
    except RuntimeError as exc:  # shape mismatches raise even when not strict
        problem = str(exc).strip().splitlines()[-1].strip()
    if problem:
        raise WeightsError(
            f"weights file {path} does not fit the {spec.architecture} architecture of model "
            f"{spec.name!r}: {problem.rstrip('.')}. Is it a checkpoint for another model?")
    return net.eval()


def _describe_mismatch(missing: list[str], unexpected: list[str]) -> str:
    """Strict loading, with a readable account of what did not match ('' when all did)."""
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:3])})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:3])})")
    return "; ".join(parts)


@dataclass(frozen=True)
class Checksum:
    algorithm: str
    expected: str


def expected_checksum(spec: ModelSpec, sha256: str | None = None) -> Checksum | None:
    """The checksum a download must match: a pinned SHA-256 first, then the registry's."""
    if sha256:
        return Checksum("sha256", sha256.lower())
    if spec.sha256:
        return Checksum("sha256", spec.sha256)
    if spec.md5:
        return Checksum("md5", spec.md5)
    return None


def _progress(total: int | None, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc,
                disable=not enabled, file=sys.stderr)


def _download_to(url: str, fileobj, hashers: list, desc: str, progress: bool, timeout: float) -> None:
    request = urllib.request.Request(url, headers={"User-Agent": "u2net-service"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        content_type = response.headers.get("Content-Type", "")
        if content_type.startswith("text/html"):
            raise WeightsError(f"{url} answered with a web page, not a weights file "
                               "(download quota or a changed link?)")
        length = response.headers.get("Content-Length")
        expected = int(length) if length and length.isdigit() else None
        received = 0
        with _progress(expected, desc, progress) as bar:
            for chunk in iter(lambda: response.read(1 << 20), b""):
                fileobj.write(chunk)
                for h in hashers:
                    h.update(chunk)
                received += len(chunk)
                bar.update(len(chunk))
        if expected is not None and received != expected:
            raise WeightsError(f"download cut short: got {received} of {expected} bytes")


def download(spec: ModelSpec, dest: Path, *, urls: tuple[str, ...] | None = None,
             sha256: str | None = None, progress: bool = True, timeout: float = 60.0) -> str:
    """Fetch `spec`'s weights to `dest`, verify them, and return their SHA-256.

    Tries each source in turn. The file is verified by checksum (when one is known or pinned) and
    by a strict load into the architecture before it is renamed into place; on any failure the
    temporary file is removed and `dest` is left as it was.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    want = expected_checksum(spec, sha256)
    errors = []
    for url in urls or spec.urls:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
        tmp = Path(tmp_name)
        try:
            hashers = {"sha256": hashlib.sha256(), "md5": hashlib.md5()}
            with os.fdopen(fd, "wb") as f:
                _download_to(url, f, list(hashers.values()), spec.filename, progress, timeout)
                f.flush()
                os.fsync(f.fileno())
            got = {name: h.hexdigest() for name, h in hashers.items()}
            if want and got[want.algorithm] != want.expected:
                raise WeightsError(f"checksum mismatch for {spec.filename} from {url}: "
                                   f"{want.algorithm} {got[want.algorithm]}, expected {want.expected}")
            build_model(spec, tmp)  # a file that does not load strictly is not kept
            os.chmod(tmp, 0o644)
            os.replace(tmp, dest)
            if want is None:
                log.warning("no published checksum for %s; verified by a strict load only. "
                            "SHA-256 %s (pin it with --sha256)", spec.name, got["sha256"])
            return got["sha256"]
        except Exception as exc:  # try the next source; report all failures at the end
            errors.append(f"{url}: {exc}")
            tmp.unlink(missing_ok=True)
    raise WeightsError(f"could not download {spec.name}: " + "; ".join(errors))


__all__ = [
    "WeightsError", "build_model", "clean_state_dict", "default_weights_path", "download",
    "expected_checksum", "fetch_command", "file_digest", "resolve_weights",
]
