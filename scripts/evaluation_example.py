"""Regenerate docs/evaluation/: `retinascan evaluate` on the quickstart model (the README's example).

    python scripts/evaluation_example.py [--output docs/evaluation]

Runs, in a temporary folder, exactly the two commands the README shows:

    retinascan quickstart --output-dir retinascan-quickstart
    retinascan evaluate --model retinascan-quickstart/model --data retinascan-quickstart/corpus \
        --output-dir retinascan-quickstart/evaluation --cache-dir retinascan-quickstart/feature-cache

and copies report.md, report.json and the three plots into `--output`. A random tiny backbone on synthetic
images: the report shows what evaluation produces, not a clinical result.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path

from retinascan_hf.cli import main as retinascan

FILES = ("report.md", "report.json", "confusion_matrix.png", "reliability_diagram.png", "roc_referable.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=Path("docs/evaluation"))
    args = parser.parse_args()
    output = args.output.absolute()
    here = Path.cwd()
    with tempfile.TemporaryDirectory() as work:
        os.chdir(work)  # relative paths, so the report names the folders the README's commands create
        try:
            retinascan(["quickstart", "--output-dir", "retinascan-quickstart", "--no-progress"])
            run = Path("retinascan-quickstart")
            evaluate = ["evaluate", "--model", str(run / "model"), "--data", str(run / "corpus")]
            retinascan([*evaluate, "--output-dir", str(run / "evaluation"), "--cache-dir", str(run / "feature-cache")])
            output.mkdir(parents=True, exist_ok=True)
            for name in FILES:
                shutil.copyfile(run / "evaluation" / name, output / name)
        finally:
            os.chdir(here)
    print(f"wrote {', '.join(FILES)} to {output}")


if __name__ == "__main__":
    main()
