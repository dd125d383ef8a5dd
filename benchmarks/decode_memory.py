"""Peak memory of decoding decompression-bomb-sized but legal images, with and without the pixel budget.

Each decode runs in a fresh child process, and the number reported is the growth of that process's peak
resident memory over its memory just before the decode (imports excluded), so cases do not mask each other.
The baseline is what a loader without a budget does: `Image.open(path).convert("RGB")`.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

from PIL import Image, ImageDraw

from .timing import machine_summary

# Runs in the child: reset the peak-RSS counter after the imports, decode, report the growth of the peak.
_CHILD = """
import json, sys, warnings
from PIL import Image
from retinascan_hf.image_processing_retinascan import RetinaScanImageProcessor

def status(field):
    with open("/proc/self/status") as handle:
        return next(int(line.split()[1]) for line in handle if line.startswith(field + ":")) / 1024.0

mode, path = sys.argv[1], sys.argv[2]
Image.MAX_IMAGE_PIXELS = None
warnings.simplefilter("ignore")
processor = RetinaScanImageProcessor()
try:
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")  # reset VmHWM to the current RSS
except OSError:
    pass
before = status("VmRSS")
try:
    if mode == "naive":
        image = Image.open(path).convert("RGB")
        outcome = f"decoded {image.width}x{image.height}"
    else:
        image = processor.load(path)
        processor.to_model_image(path)
        outcome = f"decoded {image.width}x{image.height}"
except ValueError as error:
    outcome = f"refused: {type(error).__name__}"
print(json.dumps({"outcome": outcome, "peak_growth_mib": status("VmHWM") - before}))
"""


@dataclass
class DecodeCase:
    name: str
    path: str
    megapixels: float
    file_kib: float
    naive_outcome: str = ""
    naive_peak_mib: float = 0.0
    processor_outcome: str = ""
    processor_peak_mib: float = 0.0
    processor_seconds: float = 0.0

    @property
    def ratio(self) -> float:
        return self.processor_peak_mib / max(self.naive_peak_mib, 1e-9)


def _bomb(path: Path, size: tuple[int, int], mode: str, **save) -> Path:
    """A mostly black frame with one bright disc: legal, tiny when compressed, huge when decoded."""
    image = Image.new(mode, size, 0)
    radius = min(size) // 3
    centre = (size[0] // 2, size[1] // 2)
    fill = 180 if mode == "L" else (200, 90, 40)
    ImageDraw.Draw(image).ellipse(
        [centre[0] - radius, centre[1] - radius, centre[0] + radius, centre[1] + radius], fill
    )
    image.save(path, **save)
    return path


def make_cases(directory: Path, camera_photo: Path | None) -> list[tuple[str, Path]]:
    cases = [
        ("PNG 96 MP (greyscale)", _bomb(directory / "bomb96.png", (9800, 9800), "L", optimize=True)),
        ("JPEG 96 MP", _bomb(directory / "bomb96.jpg", (9800, 9800), "RGB", quality=85)),
        ("PNG 36 MP (within the budget)", _bomb(directory / "big36.png", (6000, 6000), "RGB", optimize=True)),
    ]
    if camera_photo is not None:
        cases.append(("camera original JPEG", camera_photo))
    return cases


def _child(mode: str, path: Path) -> dict:
    completed = subprocess.run(
        [sys.executable, "-c", _CHILD, mode, str(path)], capture_output=True, text=True, check=True, timeout=600
    )
    return json.loads(completed.stdout.strip().splitlines()[-1])


def run_decode_memory_benchmark(directory: Path, camera_photo: Path | None = None) -> list[DecodeCase]:
    results = []
    for name, path in make_cases(directory, camera_photo):
        with warnings.catch_warnings():  # measuring the bombs, knowingly
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                megapixels = image.width * image.height / 1e6
        case = DecodeCase(name, str(path), round(megapixels, 1), round(path.stat().st_size / 1024, 1))
        naive = _child("naive", path)
        case.naive_outcome, case.naive_peak_mib = naive["outcome"], naive["peak_growth_mib"]
        started = time.perf_counter()
        processed = _child("processor", path)
        case.processor_seconds = time.perf_counter() - started
        case.processor_outcome, case.processor_peak_mib = processed["outcome"], processed["peak_growth_mib"]
        results.append(case)
    return results


def format_table(cases: list[DecodeCase]) -> str:
    lines = [
        "peak memory growth of one decode (MiB); ratio = processor / naive full decode",
        f"{'image':<32} {'MP':>6} {'file KiB':>9} {'naive':>8} {'processor':>10} {'ratio':>6}  processor outcome",
    ]
    for case in cases:
        lines.append(
            f"{case.name:<32} {case.megapixels:>6.1f} {case.file_kib:>9.0f} {case.naive_peak_mib:>8.0f} "
            f"{case.processor_peak_mib:>10.0f} {case.ratio:>6.3f}  {case.processor_outcome}"
        )
    return "\n".join(lines) + f"\n{machine_summary()}"


def to_json(cases: list[DecodeCase]) -> dict:
    rows = [{**asdict(case), "ratio": case.ratio} for case in cases]
    for row in rows:
        row.pop("path")
    return {"machine": machine_summary(), "baseline": "Image.open(path).convert('RGB')", "cases": rows}


__all__ = ["DecodeCase", "format_table", "run_decode_memory_benchmark", "to_json"]
