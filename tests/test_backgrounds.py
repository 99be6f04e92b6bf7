"""New backgrounds (issue 15, point 2): a picture behind the subject (bg_image, fitted by cover or
contain) or the original background blurred (bg_blur), in the pure functions, the upload endpoint,
the JSON API, the CLI and the Python API."""
from __future__ import annotations

import io

import numpy as np
import pytest
from conftest import make_settings, photo, save_image, snapshot
from helpers import blurred_disc_scene
from PIL import Image

import API
import Image_PostProcesser as post
from bgservice import composites
from bgservice.cli import main as cli_main
from bgservice.imageio import decode_image, from_array
from bgservice.options import OutputOptions, compose_output
from bgservice.pipeline import BACKDROP_BYTES_PER_PIXEL, memory_needed


def halves(width: int, height: int) -> np.ndarray:
    """Left half red, right half blue: where a fitted picture was cut shows at once."""
    picture = np.zeros((height, width, 3), np.uint8)
    picture[:, : width // 2] = (255, 0, 0)
    picture[:, width // 2:] = (0, 0, 255)
    return picture


def encoded(array: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, fmt)
    return buf.getvalue()


# -- the pure functions ------------------------------------------------------------------------

def test_cover_fills_the_frame_cropping_the_overflow_evenly_without_stretching():
    fitted = post.fit_background(halves(200, 100), (100, 100), "cover")
    assert fitted.shape == (100, 100, 3)
    # the middle 100 of 200 columns, scaled 1:1 in height: still half red, half blue
    assert (fitted[:, :50] == (255, 0, 0)).all() and (fitted[:, 50:] == (0, 0, 255)).all()
    tall = post.fit_background(halves(20, 40), (200, 100), "cover")  # enlarged 10x, rows cropped
    assert tall.shape == (100, 200, 3)
    assert (tall[:, :95] == (255, 0, 0)).all() and (tall[:, 105:] == (0, 0, 255)).all()


def test_contain_fits_inside_centred_with_transparent_margins():
    fitted = post.fit_background(halves(200, 100), (100, 100), "contain")
    assert fitted.shape == (100, 100, 4)
    assert not fitted[:25].any() and not fitted[75:].any()  # transparent bands above and below
    band = fitted[25:75]
    assert (band[:, :, 3] == 255).all()
    assert (band[:, :49, :3] == (255, 0, 0)).all() and (band[:, 51:, :3] == (0, 0, 255)).all()
    with pytest.raises(ValueError, match="fit must be one of"):
        post.fit_background(halves(4, 4), (4, 4), "stretch")


def test_the_blurred_original_lends_none_of_the_subjects_colour():
    """A red subject on green: blurring the original with the subject weighted out leaves green
    behind it, where a plain blur spreads red (the halo a naive blur leaves)."""
    rgb = np.zeros((200, 300, 3), np.uint8)
    rgb[:] = (30, 180, 60)
    rgb[50:150, 100:200] = (255, 0, 0)
    alpha = np.zeros((200, 300), np.uint8)
    alpha[50:150, 100:200] = 255
    sigma = post.blur_sigma(50, rgb.shape)  # 10 px
    weighted = post.blurred(rgb, sigma, post.original_background_weight(alpha, None))
    assert np.abs(weighted.astype(int) - (30, 180, 60)).max() <= 2
    plain = post.blurred(rgb, sigma)
    assert plain[100, 95, 0] > 100  # red spread outside the subject


def test_composite_on_image_is_the_over_operator():
    rng = np.random.default_rng(1)
    rgba = rng.integers(0, 256, (40, 50, 4), dtype=np.uint8)
    for channels in (3, 4):
        backdrop = rng.integers(0, 256, (40, 50, channels), dtype=np.uint8)
        out = post.composite_on_image(rgba, backdrop)
        a = rgba[:, :, 3:] / 255
        b = backdrop[:, :, 3:] / 255 if channels == 4 else 1.0
        below = b * (1 - a)
        truth = (rgba[:, :, :3] * a + backdrop[:, :, :3] * below) / np.maximum(a + below, 1e-9)
        assert out.shape == (40, 50, channels)
        assert np.abs(out[:, :, :3] - truth)[(a + below)[:, :, 0] > 0.05].max() <= 1
        if channels == 4:
            assert np.abs(out[:, :, 3] - np.rint((a + below)[:, :, 0] * 255)).max() <= 1
    tiny = post.composite_on_image(rgba[:2, :3], backdrop[:2, :3])
    np.testing.assert_allclose(tiny.astype(int), out[:2, :3].astype(int), atol=1)


def test_refine_puts_the_subject_on_a_new_picture_without_a_halo_of_the_old_background():
    """A yellow disc photographed on blue, put on a new scene: refine's edge is within a few
    levels of the truth (its colours and alpha on that scene); soft mode, whose edge pixels are
    the photo's own, carries the blue along, at least three times as far off. (The mask is the
    true alpha: the question here is the colours; tests/test_quality.py scores the alpha.)"""
    rgb, _, alpha, fg = blurred_disc_scene()
    mask = np.clip(np.rint(alpha * 255), 0, 255).astype(np.uint8)
    scene = composites.generated_scene(*alpha.shape, seed=5)
    truth = composites.over(fg * 255, alpha, scene)
    band = composites.edge_band(alpha)
    errors = {}
    for mode in ("refine", "soft"):
        options = OutputOptions(mode=mode, bg_image=from_array(scene))
        pixels, _, _ = compose_output(from_array(rgb), mask, options)
        assert pixels.shape == (*alpha.shape, 3)
        errors[mode] = float(np.abs(pixels - truth).mean(axis=2)[band].mean())
    assert errors["refine"] < 7 and errors["refine"] * 3 < errors["soft"], errors  # 5.2, 24.5


def test_every_background_option_composes():
    image = from_array(photo(160, 120))
    mask = np.zeros((120, 160), np.uint8)
    mask[30:90, 50:110] = 255
    picture = from_array(halves(50, 200))
    cases = {
        OutputOptions(bg_blur=20): (3, "jpg"),
        OutputOptions(bg_image=picture): (3, "jpg"),
        OutputOptions(bg_image=picture, bg_fit="contain"): (4, "png"),
        OutputOptions(bg_image=picture, bg_fit="contain", bg_color=(255, 255, 0)): (3, "jpg"),
        OutputOptions(bg_image=picture, bg_blur=30): (3, "jpg"),
        OutputOptions(bg_image=picture, only_mask=True): (None, "png"),
    }
    for options, (channels, auto) in cases.items():
        pixels, _, _ = compose_output(image, mask, options)
        assert (pixels.ndim == 2) if channels is None else (pixels.shape == (120, 160, channels))
        assert OutputOptions(**{**options.__dict__, "format": "auto"}).output_format == auto
    contained, _, _ = compose_output(image, mask, OutputOptions(bg_image=picture, bg_fit="contain",
                                                             bg_color=(255, 255, 0)))
    assert (contained[5, 5] == (255, 255, 0)).all()  # the margin: the colour


def test_a_backdrop_reserves_its_memory():
    plain = memory_needed(10**6, OutputOptions(), 0)
    assert memory_needed(10**6, OutputOptions(bg_blur=5), 0) == plain + BACKDROP_BYTES_PER_PIXEL * 10**6
    with_picture = memory_needed(10**6, OutputOptions(bg_image=b"x" * 100), 0, bg_pixels=4 * 10**6)
    assert with_picture > plain + BACKDROP_BYTES_PER_PIXEL * 10**6 + 4 * 4 * 10**6


# -- the interfaces ----------------------------------------------------------------------------

@pytest.fixture
def cli_env(monkeypatch, random_weights):
    """The CLI's settings: the session's random-weight U2NETP on the CPU."""
    for name, value in {"U2NET_MODEL": "u2netp", "U2NET_WEIGHTS": str(random_weights),
                        "U2NET_DEVICE": "cpu", "U2NET_PRECISION": "fp32", "LOG_LEVEL": "WARNING",
                        "U2NET_CACHE_DIR": str(random_weights.parent / "onnx-cache")}.items():
        monkeypatch.setenv(name, value)

def upload(client, source: bytes, background: bytes | None = None, **form):
    fields = {"file": (io.BytesIO(source), "photo.jpg"), **form}
    if background is not None:
        fields["bg_image"] = (io.BytesIO(background), "beach.png")
    return client.post("/api/remove", data=fields, content_type="multipart/form-data")


def test_upload_takes_a_picture_and_a_blur(client):
    source = encoded(photo(160, 120), "JPEG")
    response = upload(client, source, encoded(halves(80, 80)), format="auto")
    assert response.status_code == 200, response.json
    assert response.mimetype == "image/jpeg"
    out = Image.open(io.BytesIO(response.data))
    assert (out.mode, out.size) == ("RGB", (160, 120))
    response = upload(client, source, bg_blur="20")
    assert response.status_code == 200 and response.mimetype == "image/png"
    assert Image.open(io.BytesIO(response.data)).mode == "RGB"  # nothing left to see through


@pytest.mark.parametrize("background, form, status, message", [
    (b"not a picture", {}, 422, "the background image (bg_image) is not a decodable image"),
    (b"", {}, 400, "'bg_image' is empty"),
    (None, {"bg_blur": "101"}, 400, "'bg_blur' must be an integer from 0 to 100"),
    (None, {"bg_fit": "stretch"}, 400, "'bg_fit' must be one of cover, contain"),
])
def test_upload_refuses_bad_backgrounds(client, background, form, status, message):
    response = upload(client, encoded(photo(), "JPEG"), background, **form)
    assert response.status_code == status
    assert message in response.json["error"]


def test_a_background_picture_counts_against_the_pixel_limit(sandbox, random_weights, runtime):
    app = API.create_app(make_settings(sandbox["root"], random_weights, max_image_pixels=20_000),
                         runtime=runtime)
    response = upload(app.test_client(), encoded(photo(160, 120), "JPEG"), encoded(halves(300, 100)))
    assert response.status_code == 413
    assert response.json["error"].startswith("the background image (bg_image) is 300x100")


def test_json_api_takes_a_background_path_inside_the_root(client, sandbox, runtime):
    root = sandbox["root"]
    rgb = photo(160, 120)
    save_image(root / "Clones/4/in.png", rgb)
    save_image(root / "Backgrounds/beach.png", halves(90, 60))
    body = {"sourceImagePath": "/Clones/4/in.png", "outputImagePath": "/Clones/4/out.png",
            "bgImagePath": "/Backgrounds/beach.png", "bgFit": "contain", "bgColor": "white",
            "bgBlur": 10}
    response = client.post("/remove-background", json=body)
    assert response.status_code == 200, response.json
    out = Image.open(root / "Clones/4/out.png")
    assert (out.mode, out.size) == ("RGB", (160, 120))
    options = OutputOptions(mode="refine", bg_image=from_array(halves(90, 60)), bg_fit="contain",
                            bg_color=(255, 255, 255), bg_blur=10)
    want, _, _ = compose_output(from_array(rgb), runtime.mask_for(rgb), options)
    np.testing.assert_array_equal(np.asarray(out), want)


def test_json_api_background_errors_name_the_field(client, sandbox):
    root = sandbox["root"]
    save_image(root / "in.png", photo())
    base = {"sourceImagePath": "/in.png", "outputImagePath": "/out.png"}
    (sandbox["root"] / "bg.png").symlink_to(sandbox["outside"] / "secret.png")
    before = snapshot(sandbox["outside"])
    for path, status, message in [("/none.png", 404, "'bgImagePath' not found: /none.png"),
                                  ("/bg.png", 400, "bgImagePath"),
                                  (5, 400, "bgImagePath")]:
        response = client.post("/remove-background", json={**base, "bgImagePath": path})
        assert response.status_code == status, response.json
        assert message in response.json["error"]
    assert not (root / "out.png").exists() and snapshot(sandbox["outside"]) == before


@pytest.mark.slow  # loads the model (twice)
def test_cli_takes_a_background_picture_and_a_blur(tmp_path, cli_env, capsys):
    src = save_image(tmp_path / "in.png", photo(160, 120))
    bg = save_image(tmp_path / "bg.png", halves(40, 40))
    assert cli_main(["remove", str(src), "-o", str(tmp_path / "out.jpg"), "--bg-image", str(bg),
                     "--format", "jpg", "--quiet"]) == 0
    assert Image.open(tmp_path / "out.jpg").size == (160, 120)
    assert cli_main(["remove", str(src), "-o", str(tmp_path / "blur.png"), "--bg-blur", "20",
                     "--quiet"]) == 0
    assert Image.open(tmp_path / "blur.png").mode == "RGB"
    (tmp_path / "bad.png").write_text("no")
    assert cli_main(["remove", str(src), "-o", str(tmp_path / "x.png"),
                     "--bg-image", str(tmp_path / "bad.png")]) == 2
    assert cli_main(["remove", str(src), "-o", str(tmp_path / "x.png"),
                     "--bg-image", str(tmp_path / "missing.png")]) == 2
    err = capsys.readouterr().err
    assert "error: --bg-image is not a decodable image" in err
    assert "error: --bg-image " + str(tmp_path / "missing.png") + ": No such file" in err
    assert not (tmp_path / "x.png").exists()


@pytest.mark.slow  # loads the model
def test_python_api_takes_a_background_of_any_kind(tmp_path, random_weights):
    from bgservice import new_session

    bg_path = save_image(tmp_path / "bg.png", halves(40, 40))
    with new_session("u2netp", weights=random_weights, device="cpu") as session:
        rgb = photo(160, 120)
        for picture in (bg_path, bg_path.read_bytes(), Image.fromarray(halves(40, 40)),
                        halves(40, 40)):
            out = session.remove(rgb, bg_image=picture)
            assert out.shape == (120, 160, 3)
        blurred = session.remove(rgb, bg_blur=20, output="bytes", format="auto")
        assert decode_image(blurred, 10**6).format == "JPEG"
