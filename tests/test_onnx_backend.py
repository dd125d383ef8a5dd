"""ONNX export and `backend="onnx"`: parity with torch, the same pipeline behaviour, and clear errors.

One tiny model folder is exported once (through the CLI) for the whole module: a dynamo export takes a few
seconds even for a tiny graph.
"""

from __future__ import annotations

import json
import shutil
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from retinascan_hf import RetinaScanModel, RetinaScanPipeline, load_pipeline
from retinascan_hf.cli import main
from retinascan_hf.onnx_backend import (
    EXPORT_CONFIG_NAME,
    ONNX_OUTPUT_NAMES,
    ONNX_SUBFOLDER,
    ONNX_VARIANT_FILES,
    OnnxExportMissingError,
    RetinaScanOnnxModel,
    StaleOnnxExportError,
    _make_session,
    sha256_of_files,
)
from retinascan_hf.onnx_export import export_onnx, head_node_names, load_calibration_images

pytest.importorskip("onnxruntime", reason="the ONNX backend needs the [onnx] extra (installed by `make install`)")

MODES = ("knn", "ordinal", "prototype")


@pytest.fixture(scope="module")
def exported_dir(model_dir, tmp_path_factory):
    """A copy of the tiny model folder with `onnx/model.onnx` and `onnx/model_int8.onnx` (made by the CLI)."""
    directory = tmp_path_factory.mktemp("exported") / "model"
    shutil.copytree(model_dir, directory)
    assert main(["export-onnx", "--model", str(directory), "--int8"]) == 0
    return directory


@pytest.fixture
def torch_forward_forbidden(monkeypatch):
    """Any torch forward of a RetinaScanModel fails the test: the ONNX path must not run one."""

    def forbidden(*args, **kwargs):
        raise AssertionError("the torch model ran a forward on the ONNX path")

    for name in ("forward", "forward_features", "forward_head"):
        monkeypatch.setattr(RetinaScanModel, name, forbidden)


def test_fp32_graph_matches_torch_within_1e_4_at_any_batch_size(exported_dir, tiny_model_and_processor, fundus_images):
    model, processor = tiny_model_and_processor
    onnx_model = RetinaScanOnnxModel.from_pretrained(exported_dir, variant="fp32")
    for batch in (fundus_images[:1], fundus_images[:7]):
        pixel_values = processor(batch)["pixel_values"]
        with torch.no_grad():
            expected = model(pixel_values=pixel_values)
        actual = onnx_model(pixel_values=pixel_values)
        for name in (*ONNX_OUTPUT_NAMES, "probs"):
            difference = (getattr(actual, name) - getattr(expected, name)).abs().max().item()
            assert difference <= 1e-4, (name, difference)
        assert torch.equal(actual.predicted_grade, expected.predicted_grade)


def test_export_record_names_opset_versions_and_the_weights_hash(exported_dir):
    record = json.loads((exported_dir / "onnx" / EXPORT_CONFIG_NAME).read_text())
    assert record["opset"] >= 18 and record["input"] == "pixel_values"
    assert set(record["versions"]) == {"onnx", "onnxruntime", "torch", "transformers"}
    assert record["weights_sha256"] == sha256_of_files([str(exported_dir / "model.safetensors")])
    assert set(record["variants"]) == {"fp32", "int8"}
    assert record["variants"]["int8"]["quantization"]["method"] == "dynamic"
    for entry in record["variants"].values():
        path = exported_dir / "onnx" / entry["file"]
        assert path.stat().st_size == entry["bytes"] and sha256_of_files([str(path)]) == entry["sha256"]
    assert max(record["parity"]["fp32"].values()) <= 1e-4
    assert not list((exported_dir).glob(".onnx.*"))  # no staging folder left behind


def test_int8_graph_keeps_the_heads_in_fp32_and_stays_close(exported_dir, tiny_model_and_processor, fundus_images):
    import onnx

    int8 = onnx.load(str(exported_dir / "onnx" / "model_int8.onnx"))
    quantized = {node.name for node in int8.graph.node if node.op_type in ("MatMulInteger", "DynamicQuantizeLinear")}
    assert quantized, "nothing was quantised"
    heads = set(head_node_names(exported_dir / "onnx" / "model.onnx"))
    assert not any(name.removesuffix("_quant") in heads for name in quantized)
    model, processor = tiny_model_and_processor
    pixel_values = processor(fundus_images)["pixel_values"]
    with torch.no_grad():
        expected = model(pixel_values=pixel_values).embeddings
    actual = RetinaScanOnnxModel.from_pretrained(exported_dir, variant="int8")(pixel_values=pixel_values).embeddings
    assert torch.nn.functional.cosine_similarity(actual, expected).min() > 0.99


def test_int8_graph_keeps_lookups_patch_embedding_and_visual_projection_in_fp32(exported_dir):
    import onnx

    int8 = onnx.load(str(exported_dir / "onnx" / "model_int8.onnx"))
    op_types = {node.op_type for node in int8.graph.node}
    assert "MatMulInteger" in op_types and "ConvInteger" not in op_types and "DequantizeLinear" not in op_types
    writer = next(node for node in int8.graph.node if "image_features" in node.output)
    initializers = {initializer.name: initializer for initializer in int8.graph.initializer}
    weights = [initializers[name] for name in writer.input if name in initializers]
    assert writer.op_type in ("Gemm", "MatMul", "Add") and all(
        weight.data_type == onnx.TensorProto.FLOAT for weight in weights
    )
    # patch and position embeddings (the exporter may fold the position lookup into a constant named `embedding`)
    embeddings = [name for name in initializers if "embedding" in name]
    assert len(embeddings) >= 2 and all(initializers[name].data_type == onnx.TensorProto.FLOAT for name in embeddings)
    record = json.loads((exported_dir / "onnx" / "export_config.json").read_text())
    assert "visual projection" in json.dumps(record)


@pytest.mark.parametrize("variant", ["fp32", "int8"])
def test_onnx_pipeline_runs_no_torch_forward_and_matches_torch(
    exported_dir, fundus_images, tmp_path, torch_forward_forbidden, variant
):
    bad = tmp_path / "corrupt.png"
    bad.write_bytes(b"\x89PNG not really")
    inputs = [*fundus_images[:4], str(bad), str(tmp_path / "missing.jpg")]
    grader = load_pipeline(exported_dir, backend="onnx", onnx_variant=variant, onnx_threads=1)
    assert isinstance(grader.model, RetinaScanOnnxModel) and grader.backend == "onnx"
    assert grader.model.session.get_session_options().intra_op_num_threads == 1
    onnx_results = {mode: grader(inputs, batch_size=3, mode=mode) for mode in MODES}
    for results in onnx_results.values():
        assert [r["gradable"] for r in results] == [True] * 4 + [False, False]
        assert [r["error_type"] for r in results[4:]] == ["InvalidImageError", "InvalidImageError"]


def test_onnx_pipeline_grades_with_one_torch_thread_and_restores_the_count(exported_dir, fundus_images, monkeypatch):
    """torch's OpenMP workers spin after its parallel operations and hold the cores ONNX Runtime needs next
    (benchmarks/onnx_threads.json): the ONNX path grades with one torch thread, and the caller's count comes back,
    also when the call raises. The torch path keeps the caller's count."""
    grader = load_pipeline(exported_dir, backend="onnx", onnx_variant="fp32")
    seen = []
    session = grader.model.session

    class RecordingSession:
        def run(self, *args, **kwargs):
            seen.append(torch.get_num_threads())
            return session.run(*args, **kwargs)

    grader.model.session = RecordingSession()
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        grader(fundus_images[:2], batch_size=1)
        assert seen == [1, 1] and torch.get_num_threads() == 2
        with pytest.raises(ValueError, match="mode"):
            grader(fundus_images[0], mode="nonsense")
        assert torch.get_num_threads() == 2
        torch_grader = load_pipeline(exported_dir)
        counts, forward = [], torch_grader._forward

        def counting_forward(*args, **kwargs):
            counts.append(torch.get_num_threads())
            return forward(*args, **kwargs)

        monkeypatch.setattr(torch_grader, "_forward", counting_forward)
        assert torch_grader(fundus_images[0])["gradable"] and counts == [2]
    finally:
        torch.set_num_threads(threads)


def test_onnx_and_torch_pipelines_agree_in_every_mode(exported_dir, fundus_images):
    onnx_grader = load_pipeline(exported_dir, backend="onnx", onnx_variant="fp32")
    torch_grader = load_pipeline(exported_dir)
    for mode in MODES:
        expected = torch_grader(fundus_images, mode=mode, batch_size=4)
        actual = onnx_grader(fundus_images, mode=mode, batch_size=4)
        assert [r["grade"] for r in actual] == [r["grade"] for r in expected]
        assert np.allclose([r["scores"] for r in actual], [r["scores"] for r in expected], atol=1e-3)


def test_pipeline_backend_option_loads_the_export_beside_a_torch_model(exported_dir, fundus_images, monkeypatch):
    torch_model = RetinaScanModel.from_pretrained(exported_dir)
    processor = load_pipeline(exported_dir).image_processor
    monkeypatch.setattr(RetinaScanModel, "forward", lambda *a, **k: pytest.fail("torch forward on the ONNX path"))
    grader = RetinaScanPipeline(model=torch_model, image_processor=processor, backend="onnx", onnx_variant="fp32")
    assert isinstance(grader.model, RetinaScanOnnxModel) and grader.feature_bank is not None
    assert grader(fundus_images[2], return_neighbors=True)["neighbors"][0]["image_id"] == "synthetic/2"


def test_load_pipeline_onnx_never_loads_torch_weights(exported_dir, fundus_images, monkeypatch):
    monkeypatch.setattr(RetinaScanModel, "from_pretrained", classmethod(lambda *a, **k: pytest.fail("loaded torch")))
    assert load_pipeline(exported_dir, backend="onnx")(fundus_images[0])["gradable"] is True


def test_missing_export_says_how_to_make_one(model_dir, exported_dir, tmp_path):
    with pytest.raises(OnnxExportMissingError, match=r"retinascan export-onnx --model .* --int8"):
        load_pipeline(model_dir, backend="onnx")
    fp32_only = tmp_path / "fp32-only"
    shutil.copytree(exported_dir, fp32_only)
    record_path = fp32_only / "onnx" / EXPORT_CONFIG_NAME
    record = json.loads(record_path.read_text())
    del record["variants"]["int8"]
    record_path.write_text(json.dumps(record))
    with pytest.raises(OnnxExportMissingError, match=r"no int8 variant .*--int8"):
        RetinaScanOnnxModel.from_pretrained(fp32_only, variant="int8")
    (fp32_only / "onnx" / "model.onnx").unlink()
    with pytest.raises(OnnxExportMissingError, match=r"model.onnx is recorded .* but missing"):
        RetinaScanOnnxModel.from_pretrained(fp32_only, variant="fp32")


def test_an_export_of_other_weights_or_settings_is_refused(exported_dir, tmp_path):
    changed = tmp_path / "retrained"
    shutil.copytree(exported_dir, changed)
    weights = load_file(changed / "model.safetensors")
    weights["coral.bias"] = weights["coral.bias"] + 0.5
    save_file(weights, changed / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(StaleOnnxExportError, match=r"other weights.*export-onnx"):
        load_pipeline(changed, backend="onnx")
    shutil.copy2(exported_dir / "model.safetensors", changed / "model.safetensors")
    config = json.loads((changed / "config.json").read_text())
    config["prototype_temperature"] = 0.05
    (changed / "config.json").write_text(json.dumps(config))
    with pytest.raises(StaleOnnxExportError, match="prototype_temperature"):
        load_pipeline(changed, backend="onnx")
    config["prototype_temperature"], config["ordinal_temperature"] = 0.1, 2.0  # calibration is applied in torch
    (changed / "config.json").write_text(json.dumps(config))
    assert load_pipeline(changed, backend="onnx", onnx_variant="fp32").model.config.ordinal_temperature == 2.0


def test_missing_onnxruntime_gives_an_install_hint(exported_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ImportError, match=r"pip install 'retinascan-hf\[onnx\]'"):
        load_pipeline(exported_dir, backend="onnx")


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"backend": "tensorrt"}, "backend must be one of"),
        ({"backend": "onnx", "onnx_variant": "int4"}, "onnx_variant must be one of"),
        ({"backend": "onnx", "onnx_threads": 0}, "num_threads must be at least 1"),
    ],
)
def test_bad_backend_options_raise(exported_dir, kwargs, error):
    with pytest.raises(ValueError, match=error):
        load_pipeline(exported_dir, **kwargs)


def test_onnx_model_refuses_what_the_graph_cannot_do(exported_dir):
    model = RetinaScanOnnxModel.from_pretrained(exported_dir, variant="fp32")
    with pytest.raises(ValueError, match=r"shape \[B, 3, 32, 32\]"):
        model(pixel_values=torch.zeros(1, 3, 64, 64))
    with pytest.raises(ValueError, match="pixels"):
        model(image_features=torch.zeros(1, 32))
    with pytest.raises(ValueError, match="CPU"):
        model.to("cuda")
    with pytest.raises(NotImplementedError, match="export-onnx"):
        model.save_pretrained("anywhere")


def test_sessions_spin_only_while_a_graph_runs(exported_dir):
    """Threads spin between a run's operators and stop when it returns (benchmarks/onnx_threads.json), with the
    requested thread count; a configuration given explicitly replaces the default."""
    model = RetinaScanOnnxModel.from_pretrained(exported_dir, variant="int8", num_threads=2)
    options = model.session.get_session_options()
    assert options.intra_op_num_threads == 2
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "1"
    assert options.get_session_config_entry("session.force_spinning_stop") == "1"
    graph = str(exported_dir / ONNX_SUBFOLDER / ONNX_VARIANT_FILES["int8"])
    sleeping = _make_session(graph, 1, {"session.intra_op.allow_spinning": "0"}).get_session_options()
    assert sleeping.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    with pytest.raises(RuntimeError, match="does not have configuration"):
        sleeping.get_session_config_entry("session.force_spinning_stop")


def test_export_refuses_bad_requests_before_writing(exported_dir, tmp_path, capsys):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="Refusing to replace"):
        export_onnx(exported_dir, foreign)
    assert (foreign / "notes.txt").read_text() == "keep me"
    with pytest.raises(ValueError, match="calibration"):
        export_onnx(exported_dir, tmp_path / "out", int8=True, quantization="static")
    with pytest.raises(ValueError, match="quantization must be one of"):
        export_onnx(exported_dir, tmp_path / "out", quantization="fp8")
    assert main(["export-onnx", "--model", str(tmp_path / "nowhere")]) == 2
    assert "retinascan export-onnx:" in capsys.readouterr().err


@pytest.mark.slow
def test_static_int8_export_from_calibration_images(exported_dir, tmp_path, fundus_images):
    images = tmp_path / "calibration"
    images.mkdir()
    for index, image in enumerate(fundus_images):
        image.save(images / f"{index}.png")
    (images / "broken.jpg").write_bytes(b"not a jpeg")
    output = tmp_path / "static"
    record = export_onnx(exported_dir, output, int8=True, quantization="static", calibration_data=images)
    assert "10 calibration images" in record.variants["int8"]["quantization"]["activations"]
    model = RetinaScanOnnxModel.from_pretrained(exported_dir, variant="int8", onnx_dir=output)
    assert model.record.variants["int8"]["sha256"] == record.variants["int8"]["sha256"]
    assert max(record.parity["int8"]["embeddings"], record.parity["fp32"]["embeddings"]) < 0.2


def test_calibration_images_come_from_image_folders_and_skip_bad_files(tiny_model_and_processor, tmp_path):
    _, processor = tiny_model_and_processor
    from retinascan_hf.synthetic import synthetic_fundus_set

    for index, image in enumerate(synthetic_fundus_set([0, 1, 2], size=64)):
        image.save(tmp_path / f"{index}.jpg")
    (tmp_path / "blank.png").write_bytes(b"")
    arrays = load_calibration_images(tmp_path, processor, count=10)
    assert arrays.shape == (3, 3, 32, 32) and np.isfinite(arrays).all()
    with pytest.raises(FileNotFoundError):
        load_calibration_images(tmp_path / "absent", processor, count=2)


def test_saved_folders_carry_the_onnx_backend_as_remote_code(model_dir):
    assert (model_dir / "onnx_backend.py").is_file()
    assert "from .onnx_backend import" in (model_dir / "pipeline_retinascan.py").read_text()


def test_num_workers_preprocess_in_threads_in_order_with_bad_items(model_dir, fundus_images, tmp_path, monkeypatch):
    import threading

    grader = load_pipeline(model_dir)
    inputs = [*fundus_images, str(tmp_path / "missing.png"), *fundus_images[:3]]
    expected = grader(inputs, batch_size=4)
    seen = set()
    preprocess = RetinaScanPipeline.preprocess

    def recording(self, image, **kwargs):
        seen.add(threading.current_thread().name)
        return preprocess(self, image, **kwargs)

    monkeypatch.setattr(RetinaScanPipeline, "preprocess", recording)
    assert grader(inputs, batch_size=4, num_workers=2) == expected
    assert seen and all(name.startswith("retinascan-preprocess") for name in seen)
    assert grader(inputs, batch_size=1, num_workers=3) == grader(inputs, batch_size=1)  # batch 1: other rounding


def test_grad_cam_is_refused_on_the_onnx_backend(exported_dir, fundus_images):
    grader = load_pipeline(exported_dir, backend="onnx", onnx_variant="fp32")
    with pytest.raises(ValueError, match="backend='torch'"):
        grader(fundus_images[0], return_heatmap=True)


def test_a_training_export_still_replaces_a_model_folder_holding_an_onnx_export(tmp_path):
    """Before: training writes `model/` with a manifest of its files; `export-onnx` added `model/onnx/`, which the
    manifest did not list, so the next training run into the same folder refused to replace it."""
    from transformers.utils import CONFIG_NAME

    from retinascan_hf.atomic_io import atomic_directory
    from retinascan_hf.tiny_clip import random_retinascan

    model_dir = tmp_path / "run" / "model"

    def train_and_export(seed: int) -> None:  # what training's finalize writes
        model, processor = random_retinascan(seed=seed)
        with atomic_directory(model_dir, marker=CONFIG_NAME) as staging:
            model.save_pretrained(staging)
            processor.save_pretrained(staging)

    train_and_export(0)
    assert main(["export-onnx", "--model", str(model_dir)]) == 0
    train_and_export(1)  # the export, made from the old weights, goes with them
    assert not (model_dir / "onnx").exists()
    assert sorted(path.name for path in model_dir.parent.iterdir()) == ["model"]
