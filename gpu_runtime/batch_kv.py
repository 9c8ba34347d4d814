"""The running batch's KV cache and attention mask: row i belongs to the engine's ``rows[i]``, always.

Rows are left-padded to one length: ``mask`` is [rows, kv length], 1 for a real token, 0 for padding (whose keys
and values are zeros, never attended to). The engine merges each prefilled group in as it is computed, selects
the rows that go on after each step, and cuts the batch back when an admission fails part-way.
"""

import torch


class BatchKV:
    def __init__(self):
        self.cache = None  # the KV cache of every row (kv_cache.py), or None for an empty batch
        self.mask = None

    def __len__(self):
        return 0 if self.mask is None else self.mask.shape[0]

    def clear(self):
        self.cache = self.mask = None

    def merge(self, cache, mask):
        """Appends prefilled rows (their cache and [rows, length] mask) after the batch's, left-padding whichever
        is shorter. The groups of one admission merge before their rows join the engine's list, so this goes by
        the batch cache alone (two groups into an empty batch once kept only the second's KV)."""
        if self.cache is None:
            self.cache, self.mask = cache, mask
            return
        total = max(self.mask.shape[1], mask.shape[1])
        _left_pad(self.cache, total - self.mask.shape[1])
        _left_pad(cache, total - mask.shape[1])
        self.mask = torch.cat([_pad_mask(self.mask, total), _pad_mask(mask, total)])
        for mine, theirs in zip(self.cache.layers, cache.layers, strict=True):
            mine.keys = torch.cat([mine.keys, theirs.keys])
            mine.values = torch.cat([mine.values, theirs.values])

    def keep_first(self, n):
        """Cuts the batch back to its first ``n`` rows (an admission that failed after some groups merged)."""
        if self.cache is None or len(self) == n:
            return
        if n == 0:
            self.clear()
            return
        self.mask = self.mask[:n]
        for layer in self.cache.layers:
            layer.keys, layer.values = layer.keys[:n], layer.values[:n]

    def select(self, keep):
        """Keeps the rows at indexes ``keep`` (in that order) and drops the columns that became padding for every
        row left."""
        if not keep:
            self.clear()
            return
        index = torch.tensor(keep, device=self.mask.device)
        self.cache.batch_select_indices(index)
        self.mask = self.mask.index_select(0, index)
        first = int(self.mask.any(dim=0).nonzero()[0])
        if first:
            self.mask = self.mask[:, first:]
            for layer in self.cache.layers:
                layer.keys, layer.values = layer.keys[:, :, first:], layer.values[:, :, first:]

    def next_step(self):
        """(position of each row's next token [rows, 1], the mask with its column) for one decode step; the
        mask is the batch's once the step's forward has run (``self.mask = mask``)."""
        positions = self.mask.sum(dim=1, keepdim=True)
        return positions, torch.cat([self.mask, self.mask.new_ones(len(self), 1)], dim=1)


def _left_pad(cache, pad):
    if pad <= 0:
        return
    for layer in cache.layers:
        zeros = layer.keys.new_zeros(*layer.keys.shape[:2], pad, layer.keys.shape[3])
        layer.keys = torch.cat([zeros, layer.keys], dim=2)
        layer.values = torch.cat([zeros.clone(), layer.values], dim=2)


def _pad_mask(mask, total):
    pad = total - mask.shape[1]
    return torch.cat([mask.new_zeros(mask.shape[0], pad), mask], dim=1) if pad > 0 else mask
