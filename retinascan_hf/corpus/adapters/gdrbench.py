"""GDRBench (DomainBed layout): ``images/<SOURCE>/<grade folder>/<file>`` and optional splits.

With ``splits/<SOURCE>_{train,crossval}.txt`` present, exactly the listed images are read and
each keeps its official subset (``train``/``crossval``) for the GDRBench protocol; without them,
every image under a grade folder is read and has no subset.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from ..schema import GDRBENCH_SUBSETS, Record
from .common import Row, make_record, read_listing, records_from_rows
from .eyepacs import split_patient_eye

SOURCE = "gdrbench"
GRADE_FOLDERS: tuple[str, ...] = ("nodr", "mild_npdr", "moderate_npdr", "severe_npdr", "pdr")


def read_gdrbench(root: Path) -> Iterator[Record]:
    """Records of every domain, each domain its own source ``gdrbench/<domain>``.

    Domains are separate sources so that stratification and leave-one-source-out treat them as
    the benchmark does, and so that ``gdrbench/aptos`` ids never collide with the ``aptos`` adapter.
    """
    splits = root / "splits"
    if splits.is_dir():
        yield from _listed(root / "images", splits)
    else:
        yield from _walked(root / "images")


def _listed(images: Path, splits: Path) -> Iterator[Record]:
    for subset in GDRBENCH_SUBSETS:
        for listing in sorted(splits.glob(f"*_{subset}.txt")):
            domain = listing.name.removesuffix(f"_{subset}.txt")

            def record(row: Row, domain: str = domain, subset: str = subset) -> Record:
                return _record(images / row["file"], row["label"], domain, subset)

            yield from records_from_rows(read_listing(listing), f"{SOURCE}/{domain.lower()}", record)


def _walked(images: Path) -> Iterator[Record]:
    for domain_dir in sorted(path for path in images.iterdir() if path.is_dir()):
        for grade, folder in enumerate(GRADE_FOLDERS):
            grade_dir = domain_dir / folder
            if grade_dir.is_dir():
                # Not only regular files: a FIFO or device among the images is excluded and counted, not skipped.
                entries = sorted(grade_dir.iterdir())
                files = [Row(file, None) for file in entries if not file.name.startswith(".") and not file.is_dir()]

                def record(row: Row, grade: int = grade, domain: str = domain_dir.name) -> Record:
                    return _record(row.file, str(grade), domain, None)

                yield from records_from_rows(files, f"{SOURCE}/{domain_dir.name.lower()}", record)


def _record(path: Path, label: str, domain: str, subset: str | None) -> Record:
    """EyePACS-derived domains (EYEPACS, RLDR) keep ``<patient>_<eye>`` names: group by patient."""
    stem = PurePosixPath(path.name).stem
    patient, eye = split_patient_eye(stem)
    return make_record(
        path,
        label,
        source=f"{SOURCE}/{domain.lower()}",
        name=stem,
        patient=patient,
        eye=eye,
        subset=subset,
    )
