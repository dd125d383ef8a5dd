"""One switch for every progress bar a job may show: ours (tqdm, given `progress=` explicitly) and those of
transformers ("Loading weights"), huggingface_hub (downloads) and datasets (saving, loading).

Each library keeps its own global on/off flag; `progress_bars(False)` turns them off for the duration of a
`with` block and restores what was set before, so `--no-progress` (or `TrainingConfig(progress=False)`) means
no bar at all, without changing the state of the caller's process afterwards.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager


@contextmanager
def progress_bars(enabled: bool, *, downloads: bool | None = None) -> Iterator[None]:
    """Within the block, transformers' and datasets' bars follow `enabled` and the Hub's download bars follow
    `downloads` (default: `enabled`). Bars already switched off by the user stay off."""
    downloads = enabled if downloads is None else downloads
    if enabled and downloads:
        yield
        return
    from huggingface_hub import utils as hub_utils
    from transformers.utils import logging as transformers_logging

    with ExitStack() as restore:  # callbacks run last-in first-out: the Hub's flag is restored last
        hub_was_on = not hub_utils.are_progress_bars_disabled()
        restore.callback(hub_utils.enable_progress_bars if hub_was_on else hub_utils.disable_progress_bars)
        if not enabled:
            if transformers_logging.is_progress_bar_enabled():
                restore.callback(transformers_logging.enable_progress_bar)
            transformers_logging.disable_progress_bar()  # also switches the Hub's bars off
            datasets = sys.modules.get("datasets")  # only modules that use datasets import it
            if datasets is not None and not datasets.are_progress_bars_disabled():
                datasets.disable_progress_bars()
                restore.callback(datasets.enable_progress_bars)
        if downloads and hub_was_on:
            hub_utils.enable_progress_bars()
        else:
            hub_utils.disable_progress_bars()
        yield


__all__ = ["progress_bars"]
