"""RetinaScanImageProcessor: input kinds and PIL modes, fundus cropping, reduced decoding, bad input."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from retinascan_hf import (
    ImageTooLargeError,
    InvalidImageError,
    NoFundusFoundError,
    RetinaScanImageProcessor,
    RetinaScanInputError,
)
from retinascan_hf.image_processing_retinascan import _uint8_percentile, find_fundus_box, load_fundus_image
from retinascan_hf.synthetic import render_fundus


def disc_image(width=200, height=150, centre=(100, 75), radius=60, colour=(200, 90, 40)) -> Image.Image:
    """A flat orange disc on black: the simplest fundus with a known field of view."""
    yy, xx = np.mgrid[0:height, 0:width]
    inside = (xx - centre[0]) ** 2 + (yy - centre[1]) ** 2 <= radius**2
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[inside] = colour
    return Image.fromarray(pixels)


@pytest.fixture
def processor():
    return RetinaScanImageProcessor(size=32)


def test_defaults_are_clip_b16():
    processor = RetinaScanImageProcessor()
    assert processor.size == {"height": 224, "width": 224}
    assert processor.image_mean == pytest.approx([0.48145466, 0.4578275, 0.40821073])
    assert processor.image_std == pytest.approx([0.26862954, 0.26130258, 0.27577711])


def test_output_shape_dtype_and_normalisation(processor):
    batch = processor([disc_image(), disc_image()], return_tensors="pt")
    pixels = batch["pixel_values"]
    assert tuple(pixels.shape) == (2, 3, 32, 32)
    assert str(pixels.dtype) == "torch.float32"
    black = (0.0 - np.array(processor.image_mean)) / np.array(processor.image_std)
    assert np.allclose(pixels[0, :, 0, 0].numpy(), black, atol=1e-5)  # corner stays background


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"do_normalize": False},
        {"do_rescale": False},
        {"do_rescale": False, "do_normalize": False},
        {"image_mean": [0.5, 0.4, 0.3], "image_std": [0.2, 0.3, 0.25], "rescale_factor": 1 / 127.5},
    ],
)
def test_normalisation_is_the_textbook_formula_in_chw(options):
    processor = RetinaScanImageProcessor(size=32, **options)
    pixels = np.random.default_rng(0).integers(0, 256, (32, 40, 3), dtype=np.uint8)
    expected = pixels.astype(np.float64) * (processor.rescale_factor if processor.do_rescale else 1.0)
    if processor.do_normalize:
        expected = (expected - np.array(processor.image_mean)) / np.array(processor.image_std)
    array = processor.normalize_image(Image.fromarray(pixels))
    assert array.dtype == np.float32 and array.shape == (3, 32, 40) and array.flags.c_contiguous
    np.testing.assert_allclose(array, expected.transpose(2, 0, 1), rtol=1e-6, atol=1e-6)
    # bit for bit the float32 array expression (a trained model sees exactly the pixels it was trained on)
    plain = pixels.astype(np.float32)
    if processor.do_rescale:
        plain = plain * np.float32(processor.rescale_factor)
    if processor.do_normalize:
        plain = (plain - np.asarray(processor.image_mean, np.float32)) / np.asarray(processor.image_std, np.float32)
    np.testing.assert_array_equal(array, plain.transpose(2, 0, 1))


@pytest.mark.parametrize("seed", range(6))
def test_the_histogram_percentile_equals_numpys(seed):
    rng = np.random.default_rng(seed)
    values = rng.integers(0, int(rng.integers(1, 257)), size=int(rng.integers(1, 5000)), dtype=np.uint8)
    for percent in (0, 1, 50, 99, 100, 37.5):
        assert _uint8_percentile(values, percent) == pytest.approx(float(np.percentile(values, percent)), abs=1e-9)


@pytest.mark.parametrize(
    ("centre", "radius"),
    [((100, 75), 60), ((60, 80), 50), ((140, 70), 40)],  # centred, off-centre left, off-centre right
)
def test_crop_finds_the_disc_wherever_it_is(centre, radius):
    left, top, right, bottom = find_fundus_box(disc_image(centre=centre, radius=radius))
    assert abs(left - (centre[0] - radius)) <= 3 and abs(right - (centre[0] + radius)) <= 3
    assert abs(top - (centre[1] - radius)) <= 3 and abs(bottom - (centre[1] + radius)) <= 3


def test_crop_ignores_notch_markers_and_keeps_dim_vignetted_edges():
    image = disc_image(width=300, height=200, centre=(150, 100), radius=80)
    pixels = np.asarray(image).copy()
    pixels[5:11, 285:292] = 255  # a bright notch marker in the corner
    yy, xx = np.mgrid[0:200, 0:300]
    rim = ((xx - 150) ** 2 + (yy - 100) ** 2 > 75**2) & ((xx - 150) ** 2 + (yy - 100) ** 2 <= 80**2)
    pixels[rim] = (40, 18, 8)  # a dim edge, far darker than the centre
    left, top, right, bottom = find_fundus_box(Image.fromarray(pixels))
    assert (abs(left - 70), abs(right - 230), abs(top - 20), abs(bottom - 180)) < (4, 4, 4, 4)


def test_crop_handles_a_disc_clipped_by_the_frame():
    # Camera frames often cut the disc at top and bottom: the box spans the full height.
    left, top, right, bottom = find_fundus_box(disc_image(width=300, height=160, centre=(150, 80), radius=100))
    assert (top, bottom) == (0, 160) and abs(left - 50) <= 3 and abs(right - 250) <= 3


def test_no_visible_fundus_raises_a_typed_error_naming_the_input(processor):
    with pytest.raises(NoFundusFoundError, match="array shape=\\(64, 64, 3\\)") as info:
        processor(np.zeros((64, 64, 3), np.uint8))
    assert isinstance(info.value, ValueError) and isinstance(info.value, RetinaScanInputError)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK", "I;16", "I", "F", "LA", "1"])
def test_every_pil_mode_is_accepted(processor, mode):
    fundus = render_fundus(2, size=64, rng=np.random.default_rng(0))
    if mode == "I;16":
        array = (np.asarray(fundus.convert("L"), np.uint16) * 257).astype(np.uint16)
        image = Image.fromarray(array)
        assert image.mode == "I;16"
    else:
        image = fundus.convert(mode)
    pixels = processor(image)["pixel_values"]
    assert tuple(pixels.shape) == (1, 3, 32, 32)
    assert np.isfinite(pixels.numpy()).all()


def test_16_bit_input_is_scaled_by_its_range_not_clipped():
    fundus = render_fundus(1, size=64, rng=np.random.default_rng(1)).convert("L")
    eight_bit = np.asarray(fundus, np.float32)
    sixteen = Image.fromarray((np.asarray(fundus, np.uint16) * 257).astype(np.uint16))
    assert sixteen.mode == "I;16"
    rgb = np.asarray(load_fundus_image(sixteen), np.float32)[..., 0]
    assert np.abs(rgb - eight_bit).max() <= 1.0


def test_rgba_transparency_becomes_black_background(processor):
    rgba = disc_image().convert("RGBA")
    pixels = np.asarray(rgba).copy()
    pixels[..., :3] = 255  # white everywhere, but transparent outside the disc
    pixels[..., 3] = np.where(np.asarray(disc_image())[..., 0] > 0, 255, 0)
    box = find_fundus_box(load_fundus_image(Image.fromarray(pixels, "RGBA")))
    assert abs(box[0] - 40) <= 3 and abs(box[2] - 160) <= 3


@pytest.mark.parametrize("layout", ["hwc", "chw", "hw", "float"])
def test_numpy_layouts(processor, layout):
    rgb = np.asarray(disc_image(), np.uint8)
    array = {
        "hwc": rgb,
        "chw": rgb.transpose(2, 0, 1),
        "hw": rgb[..., 0],
        "float": rgb.astype(np.float32) / 255.0,
    }[layout]
    expected = processor(disc_image() if layout != "hw" else disc_image().getchannel(0))["pixel_values"]
    assert np.allclose(processor(array)["pixel_values"].numpy(), expected.numpy(), atol=1e-5)


def test_exif_orientation_is_honoured(tmp_path):
    # A disc on the left of a landscape frame, stored with EXIF "rotate 90 CW" (orientation 6).
    image = disc_image(width=200, height=100, centre=(50, 50), radius=40)
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rotated.jpg"
    image.save(path, exif=exif.tobytes(), quality=95)
    upright = load_fundus_image(path)
    assert upright.size == (100, 200)
    _, top, _, bottom = find_fundus_box(upright)
    assert top < 20 and bottom < 110  # after transposing, the disc sits at the top


def test_large_jpeg_is_reduced_to_about_twice_the_output_size(tmp_path):
    path = tmp_path / "camera.jpg"
    disc_image(width=3000, height=2000, centre=(1500, 1000), radius=950).save(path, quality=80)
    processor = RetinaScanImageProcessor(size=224)
    decoded = processor.load(path)
    assert decoded.size == (3000 // 4, 2000 // 4)  # box-reduced by the largest factor keeping 448 px
    assert processor.to_model_image(path).size == (224, 224)


def test_decompression_bomb_is_refused_before_decoding(tmp_path):
    path = tmp_path / "bomb.png"
    Image.new("L", (4000, 4000)).save(path)
    with pytest.raises(ImageTooLargeError, match=r"bomb\.png"):
        RetinaScanImageProcessor(max_image_pixels=1_000_000)(str(path))


@pytest.mark.parametrize(
    ("name", "payload", "message"),
    [
        ("text.jpg", b"this is not an image", "not a readable image"),
        ("empty.png", b"", "not a readable image"),
    ],
)
def test_non_image_files_raise_invalid_image_error(tmp_path, processor, name, payload, message):
    path = tmp_path / name
    path.write_bytes(payload)
    with pytest.raises(InvalidImageError, match=message) as info:
        processor(str(path))
    assert name in str(info.value)


def test_truncated_jpeg_raises_invalid_image_error(tmp_path, processor):
    buffer = io.BytesIO()
    render_fundus(3, size=128, rng=np.random.default_rng(2)).save(buffer, format="JPEG")
    path = tmp_path / "truncated.jpg"
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(InvalidImageError, match=r"truncated\.jpg"):
        processor(str(path))


@pytest.mark.parametrize(
    "bad",
    [np.zeros((0, 0, 3), np.uint8), np.zeros((1, 1, 3), np.uint8), np.full((8, 8, 3), 2.0, np.float32), "missing.png"],
)
def test_degenerate_inputs_raise_invalid_image_error(processor, bad):
    with pytest.raises(InvalidImageError):
        processor(bad)


def test_one_by_one_pil_image_is_refused(processor):
    with pytest.raises(InvalidImageError, match="1x1"):
        processor(Image.new("RGB", (1, 1), (255, 0, 0)))


def test_save_and_reload_with_auto_image_processor(tmp_path):
    from transformers import AutoImageProcessor

    import retinascan_hf  # noqa: F401  (registers the Auto classes)

    original = RetinaScanImageProcessor(size=48, fundus_threshold=0.1)
    original.save_pretrained(tmp_path)
    loaded = AutoImageProcessor.from_pretrained(tmp_path)
    assert isinstance(loaded, RetinaScanImageProcessor)
    assert loaded.size == {"height": 48, "width": 48} and loaded.fundus_threshold == 0.1
    image = disc_image()
    assert np.allclose(original(image)["pixel_values"].numpy(), loaded(image)["pixel_values"].numpy())


@pytest.mark.real_data
def test_real_camera_originals_are_cropped_to_the_fundus(real_data_dir):
    processor = RetinaScanImageProcessor()
    originals = sorted((real_data_dir / "eyepacs-originals" / "train").glob("*.jpeg"))
    assert len(originals) == 10
    for path in originals:
        with Image.open(path) as full:
            width, height = full.size
        picture = processor.to_model_image(path)
        assert picture.size == (224, 224)
        array = np.asarray(picture, np.float32).max(axis=-1)
        # The disc now fills the frame: bright in the middle, and its width spans nearly the whole output.
        assert array[100:124, 100:124].mean() > 30, path.name
        middle_row = np.flatnonzero(array[112] > 15)
        assert middle_row[-1] - middle_row[0] > 0.9 * 224, path.name
        assert width * height > 9_000_000  # these are real 10-15 MP camera frames


@pytest.mark.parametrize(
    "frame",
    [
        np.full((120, 160, 3), 255, np.uint8),  # blown-out white
        np.full((120, 160, 3), 128, np.uint8),  # uniform grey
        np.full((20, 400, 3), 200, np.uint8),  # a bright strip, too thin to be a disc
        np.pad(np.full((120, 5, 3), 220, np.uint8), ((0, 0), (80, 75), (0, 0))),  # a thin vertical stripe
    ],
    ids=["white", "grey", "strip", "stripe"],
)
def test_blank_and_non_disc_frames_have_no_fundus(processor, frame):
    with pytest.raises(NoFundusFoundError, match="No visible fundus"):
        processor(frame)


def test_a_callers_pil_image_is_not_modified(tmp_path):
    path = tmp_path / "camera.jpg"
    disc_image(width=2400, height=1600, centre=(1200, 800), radius=760).save(path, quality=80)
    with Image.open(path) as image:
        RetinaScanImageProcessor(size=64)(image)
        assert image.size == (2400, 1600)  # no draft mode applied to an image the caller opened


@pytest.mark.parametrize(("peak", "expected"), [(200, 200), (4000, round(4000 / 65535 * 255)), (1.0, 255)])
def test_32_bit_and_float_modes_use_their_format_range(peak, expected):
    mode = "F" if isinstance(peak, float) else "I"
    array = np.zeros((32, 32), np.float32 if mode == "F" else np.int32)
    array[8:24, 8:24] = peak
    image = Image.fromarray(array, mode=mode) if mode == "F" else Image.fromarray(array).convert("I")
    rgb = np.asarray(load_fundus_image(image))
    assert abs(int(rgb[16, 16, 0]) - expected) <= 1


def test_integer_arrays_are_accepted_and_out_of_range_ones_refused(processor):
    disc = np.asarray(disc_image(), np.uint8)
    as_int32 = disc.astype(np.int32)
    assert np.allclose(processor(as_int32)["pixel_values"].numpy(), processor(disc)["pixel_values"].numpy())
    with pytest.raises(InvalidImageError, match="0, 65535"):
        processor(as_int32 - 1)


def test_our_pixel_limit_governs_until_pillows_hard_limit(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    disc_image(width=2000, height=1500, centre=(1000, 750), radius=700).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 2_000_000)  # 3 MP: above Pillow's warning level only
    assert RetinaScanImageProcessor(size=32, max_image_pixels=10_000_000)(str(path))["pixel_values"].shape[0] == 1
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000_000)  # now past Pillow's hard limit (2x)
    with pytest.raises(ImageTooLargeError, match=r"big\.png"):
        RetinaScanImageProcessor(size=32, max_image_pixels=10_000_000)(str(path))
