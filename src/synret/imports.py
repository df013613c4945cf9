"""Keep what a job does not use out of its start-up: libraries that other libraries import but never call here.

- ``defer(name, ...)``: the top-level package is found as usual, but runs only when one of its names is
  first used; until then a stand-in module holds its place. For optional integrations that a library
  imports at its top (timm and img2dataset import wandb, img2dataset albumentations) and calls only when
  asked to. Used or not, the job behaves the same; it just never pays for the unused one.
- ``hide(name, ...)``: ``import name`` raises ModuleNotFoundError, for a library that a package is written to
  do without (webdataset replaces its few torch names with its own when torch is missing).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types

_deferred: set[str] = set()


class _DeferredModule(types.ModuleType):
    """Stands in a module's place until one of its names is used, then runs the real module and takes on its
    names. (importlib's LazyLoader would run it at the next ``import`` of the same name, which reads
    ``__spec__``: img2dataset imports albumentations in two modules.)"""

    def __getattr__(self, attr):
        if attr.startswith("__") and attr.endswith("__"):  # the import system's probes: not a use
            raise AttributeError(attr)
        spec = self.__dict__["_deferred_spec"]
        real = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = real
        try:
            spec.loader.exec_module(real)
        except BaseException:
            sys.modules[spec.name] = self
            raise
        self.__dict__.update(real.__dict__)
        return getattr(real, attr)


class _DeferLoader(importlib.abc.Loader):
    def __init__(self, spec):
        self.real_spec = spec

    def create_module(self, spec):
        module = _DeferredModule(spec.name)
        module.__dict__["_deferred_spec"] = self.real_spec
        return module

    def exec_module(self, module):
        pass


class _DeferringFinder(importlib.abc.MetaPathFinder):
    """Finds the deferred top-level packages where they are installed, with a loader that defers running them."""

    def find_spec(self, name, path=None, target=None):
        if name not in _deferred:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        return importlib.util.spec_from_loader(name, _DeferLoader(spec), origin=spec.origin)


def defer(*names: str) -> None:
    """Run these top-level packages on first use instead of at import (no effect on one already imported)."""
    _deferred.update(names)
    if not any(isinstance(finder, _DeferringFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _DeferringFinder())


def hide(*names: str) -> None:
    """Make ``import name`` fail as if the package were not installed (not one already imported)."""
    for name in names:
        sys.modules.setdefault(name, None)


def is_deferred(module: types.ModuleType | None) -> bool:
    """Is this a stand-in whose real module has not run yet?"""
    return isinstance(module, _DeferredModule) and "__file__" not in module.__dict__
