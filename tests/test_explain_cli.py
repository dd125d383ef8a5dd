"""`retinascan explain`: one three-panel PNG and one JSON record per image; bad files flagged, not fatal."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
from PIL import Image

from retinascan_hf.cli import main
from retinascan_hf.explain import RECORDS_NAME, unique_panel_names


def test_explain_writes_panels_and_records(model_dir, fundus_images, tmp_path, capsys):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    images = [tmp_path / "a" / "eye.png", tmp_path / "b" / "eye.png", tmp_path / "missing.png"]
    fundus_images[4].save(images[0])
    fundus_images[1].save(images[1])
    out = tmp_path / "out"
    argv = ["explain", *map(str, images), "--model", str(model_dir), "--output-dir", str(out), "--no-progress"]
    assert main([*argv, "--panel-size", "64"]) == 1  # one input was not gradable
    printed = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert printed == [json.loads(line) for line in (out / RECORDS_NAME).read_text().splitlines()]
    assert [r["gradable"] for r in printed] == [True, True, False]
    assert [r["grade"] for r in printed[:2]] == [4, 1] and printed[0]["mode"] == "knn"
    assert printed[0]["heatmap_grade"] == 4 and "missing.png" in printed[2]["reason"] and "panel" not in printed[2]
    assert {p.name for p in out.iterdir()} == {"eye.gradcam.png", "eye-2.gradcam.png", RECORDS_NAME}
    panel = np.asarray(Image.open(printed[0]["panel"]).convert("RGB"))
    assert panel.shape == (64 + 20, 3 * 64, 3)
    original, heat, overlay = (panel[20:, i * 64 : (i + 1) * 64].astype(int) for i in range(3))
    assert original.std() > 10 and heat.std() > 10  # not blank
    assert np.abs(overlay - original).mean() > 1  # the overlay shows the map


def test_explain_requested_grade_and_mode(model_dir, fundus_images, tmp_path, capsys):
    image = tmp_path / "eye.jpg"
    fundus_images[2].save(image)
    argv = ["explain", str(image), "--model", str(model_dir), "--output-dir", str(tmp_path / "o"), "--no-progress"]
    assert main([*argv, "--mode", "prototype", "--grade", "0"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["mode"] == "prototype" and record["heatmap_grade"] == 0
    # bad settings: one line on stderr, exit status 2, nothing graded or written
    for option, message in ((["--grade", "9"], "grade to explain"), (["--panel-size", "100000"], "panel size")):
        assert main([*argv, "--output-dir", str(tmp_path / "bad"), *option]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_explain_help_imports_neither_torch_nor_transformers():
    code = (
        "import sys\n"
        "from retinascan_hf.cli import main\n"
        "try:\n    main(['explain', '--help'])\nexcept SystemExit as exit:\n    assert exit.code == 0\n"
        "assert not {'torch', 'transformers'} & set(sys.modules), sorted(sys.modules)\n"
    )
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert "--output-dir" in completed.stdout


def test_unique_panel_names():
    sources = ["x/eye.png", "y/eye.jpg", "https://host/path/eye.jpeg?download=1", "https://host/", "z/other.png"]
    assert unique_panel_names(sources) == [
        "eye.gradcam.png",
        "eye-2.gradcam.png",
        "eye-3.gradcam.png",
        "image.gradcam.png",
        "other.gradcam.png",
    ]
