"""Training and fine-tuning U²-Net on image/mask pairs (the authors' u2net_train.py, made safe).

What it keeps from the authors, because the released weights were trained that way and a
fine-tune should start where they left off:
  - preprocessing: anti-aliased resize to the model's input size (320), a random 288x288 crop,
    then ToTensorLab(flag=0): divide by the image's maximum, ImageNet mean and std
    (`transforms.normalise_input`, the very function inference uses);
  - the loss: binary cross-entropy on the fused map and on all six side outputs, summed
    ("deep supervision", muti_bce_loss_fusion);
  - Adam, learning rate 1e-3, betas (0.9, 0.999), no weight decay; batch 12.
What it adds: a random horizontal flip (people are left-right symmetric; the authors' vertical flip
is not), BCE on logits (stable, and safe under bf16 autocast), checkpoints written atomically in
the official key format (the service and `build_model` load them strictly), a training state for
`--resume`, and an optional validation set scored by mean absolute error before the first step
and at every save, with a warning when a run ends worse than its starting weights.

Fine-tuning (`init` given) differs from the authors' from-scratch recipe, by measurement (README
"Training"): on a small set their learning rate wrecks the released weights within a few steps,
and so does letting a batch of 4 crops re-estimate the batch norms' statistics. So a fine-tune
keeps the statistics (batch norms in eval mode) and uses Adam at 1e-5 unless told otherwise.

    bgremove train --images DUTS-TR/im --masks DUTS-TR/gt --init saved_models/u2net_human_seg.pth \
        --out saved_models/mine.pth        # then U2NET_WEIGHTS=saved_models/mine.pth
"""
from __future__ import annotations

import logging
import math
import multiprocessing
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageOps
from torch.utils.data import DataLoader, Dataset

from .atomic import atomic_write
from .engine import choose_device
from .model import ARCHITECTURES, U2Net
from .registry import DEFAULT_MODEL, ModelSpec, get_spec
from .transforms import normalise_input, resize_for
from .weights import build_model

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
CROP_FRACTION = 0.9  # the authors' 288 of 320
SCRATCH_LR = 1e-3  # the authors'
FINE_TUNE_LR = 1e-5  # with --init; measured on the shared U2NETP (README "Training")
WORSE_MARGIN = 0.02  # validation this much (relative) above the start: the run is hurting


class DataError(ValueError):
    """The training data cannot be used as given (missing masks, mismatched sizes, ...)."""


# -- data -----------------------------------------------------------------------------------------

def _files(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        raise DataError(f"{folder} is not a folder")
    return {p.stem: p for p in sorted(folder.iterdir())
            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES}


def _displayed_size(path: Path) -> tuple[int, int]:
    """(width, height) after the EXIF orientation is applied, from the header alone."""
    with Image.open(path) as im:
        w, h = im.size
        return (h, w) if im.getexif().get(0x0112) in (5, 6, 7, 8) else (w, h)


def loader_context() -> multiprocessing.context.BaseContext:
    """How data loading workers start: from a fork server, not by forking this process. A fork
    copies every lock another thread holds at that moment, and a process that serves or tests
    has many threads (the batcher, encoder pools, ONNX Runtime's): measured here, a forked
    worker hung for good in `torch.manual_seed` (its first step) and the loader with it. The
    server imports this module once, so each worker starts without importing torch again."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])
    return context


def find_pairs(images: Path, masks: Path) -> list[tuple[Path, Path]]:
    """Image/mask pairs matched by file stem (DUTS layout: im/x.jpg with gt/x.png).

    Fails before any training on a missing mask or an image whose mask has another size, naming
    the files: hours into a run is the wrong time to find out.
    """
    image_files, mask_files = _files(Path(images)), _files(Path(masks))
    if not image_files:
        raise DataError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {images}")
    missing = sorted(set(image_files) - set(mask_files))
    if missing:
        raise DataError(f"{len(missing)} image(s) have no mask in {masks} "
                        f"(matched by file name without extension), e.g. {', '.join(missing[:3])}")
    pairs = [(image_files[k], mask_files[k]) for k in sorted(image_files)]
    for image, mask in pairs:
        if _displayed_size(image) != _displayed_size(mask):
            raise DataError(f"{image.name} is {_displayed_size(image)} but its mask {mask.name} is "
                            f"{_displayed_size(mask)}")
    return pairs


def _load(path: Path, mode: str) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(ImageOps.exif_transpose(im).convert(mode))


class SegmentationDataset(Dataset):
    """Pairs as the network trains on them: (3, crop, crop) input and (1, crop, crop) target.

    With `augment`, a random crop and horizontal flip; without, the whole resized image (for
    validation). The target is the mask scaled to [0, 1] (soft mattes stay soft).

    The randomness comes from torch's generator: DataLoader seeds each worker from its own seeded
    generator, and persistent workers keep advancing theirs, so every epoch crops differently and
    a run is reproducible. (A counter set on the dataset would not reach persistent workers: each
    holds its own copy.)
    """

    def __init__(self, pairs: Sequence[tuple[Path, Path]], spec: ModelSpec, size: int,
                 crop: int, augment: bool = True):
        if not 0 < crop <= size:
            raise ValueError(f"crop {crop} must be between 1 and the resize side {size}")
        self.pairs, self.spec, self.size, self.crop = list(pairs), spec, size, crop
        self.augment = augment

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image_path, mask_path = self.pairs[index]
        side = (self.size, self.size)
        image = resize_for(self.spec, _load(image_path, "RGB"), side)
        mask = resize_for(self.spec, _load(mask_path, "L")[:, :, None], side)[:, :, 0]
        if self.augment:
            rng = np.random.default_rng(int(torch.randint(0, 2**62, ())))
            y, x = rng.integers(0, self.size - self.crop + 1, size=2)
            image = image[y:y + self.crop, x:x + self.crop]
            mask = mask[y:y + self.crop, x:x + self.crop]
            if rng.random() < 0.5:
                image, mask = image[:, ::-1], mask[:, ::-1]
        else:
            image, mask = _centre(image, self.crop), _centre(mask, self.crop)
        peak = float(mask.max())
        target = mask / peak if peak > 1e-6 else mask  # the authors' label / max(label)
        return (torch.from_numpy(normalise_input(np.ascontiguousarray(image), self.spec)),
                torch.from_numpy(np.ascontiguousarray(target, dtype=np.float32))[None])


def _centre(a: np.ndarray, crop: int) -> np.ndarray:
    y0 = (a.shape[0] - crop) // 2
    x0 = (a.shape[1] - crop) // 2
    return a[y0:y0 + crop, x0:x0 + crop]


# -- loss -----------------------------------------------------------------------------------------

def deep_supervision_loss(logits: Sequence[torch.Tensor], target: torch.Tensor
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """(total, fused): BCE of d0 and of each side output against the target, summed.

    The authors' muti_bce_loss_fusion, computed on logits (same value, no log(0) at saturated
    sigmoids, and autocast-safe). The fused term alone is what inference uses; it is logged.
    """
    target = target.float()
    losses = [F.binary_cross_entropy_with_logits(d.float(), target) for d in logits]
    return torch.stack(losses).sum(), losses[0]


# -- training -------------------------------------------------------------------------------------

@dataclass
class TrainConfig:
    images: Path
    masks: Path
    out: Path  # the weights file written (official format); training state beside it
    model: str = DEFAULT_MODEL  # registry name: architecture and preprocessing
    init: Path | None = None  # start from these weights (fine-tuning); else random
    steps: int = 10_000
    batch_size: int = 12
    lr: float | None = None  # default: 1e-3 from scratch (the authors'), FINE_TUNE_LR with init
    size: int | None = None  # resize side; default the model's input size (320)
    crop: int | None = None  # random crop side; default 90 % of size (288)
    val_images: Path | None = None
    val_masks: Path | None = None
    save_every: int = 1000
    log_every: int = 50
    workers: int = 2
    device: str = "auto"
    amp: bool = False  # bf16 autocast (CUDA or a CPU with bf16); loss and optimiser in fp32
    seed: int = 0
    resume: bool = False
    # Fine-tuning (init given) keeps the batch norms' statistics as they are by default (see
    # FINE_TUNE_LR); from scratch they learn. freeze_encoder also keeps the encoder's weights.
    freeze_batchnorm: bool | None = None
    freeze_encoder: bool = False
    timelapse: bool = False  # image | ground truth | prediction strips at every save, then a GIF


def state_path(out: Path) -> Path:
    """The training state beside the weights: model, optimiser, step (for --resume)."""
    return out.with_name(out.stem + ".train.pt")


def best_path(out: Path) -> Path:
    return out.with_name(out.stem + ".best" + out.suffix)


def _save_atomic(obj, path: Path) -> None:
    """torch.save, atomically: a crash mid-save (hours into a run) leaves the previous checkpoint
    whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: torch.save(obj, f))


def _batches(loader: DataLoader, start_epoch: int
             ) -> Iterator[tuple[int, tuple[torch.Tensor, torch.Tensor]]]:
    epoch = start_epoch
    while True:
        for batch in loader:
            yield epoch, batch
        epoch += 1


@torch.no_grad()
def predict(net: U2Net, x: torch.Tensor) -> torch.Tensor:
    """The fused map as inference sees it (eval mode, normPRED), 0..1; the modules' own modes
    (some frozen in eval) are put back afterwards."""
    modes = [(m, m.training) for m in net.modules()]
    net.eval()
    try:
        pred = net(x, fused_only=True).float().cpu()
    finally:
        for module, mode in modes:
            module.training = mode
    lo = pred.amin(dim=(1, 2, 3), keepdim=True)
    hi = pred.amax(dim=(1, 2, 3), keepdim=True)
    return (pred - lo) / (hi - lo).clamp_min(1e-12)  # normPRED, as inference does


def validation_mae(net: U2Net, loader: DataLoader, device: torch.device) -> float:
    """Mean absolute error of the fused map (as inference sees it) against the masks, 0..1."""
    total, count = 0.0, 0
    for x, y in loader:
        total += float((predict(net, x.to(device)) - y).abs().mean(dim=(1, 2, 3)).sum())
        count += len(x)
    return total / max(1, count)


def encoder(net: U2Net) -> list[torch.nn.Module]:
    """The encoder's modules: stages 1-6 (and IS-Net's input convolution)."""
    names = ["conv_in", *(f"stage{i}" for i in range(1, 7))]
    return [getattr(net, n) for n in names if hasattr(net, n)]


def set_training_mode(net: U2Net, freeze_batchnorm: bool, freeze_encoder: bool) -> None:
    """net.train(), except what is frozen: batch norms that keep their statistics run in eval
    mode (the pretrained running means and variances, not the batch's), and a frozen encoder
    neither learns nor updates its statistics."""
    net.train()
    if freeze_batchnorm:
        for module in net.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.eval()
    if freeze_encoder:
        for part in encoder(net):
            part.eval()
            part.requires_grad_(False)


def _validation_loader(config: TrainConfig, spec, size: int) -> DataLoader | None:
    if not config.val_images:
        return None
    if not config.val_masks:
        raise DataError("a validation set needs both val_images and val_masks")
    val_set = SegmentationDataset(find_pairs(config.val_images, config.val_masks), spec,
                                  size, size, augment=False)
    return DataLoader(val_set, batch_size=config.batch_size, num_workers=0)


def _resume(out: Path, net: U2Net, optimiser, device: torch.device
            ) -> tuple[int, int, float, float | None]:
    """(step, next epoch, best validation MAE, the starting weights' validation MAE) from the
    training state saved beside `out`."""
    if not state_path(out).is_file():
        raise FileNotFoundError(f"nothing to resume: {state_path(out)} does not exist")
    state = torch.load(state_path(out), map_location=device, weights_only=True)
    net.load_state_dict(state["model"])
    optimiser.load_state_dict(state["optimizer"])
    log.info("resumed from %s at step %d", state_path(out), state["step"])
    return (state["step"], state["epoch"] + 1, state.get("best_val_mae", math.inf),
            state.get("start_val_mae"))


# -- timelapse ------------------------------------------------------------------------------------

TIMELAPSE_SAMPLES = 4
TIMELAPSE_TILE = 160  # pixels per picture in a strip
TIMELAPSE_FPS = 2


def _timelapse_samples(train_set: SegmentationDataset, val_loader: DataLoader | None
                       ) -> SegmentationDataset:
    """The fixed pictures a timelapse follows: the first validation pairs, else the first
    training pairs (whole, not augmented)."""
    source = val_loader.dataset if val_loader is not None else train_set
    pairs = source.pairs[:TIMELAPSE_SAMPLES]  # type: ignore[attr-defined]  # a SegmentationDataset
    return SegmentationDataset(pairs, train_set.spec, train_set.size, train_set.size,
                               augment=False)


class Timelapse:
    """At every save, a strip of image | ground truth | prediction for a few fixed pictures
    (<out>.timelapse/step_NNNNNNNN.png); at the end, all of them as an animated GIF, and an MP4
    where OpenCV has a codec for it. What a run learns, and when it went wrong, at a glance."""

    def __init__(self, out: Path, samples: SegmentationDataset, device: torch.device):
        self.out, self.device = out, device
        self.folder = out.with_name(out.stem + ".timelapse")
        self.folder.mkdir(parents=True, exist_ok=True)
        self.inputs = torch.stack([samples[i][0] for i in range(len(samples))])
        side = (TIMELAPSE_TILE, TIMELAPSE_TILE)  # for the eye only: squeezed as the model sees it
        self.pictures = [cv2.resize(_load(image, "RGB"), side, interpolation=cv2.INTER_AREA)
                         for image, _ in samples.pairs]
        self.truths = [cv2.resize(_load(mask, "L"), side, interpolation=cv2.INTER_AREA)
                       for _, mask in samples.pairs]

    def add(self, net: U2Net, step: int) -> Path:
        pred = predict(net, self.inputs.to(self.device))
        pred = F.interpolate(pred, size=(TIMELAPSE_TILE, TIMELAPSE_TILE), mode="bilinear",
                             align_corners=False)
        rows = []
        for picture, truth, p in zip(self.pictures, self.truths, pred, strict=True):
            guess = (p[0].numpy() * 255).round().clip(0, 255).astype(np.uint8)
            rows.append(np.hstack([picture, *(np.repeat(m[:, :, None], 3, 2) for m in (truth, guess))]))
        header = np.full((24, rows[0].shape[1], 3), 255, np.uint8)
        strip = Image.fromarray(np.vstack([header, *rows]))
        ImageDraw.Draw(strip).text((6, 6), f"step {step}   image | ground truth | prediction",
                                   fill=(0, 0, 0))
        path = self.folder / f"step_{step:08d}.png"
        atomic_write(path, lambda f: strip.save(f, "PNG"))
        return path

    def finish(self) -> list[Path]:
        """The frames so far (a resumed run's earlier ones too) as a GIF, and an MP4 when
        OpenCV can write one; the paths written."""
        frames = [Image.open(p).convert("RGB") for p in sorted(self.folder.glob("step_*.png"))]
        if not frames:
            return []
        gif = self.out.with_name(self.out.stem + ".timelapse.gif")
        atomic_write(gif, lambda f: frames[0].save(
            f, "GIF", save_all=True, append_images=frames[1:], duration=1000 // TIMELAPSE_FPS,
            loop=0))
        written = [gif]
        mp4 = self.out.with_name(self.out.stem + ".timelapse.mp4")
        width, height = frames[0].size
        writer = cv2.VideoWriter(str(mp4), cv2.VideoWriter.fourcc(*"mp4v"), TIMELAPSE_FPS,
                                 (width, height))
        if writer.isOpened():
            for frame in frames:
                writer.write(cv2.cvtColor(np.asarray(frame), cv2.COLOR_RGB2BGR))
            writer.release()
            written.append(mp4)
        else:
            log.info("no MP4 codec in this OpenCV: the timelapse is %s only", gif)
        log.info("timelapse of %d saves: %s", len(frames), ", ".join(map(str, written)))
        return written


def _lr(config: TrainConfig) -> float:
    if config.lr is not None:
        return config.lr
    return FINE_TUNE_LR if config.init else SCRATCH_LR


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


class Checkpoints:
    """What a run keeps: the weights at every save, the validation score (first of the starting
    weights, then at each save), the best weights by it, the training state for --resume, the
    timelapse; and a warning when validation is worse than where the run started."""

    def __init__(self, config: TrainConfig, net: U2Net, optimiser, device: torch.device,
                 val_loader: DataLoader | None, timelapse: Timelapse | None,
                 best: float = math.inf, start_mae: float | None = None):
        self.config, self.out, self.net, self.optimiser = config, Path(config.out), net, optimiser
        self.device, self.val_loader, self.timelapse = device, val_loader, timelapse
        self.best, self.start_mae = best, start_mae
        self.val_mae: float | None = None
        self.validations: list[dict] = []

    @property
    def worse_than_start(self) -> bool:
        return (self.val_mae is not None and self.start_mae is not None
                and self.val_mae > self.start_mae * (1 + WORSE_MARGIN))

    def validate(self, step: int) -> None:
        if self.timelapse is not None:
            self.timelapse.add(self.net, step)
        if self.val_loader is None:
            return
        self.val_mae = validation_mae(self.net, self.val_loader, self.device)
        self.validations.append({"step": step, "validation_mae": self.val_mae})
        if self.start_mae is None:
            self.start_mae = self.val_mae
            log.info("step %d: validation MAE %.4f (the starting weights)", step, self.val_mae)
        else:
            log.info("step %d: validation MAE %.4f (best %.4f, start %.4f)", step, self.val_mae,
                     min(self.best, self.val_mae), self.start_mae)
        if self.val_mae < self.best:
            self.best = self.val_mae
            _save_atomic(self.net.state_dict(), best_path(self.out))
        if self.worse_than_start:
            log.warning("validation MAE %.4f is worse than the starting weights' %.4f: this run "
                        "is making the model worse (%s holds the best so far); try a lower --lr "
                        "or --freeze-encoder", self.val_mae, self.start_mae, best_path(self.out))

    def save(self, step: int, epoch: int) -> None:
        _save_atomic(self.net.state_dict(), self.out)
        self.validate(step)
        _save_atomic({"model": self.net.state_dict(), "optimizer": self.optimiser.state_dict(),
                      "step": step, "epoch": epoch, "best_val_mae": self.best,
                      "start_val_mae": self.start_mae,
                      "config": {k: str(v) for k, v in asdict(self.config).items()}},
                     state_path(self.out))

    def finish(self) -> dict:
        """The run's outcome, once it is over (the timelapse assembled)."""
        movie = self.timelapse.finish() if self.timelapse is not None else []
        return {"weights": str(self.out), "validations": self.validations,
                "validation_mae": self.val_mae, "start_validation_mae": self.start_mae,
                "best_validation_mae": None if self.best == math.inf else self.best,
                "worse_than_start": self.worse_than_start, "timelapse": [str(p) for p in movie]}


def train(config: TrainConfig) -> dict:
    """Run (or resume) a training; returns a summary. Writes `config.out` at every save."""
    spec = get_spec(config.model)
    size = config.size or spec.input_size
    crop = config.crop or round(size * CROP_FRACTION)
    device = choose_device(config.device)
    torch.manual_seed(config.seed)
    lr = _lr(config)
    freeze_bn = bool(config.init) if config.freeze_batchnorm is None else config.freeze_batchnorm

    train_set = SegmentationDataset(find_pairs(config.images, config.masks), spec, size, crop,
                                    augment=True)
    val_loader = _validation_loader(config, spec, size)

    net = build_model(spec, config.init) if config.init else ARCHITECTURES[spec.architecture]()
    net.to(device)
    set_training_mode(net, freeze_bn, config.freeze_encoder)
    optimiser = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=lr,
                                 betas=(0.9, 0.999), eps=1e-8, weight_decay=0)
    out = Path(config.out)
    step, epoch, best, start_mae = (_resume(out, net, optimiser, device) if config.resume
                                    else (0, 0, math.inf, None))
    timelapse = (Timelapse(out, _timelapse_samples(train_set, val_loader), device)
                 if config.timelapse else None)
    checkpoints = Checkpoints(config, net, optimiser, device, val_loader, timelapse, best,
                              start_mae)

    # drop_last: a final batch of 1 would run batch norm on a single sample. The loader's
    # generator (shuffle order, worker seeds) is seeded by the epoch too, so a resumed run does
    # not repeat the first epoch's order and crops.
    epoch_seed = config.seed * 100_003 + epoch
    torch.manual_seed(epoch_seed)  # the crops when loading in-process
    loader = DataLoader(train_set, batch_size=config.batch_size, shuffle=True,
                        num_workers=config.workers, drop_last=len(train_set) > config.batch_size,
                        pin_memory=device.type == "cuda", persistent_workers=config.workers > 0,
                        multiprocessing_context=loader_context() if config.workers > 0 else None,
                        generator=torch.Generator().manual_seed(epoch_seed))
    log.info("training %s (%s) on %d pairs, %s, batch %d, crop %d of %d, lr %g, from %s%s%s",
             spec.name, spec.architecture, len(train_set), device, config.batch_size, crop, size,
             lr, config.init or "random weights", ", batch norms frozen" if freeze_bn else "",
             ", encoder frozen" if config.freeze_encoder else "")
    if step == 0:
        checkpoints.validate(0)  # the starting point every later score is compared with
    history: list[dict] = []
    meter = _Meter(step, config.steps)
    first_epoch = epoch
    for epoch, (x, y) in _batches(loader, first_epoch) if step < config.steps else ():
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.amp):
            logits = net(x, logits=True)
        loss, fused = deep_supervision_loss(logits, y)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss became {loss.item()} at step {step + 1}; "
                                     "lower --lr or check the data")
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        step += 1
        meter.add(len(x), loss.item(), fused.item())
        if step % config.log_every == 0 or step == config.steps:
            history.append(meter.report(step, epoch))
        if step >= config.steps:
            break
        if step % config.save_every == 0:
            checkpoints.save(step, epoch)
    checkpoints.save(step, epoch)
    return {"steps": step, "epochs": epoch + 1, "history": history, "lr": lr,
            **checkpoints.finish()}


class _Meter:
    """Losses and speed between log lines, and the time left at that speed."""

    def __init__(self, first_step: int, steps: int):
        self.first_step, self.steps = first_step, steps
        self.started, self.seen = time.perf_counter(), 0
        self.running: list[tuple[float, float]] = []

    def add(self, images: int, loss: float, fused: float) -> None:
        self.seen += images
        self.running.append((loss, fused))

    def report(self, step: int, epoch: int) -> dict:
        total, fused = np.mean(self.running, axis=0)
        elapsed = time.perf_counter() - self.started
        left = (self.steps - step) * elapsed / max(1, step - self.first_step)
        log.info("step %d/%d  epoch %d  loss %.4f  fused %.4f  %.1f images/s  %s left", step,
                 self.steps, epoch, total, fused, self.seen / elapsed, _duration(left))
        self.running.clear()
        return {"step": step, "loss": float(total), "fused": float(fused),
                "seconds_left": round(left, 1)}
