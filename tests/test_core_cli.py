"""`retinascan grade` and `load_pipeline`; what every command shares: errors, `--version`, cheap `--help`; and the
package's registration with transformers whichever is imported first."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap

import pytest

from retinascan_hf import RetinaScanPipeline, __version__, load_pipeline
from retinascan_hf.cli import main


def test_load_pipeline_uses_installed_classes_and_the_bank(model_dir, fundus_images):
    grader = load_pipeline(model_dir)
    assert type(grader) is RetinaScanPipeline  # no remote-code copy, no trust prompt
    assert grader(fundus_images[3])["grade"] == 3 and grader.feature_bank is not None
    assert load_pipeline(model_dir, use_feature_bank=False)(fundus_images[3])["mode"] == "ordinal"


def test_grade_command_prints_one_json_line_per_image(model_dir, fundus_images, tmp_path, capsys):
    good = tmp_path / "good.png"
    fundus_images[4].save(good)
    assert main(["grade", str(model_dir), str(good)]) == 0
    printed = capsys.readouterr()
    line = json.loads(printed.out.strip())
    assert line["image"] == str(good) and line["grade"] == 4 and line["mode"] == "knn"
    assert "Loading weights" not in printed.err  # transformers' loading bar stays off
    assert main(["grade", str(model_dir), str(good), str(tmp_path / "missing.png"), "--mode", "ordinal"]) == 1
    lines = [json.loads(text) for text in capsys.readouterr().out.strip().splitlines()]
    assert [entry["gradable"] for entry in lines] == [True, False]
    assert lines[0]["mode"] == "ordinal" and "missing.png" in lines[1]["reason"]


def test_grade_accepts_the_training_runs_folder(model_dir, fundus_images, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(model_dir, run / "model")
    (run / "metrics.json").write_text("{}")
    fundus_images[2].save(tmp_path / "image.png")
    assert main(["grade", str(run), str(tmp_path / "image.png")]) == 0
    assert json.loads(capsys.readouterr().out)["gradable"] is True


def error_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in lines[0], lines
    return lines[0]


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ("{tmp}/no-such-model", r"model folder \S+/no-such-model does not exist.*check the path"),
        ("{tmp}", r"\S+ is not a model folder: it has no config.json.*Pass the folder `retinascan train` wrote"),
        ("{tmp}/image.png", r"is a file, not a model folder"),
        ("nobody/no-such-model", r"'nobody/no-such-model' is not a local folder, and loading it from the Hub failed"),
    ],
    ids=["missing-folder", "not-a-model-folder", "a-file", "hub-repo-offline"],
)
def test_grade_errors_are_one_actionable_line(tmp_path, fundus_images, capsys, model, message):
    fundus_images[0].save(tmp_path / "image.png")
    assert main(["grade", model.format(tmp=tmp_path), str(tmp_path / "image.png")]) == 2
    line = error_line(capsys)
    assert line.startswith("retinascan grade: error: ") and line.endswith("(--debug shows the traceback)")
    assert re.search(message, line), line


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.strip() == f"retinascan {__version__}"


def run_python(code: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "HF_HUB_OFFLINE": "1"}
    completed = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], env=environment, capture_output=True, text=True, timeout=300
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return completed


def test_help_imports_neither_torch_nor_transformers():
    """`--help` of the console script and of every sub-command; `train --help` needs transformers' argument
    parser (HfArgumentParser), but still not torch."""
    completed = run_python(
        """
        import sys
        from retinascan_hf.cli import main

        def loaded():
            return sorted(name for name in ("torch", "transformers", "datasets") if name in sys.modules)

        helps = (["--help"], ["--version"], ["quickstart", "--help"], ["data", "build", "--help"], ["grade", "--help"])
        for argv in helps:
            try:
                main(argv)
            except SystemExit as exit:
                assert exit.code == 0, (argv, exit.code)
            assert loaded() == [], (argv, loaded())
        try:
            main(["train", "--help"])
        except SystemExit as exit:
            assert exit.code == 0
        print(loaded(), file=sys.stderr)
        """
    )
    assert completed.stderr.strip().splitlines()[-1] == "['transformers']"
    assert "--n-per-class" in completed.stdout


def test_importing_the_package_first_registers_once_transformers_is_used(model_dir, fundus_images, tmp_path):
    """Cheap `import retinascan_hf`; registration when the model module (which imports transformers itself)
    or the Auto classes are imported; `pipeline("retinascan")` and AutoModel then use the installed classes."""
    fundus_images[1].save(tmp_path / "image.png")
    run_python(
        f"""
        import sys
        import retinascan_hf
        assert "torch" not in sys.modules and "transformers" not in sys.modules
        from retinascan_hf.modeling_retinascan import RetinaScanModel
        from transformers.pipelines import PIPELINE_REGISTRY
        assert "retinascan" in PIPELINE_REGISTRY.get_supported_tasks()
        from transformers import AutoImageProcessor, AutoModel, pipeline
        model = AutoModel.from_pretrained({str(model_dir)!r})
        assert type(model) is RetinaScanModel, type(model)
        processor = AutoImageProcessor.from_pretrained({str(model_dir)!r})
        grader = pipeline("retinascan", model=model, image_processor=processor)
        assert grader({str(tmp_path / "image.png")!r})["gradable"]
        """
    )


def test_importing_transformers_first_registers_at_package_import(model_dir):
    run_python(
        f"""
        from transformers import AutoModel
        from transformers.pipelines import PIPELINE_REGISTRY
        assert "retinascan" not in PIPELINE_REGISTRY.get_supported_tasks()
        import retinascan_hf
        assert "retinascan" in PIPELINE_REGISTRY.get_supported_tasks()
        assert type(AutoModel.from_pretrained({str(model_dir)!r})) is retinascan_hf.RetinaScanModel
        """
    )
