"""The KV cache of one forward pass's rows: per decoder layer, keys and values of shape [rows, kv heads, tokens, head
dim]. The engine's batch (batch_kv.py) and the prefix cache (prefix_cache.py) edit ``layers`` directly; the decoder
(decoder.py) appends each pass's new tokens with ``update``. It has the shape and calls of transformers'
``DynamicCache`` that the runtime uses, so a transformers model can run on a ``DynamicCache`` in its place."""

import torch


class KVLayer:
    __slots__ = ("keys", "values")

    def __init__(self, keys, values):
        self.keys, self.values = keys, values


class KVCache:
    def __init__(self):
        self.layers = []

    def update(self, keys, values, layer):
        """Appends a pass's ``keys`` and ``values`` to layer ``layer``'s; returns the layer's whole keys and values."""
        if layer == len(self.layers):
            self.layers.append(KVLayer(keys, values))
        else:
            held = self.layers[layer]
            held.keys = torch.cat([held.keys, keys], dim=2)
            held.values = torch.cat([held.values, values], dim=2)
        held = self.layers[layer]
        return held.keys, held.values

    def get_seq_length(self):
        return self.layers[0].keys.shape[2] if self.layers else 0

    def batch_select_indices(self, index):
        """Keeps the rows at ``index`` (a tensor of row indexes, in that order)."""
        for layer in self.layers:
            layer.keys, layer.values = layer.keys.index_select(0, index), layer.values.index_select(0, index)
