"""Model families assembled from jaxlm.nn."""
from jaxlm.models.decoder import Block, DecoderLM, KVCache, forward, forward_cached
from jaxlm.models.shell import LMShell, ShellConfig
