"""Training (u2net.train, `bgremove train`): data pairing, augmentation, the authors' loss, a run
that learns, checkpoints the service loads, resume and validation. Tiny images keep it fast."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from u2net.registry import get_spec
from u2net.train import (
    DataError,
    SegmentationDataset,
    TrainConfig,
    best_path,
    deep_supervision_loss,
    find_pairs,
    loader_context,
    state_path,
    train,
)
from u2net.weights import build_model


def scene(size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A warm ellipse (the subject) somewhere on a cool, noisy background, and its mask."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    cy, cx = rng.uniform(0.3, 0.7, 2) * size
    ry, rx = rng.uniform(0.15, 0.3, 2) * size
    inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1
    image = rng.integers(0, 70, (size, size, 3)).astype(np.uint8)
    image[..., 2] += 60
    image[inside] = rng.integers(170, 240, 3)
    return image, (inside * 255).astype(np.uint8)


def write_pairs(folder, count: int, size: int = 64, seed: int = 0):
    images, masks = folder / "images", folder / "masks"
    images.mkdir(parents=True)
    masks.mkdir(parents=True)
    for i in range(count):
        image, mask = scene(size, seed + i)
        Image.fromarray(image).save(images / f"p{i:02d}.jpg", quality=95)
        Image.fromarray(mask).save(masks / f"p{i:02d}.png")
    return images, masks


def test_loss_is_the_authors_bce_on_all_seven_outputs():
    torch.manual_seed(0)
    logits = [torch.randn(2, 1, 8, 8) * 3 for _ in range(7)]
    target = (torch.rand(2, 1, 8, 8) > 0.5).float()
    total, fused = deep_supervision_loss(logits, target)
    authors = sum(F.binary_cross_entropy(torch.sigmoid(d), target) for d in logits)
    assert torch.allclose(total, authors, atol=1e-5)
    assert torch.allclose(fused, F.binary_cross_entropy(torch.sigmoid(logits[0]), target),
                          atol=1e-6)


def test_pairs_are_matched_by_name_and_checked_before_training(tmp_path):
    images, masks = write_pairs(tmp_path, 3)
    assert [p[0].stem for p in find_pairs(images, masks)] == ["p00", "p01", "p02"]
    (masks / "p01.png").unlink()
    with pytest.raises(DataError, match="1 image.*no mask.*p01"):
        find_pairs(images, masks)
    Image.fromarray(np.zeros((10, 12), np.uint8)).save(masks / "p01.png")
    with pytest.raises(DataError, match=r"p01.jpg is \(64, 64\) but its mask p01.png is \(12, 10\)"):
        find_pairs(images, masks)
    with pytest.raises(DataError, match="no images"):
        find_pairs(tmp_path / "masks" / "..", masks)  # a folder with folders only
    with pytest.raises(DataError, match="not a folder"):
        find_pairs(tmp_path / "nowhere", masks)


def test_crops_and_flips_move_image_and_mask_together(tmp_path):
    """The subject's pixels and the mask stay aligned through resize, crop and flip."""
    images, masks = tmp_path / "im", tmp_path / "gt"
    images.mkdir()
    masks.mkdir()
    image = np.full((80, 100, 3), 20, np.uint8)
    image[:, :40] = 230  # subject on the left
    mask = np.zeros((80, 100), np.uint8)
    mask[:, :40] = 255
    Image.fromarray(image).save(images / "a.png")
    Image.fromarray(mask).save(masks / "a.png")
    data = SegmentationDataset(find_pairs(images, masks), get_spec("u2netp"), size=64, crop=48)
    flipped = 0
    for _ in range(12):
        x, y = data[0]
        assert x.shape == (3, 48, 48) and y.shape == (1, 48, 48)
        assert x.dtype == torch.float32 and float(y.min()) >= 0 and float(y.max()) == 1.0
        bright = x.mean(0) > x.mean()
        assert ((y[0] > 0.5) == bright).float().mean() > 0.95
        flipped += float(y[0, :, -1].mean()) > 0.5  # the subject reached the right edge
    assert 0 < flipped < 12  # both orientations occur
    torch.manual_seed(7)
    first = data[0][0]
    torch.manual_seed(7)
    assert torch.equal(first, data[0][0])  # reproducible from torch's seed


@pytest.mark.slow  # the fork server imports torch once: seconds
def test_persistent_loader_workers_crop_differently_every_epoch(tmp_path):
    """Worker processes hold their own copy of the dataset: the crops must still change."""
    from torch.utils.data import DataLoader

    images, masks = write_pairs(tmp_path, 2, size=64)
    data = SegmentationDataset(find_pairs(images, masks), get_spec("u2netp"), size=64, crop=40)
    loader = DataLoader(data, batch_size=2, num_workers=2, persistent_workers=True,
                        generator=torch.Generator().manual_seed(0),
                        multiprocessing_context=loader_context())  # as train() starts them
    epochs = [next(iter(loader))[0] for _ in range(3)]
    assert not torch.equal(epochs[0], epochs[1]) and not torch.equal(epochs[1], epochs[2])


def small_config(tmp_path, images, masks, **changes) -> TrainConfig:
    return TrainConfig(**{"images": images, "masks": masks, "out": tmp_path / "run" / "mine.pth",
                          "model": "u2netp", "steps": 40, "batch_size": 4, "size": 64, "crop": 56,
                          "save_every": 20, "log_every": 5, "workers": 0, "device": "cpu",
                          **changes})


@pytest.mark.slow
def test_training_learns_and_writes_weights_the_service_loads(tmp_path):
    images, masks = write_pairs(tmp_path / "train", 8)
    val_images, val_masks = write_pairs(tmp_path / "val", 4, seed=100)
    summary = train(small_config(tmp_path, images, masks, val_images=val_images,
                                 val_masks=val_masks))
    history = summary["history"]
    assert summary["steps"] == 40 and len(history) == 8
    assert history[-1]["loss"] < 0.6 * history[0]["loss"], history
    assert all(np.isfinite(h["loss"]) for h in history)
    out = tmp_path / "run" / "mine.pth"
    net = build_model(get_spec("u2netp"), out)  # strict load: the official key format
    assert best_path(out).is_file() and state_path(out).is_file()
    assert summary["best_validation_mae"] <= summary["validation_mae"] < 0.25  # untrained: 0.35-0.45
    # The trained network separates the subject from the background on an unseen scene.
    image, mask = scene(64, seed=999)
    data = SegmentationDataset([], get_spec("u2netp"), 64, 64, augment=False)
    from u2net.transforms import normalise_input

    x = torch.from_numpy(normalise_input(image.astype(np.float32) / 255, data.spec))[None]
    with torch.no_grad():
        pred = net(x, fused_only=True)[0, 0].numpy()
    inside, outside = pred[mask > 0].mean(), pred[mask == 0].mean()
    assert inside > outside + 0.2, (inside, outside)


@pytest.mark.slow
def test_resume_continues_from_the_saved_step(tmp_path):
    images, masks = write_pairs(tmp_path / "train", 4)
    first = train(small_config(tmp_path, images, masks, steps=6, save_every=3, log_every=3))
    state = torch.load(state_path(tmp_path / "run" / "mine.pth"), weights_only=True)
    assert first["steps"] == 6 and state["step"] == 6 and state["optimizer"]["state"]
    resumed = train(small_config(tmp_path, images, masks, steps=9, log_every=3, resume=True))
    assert resumed["steps"] == 9 and [h["step"] for h in resumed["history"]] == [9]
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        train(small_config(tmp_path / "other", images, masks, resume=True))


@pytest.mark.slow  # keeps `pytest -m "not slow"` under a minute
def test_fine_tuning_starts_from_given_weights_in_bf16(tmp_path, random_weights):
    images, masks = write_pairs(tmp_path / "train", 4)
    summary = train(small_config(tmp_path, images, masks, init=random_weights, steps=2,
                                 amp=True, log_every=1))
    assert len(summary["history"]) == 2
    assert all(np.isfinite(h["loss"]) for h in summary["history"])


@pytest.mark.slow
def test_cli_trains_and_reports_bad_data(tmp_path):
    images, masks = write_pairs(tmp_path / "train", 3, size=40)
    out = tmp_path / "cli.pth"
    cmd = [sys.executable, "-m", "bgservice", "train", "--images", str(images), "--masks",
           str(masks), "--out", str(out), "--model", "u2netp", "--steps", "2", "--batch-size",
           "2", "--size", "32", "--crop", "32", "--workers", "2", "--device", "cpu"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    assert f"trained 2 steps; weights in {out}" in done.stdout
    build_model(get_spec("u2netp"), out)
    (masks / "p00.png").unlink()
    bad = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    assert bad.returncode == 2 and "no mask" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.slow
def test_isnet_trains_on_its_six_side_outputs_and_saves_official_keys(tmp_path):
    """IS-Net trains as its authors did (BCE on all six side outputs, no fused map) and the
    result loads strictly as isnet-general-use weights. Tiny images: 2 steps at 64 px."""
    images, masks = write_pairs(tmp_path / "train", 2)
    summary = train(small_config(tmp_path, images, masks, model="isnet-general-use", steps=2,
                                 batch_size=2, log_every=1))
    assert len(summary["history"]) == 2 and all(np.isfinite(h["loss"]) for h in summary["history"])
    net = build_model(get_spec("isnet-general-use"), tmp_path / "run" / "mine.pth")
    with torch.no_grad():
        sides = net(torch.zeros(1, 3, 64, 64), logits=True)
    assert len(sides) == 6


def inverted(folder):
    """The masks of `folder` turned inside out: training on them teaches the opposite."""
    for path in folder.iterdir():
        Image.fromarray(255 - np.asarray(Image.open(path))).save(path)


@pytest.mark.slow
def test_a_run_that_makes_the_model_worse_says_so(tmp_path, caplog, capsys):
    """Validation is scored before the first step; a run that ends worse than it started warns
    in the log and on the command line, and the best weights stay the starting ones. The time
    left is in every progress line."""
    from bgservice.cli import main as cli_main

    images, masks = write_pairs(tmp_path / "train", 4, size=32)
    val_images, val_masks = write_pairs(tmp_path / "val", 2, size=32, seed=100)
    good = train(small_config(tmp_path / "good", images, masks, size=32, crop=28, steps=20,
                              save_every=20, lr=3e-3))["weights"]  # it has learnt the task
    inverted(masks)  # now training teaches the opposite of what validation expects
    out = tmp_path / "worse.pth"
    code = cli_main(["train", "--images", str(images), "--masks", str(masks), "--out", str(out),
                     "--model", "u2netp", "--init", good, "--steps", "6",
                     "--batch-size", "4", "--size", "32", "--crop", "28", "--save-every", "3",
                     "--log-every", "3", "--workers", "0", "--device", "cpu", "--lr", "3e-3",
                     "--val-images", str(val_images), "--val-masks", str(val_masks)])
    assert code == 0
    printed = capsys.readouterr()
    assert "warning: the trained weights score worse on validation than the starting ones" \
        in printed.err, (printed, caplog.text)
    assert "the starting weights" in printed.out
    assert "step 0: validation MAE" in caplog.text and "is worse than the starting weights'" \
        in caplog.text
    assert " left" in caplog.text  # the time estimate
    state = torch.load(state_path(out), weights_only=True)
    assert state["start_val_mae"] < state["best_val_mae"] + 1e-9
    best = torch.load(best_path(out), weights_only=True)
    initial = torch.load(good, weights_only=True)
    assert all(torch.equal(best[k], initial[k]) for k in initial)  # nothing beat the start


@pytest.mark.slow
def test_fine_tuning_defaults_keep_batch_norm_statistics_and_freeze_encoder_keeps_it(
        tmp_path, random_weights):
    images, masks = write_pairs(tmp_path / "train", 4)
    summary = train(small_config(tmp_path, images, masks, init=random_weights, steps=2,
                                 freeze_encoder=True, log_every=1))
    assert summary["lr"] == 1e-5  # the fine-tuning default (1e-3 from scratch)
    before = torch.load(random_weights, weights_only=True)
    after = torch.load(tmp_path / "run" / "mine.pth", weights_only=True)
    encoder = [k for k in before if k.split(".")[0] in {f"stage{i}" for i in range(1, 7)}]
    decoder = [k for k in before if k.startswith("stage1d.") and k.endswith("weight")]
    assert encoder and all(torch.equal(before[k], after[k]) for k in encoder)
    assert any(not torch.equal(before[k], after[k]) for k in decoder)  # the decoder learned
    statistics = [k for k in before if k.endswith(("running_mean", "running_var"))]
    assert all(torch.equal(before[k], after[k]) for k in statistics)  # batch norms kept


@pytest.mark.slow
def test_timelapse_strips_at_every_save_then_a_gif_and_an_mp4(tmp_path):
    import cv2

    images, masks = write_pairs(tmp_path / "train", 4)
    val_images, val_masks = write_pairs(tmp_path / "val", 3, seed=100)
    summary = train(small_config(tmp_path, images, masks, val_images=val_images,
                                 val_masks=val_masks, steps=4, save_every=2, timelapse=True))
    frames = sorted((tmp_path / "run" / "mine.timelapse").glob("step_*.png"))
    assert [f.name for f in frames] == ["step_00000000.png", "step_00000002.png",
                                        "step_00000004.png"]
    strip = Image.open(frames[-1])
    assert strip.size == (3 * 160, 24 + 3 * 160)  # image | truth | prediction, 3 pictures
    gif = Image.open(tmp_path / "run" / "mine.timelapse.gif")
    assert gif.n_frames == 3
    mp4 = tmp_path / "run" / "mine.timelapse.mp4"
    assert summary["timelapse"] == [str(tmp_path / "run" / "mine.timelapse.gif"), str(mp4)]
    video = cv2.VideoCapture(str(mp4))
    assert int(video.get(cv2.CAP_PROP_FRAME_COUNT)) == 3 and video.read()[0]
