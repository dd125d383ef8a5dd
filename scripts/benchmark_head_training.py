"""Benchmark head training alone (issue 10, item 6): the trainer vs a bare eager loop, per-step phases, profiles.

Writes benchmarks/head_training.json (rows, machine, per-step breakdown) and benchmarks/head_training_profile.txt
(the top of a torch.profiler table for a trainer step and a bare step); `make benchmark` runs the same two rows.

    python scripts/benchmark_head_training.py                  # 50 epochs over 16,231 features (minutes)
    python scripts/benchmark_head_training.py --compiled       # also a torch_compile=True trainer
    python scripts/benchmark_head_training.py --quick --output-dir /tmp/head   # seconds: a shape check
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/ lives beside the library

import argparse
import os
import tempfile

import torch

from benchmarks.head_training import HeadTrainingData, bare_profile, format_breakdown, run_head_training
from benchmarks.head_training import trainer_profile as trainer_step_profile
from benchmarks.inference import REFERENCE_TRAIN_SIZE
from benchmarks.machine import machine_info
from benchmarks.results import SCHEMA_VERSION, format_rows
from retinascan_hf.atomic_io import write_json_atomically

REPO_ROOT = Path(__file__).resolve().parents[1]
PROFILE_STEPS = 200


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="400 features, 2 epochs, few profiled steps (seconds).")
    parser.add_argument("--epochs", type=int, default=None, help="Epochs (default 50; quick: 2).")
    parser.add_argument("--compiled", action="store_true", help="Also time a torch_compile=True trainer.")
    parser.add_argument("--output-dir", type=Path, default=REPO_ROOT / "benchmarks")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores; quick: 1).")
    args = parser.parse_args(argv)
    # Quick mode is a shape check: on a loaded machine a second thread makes each small operation wait for a
    # descheduled partner, as in scripts/benchmark.py.
    threads = args.threads or (1 if args.quick else torch.get_num_threads())
    torch.set_num_threads(threads)
    size = 400 if args.quick else REFERENCE_TRAIN_SIZE
    epochs = args.epochs or (2 if args.quick else 50)
    profile_steps = 5 if args.quick else PROFILE_STEPS
    with tempfile.TemporaryDirectory() as scratch:
        result = run_head_training(Path(scratch), train_size=size, num_epochs=epochs, compiled=args.compiled)
        data = HeadTrainingData.build(Path(scratch) / "profile", size, epochs)
        profiles = [trainer_step_profile(data.trainer(), profile_steps), bare_profile(data, profile_steps)]
    machine = machine_info()
    results = {
        "schema_version": SCHEMA_VERSION,
        "mode": "quick" if args.quick else "full",
        "machine": machine,
        "settings": {"train_size": size, "num_epochs": epochs, "profiled_steps": profile_steps},
        "rows": [row.to_json() for row in result.rows],
        "breakdown": result.breakdown,
        "profiles": profiles,
    }
    header = (
        f"{machine['date_utc']}: {machine['cpu_model']}, {machine['torch_threads']} threads, load average "
        f"{machine['load_average_1min']} at the end\n\n{format_rows(results['rows'])}"
    )
    text = f"{header}\n\n{format_breakdown(result.breakdown)}\n\n" + "\n\n".join(profiles) + "\n"
    print(text)
    print(f"wrote {write_json_atomically(args.output_dir / 'head_training.json', results)}")
    profile_file = args.output_dir / "head_training_profile.txt"
    staging = profile_file.with_suffix(".txt.tmp")
    staging.write_text(text, encoding="utf-8")
    os.replace(staging, profile_file)
    print(f"wrote {profile_file}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
