"""Model families assembled from jaxlm.nn."""
from jaxlm.models.decoder import Block, DecoderLM, KVCache
