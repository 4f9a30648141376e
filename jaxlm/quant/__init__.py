"""FLUTE-style lookup-table quantization: NF formats, packing, learned NF (NFL), QuantLinear, model quantization."""
from jaxlm.quant.formats import NF2, NF3, NF4, QuantFormat, normal_float_table
from jaxlm.quant.linear import QuantLinear
from jaxlm.quant.pack import pack, unpack
from jaxlm.quant.quantize import load_quantized, quantize, save_quantized

__all__ = ["NF2", "NF3", "NF4", "QuantFormat", "normal_float_table", "QuantLinear", "pack", "unpack",
           "quantize", "save_quantized", "load_quantized"]
