"""Draw the README's Grad-CAM example: a tiny model trained to spot a bright blob, explained by `retinascan explain`.

    python scripts/gradcam_example.py [--output docs/images/gradcam_example.png] [--seed 0]

Trains the blob detector of `retinascan_hf.synthetic_lesion` (seconds, CPU), saves it as a model folder, paints
one blob at two places on a synthetic fundus, runs the code behind `retinascan explain` on both, and stacks the
two `original | heat map | overlay` panels into one PNG. The heat should sit on the blob in both rows.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from retinascan_hf import load_pipeline
from retinascan_hf.explain import explain_images
from retinascan_hf.synthetic import render_fundus
from retinascan_hf.synthetic_lesion import paint_blob, train_blob_detector

BLOB_PLACES = ((0.32, 0.3), (0.62, 0.68))  # fractions of the image side


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=Path("docs/images/gradcam_example.png"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    detector = train_blob_detector(seed=args.seed)
    print(f"blob detector held-out accuracy: {detector.accuracy:.3f}")
    size = detector.processor.output_size
    background = render_fundus(0, size=size, rng=np.random.default_rng(args.seed + 99))
    with tempfile.TemporaryDirectory() as work:
        model_dir, images = Path(work) / "model", []
        detector.model.save_pretrained(model_dir)
        detector.processor.save_pretrained(model_dir)
        for index, (fx, fy) in enumerate(BLOB_PLACES):
            path = Path(work) / f"fundus-{index + 1}.png"
            paint_blob(background, (fx * size, fy * size), 0.055 * size).save(path)
            images.append(str(path))
        records = explain_images(load_pipeline(model_dir), images, Path(work) / "out", panel_size=160, progress=False)
        panels = [Image.open(record["panel"]).convert("RGB") for record in records]
        sheet = Image.new("RGB", (panels[0].width, sum(panel.height for panel in panels)), (255, 255, 255))
        for index, panel in enumerate(panels):
            sheet.paste(panel, (0, index * panel.height))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(args.output, optimize=True)
    for record in records:
        print(json.dumps({key: record[key] for key in ("grade", "label", "mode", "heatmap_grade")}))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
