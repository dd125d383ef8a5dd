"""Build-time preprocessing (`--image-size`) and path storage (`--store paths`): what a corpus stores.

Camera originals are 3-16 MP; a corpus that stores the processor's fundus crop once is a fraction of their
size and decodes fast in every later run. These tests check that what is stored is exactly that crop, that
the build report and the corpus say so, that paths stay paths and a vanished file is named, and that a
build's memory does not grow with the number of images.
"""

from __future__ import annotations

import io
import json
import tracemalloc
from pathlib import Path

import datasets
import numpy as np
import pytest
from PIL import Image

from retinascan_hf.cli import main
from retinascan_hf.corpus import REPORT_FILE, SPLITS, build_corpus
from retinascan_hf.corpus.dataset import CorpusImageMissingError
from retinascan_hf.corpus.preprocess import ImageStorage, Preprocessing
from retinascan_hf.image_processing_retinascan import RetinaScanImageProcessor
from retinascan_hf.tiny_clip import random_retinascan
from retinascan_hf.training.augment import FundusAugmentation
from retinascan_hf.training.data import FundusViews


def camera_like(grade: int, seed: int, width: int = 180, height: int = 120) -> Image.Image:
    """A textured fundus-like disc on a wider black frame, like a camera original (the crop must remove the
    borders); cheap to draw, so that tests can make hundreds."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:height, :width]
    centre_x = width / 2 + seed % 7
    disc = (x - centre_x) ** 2 + (y - height / 2) ** 2 < (0.47 * height) ** 2
    base = np.array([180 + 10 * grade, 80, 40], dtype=np.float32)
    pixels = base * (0.75 + 0.25 * rng.random((height, width, 1), dtype=np.float32)) * disc[..., None]
    return Image.fromarray(pixels.astype(np.uint8))


def eyepacs_folder(root: Path, count: int, *, blank: tuple[int, ...] = ()) -> Path:
    """An EyePACS layout of `count` camera-like JPEGs (two eyes per patient); `blank` rows are black frames."""
    (root / "train").mkdir(parents=True)
    lines = ["image,level"]
    for index in range(count):
        name = f"{index // 2}_{('left', 'right')[index % 2]}"
        picture = Image.new("RGB", (180, 120)) if index in blank else camera_like(index % 5, index)
        picture.save(root / "train" / f"{name}.jpeg", quality=92)
        lines.append(f"{name},{index % 5}")
    (root / "trainLabels.csv").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return eyepacs_folder(tmp_path_factory.mktemp("published") / "eyepacs", 20, blank=(7,))


def rows(out: Path) -> list[dict]:
    corpus = datasets.load_from_disk(str(out))
    return [row for split in SPLITS for row in corpus[split].cast_column("image", datasets.Image(decode=False))]


def test_image_size_stores_the_processors_fundus_crop_and_records_it(source: Path, tmp_path: Path) -> None:
    out = tmp_path / "corpus"
    settings = Preprocessing(64, "png")
    report = build_corpus({"eyepacs": source}, out, storage=ImageStorage(preprocessing=settings), progress=False)
    processor = RetinaScanImageProcessor(size=64)
    stored = {row["image_id"]: row["image"] for row in rows(out)}
    assert len(stored) == report.num_kept == 19
    for image_id, encoded in stored.items():
        picture = Image.open(io.BytesIO(encoded["bytes"]))
        original = source / "train" / f"{image_id.removeprefix('eyepacs/')}.jpeg"
        expected = processor.to_model_image(str(original))
        assert picture.format == "PNG" and picture.size == (64, 64)
        assert np.array_equal(np.asarray(picture.convert("RGB")), np.asarray(expected))  # lossless: the very crop
    facts = json.loads((out / REPORT_FILE).read_text())["storage"]
    assert facts["store"] == "bytes" and facts["preprocessing"]["image_size"] == 64
    assert facts["preprocessing"]["format"] == "png" and facts["preprocessing"]["quality"] is None
    assert facts["stored_bytes"] == sum(len(encoded["bytes"]) for encoded in stored.values())
    assert facts["source_bytes"] == sum((source / "train" / f"{i.split('/')[1]}.jpeg").stat().st_size for i in stored)
    assert "64 px" in datasets.load_from_disk(str(out))["train"].info.description
    assert not list(out.rglob("*.png")), "the staged pictures are embedded, then removed"


def test_a_frame_without_fundus_is_excluded_only_when_preprocessing(source: Path, tmp_path: Path) -> None:
    plain = build_corpus({"eyepacs": source}, tmp_path / "plain", progress=False)
    cropped = build_corpus(
        {"eyepacs": source}, tmp_path / "cropped", storage=ImageStorage(preprocessing=Preprocessing(48)), progress=False
    )
    assert plain.num_kept == 20 and cropped.num_kept == 19
    assert [(row.image_id, row.reason.value) for row in cropped.excluded] == [("eyepacs/3_right", "no_fundus")]
    assert cropped.sources["eyepacs"].excluded == {"no_fundus": 1}
    # Preprocessing never moves an image to another split.
    split_of = {
        row["image_id"]: split for split in SPLITS for row in datasets.load_from_disk(str(tmp_path / "plain"))[split]
    }
    for split in SPLITS:
        for image_id in datasets.load_from_disk(str(tmp_path / "cropped"))[split]["image_id"]:
            assert split_of[image_id] == split


def test_jpeg_preprocessing_through_the_cli_in_parallel(source: Path, tmp_path: Path) -> None:
    out = tmp_path / "corpus"
    args = ["data", "build", "--source", f"eyepacs={source}", "--out", str(out), "--image-size", "96"]
    assert main([*args, "--jpeg-quality", "90", "--num-proc", "2"]) == 0
    facts = json.loads((out / REPORT_FILE).read_text())["storage"]["preprocessing"]
    assert (facts["image_size"], facts["format"], facts["quality"], facts["crop"]) == (96, "jpeg", 90, "fundus")
    pictures = [Image.open(io.BytesIO(row["image"]["bytes"])) for row in rows(out)]
    assert {(picture.format, picture.size) for picture in pictures} == {("JPEG", (96, 96))}


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--image-size", "10"], "image size must lie in"),
        (["--image-size", "64", "--jpeg-quality", "0"], "JPEG quality"),
        (["--image-size", "64", "--store", "paths"], "use one or the other"),
        (["--store", "paths", "--push-to-hub", "me/corpus"], "cannot be pushed"),
    ],
)
def test_bad_storage_settings_exit_2_before_writing(
    source: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    out = tmp_path / "out"
    assert main(["data", "build", "--source", f"eyepacs={source}", "--out", str(out), *extra]) == 2
    assert message in capsys.readouterr().err and not out.exists()


def test_store_paths_copies_nothing_and_names_a_vanished_file(tmp_path: Path) -> None:
    source = eyepacs_folder(tmp_path / "eyepacs", 10)
    out = tmp_path / "corpus"
    report = build_corpus({"eyepacs": source}, out, storage=ImageStorage("paths"), progress=False)
    assert report.storage == {"store": "paths", "preprocessing": None}
    corpus = datasets.load_from_disk(str(out))
    paths = [path for split in SPLITS for path in corpus[split]["image"]]
    assert sorted(paths) == sorted(str(path) for path in (source / "train").glob("*.jpeg"))
    corpus_bytes = sum(path.stat().st_size for path in out.rglob("*") if path.is_file())
    assert corpus_bytes < sum(Path(path).stat().st_size for path in paths) / 2  # only paths, no image bytes

    _, processor = random_retinascan(seed=0)
    views = FundusViews(corpus["train"], processor, FundusAugmentation(), seed=0)
    assert views[(0, (0,))]["pixel_values"].shape == (1, 3, 32, 32)  # decoded from the source file
    gone = Path(corpus["train"][1]["image"])
    gone.unlink()
    for attempt in (
        lambda: views[(1, (0,))],
        lambda: FundusViews(corpus["train"], processor, FundusAugmentation(), 0).cache_keys,
    ):
        with pytest.raises(CorpusImageMissingError) as error:
            attempt()
        assert str(gone) in str(error.value) and str(out) in str(error.value)
        assert corpus["train"][1]["image_id"] in str(error.value)


def test_build_memory_does_not_grow_with_the_number_of_images(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Workers write the preprocessed files and `datasets` embeds them in write batches of at most 1,000 rows
    (100 MB): the build holds no image data proportional to the corpus, only a record of a few hundred bytes
    per image. The write batch is scaled down here so that tiny builds span many batches."""
    monkeypatch.setattr(datasets.config, "DEFAULT_MAX_BATCH_SIZE", 10)

    def peak_bytes(count: int) -> int:
        source = eyepacs_folder(tmp_path / f"eyepacs-{count}", count)
        storage = ImageStorage(preprocessing=Preprocessing(128, "png"))  # ~17 kB per stored picture
        tracemalloc.start()
        build_corpus({"eyepacs": source}, tmp_path / f"corpus-{count}", storage=storage, progress=False)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return peak

    peak_bytes(10)  # first build: one-off imports and caches
    small, large = peak_bytes(40), peak_bytes(160)
    per_image = sum(path.stat().st_size for path in (tmp_path / "corpus-160").rglob("*.arrow")) / 160
    assert per_image > 20_000
    assert large - small < 0.1 * per_image * 120  # per extra image: bookkeeping, a tenth of its picture at most
