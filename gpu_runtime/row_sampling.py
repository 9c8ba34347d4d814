"""A batch row's own sampling: the rows an admitted request takes (one per choice, each with its generator, logits
options, grammar and detokenizer) and each row's next token (its logits shaped by its options, masked by its grammar,
sampled, with its logprob entry when it asked for them). The engine calls it and isolates what it raises per row."""

import logging

from .batch_rows import Row
from .detokenize import IncrementalText
from .grammar import GrammarError, Grammars
from .logprobs import TokenPieces, logprob_entry
from .sampling import LogitsOptions, row_generator, sample_token, shape_logits

log = logging.getLogger("vajra.runtime.engine")


class RowSampler:
    def __init__(self, tokenizer, vocab_size, device):
        self.tokenizer, self.vocab_size, self.device = tokenizer, vocab_size, device
        self.pieces = TokenPieces(tokenizer)  # token texts and bytes, for logprobs
        self.grammars = Grammars(tokenizer, vocab_size)  # rows with a grammar (grammar.py)

    def compile_grammars(self, handle):
        """The request's grammar compiled for each of its choices, on the submitting thread (not the engine's); a
        grammar that cannot be compiled leaves its reason on the handle: the request is refused at admission."""
        request = handle.request
        if request.grammar is None:
            return
        try:
            handle.grammars = [self.grammars.compile(request.grammar) for _ in range(request.sampling.n)]
        except GrammarError as exc:
            handle.grammar_error = exc.message
        except Exception as exc:  # this request's grammar alone
            log.exception("request %s: compiling its grammar failed", request.request_id)
            handle.grammar_error = f"the output grammar could not be compiled: {exc}"

    def rows(self, handle, key, slot, ids, eos_ids):
        """The admitted request's Rows, choice i at i, on adapter ``key`` in ``slot`` with prompt ``ids``."""
        request = handle.request
        params = request.sampling
        return [
            Row(handle, key, slot, len(ids), IncrementalText(self.tokenizer, params.stop, min_tokens=params.min_tokens),
                row_generator(params, request.request_id, choice, self.device), ids=ids, choice=choice,
                options=LogitsOptions.of(params, ids, vocab_size=self.vocab_size, eos_ids=eos_ids, device=self.device),
                logprobs=[] if params.logprobs is not None else None,
                grammar=handle.grammars[choice] if handle.grammars else None)
            for choice in range(params.n)]

    def next_token(self, row, logits, eos_ids):
        """The row's next token from its logits (1-D); its logprob entry kept when it asked for them (EOS has none:
        it ends the row). Raises SamplingError or GrammarError for this row's own fault."""
        params = row.handle.request.sampling
        logits = shape_logits(row.options, logits)
        if row.grammar is not None:
            logits = row.grammar.mask(logits)
        token = sample_token(logits, params, row.generator)
        if row.logprobs is not None and token not in eos_ids:
            row.logprobs.append(logprob_entry(self.pieces, logits, token, params.logprobs))
        return token
