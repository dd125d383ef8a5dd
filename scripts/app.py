"""Hugging Face Space entry point for the RetinaScan demo (`app.py` of a Gradio Space).

Set the Space variable RETINASCAN_MODEL to the model repo id (and RETINASCAN_REVISION to a commit to pin it);
the Space's requirements.txt needs `retinascan-hf[demo]`. Locally: `python scripts/app.py` with the variable set,
or `retinascan demo --model DIR_OR_REPO`.
"""

import os

from retinascan_hf.demo import build_demo
from retinascan_hf.loading import load_pipeline

demo = build_demo(
    load_pipeline(
        os.environ.get("RETINASCAN_MODEL", "retinascan-quickstart/model"),
        revision=os.environ.get("RETINASCAN_REVISION"),
    )
)

if __name__ == "__main__":
    demo.launch()
