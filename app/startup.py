"""Start-up work the app can skip: Gradio's type-stub writer.

Gradio 6 (`gradio/component_meta.py`) writes a `.pyi` type stub next to the source of every
component class each time a component class is defined, that is on every `import gradio` and for the
app's own components (`app/tabs/link.py` gets `link.pyi`): it reads and parses the source of about
80 classes and renders a template for each. Measured with cProfile on the 2-core machine, that is
the largest single item of the app's start (about 2 of its 12 CPU-seconds). The stubs are for
editors and type checkers; nothing at run time reads them (`app/**/*.pyi` is git-ignored, and mypy
excludes them).

`skip_gradio_stub_files()` (called by `build_app` before Gradio is imported) makes the writer a no-op
as its module loads; nothing else of Gradio changes. When Gradio is already imported it does
nothing. If a Gradio release renames the module or the function, it does nothing either.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys

_MODULE, _FUNCTION = "gradio.component_meta", "create_or_modify_pyi"


def _no_stub(*_args, **_kwargs) -> None:
    return None


class _StubWriterOff(importlib.abc.MetaPathFinder):
    """Finds `gradio.component_meta` once (then leaves sys.meta_path) and replaces the stub writer
    right after the module has run, before any component class is defined."""

    def find_spec(self, fullname, path, target=None):
        if fullname != _MODULE:
            return None
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)  # the normal finders (this one is gone)
        loader = spec.loader if spec is not None else None
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        run = loader.exec_module

        def exec_module(module):
            run(module)
            if callable(getattr(module, _FUNCTION, None)):
                setattr(module, _FUNCTION, _no_stub)

        loader.exec_module = exec_module  # type: ignore[method-assign]  # this module's loader only
        return spec


def skip_gradio_stub_files() -> bool:
    """Install the finder unless Gradio is already loaded; True when installed."""
    if _MODULE in sys.modules or "gradio" in sys.modules:
        return False
    if not any(isinstance(f, _StubWriterOff) for f in sys.meta_path):
        sys.meta_path.insert(0, _StubWriterOff())
    return True
