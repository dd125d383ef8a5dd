"""How `retinascan data build` scales: wall time, images/s, peak memory and output size against corpus size.

Each build runs in a fresh process, so its peak RSS is its own: the build process (which holds the records
and `datasets`' write batches) and, separately, its largest image worker. Builds are measured with and
without build-time preprocessing on subsets of one generated corpus (`benchmarks.large_corpus`), so time per
image at each size shows whether the build is linear and peak RSS whether its memory is flat. The camera
originals (12-15 MP) are measured apart: their decode dominates a real EyePACS build.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.large_corpus import subset_layout
from benchmarks.timing import machine_summary, peak_rss_mib
from retinascan_hf.corpus import build_corpus
from retinascan_hf.corpus.preprocess import ImageStorage, Preprocessing

REPOSITORY = Path(__file__).resolve().parents[1]
EYEPACS_IMAGES = 88_702  # Kaggle EyePACS camera originals, for the extrapolation of a full build


def folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file() and not path.is_symlink())


def build_once(source: Path, out: Path, image_size: int | None, num_proc: int) -> dict[str, Any]:
    """One build in this process (the child side): what it kept and what it cost."""
    rss_before = peak_rss_mib(resource.RUSAGE_SELF)
    storage = ImageStorage(preprocessing=Preprocessing(image_size) if image_size else None)
    start = time.perf_counter()
    report = build_corpus({"eyepacs": source}, out, num_proc=num_proc, progress=False, storage=storage)
    wall = time.perf_counter() - start
    return {
        "images_kept": report.num_kept,
        "excluded": {reason: count for counts in report.sources.values() for reason, count in counts.excluded.items()},
        "wall_s": round(wall, 2),
        "rss_before_build_mib": round(rss_before),
        "peak_rss_mib": round(peak_rss_mib(resource.RUSAGE_SELF)),
        "peak_worker_rss_mib": round(peak_rss_mib(resource.RUSAGE_CHILDREN)),
        "stored_bytes": report.storage.get("stored_bytes"),
        "source_bytes": report.storage.get("source_bytes"),
    }


def build_in_child(source: Path, out: Path, image_size: int | None, num_proc: int) -> dict[str, Any]:
    command = [sys.executable, "-m", "benchmarks.corpus_scale", "--child", str(source), str(out), str(num_proc)]
    command += [str(image_size)] if image_size else []
    completed = subprocess.run(command, cwd=REPOSITORY, capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        raise RuntimeError(f"build of {source} failed:\n{completed.stderr[-3000:]}")
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    result["output_mib"] = round(folder_bytes(out) / 2**20, 1)
    shutil.rmtree(out)
    return result


def measure_sizes(
    corpus: Path, scratch: Path, sizes: list[int], image_size: int, num_proc: int
) -> list[dict[str, Any]]:
    rows = []
    for size in sizes:
        source = subset_layout(corpus, scratch / f"source-{size}", size)
        names = [line.split(",")[0] for line in (source / "trainLabels.csv").read_text().splitlines()[1:]]
        source_mib = round(sum((corpus / "train" / f"{name}.jpeg").stat().st_size for name in names) / 2**20, 1)
        for preprocess in (None, image_size):
            result = build_in_child(source, scratch / f"built-{size}", preprocess, num_proc)
            result.update(images=size, image_size=preprocess, source_mib=source_mib)
            result["images_per_s"] = round(size / result["wall_s"], 1)
            result["ms_per_image"] = round(1000 * result["wall_s"] / size, 3)
            rows.append(result)
            print(json.dumps(result), flush=True)
    return rows


def measure_camera_originals(originals: Path, scratch: Path, image_size: int, num_proc: int) -> dict[str, Any]:
    result = build_in_child(originals, scratch / "built-originals", image_size, num_proc)
    per_image = result["wall_s"] / result["images_kept"]
    result.update(
        image_size=image_size,
        s_per_image=round(per_image, 3),
        stored_fraction=round(result["stored_bytes"] / result["source_bytes"], 4),
        extrapolated_eyepacs_build_h=round(per_image * EYEPACS_IMAGES / 3600, 2),
        note=f"extrapolation: {EYEPACS_IMAGES} originals at the measured seconds per image "
        "(10 files, so including start-up costs: an upper estimate)",
    )
    return result


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per mode: time per image at the largest size over the smallest (1.0 = perfectly linear), RSS growth."""
    summary = {}
    for mode in sorted({row["image_size"] or 0 for row in rows}):
        chosen = sorted((row for row in rows if (row["image_size"] or 0) == mode), key=lambda row: row["images"])
        smallest, largest = chosen[0], chosen[-1]
        summary["bytes" if not mode else f"image_size_{mode}"] = {
            "sizes": [row["images"] for row in chosen],
            "time_per_image_ratio_largest_to_smallest": round(largest["ms_per_image"] / smallest["ms_per_image"], 3),
            "peak_rss_mib": [row["peak_rss_mib"] for row in chosen],
            "peak_worker_rss_mib": [row["peak_worker_rss_mib"] for row in chosen],
        }
    return summary


def child_main(argv: list[str]) -> None:
    source, out, num_proc, *size = argv
    print(json.dumps(build_once(Path(source), Path(out), int(size[0]) if size else None, int(num_proc))))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    options, _ = parser.parse_known_args(argv)
    if options.child:
        child_main(options.child)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Everything the script measures, as the JSON it writes."""
    args.scratch.mkdir(parents=True, exist_ok=True)
    rows = measure_sizes(args.corpus, args.scratch, args.sizes, args.image_size, args.num_proc)
    results: dict[str, Any] = {
        "corpus": str(args.corpus),
        "generated": json.loads((args.corpus / "generated.json").read_text()),
        "num_proc": args.num_proc,
        "builds": rows,
        "summary": summarise(rows),
        "machine": machine_summary(),
    }
    if args.originals.is_dir():
        results["camera_originals"] = measure_camera_originals(args.originals, args.scratch, 512, args.num_proc)
    return results


if __name__ == "__main__":
    main()
