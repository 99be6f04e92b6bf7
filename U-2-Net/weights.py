"""Finding, verifying, loading and downloading checkpoints.

Loading is strict and safe: `torch.load(weights_only=True)` (no pickle code runs) and
`load_state_dict(strict=True)` (a checkpoint for another architecture fails loudly instead of
producing garbage masks). Downloads try each of a model's sources in turn (registry.Source); a file
goes to a temporary file beside the destination and is put in place only after its checksum and a
strict load (or, for an ONNX export, a proved import) pass, so no partial file is ever left behind.
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
from typing import TYPE_CHECKING

from .registry import ModelLoadError, ModelSpec, Source

if TYPE_CHECKING:
    from .model import U2Net

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
    # torch is imported here, not with the module: the commands that only name, fetch or list
    # weights (bgremove models, download, --help) then answer in a fraction of a second, not
    # after torch's two-second import.
    import torch

    from .model import ARCHITECTURES

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


def expected_checksum(source: Source, sha256: str | None = None) -> Checksum | None:
    """The checksum a fetched file must match: a pinned SHA-256 first, then the source's own."""
    if sha256:
        return Checksum("sha256", sha256.lower())
    if source.sha256:
        return Checksum("sha256", source.sha256)
    if source.md5:
        return Checksum("md5", source.md5)
    return None


@dataclass(frozen=True)
class Downloaded:
    source: Source
    fetched_sha256: str  # of the file fetched from the source
    sha256: str  # of the .pth written (the same file for a .pth source; the import for ONNX)


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


def download(spec: ModelSpec, dest: Path, *, sources: tuple[Source, ...] | None = None,
             sha256: str | None = None, progress: bool = True, timeout: float = 60.0) -> Downloaded:
    """Fetch `spec`'s weights to `dest` (a .pth), verify them, and say where they came from.

    Tries each source in turn (the registry's, unless `sources` are given). A fetched file must
    match its checksum (the pinned `sha256`, else the source's own), then a .pth must load strictly
    into the architecture, and an ONNX export must import into it and agree with ONNX Runtime
    (u2net.onnx_import). Only then is `dest` written, atomically; on any failure `dest` is left as
    it was and nothing else remains.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    errors = []
    for source in sources or spec.sources:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
        tmp = Path(tmp_name)
        try:
            fetched = _fetch_verified(source, fd, sha256, spec, progress, timeout)
            written = _install(source, tmp, dest, spec) or fetched
            if expected_checksum(source, sha256) is None:
                log.warning("no published checksum for %s from %s; verified only by loading it into "
                            "the architecture. SHA-256 %s (pin it with --sha256)", spec.name,
                            source.host, fetched)
            return Downloaded(source, fetched, written)
        except Exception as exc:  # try the next source; report all failures at the end
            errors.append(f"{source.host} ({source.url}): {exc}")
        finally:
            tmp.unlink(missing_ok=True)
    raise WeightsError(f"could not download {spec.name}: " + "; ".join(errors) + ". "
                       f"Without network access, fetch the file elsewhere and run: bgremove "
                       f"download {spec.name} --url file:///path/to/{spec.filename} (or an ONNX "
                       "export: .onnx) --sha256 <its SHA-256>")


def _fetch_verified(source: Source, fd: int, sha256: str | None, spec: ModelSpec, progress: bool,
                    timeout: float) -> str:
    """Fetch `source` into the open file `fd`, check its checksum, return its SHA-256."""
    hashers = {"sha256": hashlib.sha256(), "md5": hashlib.md5()}
    with os.fdopen(fd, "wb") as f:
        _download_to(source.url, f, list(hashers.values()), spec.filename, progress, timeout)
        f.flush()
        os.fsync(f.fileno())
    got = {name: h.hexdigest() for name, h in hashers.items()}
    want = expected_checksum(source, sha256)
    if want and got[want.algorithm] != want.expected:
        raise WeightsError(f"checksum mismatch: {want.algorithm} {got[want.algorithm]}, "
                           f"expected {want.expected}")
    return got["sha256"]


def _install(source: Source, fetched: Path, dest: Path, spec: ModelSpec) -> str | None:
    """Put the verified file in place as `dest`; returns the SHA-256 of what was written when it
    is not the fetched file itself (an imported ONNX export)."""
    if source.kind == "pth":
        build_model(spec, fetched)  # a file that does not load strictly is not kept
        os.chmod(fetched, 0o644)
        os.replace(fetched, dest)
        return None
    from .onnx_import import import_to_file  # onnx is needed only here

    import_to_file(fetched, spec, dest)
    return file_digest(dest)


__all__ = [
    "Downloaded", "WeightsError", "build_model", "clean_state_dict", "default_weights_path", "download",
    "expected_checksum", "fetch_command", "file_digest", "resolve_weights",
]
