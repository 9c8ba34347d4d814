"""A training micro-batch's top: the loss of its answer tokens and that loss's gradient at the final hidden states,
by hand and in pieces, so a pass can give way to inference inside it (gpu_runtime.trainer runs it on the pass's
thread and goes on from the final norm down with autograd, layer by layer)."""

import math
import time

import torch
import torch.nn.functional as F

from .training_data import IGNORE

TOP_PIECE_LOGITS = 1 << 19  # logits per piece of the top: a few ms of work between chances to give way
TOP_COLUMN_PIECES = 64  # at most, whatever the answer's length: each one adds to the whole [answer, hidden] gradient


def answer_loss(lm_head, hidden, targets, step_targets, give_way):
    """The answer tokens' loss and its gradient at the final hidden states [batch, seq, hidden] (no graph):
    the vocabulary projection, the cross-entropy and the projection's backward, taken in pieces of about
    TOP_PIECE_LOGITS logits (the vocabulary in at most TOP_COLUMN_PIECES column chunks, the loss in row
    chunks) with ``give_way`` before each, so an arriving request waits for one piece and not for the whole
    top. The weight is read twice, as autograd would (projection and its backward), however many pieces.
    Returns (the loss summed over the answer tokens, the gradient of the loss averaged over the step's
    ``step_targets`` answer tokens, the pieces' mean compute in ms with the time spent paused left out)."""
    clock = [0.0, None]  # the pieces' compute so far (paused time left out), the current piece's start

    def piece():
        if clock[1] is not None:
            clock[0] += time.perf_counter() - clock[1]
        give_way()
        clock[1] = time.perf_counter()

    keep = targets != IGNORE
    h = hidden[:, :-1][keep]  # the projection only where there is something to learn (the answer tokens)
    answer = targets[keep]
    weight, bias = lm_head.weight, lm_head.bias
    vocab = weight.shape[0]
    cols = max(1, TOP_PIECE_LOGITS // max(1, len(answer)), -(-vocab // TOP_COLUMN_PIECES))
    logits = torch.empty(len(answer), vocab, dtype=torch.float32, device=h.device)
    for start in range(0, vocab, cols):
        piece()
        end = min(vocab, start + cols)
        logits[:, start:end] = F.linear(h, weight[start:end], None if bias is None else bias[start:end])
    loss_sum = torch.zeros((), dtype=torch.float32, device=h.device)
    rows = max(1, TOP_PIECE_LOGITS // vocab)
    for start in range(0, len(answer), rows):  # logits -> d(loss / step targets) / d logits, in place
        piece()
        part, wanted = logits[start:start + rows], answer[start:start + rows]
        loss_sum += F.cross_entropy(part, wanted, reduction="sum")
        part.copy_(torch.softmax(part, dim=1))
        part[torch.arange(len(wanted), device=h.device), wanted] -= 1.0
        part /= step_targets
    grad_logits = logits.to(weight.dtype)
    del logits
    grad_h = torch.zeros(h.shape, dtype=torch.float32, device=h.device)  # the chunks' products summed in fp32
    for start in range(0, vocab, cols):
        piece()
        grad_h += grad_logits[:, start:start + cols] @ weight[start:start + cols]
    grad = torch.zeros_like(hidden)
    grad[:, :-1][keep] = grad_h.to(hidden.dtype)
    clock[0] += time.perf_counter() - clock[1]
    piece_ms = clock[0] * 1000 / (2 * math.ceil(vocab / cols) + math.ceil(len(answer) / rows))
    return loss_sum.detach(), grad, piece_ms

