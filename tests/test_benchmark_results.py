"""The benchmark's output: `--quick` runs end to end and writes results of the promised shape, and the README's
performance table is exactly what `benchmarks/results.json` renders to (no typed numbers)."""

from __future__ import annotations

import copy
import importlib.util
import json
from pathlib import Path

import pytest
import torch

from benchmarks.int8_sensitivity import DEFAULT, LAYER_MATMULS
from benchmarks.onnx_threads import ALL_TORCH_THREADS, THREAD_CONFIGS
from benchmarks.results import (
    README_END,
    README_START,
    readme_block,
    render_readme_table,
    update_readme,
    validate_results,
)
from benchmarks.timing import time_alternately
from retinascan_hf.onnx_backend import SESSION_THREAD_CONFIG

REPO = Path(__file__).resolve().parents[1]

QUICK_ROW_IDS = {
    "torch_fp32",
    "torch_int8",
    "ort_fp32",
    "ort_int8",
    "ort_int8_paired",
    "pipeline_int8_256px",
    "pillow_draft_decode",
    "decode_crop_resize",
    "ort_int8_throughput_b8",
    "pipeline_int8_throughput_b8_parallel",
    "ort_int8_throughput_b32",
    "pipeline_int8_throughput_b32_parallel",
    "peak_rss_onnx",
    "peak_rss_torch",
    "head_training_bare_loop",
    "head_training_trainer",
}


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def committed_results() -> dict:
    return json.loads((REPO / "benchmarks" / "results.json").read_text())


@pytest.mark.slow
def test_quick_benchmark_writes_well_formed_results(tmp_path):
    threads = torch.get_num_threads()
    try:
        assert load_script("benchmark").main(["--quick", "--output", str(tmp_path / "r.json"), "--no-readme"]) == 0
    finally:
        torch.set_num_threads(threads)
    results = json.loads((tmp_path / "r.json").read_text())
    validate_results(results)
    assert results["mode"] == "quick" and {row["id"] for row in results["rows"]} >= QUICK_ROW_IDS


def test_readme_table_is_generated_from_results_json(committed_results):
    validate_results(committed_results)
    assert readme_block((REPO / "README.md").read_text()) == render_readme_table(committed_results)


def test_update_readme_rewrites_only_the_marked_block(committed_results, tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"# title\n\nbefore\n\n{README_START}\nold numbers\n{README_END}\n\nafter\n")
    assert update_readme(readme, committed_results) is True
    text = readme.read_text()
    assert text.startswith("# title\n\nbefore\n\n") and text.endswith("\n\nafter\n") and "old numbers" not in text
    assert update_readme(readme, committed_results) is False
    (tmp_path / "plain.md").write_text("no markers")
    with pytest.raises(ValueError, match=r"no .* block"):
        update_readme(tmp_path / "plain.md", committed_results)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda r: r.pop("machine"), "lack 'machine'"),
        (lambda r: r["compute"].update(matmul_gflops=0), "positive"),
        (lambda r: r["rows"][1].update(ratio_of="nowhere"), "unknown row"),
        (lambda r: r["rows"][0].update(value=float("nan")), "positive"),
        (lambda r: r["rows"][0].update(met=True, target=None), "target needs a met flag"),
    ],
)
def test_malformed_results_are_refused(committed_results, damage, message):
    results = copy.deepcopy(committed_results)
    damage(results)
    with pytest.raises(ValueError, match=message):
        validate_results(results)


@pytest.mark.slow
def test_quick_head_training_benchmark_writes_rows_breakdown_and_profiles(tmp_path):
    threads = torch.get_num_threads()
    try:
        assert load_script("benchmark_head_training").main(["--quick", "--output-dir", str(tmp_path)]) == 0
    finally:
        torch.set_num_threads(threads)
    results = json.loads((tmp_path / "head_training.json").read_text())
    rows = {row["id"]: row for row in results["rows"]}
    assert set(rows) == {"head_training_bare_loop", "head_training_trainer"}
    trainer = rows["head_training_trainer"]
    assert trainer["ratio_of"] == "head_training_bare_loop" and trainer["target"] == {"op": "<=", "value": 0.7}
    assert trainer["ratio"] == pytest.approx(trainer["value"] / rows["head_training_bare_loop"]["value"])
    phases = results["breakdown"]["trainer_ms_per_step"]
    assert {"batch", "forward", "backward", "clip", "optimizer", "scheduler", "total"} <= set(phases)
    assert phases["total"] >= phases["forward"] > 0
    profile = (tmp_path / "head_training_profile.txt").read_text()
    assert "RetinaScanTrainer._step" in profile and "bare eager loop step" in profile and "aten::" in profile


@pytest.mark.slow
def test_quick_int8_sensitivity_compares_float32_choices_and_nothing_quantised_leaves_no_error(tmp_path):
    output = tmp_path / "int8.json"
    assert load_script("benchmark_int8_sensitivity").main(["--quick", "--threads", "1", "--output", str(output)]) == 0
    results = json.loads(output.read_text())
    rows = {row["kept_in_fp32"]: row for row in results["rows"]}
    default, everything = results["rows"][0], rows["everything (no int8 left)"]
    assert default["kept_in_fp32"] == DEFAULT and default["error_vs_default"] == default["time_vs_default"] == 1
    assert (
        default["feature_error_ratio"] > 0
        and rows["heads only (the export before 2026-11-29)"]["feature_error_ratio"] > 0
    )
    assert everything["feature_error_ratio"] < 1e-5  # the check can tell float32 from int8
    num_layers = rows["default + MLP fc2, all layers"]["tower_nodes_in_fp32"] - default["tower_nodes_in_fp32"]
    assert rows["default + first encoder layer"]["tower_nodes_in_fp32"] == default["tower_nodes_in_fp32"] + 6
    # everything = lookups + patch conv + 6 Linear layers per encoder layer + the visual projection
    assert everything["tower_nodes_in_fp32"] == default["tower_nodes_in_fp32"] + len(LAYER_MATMULS) * num_layers
    assert all(row["ms_per_image"] > 0 and row["feature_error_ratio"] >= 0 for row in results["rows"])


@pytest.mark.slow
def test_quick_onnx_threads_times_every_configuration_and_names_the_default(tmp_path):
    output = tmp_path / "threads.json"
    assert load_script("benchmark_onnx_threads").main(["--quick", "--output", str(output)]) == 0
    results = json.loads(output.read_text())
    assert set(results["results_ms"]) == {*THREAD_CONFIGS, ALL_TORCH_THREADS}
    assert results["default"] == "spin_during_run"
    assert results["configs"]["spin_during_run"] == results["configs"][ALL_TORCH_THREADS] == SESSION_THREAD_CONFIG
    assert results["torch_threads_during_a_call"]["spin_during_run"] == 1
    fastest = min(result["forward"] for result in results["results_ms"].values())
    for result in results["results_ms"].values():
        assert result["forward"] > 0 and result["pipeline"] > 0 and result["pipeline_cpu"] > 0
        assert result["pipeline_over_own_forward"] == pytest.approx(result["pipeline"] / result["forward"], rel=1e-3)
        assert result["pipeline_over_fastest_forward"] == pytest.approx(result["pipeline"] / fastest, rel=1e-3)
    assert results["calls_per_side"] == 8 and results["machine"]["logical_cpus"] >= 1


@pytest.mark.parametrize("threads", ["0", "-2"])
def test_onnx_threads_script_refuses_fewer_than_one_thread(threads, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        load_script("benchmark_onnx_threads").main(
            ["--quick", "--threads", threads, "--output", str(tmp_path / "t.json")]
        )
    assert exit_info.value.code == 2 and "--threads must be at least 1" in capsys.readouterr().err
    assert not (tmp_path / "t.json").exists()


def test_time_alternately_runs_both_sides_in_blocks_and_returns_each_sides_median(monkeypatch):
    calls, clock = [], iter(range(10_000))
    monkeypatch.setattr("benchmarks.timing.time.perf_counter", lambda: float(next(clock)))

    def side(name: str, cost: int):
        def call() -> None:
            calls.append(name)
            for _ in range(cost - 1):  # each call spans `cost` ticks of the fake clock
                next(clock)

        return call

    first, second = time_alternately(side("a", 2), side("b", 5), repeats=7, warmup=1, block=3)
    assert (first, second) == (2.0, 5.0)
    timed = "".join(calls[2:])  # after one warm-up call of each
    assert calls[:2] == ["a", "b"] and timed == "aaabbbaaabbbab" and timed.count("a") == timed.count("b") == 7


def test_threshold_conflict_counts_non_fundus_pictures_a_real_photo_threshold_would_grade():
    from benchmarks.gradability import threshold_conflict

    def results(scores):
        return [{"ood_score": score} for score in scores]

    real = results([float(score) for score in range(1, 101)] + [None])  # a photo the quality check stopped
    non_fundus = results([50.0, 96.0, 200.0, float("nan"), None])  # two stopped by the quality check
    conflict = threshold_conflict(real, non_fundus, keep=0.95)
    assert conflict["threshold"] == pytest.approx(95.05)  # numpy's linear quantile of 1..100
    assert conflict["non_fundus_graded_at_that_threshold"] == pytest.approx(1 / 5)  # only the 50.0
    assert conflict["real_photo_scores"]["0.5"] == pytest.approx(50.5) and conflict["non_fundus_scores"]["0.5"] == 96
    assert threshold_conflict(results([None, float("nan")]), non_fundus) is None  # no real photo reached the model
    assert threshold_conflict(real, []) is None


def test_the_trainer_and_the_bare_loop_run_in_turn_over_the_same_steps(tmp_path):
    from benchmarks.head_training import HeadTrainingData, trainer_and_bare_loop_in_turn

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        data = HeadTrainingData.build(tmp_path, train_size=200, num_epochs=2)
        trainer = data.trainer()
        seconds, bare = trainer_and_bare_loop_in_turn(trainer, data)
    finally:
        torch.set_num_threads(threads)
    assert bare.steps == 2 * len(trainer.sampler) and trainer.progress.epoch == 2 and seconds > 0
    assert "_train_epoch" not in vars(trainer)  # the interleaving hook is gone afterwards
    assert bare.phase_ms["total"] >= bare.phase_ms["forward"] > 0


def test_step_breakdowns_alternate_trainer_and_bare_blocks_and_weigh_them_by_steps(tmp_path, monkeypatch):
    from benchmarks import head_training
    from benchmarks.head_training import HeadTrainingData, LoopTiming, step_breakdowns_in_turn

    calls = []
    timings = iter([{"forward": 1.0, "total": 3.0}, {"forward": 2.0, "total": 5.0}])

    def fake_breakdown(trainer, steps):
        calls.append(("trainer", steps))
        return LoopTiming(seconds=0.1, steps=steps, phase_ms=next(timings))

    def fake_run(self, steps):
        calls.append(("bare", steps))
        self.steps += steps

    monkeypatch.setattr(head_training, "trainer_step_breakdown", fake_breakdown)
    monkeypatch.setattr(head_training.BareHeadLoop, "run", fake_run)
    data = HeadTrainingData.build(tmp_path, train_size=50, num_epochs=2)
    result = step_breakdowns_in_turn(None, data, steps=20, block=10)
    assert calls == [("trainer", 10), ("bare", 10), ("trainer", 10), ("bare", 10)]
    assert result["trainer_ms_per_step"] == {"forward": 1.5, "total": 4.0}
    assert set(result["bare_ms_per_step"]) >= {"other", "total"}
