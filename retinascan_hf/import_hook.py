"""Register RetinaScan with transformers as soon as transformers' Auto classes exist, without importing them.

Two promises pull against each other. `import retinascan_hf` must make `AutoModel.from_pretrained(DIR)` and
`pipeline("retinascan", model=DIR)` work (users rely on it), and registering means importing transformers'
Auto classes, which import torch (seconds). Yet `retinascan --help`, and every `retinascan_hf.x` import that
runs this package's `__init__`, should cost nothing of the kind.

So the package registers only when it has to. If `transformers.models.auto.configuration_auto` (the module
every Auto class and `pipeline()` goes through) is already imported, `register_with_transformers()` registers
at once. Otherwise it adds a finder to `sys.meta_path` that wraps the loaders of transformers' and this
package's modules; when the last of those imports in progress finishes and the Auto module has been loaded,
the finder removes itself and calls `registration.register()`. Waiting for the outermost import avoids
registering while a module that registration needs is half-initialised (importing
`retinascan_hf.modeling_retinascan` is what first imports transformers, for example). An error while
registering is logged, not raised: it must not break the import of an unrelated transformers module.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import logging
import sys
import threading
from types import ModuleType
from typing import Any

TRIGGER_MODULE = "transformers.models.auto.configuration_auto"
_WATCHED_PACKAGES = ("transformers", __package__ or "retinascan_hf")

logger = logging.getLogger(__name__)


def _watched(name: str) -> bool:
    return any(name == package or name.startswith(package + ".") for package in _WATCHED_PACKAGES)


def _already_loaded(name: str) -> bool:
    module = sys.modules.get(name)
    return module is not None and not getattr(getattr(module, "__spec__", None), "_initializing", False)


class _LoaderAfterwards(importlib.abc.Loader):
    """Runs the real loader, then tells the finder that one watched import has finished."""

    def __init__(self, loader: importlib.abc.Loader, finder: _RegisterWhenAutoLoads):
        self._loader, self._finder = loader, finder

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._finder.started()
        try:
            self._loader.exec_module(module)
        finally:
            self._finder.finished()

    def __getattr__(self, name: str) -> Any:  # get_source, get_data, is_package, ...: the real loader's
        return getattr(self._loader, name)


class _RegisterWhenAutoLoads(importlib.abc.MetaPathFinder):
    """A `sys.meta_path` finder that registers once the Auto classes exist and no watched import is running."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running = 0

    def find_spec(self, fullname: str, path: Any, target: ModuleType | None = None) -> Any:
        if not _watched(fullname):
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _LoaderAfterwards(spec.loader, self)
                return spec
        return None

    def started(self) -> None:
        with self._lock:
            self._running += 1

    def finished(self) -> None:
        with self._lock:
            self._running -= 1
            ready = self._running == 0 and TRIGGER_MODULE in sys.modules and self in sys.meta_path
            if ready:
                sys.meta_path.remove(self)
        if ready:
            _register_logging_errors()


def _register_logging_errors() -> None:
    try:
        from .registration import register

        register()
    except Exception:  # an unrelated `import transformers...` must not fail because of this package
        logger.exception("retinascan_hf could not register with transformers; call retinascan_hf.register().")


def register_with_transformers() -> None:
    """Register now if transformers' Auto classes are loaded; otherwise as soon as they are (see module doc)."""
    if _already_loaded(TRIGGER_MODULE):
        from .registration import register

        register()
    elif not any(isinstance(finder, _RegisterWhenAutoLoads) for finder in sys.meta_path):
        sys.meta_path.insert(0, _RegisterWhenAutoLoads())


__all__ = ["TRIGGER_MODULE", "register_with_transformers"]
