"""Regenerate docs/evaluation/, the example card in model_card/ and the README's quickstart and evaluation blocks.

    python scripts/evaluation_example.py [--output docs/evaluation] [--card-examples model_card] [--readme README.md]

Runs, in a temporary folder, exactly the commands the README shows:

    retinascan quickstart --output-dir retinascan-quickstart
    retinascan evaluate --model retinascan-quickstart/model --data retinascan-quickstart/corpus \
        --output-dir retinascan-quickstart/evaluation --cache-dir retinascan-quickstart/feature-cache
    retinascan release --model retinascan-quickstart/model --repo-id retinascan/retinascan-quickstart --dry-run \
        --staging-dir retinascan-quickstart/release --evaluation-report retinascan-quickstart/evaluation/report.json

copies report.md, report.json and the three plots into `--output`, writes `quickstart.json` (time, memory and
the figures the README quotes) beside them, keeps the rendered model card and the dry run's listing as
`model_card/example_quickstart*`, and rewrites the README's generated blocks. Run it on a quiet
machine: the quickstart's wall time is one of the figures. See `benchmarks/quickstart_example.py`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `benchmarks` sits beside `scripts`

from benchmarks.quickstart_example import run_example, update_readme


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=Path("docs/evaluation"))
    parser.add_argument("--card-examples", type=Path, default=Path("model_card"))
    parser.add_argument("--readme", type=Path, default=Path("README.md"))
    args = parser.parse_args()
    summary = run_example(args.output, args.card_examples)
    changed = update_readme(args.readme, args.output)
    print(
        f"quickstart: {summary['wall_seconds']} s, {summary['peak_rss_gib']} GiB peak, test QWK {summary['test_qwk']}"
    )
    print(f"wrote {args.output}; README {'updated' if changed else 'unchanged'}")


if __name__ == "__main__":
    main()
