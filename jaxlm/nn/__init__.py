"""Building blocks shared by every model family."""
from jaxlm.nn.attention import Attention, CrossAttention, attend
from jaxlm.nn.linear import Linear, param
from jaxlm.nn.mlp import MLP
from jaxlm.nn.norms import Norm
from jaxlm.nn.rope import apply_rope, rope_angles
