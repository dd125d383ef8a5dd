"""The model-card template (`template.md`, Jinja as `huggingface_hub.ModelCard.from_template` reads it).

`retinascan_hf/model_card` is a symbolic link to this top-level folder, so the template is package data of
`retinascan_hf` and the release code finds it in a source checkout and in an installed wheel alike.
`example_quickstart.md` is the card rendered for the quickstart model (`scripts/render_example_card.py`).
"""

from importlib.resources import files

TEMPLATE_NAME = "template.md"


def template_text() -> str:
    """The Jinja source of the model card."""
    return (files(__name__) / TEMPLATE_NAME).read_text(encoding="utf-8")
