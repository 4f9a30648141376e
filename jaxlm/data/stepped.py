"""The iterator side of every pipeline whose batch at step s is a pure function of (its data and settings, s):
`next()` is `batch_at(step)`, and the resumable state is the next step plus the settings that must match on resume."""

from __future__ import annotations

from jaxlm.errors import ConfigError


class SteppedPipeline:
    """Subclasses define `batch_at(step) -> dict` and, optionally, `identity() -> dict` (JSON fields a saved state
    must agree with: seed, shapes, ...); they set `self.step = 0` in __init__. This gives the engine's pipeline
    contract: next(), get_state(), set_state()."""

    step: int = 0

    def batch_at(self, step: int) -> dict:
        raise NotImplementedError

    def identity(self) -> dict:
        return {}

    def next(self) -> dict:
        b = self.batch_at(self.step)
        self.step += 1
        return b

    def get_state(self) -> dict:
        return {"step": self.step, **self.identity()}

    def set_state(self, state: dict) -> None:
        name = type(self).__name__
        if not isinstance(state, dict) or "step" not in state:
            raise ConfigError(f"{name}: iterator state must be a dict with a 'step', got {state!r}")
        diff = {k: (state[k], v) for k, v in self.identity().items() if k in state and state[k] != v}
        if diff:
            raise ConfigError(f"{name}: iterator state comes from different data or settings (saved, now): {diff}")
        self.step = int(state["step"])
