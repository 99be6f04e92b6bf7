"""POST /api/remove (upload, every option and its bad values) and POST /remove-background/batch."""
from __future__ import annotations

import io

import numpy as np
import pytest
from conftest import make_settings, photo, save_image
from PIL import Image

import API
import Image_PostProcesser as post
from bgservice.imageio import decode_image


def jpeg_bytes(width=120, height=90, seed=0) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(photo(width, height, seed)).save(buf, "JPEG", quality=95)
    return buf.getvalue()


def expected(runtime, data: bytes, mode: str, threshold=None) -> np.ndarray:
    image = decode_image(data, 10**8)
    return post.cut_out(image.rgb, image.alpha, runtime.mask_for(image.rgb), mode, threshold)


def upload(client, data=None, query="", form=None, raw=False):
    if raw:
        return client.post(f"/api/remove{query}", data=data,
                           content_type="application/x-www-form-urlencoded")  # what curl sends
    fields = {"file": (io.BytesIO(data), "photo.jpg"), **(form or {})}
    return client.post(f"/api/remove{query}", data=fields, content_type="multipart/form-data")


def test_multipart_upload_returns_the_png_with_facts_in_headers(client, runtime):
    data = jpeg_bytes()
    response = upload(client, data)
    assert response.status_code == 200 and response.mimetype == "image/png"
    out = Image.open(io.BytesIO(response.data))
    assert out.mode == "RGBA" and out.size == (120, 90)
    cutout = expected(runtime, data, "refine")
    np.testing.assert_array_equal(np.asarray(out), cutout)
    headers = response.headers
    assert headers["X-Image-Size"] == "120x90" and headers["X-Source-Size"] == "120x90"
    assert headers["X-Mode"] == "refine" and headers["X-Model"] == "u2netp"
    assert "forward;dur=" in headers["Server-Timing"]
    box = post.subject_bbox(cutout[:, :, 3])
    assert headers["X-Bounding-Box"] == (",".join(map(str, box)) if box else "none")


def test_raw_body_upload_with_query_options(client, runtime):
    data = jpeg_bytes(seed=1)
    response = upload(client, data, "?threshold=128", raw=True)
    assert response.status_code == 200, response.json
    assert response.headers["X-Mode"] == "threshold" and response.headers["X-Threshold"] == "128"
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(response.data))),
                                  expected(runtime, data, "threshold", 128))


def test_form_fields_work_like_query_parameters(client, runtime):
    data = jpeg_bytes(seed=2)
    response = upload(client, data, form={"mode": "soft"})
    assert response.headers["X-Mode"] == "soft"
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(response.data))),
                                  expected(runtime, data, "soft"))


def test_only_mask_is_the_grayscale_mask(client, runtime):
    data = jpeg_bytes(seed=3)
    response = upload(client, data, "?only_mask=true")
    mask = Image.open(io.BytesIO(response.data))
    assert mask.mode == "L" and response.headers["X-Mode"] == "mask"
    image = decode_image(data, 10**8)
    np.testing.assert_array_equal(np.asarray(mask), runtime.mask_for(image.rgb))


def test_bg_color_composites_to_an_opaque_rgb(client, runtime):
    data = jpeg_bytes(seed=4)
    response = upload(client, data, "?bg_color=%2300ff00&mode=threshold&threshold=255")
    out = np.asarray(Image.open(io.BytesIO(response.data)))
    assert out.shape == (90, 120, 3)
    cut = expected(runtime, data, "threshold", 255)
    transparent = cut[:, :, 3] == 0
    assert (out[transparent] == (0, 255, 0)).all()
    for spelling in ("0,255,0", "0f0", "%2300FF00"):
        assert upload(client, data, f"?bg_color={spelling}").status_code == 200


def test_crop_with_padding_crops_to_the_subject(client, runtime):
    data = jpeg_bytes(200, 160, seed=5)
    full = upload(client, data, "?mode=soft")
    box = [int(v) for v in full.headers["X-Bounding-Box"].split(",")]
    cropped = upload(client, data, "?mode=soft&crop=1&padding=0")
    out = Image.open(io.BytesIO(cropped.data))
    assert out.size == (box[2], box[3])
    padded = Image.open(io.BytesIO(upload(client, data, "?mode=soft&crop=1&padding=5").data))
    assert padded.size[0] >= out.size[0] and padded.size[1] >= out.size[1]
    assert padded.size[0] <= min(200, out.size[0] + 10)
    assert Image.open(io.BytesIO(upload(client, data, "?mode=soft&crop=1&padding=5px").data)).size \
        == padded.size
    # a percentage of the subject's own size: 10 % of its width left and right, of its height
    # above and below (clipped to the image)
    pct = upload(client, data, "?mode=soft&crop=1&padding=10%25")
    x, y, w, h = box
    pad_x, pad_y = round(w * 0.1), round(h * 0.1)
    want_w = min(200, x + w + pad_x) - max(0, x - pad_x)
    want_h = min(160, y + h + pad_y) - max(0, y - pad_y)
    assert Image.open(io.BytesIO(pct.data)).size == (want_w, want_h)


def test_colour_names_short_forms_and_see_through_colours(client, runtime):
    """CSS names and #rgb fill like #rrggbb; #rrggbbaa keeps an alpha channel: the cut-out over a
    see-through colour."""
    data = jpeg_bytes(seed=4)
    cut = expected(runtime, data, "threshold", 255)
    transparent = cut[:, :, 3] == 0
    for spelling in ("lime", "%230f0", "rgb(0,255,0)"):
        out = np.asarray(Image.open(io.BytesIO(
            upload(client, data, f"?bg_color={spelling}&mode=threshold&threshold=255").data)))
        assert out.shape == (90, 120, 3) and (out[transparent] == (0, 255, 0)).all(), spelling
    response = upload(client, data, "?bg_color=%2300ff0080&mode=threshold&threshold=255")
    out = np.asarray(Image.open(io.BytesIO(response.data)))
    assert out.shape == (90, 120, 4)
    assert (out[transparent] == (0, 255, 0, 128)).all()
    assert (out[~transparent][:, 3] == 255).all()


def test_jpeg_and_auto_formats(client, runtime):
    """jpg: a JPEG, transparency flattened onto bg_color or white; auto: JPEG when bg_color fills
    every pixel, PNG while transparency remains."""
    data = jpeg_bytes(seed=6)
    response = upload(client, data, "?format=jpg&mode=threshold&threshold=255")
    assert response.mimetype == "image/jpeg"
    assert 'filename="cutout.jpg"' in response.headers["Content-Disposition"]
    out = Image.open(io.BytesIO(response.data))
    assert out.format == "JPEG" and out.mode == "RGB" and out.size == (120, 90)
    cut = expected(runtime, data, "threshold", 255)
    transparent = cut[:, :, 3] == 0
    inner = transparent & np.roll(transparent, 3, 0) & np.roll(transparent, -3, 0) \
        & np.roll(transparent, 3, 1) & np.roll(transparent, -3, 1)  # away from JPEG's ringing
    assert np.abs(np.asarray(out)[inner].astype(int) - 255).max() <= 8  # white
    filled = upload(client, data, "?format=auto&bg_color=navy")
    assert filled.mimetype == "image/jpeg" and Image.open(io.BytesIO(filled.data)).format == "JPEG"
    for query in ("?format=auto", "?format=auto&bg_color=%23000080aa",
                  "?format=auto&bg_color=navy&only_mask=1"):
        kept = upload(client, data, query)
        assert kept.mimetype == "image/png", query
        assert Image.open(io.BytesIO(kept.data)).format == "PNG"


def test_lossless_webp_on_request(client, runtime):
    data = jpeg_bytes(seed=6)
    response = upload(client, data, "?format=webp&mode=soft")
    assert response.mimetype == "image/webp"
    out = Image.open(io.BytesIO(response.data))
    assert out.format == "WEBP"
    got = np.asarray(out.convert("RGBA"))
    want = expected(runtime, data, "soft")
    visible = want[:, :, 3] > 0  # lossless: every visible pixel exact (WebP may drop hidden RGB)
    np.testing.assert_array_equal(got[..., 3], want[..., 3])
    np.testing.assert_array_equal(got[visible], want[visible])


@pytest.mark.parametrize("query,message", [
    ("?mode=magic", "'mode' must be one of"),
    ("?threshold=300", "'threshold' must be an integer from 0 to 255"),
    ("?threshold=abc", "'threshold' must be an integer"),
    ("?mode=soft&threshold=5", "applies to mode 'threshold' only"),
    ("?only_mask=maybe", "'only_mask' must be true or false"),
    ("?crop=2", "'crop' must be true or false"),
    ("?padding=-1", "'padding' must be pixels from 0 to 10000 (20 or 20px) or a percentage"),
    ("?padding=999999", "'padding' must be pixels from 0"),
    ("?padding=5000%25", "'padding' must be pixels"),
    ("?padding=1.5px", "'padding' must be pixels"),
    ("?bg_color=bleu", "'bg_color' must be a colour: a CSS name (red), #rgb"),
    ("?bg_color=%C2%B2,1,1", "'bg_color' must be a colour"),
    ("?bg_color=300,0,0", "'bg_color' must be"),
    ("?format=gif", "'format' must be one of png, webp, jpg, auto"),
    ("?colour=red", "unknown option(s) 'colour'"),
])
def test_bad_option_values_are_400_json(client, query, message):
    response = upload(client, jpeg_bytes(), query)
    assert response.status_code == 400 and message in response.json["error"]


def test_missing_or_bad_uploads(client):
    response = client.post("/api/remove", data={"picture": (io.BytesIO(b"x"), "a.jpg")},
                           content_type="multipart/form-data")
    assert response.status_code == 400 and "field named 'file'" in response.json["error"]
    response = client.post("/api/remove", data=b"", content_type="application/octet-stream")
    assert response.status_code == 400 and "send an image" in response.json["error"]
    response = upload(client, b"this is not an image")
    assert response.status_code == 422


def test_upload_size_is_limited_with_a_json_413(sandbox, random_weights, runtime):
    settings = make_settings(sandbox["root"], random_weights, max_upload_bytes=2000)
    client = API.create_app(settings, runtime=runtime).test_client()
    response = upload(client, jpeg_bytes(300, 300, seed=7))
    assert response.status_code == 413 and "error" in response.json


def test_json_routes_keep_their_small_limit(client):
    body = '{"sourceImagePath": "' + "a" * (API.MAX_JSON_BYTES + 10) + '"}'
    response = client.post("/remove-background", data=body, content_type="application/json")
    assert response.status_code == 413


# -- batch ---------------------------------------------------------------------------------------

def test_batch_jobs_succeed_or_fail_on_their_own(client, sandbox, runtime):
    for i in range(3):
        save_image(sandbox["root"] / f"in/{i}.png", photo(80 + 10 * i, 60, seed=i))
    jobs = [{"sourceImagePath": f"/in/{i}.png", "outputImagePath": f"/out/{i}.png",
             "threshold": 200} for i in range(3)]
    jobs += [{"sourceImagePath": "/in/missing.png", "outputImagePath": "/out/x.png"},
             {"sourceImagePath": "/../escape.png", "outputImagePath": "/out/y.png"},
             {"sourceImagePath": "/in/0.png", "outputImagePath": "/out/z.png", "threshold": "x"},
             "not an object",
             {"sourceImagePath": "/in/1.png", "outputImagePath": "/out/soft.png", "mode": "soft"}]
    response = client.post("/remove-background/batch", json={"jobs": jobs})
    assert response.status_code == 200
    body = response.json
    statuses = [j["status"] for j in body["jobs"]]
    assert statuses == [200, 200, 200, 404, 400, 400, 400, 200]
    assert (body["succeeded"], body["failed"]) == (4, 4)
    assert [j["index"] for j in body["jobs"]] == list(range(8))
    for i in range(3):
        got = np.asarray(Image.open(sandbox["root"] / f"out/{i}.png"))
        data = (sandbox["root"] / f"in/{i}.png").read_bytes()
        np.testing.assert_array_equal(got, expected(runtime, data, "threshold", 200))
    assert body["jobs"][7]["result"]["mode"] == "soft"
    assert "source image not found" in body["jobs"][3]["error"]


@pytest.mark.parametrize("body,message", [
    ({}, "'jobs' must be a non-empty list"), ({"jobs": []}, "'jobs' must be a non-empty list"),
    ({"jobs": {"a": 1}}, "'jobs' must be a non-empty list"),
    ({"jobs": [{}] * (API.MAX_BATCH_JOBS + 1)}, f"at most {API.MAX_BATCH_JOBS} jobs"),
    ({"jobs": [{}], "extra": 1}, "unknown field(s) 'extra'"),
])
def test_bad_batches_are_400(client, body, message):
    response = client.post("/remove-background/batch", json=body)
    assert response.status_code == 400 and message in response.json["error"]


def test_subject_filter_option_applies_to_the_mask(client, runtime, monkeypatch):
    from helpers import two_subjects_and_a_speck

    monkeypatch.setattr(runtime, "mask_for", two_subjects_and_a_speck)
    data = jpeg_bytes(200, 120)
    plain = np.asarray(Image.open(io.BytesIO(upload(client, data, "?only_mask=1").data)))
    response = upload(client, data, "?only_mask=1&subject_filter=true")
    assert response.status_code == 200, response.json
    filtered = np.asarray(Image.open(io.BytesIO(response.data)))
    np.testing.assert_array_equal(filtered, post.drop_small_regions(plain))
    assert plain[5, 194] == 255 and filtered[5, 194] == 0
    bad = upload(client, data, "?subject_filter=maybe")
    assert bad.status_code == 400 and "'subject_filter' must be true or false" in bad.json["error"]


def test_a_form_field_without_a_name_is_400_not_500(client):
    """Found by schemathesis: werkzeug keys a field without a name as None, which broke sorting."""
    boundary = "b0undary"
    body = (f'--{boundary}\r\nContent-Disposition: form-data\r\n\r\nnull\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="f"\r\n\r\n'
            f'x\r\n--{boundary}--\r\n').encode()
    response = client.post("/api/remove", data=body,
                           content_type=f"multipart/form-data; boundary={boundary}")
    assert response.status_code == 400, response.data
    assert "unknown option(s) ''" in response.json["error"]


def test_asking_for_multipart_brings_the_image_and_its_mask_in_one_response(client, runtime):
    """What the web page asks for (one request, one model run): parts `image` and `mask`, the
    mask cropped as the image; curl's Accept */* still gets the bare image."""
    from werkzeug.formparser import parse_form_data

    data = jpeg_bytes(160, 120, seed=2)
    response = client.post("/api/remove?crop=1&padding=4", data={"file": (io.BytesIO(data), "p.jpg")},
                           headers={"Accept": "multipart/form-data"},
                           content_type="multipart/form-data")
    assert response.status_code == 200 and response.mimetype == "multipart/form-data"
    assert "Content-Disposition" not in response.headers  # each part names itself
    environ = {"wsgi.input": io.BytesIO(response.data), "CONTENT_LENGTH": str(len(response.data)),
               "CONTENT_TYPE": response.headers["Content-Type"], "REQUEST_METHOD": "POST"}
    files = parse_form_data(environ)[2]
    image, mask = Image.open(files["image"].stream), Image.open(files["mask"].stream)
    assert files["image"].content_type == "image/png" and image.mode == "RGBA"
    assert mask.mode == "L" and mask.size == image.size
    assert response.headers["X-Image-Size"] == "x".join(map(str, image.size))
    x, y, w, h = map(int, response.headers["X-Bounding-Box"].split(","))
    full = runtime.mask_for(decode_image(data, 10**8).rgb)
    np.testing.assert_array_equal(np.asarray(mask), full[y:y + h, x:x + w])
    plain = client.post("/api/remove", data={"file": (io.BytesIO(data), "p.jpg")},
                        headers={"Accept": "*/*"}, content_type="multipart/form-data")
    assert plain.mimetype == "image/png"
