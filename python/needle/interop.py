"""Weights exchanged with PyTorch for the same architecture.

``torch_state_dict(model)`` gives ``model``'s parameters and buffers under the names
and in the layouts a PyTorch model of the same structure (same attribute names, its
layers the torch.nn counterparts) has in its ``state_dict()``;
``load_torch_state_dict(model, sd)`` takes such a dict (torch tensors or numpy arrays).

What differs between the two frameworks, layer by layer:

==================  ===================================  ==================================
needle              needle layout                        PyTorch
==================  ===================================  ==================================
Linear              weight (in, out), bias (1, out)      weight (out, in), bias (out,)
Conv (NHWC data)    weight (kh, kw, Cin/g, Cout)         Conv2d weight (Cout, Cin/g, kh, kw)
BatchNorm1d/2d      weight, bias, running_mean/var       the same + num_batches_tracked
RNN / LSTM          rnn_cells.k.W_ih (in, G·H), W_hh,    weight_ih_lk (G·H, in), weight_hh_lk,
                    bias_ih, bias_hh                     bias_ih_lk, bias_hh_lk
RNNCell / LSTMCell  W_ih (in, G·H), W_hh, biases         weight_ih (G·H, in), weight_hh, biases
==================  ===================================  ==================================

LayerNorm1d (torch.nn.LayerNorm), Embedding and every other tensor keep name and
layout. LSTM gates are in PyTorch's order (input, forget, cell, output) in both. The
attention layers are built from Linear and LayerNorm1d children and convert through
them. Values are copied; dtypes are kept.
"""
from collections import OrderedDict

import numpy as np

from .nn import nn_basic, nn_conv, nn_sequence

__all__ = ["torch_state_dict", "load_torch_state_dict"]


def _same(a):
    return a


def _transpose(a):
    return np.ascontiguousarray(a.T)


def _linear_bias_to_torch(b):
    return np.ascontiguousarray(b.reshape(-1))


def _conv_weight_to_torch(w):  # (kh, kw, Cin, Cout) -> (Cout, Cin, kh, kw)
    return np.ascontiguousarray(w.transpose(3, 2, 0, 1))


def _conv_weight_from_torch(w):
    return np.ascontiguousarray(w.transpose(2, 3, 1, 0))


def _cell_entries(prefix_needle, torch_suffix, cell):
    """(needle name, torch name, to_torch, from_torch) of one recurrent cell's tensors."""
    yield f"{prefix_needle}W_ih", f"weight_ih{torch_suffix}", _transpose, _transpose
    yield f"{prefix_needle}W_hh", f"weight_hh{torch_suffix}", _transpose, _transpose
    if cell.bias_ih is not None:
        yield f"{prefix_needle}bias_ih", f"bias_ih{torch_suffix}", _same, _same
        yield f"{prefix_needle}bias_hh", f"bias_hh{torch_suffix}", _same, _same


def _module_entries(module):
    """The layout rules of one module's own tensors (names relative to the module), or
    None when its tensors keep name and layout."""
    if isinstance(module, nn_basic.Linear):
        rules = [("weight", "weight", _transpose, _transpose)]
        if module.bias is not None:
            rules.append(("bias", "bias", _linear_bias_to_torch, lambda b: b.reshape(1, -1)))
        return rules
    if isinstance(module, nn_conv.Conv):
        rules = [("weight", "weight", _conv_weight_to_torch, _conv_weight_from_torch)]
        if module.bias is not None:
            rules.append(("bias", "bias", _same, _same))
        return rules
    if isinstance(module, (nn_sequence.RNN, nn_sequence.LSTM)):
        cells = module.rnn_cells if isinstance(module, nn_sequence.RNN) else module.lstm_cells
        attr = "rnn_cells" if isinstance(module, nn_sequence.RNN) else "lstm_cells"
        return [e for k, cell in enumerate(cells) for e in _cell_entries(f"{attr}.{k}.", f"_l{k}", cell)]
    if isinstance(module, (nn_sequence.RNNCell, nn_sequence.LSTMCell)):
        return list(_cell_entries("", "", module))
    return None


def _rules(model):
    """(rules, extras): ``rules`` maps each needle state-dict name, in state-dict order, to
    (torch name, to_torch, from_torch); ``extras`` maps a needle name to the torch-only
    buffers PyTorch keeps right after it (BatchNorm's ``num_batches_tracked``)."""
    special, extras = {}, {}
    for mod_name, module in model.named_modules():
        prefix = f"{mod_name}." if mod_name else ""
        for needle_rel, torch_rel, to_torch, from_torch in _module_entries(module) or ():
            special.setdefault(prefix + needle_rel, (prefix + torch_rel, to_torch, from_torch))
        if isinstance(module, nn_basic.BatchNorm1d):
            extras[prefix + "running_var"] = {prefix + "num_batches_tracked": np.array(0, dtype=np.int64)}
    rules = OrderedDict((name, special.get(name, (name, _same, _same))) for name in model.state_dict())
    return rules, extras


def torch_state_dict(model):
    """``model``'s tensors as a dict of numpy arrays in PyTorch's names, order and
    layouts (``torch.nn.Module.load_state_dict`` takes them as
    ``{k: torch.from_numpy(v) for k, v in sd.items()}``)."""
    rules, extras = _rules(model)
    ours = model.state_dict()
    out = OrderedDict()
    for name, (torch_name, to_torch, _) in rules.items():
        out[torch_name] = to_torch(ours[name].numpy())
        for extra_name, value in extras.get(name, {}).items():
            out[extra_name] = value.copy()
    return out


def _to_numpy(value, name):
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # a torch.Tensor, without importing torch
        value = value.detach().cpu()
        if str(value.dtype) == "torch.bfloat16":
            import ml_dtypes
            return value.float().numpy().astype(ml_dtypes.bfloat16)
        return value.numpy()
    if hasattr(value, "numpy") and not isinstance(value, np.ndarray):
        return np.asarray(value.numpy())
    if isinstance(value, np.ndarray):
        return value
    raise TypeError(f"load_torch_state_dict: {name!r} is a {type(value).__name__}, "
                    f"expected a torch tensor or numpy array")


def load_torch_state_dict(model, state_dict, strict=True):
    """Load PyTorch's ``state_dict`` (torch tensors or numpy arrays, PyTorch's names and
    layouts) into ``model`` in place. A RuntimeError lists every missing and unexpected
    key (``strict``) and every shape mismatch (in PyTorch's layout) before anything
    changes; returns ``(missing_keys, unexpected_keys)`` in PyTorch's names."""
    if not isinstance(state_dict, dict):
        raise TypeError(f"load_torch_state_dict expects a dict, got {type(state_dict).__name__}")
    rules, extras = _rules(model)
    torch_only = {k for e in extras.values() for k in e}
    ours = model.state_dict()
    by_torch = {torch_name: (name, from_torch, to_torch) for name, (torch_name, to_torch, from_torch)
                in rules.items()}
    missing = [t for t in by_torch if t not in state_dict]
    unexpected = [k for k in state_dict if k not in by_torch and k not in torch_only]
    problems = []
    if strict and missing:
        problems.append("missing key(s) " + ", ".join(map(repr, missing)))
    if strict and unexpected:
        problems.append("unexpected key(s) " + ", ".join(map(repr, unexpected)))
    converted = {}
    for torch_name, (name, from_torch, to_torch) in by_torch.items():
        if torch_name not in state_dict:
            continue
        value = _to_numpy(state_dict[torch_name], torch_name)
        expected = to_torch(ours[name].numpy()).shape
        if tuple(value.shape) != tuple(expected):
            problems.append(f"size mismatch for {torch_name!r}: the PyTorch tensor has shape "
                            f"{tuple(value.shape)}, the model needs {tuple(expected)}")
            continue
        converted[name] = from_torch(value)
    if problems:
        raise RuntimeError(f"load_torch_state_dict for {type(model).__name__}: " + "; ".join(problems))
    model.load_state_dict(converted, strict=False)
    return nn_basic.IncompatibleKeys(missing, unexpected)
