"""jaxlm: the LLM360 family of models and methods in JAX/Flax."""

__version__ = "0.1.0"

from jaxlm.config import DecoderConfig, preset, preset_names  # noqa: E402
from jaxlm.errors import *  # noqa: E402,F401,F403  (JaxlmError and every subclass: see jaxlm.errors.__all__)


def __getattr__(name):  # lazy: importing jaxlm should not import flax models eagerly
    if name in ("DecoderLM", "KVCache"):
        from jaxlm.models import decoder
        return getattr(decoder, name)
    if name in ("load_model", "load_tokenizer"):  # jaxlm.io's one model loader and one tokenizer loader
        import jaxlm.io
        return getattr(jaxlm.io, name)
    raise AttributeError(name)
