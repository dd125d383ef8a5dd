"""The Gradio demo: upload a fundus photo, see the grade and why.

`demo_view` (the handler) turns one pipeline answer into what the page shows, and is tested directly;
`build_demo` wires it into a `gradio.Blocks` page. `retinascan demo --model DIR_OR_REPO` and `scripts/app.py`
(a Hugging Face Space entry point) both call `build_demo`. Gradio is an optional dependency (`pip install
retinascan-hf[demo]`), imported only here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from PIL import Image

TITLE = "RetinaScan: diabetic retinopathy grading (research software, not a medical device)"
NEIGHBOR_COLUMNS = ["similarity", "grade", "image_id", "source"]
DISPLAY_SIZE = 320  # pixels of the photo and Grad-CAM panels: a 32-224 px model picture is enlarged to this


@dataclass
class DemoView:
    """What the page shows for one photo.

    Attributes:
        summary: Markdown with the grade, its label, the referable flag, gradability (with the reason when not
            gradable) and the conformal grade set when the model has one.
        probabilities: `{label: probability}` for Gradio's bar display (empty when not gradable).
        overlay: the Grad-CAM overlay (where the model looked) on the cropped fundus the model saw.
        neighbors: rows `[similarity, grade, image_id, source]` of the bank images that voted (kNN mode).
    """

    summary: str
    probabilities: dict[str, float] = field(default_factory=dict)
    overlay: Image.Image | None = None
    neighbors: list[list[Any]] = field(default_factory=list)


def _summary(result: dict[str, Any]) -> str:
    if not result.get("gradable"):
        score = "" if result.get("ood_score") is None else f" (out-of-distribution score {result['ood_score']:.2f})"
        return f"### Not gradable: {result['error_type']}\n\n{result['reason']}{score}"
    lines = [
        f"### Grade {result['grade']}: {result['label']}",
        "",
        f"- **Referable DR:** {'yes' if result['referable'] else 'no'}",
        f"- **Decision mode:** {result['mode']}",
    ]
    if result.get("grade_set") is not None:
        lines.append(f"- **Conformal grade set:** {result['grade_set']}")
    if result.get("ood_score") is not None:
        lines.append(f"- **Out-of-distribution score:** {result['ood_score']:.2f}")
    return "\n".join(lines)


def demo_view(result: dict[str, Any], labels: dict[int, str]) -> DemoView:
    """Turn one `pipeline("retinascan")` answer into a [`DemoView`]."""
    view = DemoView(summary=_summary(result))
    if result.get("gradable"):
        view.probabilities = {labels[grade]: float(score) for grade, score in enumerate(result["scores"])}
        view.overlay = result.get("overlay")
        view.neighbors = [
            [round(entry["similarity"], 4), entry["grade"], entry.get("image_id", ""), entry.get("source", "")]
            for entry in result.get("neighbors", [])
        ]
    return view


def grade_photo(grader: Any, image: Image.Image | None) -> DemoView:
    """The demo's handler: grade one uploaded picture (None when nothing was uploaded)."""
    labels = grader.model.config.id2label
    if image is None:
        return DemoView(summary="Upload a colour fundus photograph.")
    return demo_view(grader(image, return_neighbors=True, return_heatmap=True), labels)


def enlarged(picture: Image.Image | None, size: int = DISPLAY_SIZE) -> Image.Image | None:
    """`picture` scaled up (never down) so its longer side is `size`: the overlay is as small as the model's input
    (32 px for a tiny model, 224 px for ViT-B/16), and a browser shows it at its own pixel size."""
    if picture is None or max(picture.size) >= size:
        return picture
    scale = size / max(picture.size)
    return picture.resize((round(picture.width * scale), round(picture.height * scale)), Image.Resampling.BICUBIC)


def build_demo(grader: Any):
    """A `gradio.Blocks` page around `grader` (a `RetinaScanPipeline`)."""
    import gradio as gr

    def handle(image: Image.Image | None):
        view = grade_photo(grader, image)
        return view.summary, view.probabilities, enlarged(view.overlay), view.neighbors

    with gr.Blocks(title=TITLE) as demo:
        gr.Markdown(f"## {TITLE}")
        with gr.Row():
            with gr.Column():
                photo = gr.Image(type="pil", label="Fundus photograph", elem_id="photo", height=DISPLAY_SIZE)
                button = gr.Button("Grade", variant="primary", elem_id="grade")
            overlay = gr.Image(
                type="pil", label="Where the model looked (Grad-CAM)", interactive=False, height=DISPLAY_SIZE
            )
            with gr.Column():
                summary = gr.Markdown(elem_id="summary")
                probabilities = gr.Label(label="Grade probabilities", num_top_classes=len(grader.model.config.id2label))
        neighbors = gr.Dataframe(headers=NEIGHBOR_COLUMNS, label="Nearest training images", interactive=False)
        button.click(handle, inputs=photo, outputs=[summary, probabilities, overlay, neighbors])
    return demo


__all__ = ["DemoView", "build_demo", "demo_view", "enlarged", "grade_photo"]
