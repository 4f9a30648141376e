"""One mechanism for choosing a kernel's implementation: per call, process-wide, or by environment variable.

    CHOICE = ImplChoice("SSD", ("auto", "chunked", ...), "JAXLM_SSD_IMPL")
    set_impl, use_impl = CHOICE.set, CHOICE.use          # the module's public knobs
    impl = CHOICE.get(impl)                              # the call's impl, else use/set, else the env var, else "auto"

An unknown name raises the kernels' config error (jaxlm's ConfigError when used through jaxlm), naming the
setting and, when it came from there, the environment variable.
"""

from __future__ import annotations

import contextlib
import os

from kernels.errors import config_error


class ImplChoice:
    def __init__(self, what: str, impls: tuple, env: str):
        self.what, self.impls, self.env = what, tuple(impls), env
        self.current: str | None = None

    def _label(self, impl) -> str:
        return f"{self.what} impl={impl!r}" if self.what else f"impl={impl!r}"

    def set(self, impl: str | None) -> None:
        """Process-wide choice (None: back to the environment variable / "auto")."""
        if impl is not None and impl not in self.impls:
            raise config_error(f"{self._label(impl)}: expected one of {self.impls}")
        self.current = impl

    @contextlib.contextmanager
    def use(self, impl: str | None):
        """The choice inside a `with` block (read at trace time: wrap the jit call's first run)."""
        prev = self.current
        self.set(impl)
        try:
            yield
        finally:
            self.current = prev

    def get(self, impl: str | None = None) -> str:
        impl = impl or self.current or os.environ.get(self.env) or "auto"
        if impl not in self.impls:
            raise config_error(f"{self._label(impl)} (or {self.env}): expected one of {self.impls}")
        return impl
