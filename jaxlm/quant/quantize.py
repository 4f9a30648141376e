"""Quantize a jaxlm DecoderLM: replace its Linear layers by QuantLinear; save / load quantized checkpoints.

    model = quantize(model, bits=4, group_size=128, method="nf")                  # plain NormalFloat (absmax)
    model = quantize(model, bits=3, group_size=64, method="nfl", calib_ids=ids)  # learned NF scales
    save_quantized(model, "out/")   ->  out/model.safetensors + out/quant_config.json
    model = load_quantized("out/")

Replaced: every Linear inside the decoder layers (attention q/k/v/o, MLP gate/up/down), MobiLlama's shared MLP,
and lm_head when `lm_head=True` (an untied head only; a tied head reuses the embedding, which stays in full
precision). Embeddings and norms are kept.

NFL calibration: the unquantized model runs once on `calib_ids` and every linear layer's inputs are captured
(per layer of the stack); each layer's scales are then learned by jaxlm.quant.nfl against its own inputs.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxlm.config import DecoderConfig
from jaxlm.errors import CheckpointError, ConfigError
from jaxlm.nn.linear import Linear
from jaxlm.quant.formats import QuantFormat
from jaxlm.quant.linear import QuantLinear, pad_rows, padded_k

METHODS = ("nf", "nfl")
FORMAT_NAME = "jaxlm-flute"
FORMAT_VERSION = 1


@dataclasses.dataclass(frozen=True)
class QuantInfo:
    """What `quantize` did to a model (kept on the model as `model.quant_info`; hashable, so graphdefs stay so)."""

    bits: int
    group_size: int
    table: tuple[float, ...]
    method: str
    lm_head: bool
    layers: tuple[str, ...]

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["table"], d["layers"] = list(self.table), list(self.layers)
        return d

    def __getitem__(self, key):
        return getattr(self, key)


def _linear_paths(model, lm_head: bool):
    out = []
    for path, node in nnx.iter_graph(model):
        if isinstance(node, Linear):
            if path and path[0] == "lm_head" and not lm_head:
                continue
            out.append(tuple(path))
    return sorted(out)


def _get(model, path):
    node = model
    for p in path:
        node = getattr(node, p) if not isinstance(p, int) else node[p]
    return node


def _set(model, path, value):
    parent = _get(model, path[:-1])
    setattr(parent, path[-1], value)


class _Capture(nnx.Module):
    """Wraps a Linear; records its inputs (eager calls only) and forwards."""

    def __init__(self, inner, sink: list):
        self.inner = inner
        self.sink = sink

    def __call__(self, x):
        self.sink.append(np.asarray(x, np.float32).reshape(-1, x.shape[-1]))
        return self.inner(x)


def capture_inputs(model, calib_ids, paths):
    """Inputs of each linear at `paths` on the calibration tokens: {path: [per-layer arrays [n, K]]}.

    Stacked layers give one array per layer (list index = layer); other modules a one-element list.
    """
    calib_ids = jnp.asarray(calib_ids, jnp.int32)
    if calib_ids.ndim == 1:
        calib_ids = calib_ids[None]
    _, _, hiddens, h_final = model(calib_ids, return_hidden=True)
    B, T = calib_ids.shape
    positions = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
    result = {p: [] for p in paths}
    layer_paths = [p for p in paths if p[0] == "layers"]
    shared_paths = [p for p in paths if p[0] == "shared_mlp"]
    gdef, lstate = nnx.split(model.layers)
    shared = None
    shared_sinks = {p: [] for p in shared_paths}
    if model.shared_mlp is not None:
        shared = nnx.merge(*nnx.split(model.shared_mlp))  # a copy we can wrap freely
        for p in shared_paths:
            _set(shared, p[1:], _Capture(_get(shared, p[1:]), shared_sinks[p]))
    for layer in range(model.cfg.num_layers):
        blk = nnx.merge(gdef, jax.tree.map(lambda a: a[layer], lstate))
        sinks = {p: [] for p in layer_paths}
        for p in layer_paths:
            _set(blk, p[1:], _Capture(_get(blk, p[1:]), sinks[p]))
        blk(hiddens[layer], positions, None, None, shared)
        for p in layer_paths:
            result[p].append(np.concatenate(sinks[p], 0))
    for p in shared_paths:
        result[p].append(np.concatenate(shared_sinks[p], 0))
    if ("lm_head",) in result:
        hn = model.final_norm(h_final)
        result[("lm_head",)].append(np.asarray(hn, np.float32).reshape(-1, hn.shape[-1]))
    return result


def quantize(model, bits: int = 4, group_size: int = 128, method: str = "nf", calib_ids=None, *, table=None,
             lm_head: bool = False, scale_dtype=None, pad_k: bool = True, nfl_steps: int = 50,
             nfl_lr: float = 5e-3, impl: str | None = None, verbose: bool = False):
    """Replace the Linear layers of `model` (in place) by QuantLinear and return the model.

    bits: 4, 3 or 2. group_size: 32, 64, 128 or 256 (along the input dimension). method: "nf" (absmax scales) or
    "nfl" (scales learned on `calib_ids` [B, T] token ids). table: None for NormalFloat or 2**bits floats.
    pad_k: pad the input dimension to a multiple of group_size when it does not divide it (otherwise raise).
    scale_dtype: storage dtype of the scales (default: the model's compute dtype).
    """
    if method not in METHODS:
        raise ConfigError(f"method={method!r}: expected one of {METHODS}")
    fmt = QuantFormat.make(bits, group_size, table)
    if method == "nfl" and calib_ids is None:
        raise ConfigError("calib_ids: method='nfl' needs calibration token ids [B, T]")
    paths = _linear_paths(model, lm_head)
    if not pad_k:
        for p in paths:
            k = _get(model, p).kernel.shape[-2]
            if k % group_size:
                raise ConfigError(f"group_size={group_size} does not divide the input dimension K={k} of "
                                 f"{'.'.join(map(str, p))} (pass pad_k=True to pad)")
    learned = {}
    if method == "nfl":
        from jaxlm.quant.nfl import calibrate_scales

        inputs = capture_inputs(model, calib_ids, paths)
        for p in paths:
            kernel = _get(model, p).kernel[...]
            stacked = kernel.ndim == 3
            ks = kernel if stacked else kernel[None]
            k_pad = padded_k(ks.shape[-2], group_size)
            per = []
            for i, x in enumerate(inputs[p]):
                w = pad_rows(jnp.asarray(ks[i], jnp.float32), k_pad)
                xp = np.pad(x, ((0, 0), (0, k_pad - x.shape[1]))) if k_pad != x.shape[1] else x
                per.append(calibrate_scales(w, xp, fmt, steps=nfl_steps, lr=nfl_lr))
            learned[p] = jnp.stack(per) if stacked else per[0]
            if verbose:
                print(f"  nfl: calibrated {'.'.join(map(str, p))}", flush=True)
    for p in paths:
        lin = _get(model, p)
        _set(model, p, QuantLinear.from_linear(lin, fmt, scales=learned.get(p), scale_dtype=scale_dtype,
                                               pad_k=pad_k, impl=impl))
    model.quant_info = QuantInfo(fmt.bits, fmt.group_size, fmt.table, method, bool(lm_head),
                                 tuple(".".join(map(str, p)) for p in paths))
    return model


# ---------------------------------------------------------------- checkpoints


def _flat_arrays(model) -> dict[str, jax.Array]:
    out = {}
    for path, var in nnx.to_flat_state(nnx.state(model)):
        out[".".join(map(str, path))] = var.get_value() if hasattr(var, "get_value") else var.value
    return out


def save_quantized(model, out_dir) -> pathlib.Path:
    """Write out_dir/model.safetensors (packed codes, scales, all other weights) and out_dir/quant_config.json."""
    from safetensors.flax import save_file

    info = getattr(model, "quant_info", None)
    if info is None:
        raise CheckpointError("save_quantized: the model has not been quantized (run jaxlm.quant.quantize first)")
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    arrays = {k: jnp.asarray(v) for k, v in _flat_arrays(model).items()}
    save_file(arrays, str(out / "model.safetensors"), metadata={"format": FORMAT_NAME})
    layers = {}
    for name in info.layers:
        ql = _get(model, tuple(name.split(".")))
        layers[name] = {"in_features": ql.in_features, "out_features": ql.out_features, "dtype": ql.dtype,
                        "bias": ql.bias is not None}
    meta = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "config": dataclasses.asdict(model.cfg),
            "quantization": {k: v for k, v in info.to_json().items() if k != "layers"}, "layers": layers}
    (out / "quant_config.json").write_text(json.dumps(meta, indent=1))
    return out


def load_quantized(path, *, impl: str | None = None):
    """Load a checkpoint written by save_quantized; returns the quantized DecoderLM."""
    from safetensors.flax import load_file

    from jaxlm.models.decoder import DecoderLM

    path = pathlib.Path(path)
    cfg_file, st_file = path / "quant_config.json", path / "model.safetensors"
    for f in (cfg_file, st_file):
        if not f.exists():
            raise CheckpointError(f"quantized checkpoint file missing: {f}")
    meta = json.loads(cfg_file.read_text())
    if meta.get("format") != FORMAT_NAME:
        raise CheckpointError(f"{cfg_file}: format={meta.get('format')!r}, expected {FORMAT_NAME!r}")
    cfg = DecoderConfig(**meta["config"])
    q = meta["quantization"]
    fmt = QuantFormat.from_json(q)
    arrays = load_file(str(st_file))
    model = nnx.eval_shape(lambda: DecoderLM(cfg, rngs=nnx.Rngs(0)))
    for name, spec in meta["layers"].items():
        p = tuple(name.split("."))
        keys = {f"{name}.packed", f"{name}.scales"} | ({f"{name}.bias"} if spec["bias"] else set())
        missing = keys - arrays.keys()
        if missing:
            raise CheckpointError(f"{st_file}: missing keys {sorted(missing)}")
        old = _get(model, p)
        axes = tuple(getattr(old.kernel, "axes", None) or (None, None))
        _set(model, p, QuantLinear(arrays[f"{name}.packed"], arrays[f"{name}.scales"], bits=fmt.bits,
                                   group_size=fmt.group_size, table=fmt.table, in_features=spec["in_features"],
                                   bias=arrays.get(f"{name}.bias"), dtype=spec["dtype"], axes=axes, impl=impl))
    state = nnx.state(model)
    flat = []
    for kpath, var in nnx.to_flat_state(state):
        key = ".".join(map(str, kpath))
        if key not in arrays:
            raise CheckpointError(f"{st_file}: missing key {key!r}")
        want = tuple(var.get_value().shape) if hasattr(var, "get_value") else tuple(var.value.shape)
        if tuple(arrays[key].shape) != want:
            raise CheckpointError(f"{st_file}: key {key!r} has shape {tuple(arrays[key].shape)}, expected {want}")
        flat.append((kpath, arrays[key]))
    nnx.update(model, nnx.from_flat_state(flat))
    model.quant_info = QuantInfo(fmt.bits, fmt.group_size, fmt.table, q.get("method", "nf"),
                                 bool(q.get("lm_head", False)), tuple(meta["layers"]))
    return model
