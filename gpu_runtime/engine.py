"""The engine: the only thread that runs forward passes on the node's model.

Continuous mixed-adapter batching: requests join the running batch at step boundaries (after their own
prefill) and leave as soon as they finish; one decode step serves every row, each with its own adapter
slot or none (base layer once, each adapter's delta on its rows: gpu_runtime.lora). Rows share one
left-padded KV cache; position ids and the attention mask keep each row's own positions. Requests wait for a row
in per-tenant queues served in turns (gpu_runtime.admission), so one tenant's flood cannot hold another's back.

Each step's device time (gpu_runtime.batch_forward, timed by gpu_runtime.step_clock) is attributed
to the rows it served (a prefill to its rows by their tokens, a decode step split evenly), so the requests' GPU-ms
add up to the engine's busy time. Cancel flags are read before each admission round for every waiting request and
every running row: a request cancelled while it waits leaves the queue with no prefill, no token and 0 GPU-ms (the
ledger bills it nothing); a row cancelled mid-way leaves within a step with the GPU-ms it used.

A request of n choices (``sampling.n``) takes n rows: its prompt is prefilled once and its KV copied to each choice's
row, which then samples on its own (gpu_runtime.row_sampling: its generator, logits options, grammar and text; a row
with a grammar ends where it is complete); its final goes out when the last of them ends (batch_rows.request_final).

Training (gpu_runtime.trainer) shares this thread at inference's priority x10: between inference steps the engine
gives the first queued job its turns (gpu_runtime.training_turns decides when, and for how long).

Faults are isolated per row: what one row's own work raises or yields (non-finite logits, e.g. from its adapter;
its sampler; its grammar; its detokenizer or stop strings) ends that row alone with a typed error
(``non_finite_logits``, ``sampling_error``, ``grammar_error``, ``detokenize_error``); the others in its batch and
prefill group get exactly their own tokens (each row's LoRA delta, attention and KV are its own; padding is
masked). A forward pass that raises is not one row's: a failed prefill fails the rows it admitted
(``engine_error``), the running batch untouched; a failed decode step fails every running row, as it leaves the
batch KV half-appended (only the layers before the fault hold the step's column) and rebuilding each row's KV to
retry them one by one would cost a prefill per row.
"""

import logging
import queue
import threading
import time
from concurrent.futures import Future

import torch

from .adapter_entry import NoFreeSlot, adapter_key
from .adapter_validation import AdapterRejected
from .admission import AdmissionQueue
from .base_model import use_torch_threads
from .batch_forward import BatchForward
from .batch_rows import Handle, RequestError, elapsed_ms, prompt_ids, request_final, unadmitted_final
from .contract import SUPERSEDED, FinalError, superseded_result
from .grammar import GrammarError
from .row_sampling import RowSampler
from .sampling import SamplingError
from .step_clock import smoothed
from .training_turns import TrainingTurns

log = logging.getLogger("vajra.runtime.engine")


class Engine:
    def __init__(self, base, store, streams, *, max_batch=32, idle_wait_s=0.05, prefix_cache=None,
                 training_every=10, training_preemption=True, training_max_hold_s=2.0, fair_admission=True):
        self.base = base
        self.model, self.tokenizer = base.model, base.tokenizer
        self.device = torch.device(base.device)
        self.store = store
        self.pool = store.pool if store is not None else None
        self.streams = streams
        self.max_batch = max_batch
        self.max_context = getattr(self.model.config, "max_position_embeddings", 2048)
        self.idle_wait_s = idle_wait_s
        eos = self.model.generation_config.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos]) | {self.tokenizer.eos_token_id}
        self.eos_ids.discard(None)
        self.vocab_size = self.model.config.vocab_size
        self.sampler = RowSampler(self.tokenizer, self.vocab_size, self.device)  # each row's own (row_sampling.py)
        self._incoming = queue.Queue()
        self._calls = queue.Queue()  # functions to run on the engine thread between steps
        self._pending = AdmissionQueue(fair=fair_admission)  # waiting for a row, per tenant (admission.py)
        self.rows = []
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else next(iter(self.eos_ids), 0)
        self.forward = BatchForward(self.model, self.pool, self.device, pad_id=pad, max_batch=max_batch,
                                    prefix_cache=prefix_cache)  # the forward passes (batch_forward.py)
        self.kv = self.forward.kv  # the KV cache and mask of self.rows, row for row (batch_kv.py)
        self.started = time.perf_counter()
        self.steps = 0
        self.decode_ms = None  # moving average of a decode step's time (what the running rows have left: _rows_left_s)
        self.tokens_out = 0
        self.training = TrainingTurns(every=training_every, preemption=training_preemption,
                                      max_hold_s=training_max_hold_s)
        self._stop = threading.Event()
        self._thread = None

    # ---- outside the engine thread ------------------------------------------------------------------------
    def submit(self, request):
        handle = Handle(request, training_mark=self.training.micro_steps)
        self.sampler.compile_grammars(handle)
        self.training.arrived(handle.submitted)
        if request.adapter is not None and self.store is not None:
            handle.adapter_future = self.store.prepare(request.adapter)
            handle.adapter_future.add_done_callback(lambda _: setattr(handle, "host_ready", time.perf_counter()))
        self._incoming.put(handle)
        return handle

    def submit_training(self, run):
        """Queues a prepared TrainingRun; its reports arrive on ``run.events`` (gpu_runtime.trainer.drive)."""
        self.training.submit(run)
        return run

    def call(self, fn):
        """Runs ``fn`` on the engine thread at the next step boundary; returns a Future of its result.
        Slot writes (pinning a hot adapter, eviction) must happen there, never beside a forward pass."""
        future = Future()
        self._calls.put((fn, future))
        return future

    def _run_calls(self):
        while not self._calls.empty():  # the engine thread is the only one that takes from it
            fn, future = self._calls.get_nowait()
            try:
                future.set_result(fn())
            except Exception as exc:  # handed to the caller
                future.set_exception(exc)

    def start(self):
        self._thread = threading.Thread(target=self._loop, name="engine", daemon=True)
        self._thread.start()

    def stop(self, timeout=10):
        self._stop.set()
        if self._thread:
            self._thread.join(timeout)

    @property
    def queue_depth(self):
        return self._incoming.qsize() + len(self._pending)

    @property
    def prefix_cache(self):
        """The node's prefix cache (prefix_cache.py), or None: looked up at admission, filled by each prefill."""
        return self.forward.prefix_cache

    @prefix_cache.setter
    def prefix_cache(self, cache):
        self.forward.prefix_cache = cache

    @property
    def busy_ms(self):
        """The forward passes' device time so far (inference only; training's is ``self.training.ms``)."""
        return self.forward.busy_ms

    def busy_ratio(self):
        return (self.busy_ms + self.training.ms) / max(1.0, (time.perf_counter() - self.started) * 1000)

    # ---- the engine thread ----------------------------------------------------------------------------------
    def _loop(self):
        use_torch_threads()
        while not self._stop.is_set():
            try:
                self.streams.flush()  # entries Redis refused while it restarted, once it answers again
                self._run_calls()
                self._take_arrivals()
                if self.rows or self._pending:
                    self._check_cancelled()
                self._admit()
                if self.rows:
                    self._decode_step()
                    self.training.decode_step_ran()
                if self.training.due(rows_running=bool(self.rows), rows_left_s=self._rows_left_s):
                    self._training_turn()
                elif not self.rows and not self._pending:
                    try:
                        self._pending.append(self._incoming.get(timeout=self.idle_wait_s))
                    except queue.Empty:
                        if self.store is not None:  # idle: a good moment to compact the slots
                            self.store.defragment()
                elif not self.rows:
                    time.sleep(0.001)  # waiting on an adapter load
            except Exception as exc:  # a failed step must not take the node down: fail its rows, go on
                log.exception("engine step failed")
                for row in list(self.rows):
                    self._finish(row, "error", {"code": "engine_error", "message": str(exc)})
                self._retire()
        self.training.close()  # a training pass paused mid-way ends with the engine thread

    # ---- training turns (gpu_runtime.training_turns) -----------------------------------------------------------
    def _training_turn(self):
        self.training.turn(cancelled=self.streams.cancelled, request_waiting=self._request_waiting)

    def _rows_left_s(self):
        """How long the running rows' decode steps would take to the last one's ``max_tokens``, at the recent
        decode step's time (an upper bound: a row may stop sooner)."""
        if not self.rows or self.decode_ms is None:
            return 0.0
        left = max(row.handle.request.sampling.max_tokens - row.completion_tokens for row in self.rows)
        return left * self.decode_ms / 1000

    def _request_waiting(self):
        """An inference request arrived and a row is free for it (checked at every layer of a training pass)."""
        return not self._incoming.empty() and len(self.rows) < self.max_batch

    def _take_arrivals(self):
        while True:
            try:
                self._pending.append(self._incoming.get_nowait())
            except queue.Empty:
                break

    def _admit(self):
        """Admits waiting requests into free rows; only those whose cancel flag was read since they arrived
        (``_check_cancelled``): arrivals wait in ``_incoming`` until then."""
        still, joining = [], []
        draining = set()  # adapters whose slots a request waits for: no new row takes them this round
        for handle in self._pending.in_turn():
            # a request takes a row per choice; one with more choices than the batch has rows runs alone
            if len(self.rows) + len(joining) + handle.request.sampling.n > self.max_batch and (self.rows or joining):
                still.append(handle)
                continue
            if handle.request.adapter is not None and adapter_key(handle.request.adapter) in draining:
                still.append(handle)
                continue
            try:
                rows = self._try_join(handle, draining)
            except (RequestError, AdapterRejected) as exc:
                self._fail_unadmitted(handle, exc.code, exc.message)
                continue
            except Exception as exc:  # this request only: the others keep being served
                log.exception("request %s failed at admission", handle.request.request_id)
                self._fail_unadmitted(handle, "engine_error", str(exc))
                continue
            if rows is None:
                still.append(handle)
            else:
                joining += rows
        self._pending.keep(still)
        if joining:
            try:
                self._prefill(joining)
            except Exception as exc:
                log.exception("prefill failed")
                for row in joining:
                    if row.choice:
                        continue  # its request is failed once, by its first choice's row
                    if row.key is not None:
                        self.store.release(row.key)
                    self._fail_unadmitted(row.handle, "engine_error", str(exc))

    def _try_join(self, handle, draining):
        """The request's Rows, one per choice, ready to prefill (adapter in its slot, prompt tokenized), or None if
        it must wait. A request whose adapter finds every fitting slot held by running rows adds those slots'
        adapters to ``draining``: requests later in the round (other tenants' included) do not take them, so one of
        those slots frees for it when its rows end, instead of a tenant keeping every slot of a rank busy."""
        request = handle.request
        if request.base_model and request.base_model != self.base.name:
            raise RequestError("unknown_base_model", f"this node serves {self.base.name}, not {request.base_model}")
        # before taking a slot: a refused prompt holds nothing
        ids = prompt_ids(request, self.tokenizer, max_context=self.max_context, vocab_size=self.vocab_size)
        if handle.grammar_error is not None:
            raise RequestError("invalid_request", handle.grammar_error)
        key, slot = None, 0
        if request.adapter is not None:
            if self.store is None:
                raise RequestError("adapters_unavailable", "this node serves the base model only")
            future = handle.adapter_future
            if not future.done():
                return None
            future.result()  # raises AdapterRejected for a broken adapter
            handle.host_ready = handle.host_ready or time.perf_counter()  # done, its callback not yet run
            key = adapter_key(request.adapter)
            started = time.perf_counter()
            try:
                slot = self.store.activate(key)
            except NoFreeSlot:
                handle.slot_wait_from = handle.slot_wait_from or started
                draining |= self.store.holding_slots_for(key)
                return None
            # The tier's adapter-ready time: the adapter's own waits, not the wait for a batch row or a step
            handle.adapter_ready_ms = elapsed_ms(handle.submitted, handle.host_ready or handle.submitted) + elapsed_ms(
                handle.slot_wait_from or started, time.perf_counter())
        handle.admitted = time.perf_counter()
        handle.training_waits = self.training.micro_steps - handle.training_mark
        handle.rows = self.sampler.rows(handle, key, slot, ids, self.eos_ids)
        return handle.rows

    def _prefill(self, rows):
        """Prefills newly admitted rows: those with a cached prompt prefix one by one from their cached KV,
        the rest together in one left-padded forward pass (each row with its own adapter slot). Each group's KV
        joins the batch's as it is computed (``BatchKV.merge``); the rows join ``self.rows`` after the last group."""
        if not self.rows:  # an empty batch: whatever cache it held is stale
            self.kv.clear()
        merged, fresh = [], []  # in the order their KV joins the batch cache, which self.rows must follow
        try:
            for row in rows:
                if row.choice:  # the request's other choices take its first choice's prefill (_prefill_group)
                    continue
                tenant = row.handle.request.tenant  # the cache never answers across tenants (prefix_cache.py)
                cached, cache = (self.prefix_cache.lookup(tenant, row.key, row.ids, self.forward.new_cache)
                                 if self.prefix_cache else (0, None))
                if cached:
                    row.cached_tokens = cached
                    merged += self._prefill_group([row], cache, offset=cached)
                else:
                    fresh.append(row)
            if fresh:
                fresh = self._prefill_group(fresh, self.forward.new_cache())
        except BaseException:  # the admission fails whole: the groups merged so far leave the batch cache again
            self.kv.keep_first(len(self.rows))
            raise
        with self.streams.held():  # the rows' first tokens go to Redis together
            for row in merged + fresh:
                self.rows.append(row)
                if row.finish_reason is None:  # a row whose sampling failed leaves with its error at _retire
                    self._accept_token(row, row.last_token)
            self._retire()

    def _prefill_group(self, rows, cache, offset=0):
        """Prefills ``rows`` (each request's first choice) in one forward pass, their KV merged into the batch's
        (each request's other choices with a copy of it), and samples every choice's first token; returns every
        choice's row in the order of the batch KV."""
        choices, logits, elapsed, lengths = self.forward.prefill(rows, cache, offset)
        total = sum(lengths)
        for i, row in enumerate(rows):
            row.gpu_ms += elapsed * lengths[i] / total  # a prefill costs in proportion to its tokens
        for i, row in enumerate(choices):
            row.last_token = self._sample(row, logits[i])
        return choices

    def _decode_step(self):
        logits, elapsed = self.forward.decode(self.rows)
        self.decode_ms = smoothed(self.decode_ms, elapsed)
        share = elapsed / len(self.rows)
        self.steps += 1
        with self.streams.held():  # the step's tokens of every row go to Redis together
            for i, row in enumerate(self.rows):
                row.gpu_ms += share
                token = self._sample(row, logits[i])
                if row.finish_reason is None:
                    self._accept_token(row, token)
            self._retire()

    def _sample(self, row, logits):
        """The row's next token, from its logits shaped by its options; with its logprob entry when it asked for
        them (EOS has none: it ends the row). A failure ends this row's request alone (its rows' finish_reason is
        set, the token is None)."""
        try:
            return self.sampler.next_token(row, logits, self.eos_ids)
        except (SamplingError, GrammarError) as exc:
            self._row_fault(row, exc.code, exc.message)
        except Exception as exc:
            self._row_fault(row, "sampling_error", f"sampling the next token failed: {exc}")
        return None

    def _row_fault(self, row, code, message):
        """Ends the row's request alone, every choice of it, with this error."""
        log.warning("request %s failed alone: %s: %s", row.handle.request.request_id, code, message,
                    exc_info=code != "non_finite_logits")
        for choice in row.handle.rows or [row]:
            self._finish(choice, "error", {"code": code, "message": message})

    def _accept_token(self, row, token):
        row.last_token = token
        if row.first_token is None:
            row.first_token = time.perf_counter()
        if row.grammar is not None and token not in self.eos_ids:
            try:
                row.grammar.advance(token)
            except GrammarError as exc:
                self._row_fault(row, exc.code, exc.message)
                return
        if token in self.eos_ids:
            self._finish(row, "stop")
            return
        row.completion_tokens += 1
        self.tokens_out += 1
        if row.options is not None:
            row.options.accept(token)
        try:
            delta = row.text.add(token)
        except Exception as exc:  # this row's text (its tokens, its stop strings): this row alone fails
            self._row_fault(row, "detokenize_error", f"turning the tokens into text failed: {exc}")
            return
        if delta:
            self._send_text(row, delta)
        if row.text.stopped or (row.grammar is not None and row.grammar.complete):
            self._finish(row, "stop")
        elif row.completion_tokens >= row.handle.request.sampling.max_tokens:
            self._finish(row, "length")

    def _send_text(self, row, text):
        """A delta of the row's choice, with the logprobs of its tokens since the last one (when it asked)."""
        logprobs, row.logprobs = row.logprobs, ([] if row.logprobs is not None else None)
        self.streams.delta(row.handle.request.request_id, text, row.handle.request.attempt, index=row.choice,
                           logprobs=logprobs)

    def _check_cancelled(self):
        """One read of the cancel and attempt flags of every waiting request and running row. A waiting request
        that is cancelled or superseded leaves the queue before it is prefilled, holding nothing and owing
        nothing; a running row leaves the batch at the next ``_retire``."""
        waiting = list(self._pending.in_turn())
        running = {id(row.handle): row.handle for row in self.rows}  # a request of several choices once
        handles = waiting + list(running.values())
        cancelled, superseded = self.streams.stopped(
            [(handle.request.request_id, handle.request.attempt) for handle in handles])
        if not cancelled and not superseded:
            return
        gone = [handle for handle in waiting
                if handle.request.request_id in cancelled or handle.request.request_id in superseded]
        self._pending.discard(gone)
        for handle in gone:
            if handle.request.request_id in superseded:
                self.streams.superseded(handle.request.request_id, handle.request.attempt)
                handle.result = superseded_result(handle.request.attempt)
                handle.done.set()
            else:
                self._deliver(handle, unadmitted_final(handle.submitted, "cancelled"))
        for row in self.rows:
            if row.handle.request.request_id in superseded:  # failover sent it to another node: drop it unsaid
                self._finish(row, SUPERSEDED)
            elif row.handle.request.request_id in cancelled:
                self._finish(row, "cancelled")
        self._retire()

    def _finish(self, row, reason, error=None):
        if row.finish_reason is None:
            row.finish_reason, row.error = reason, error

    def _retire(self):
        """Removes finished rows from the batch and sends their final events."""
        keep = [i for i, row in enumerate(self.rows) if row.finish_reason is None]
        if len(keep) == len(self.rows):
            return
        done = [row for row in self.rows if row.finish_reason is not None]
        self.rows = [self.rows[i] for i in keep]
        self.kv.select(keep)
        for row in done:
            try:
                self._send_final(row)
            except Exception as exc:  # one final that cannot be sent must not keep the others' from going out
                log.exception("final of request %s failed", row.handle.request.request_id)
                if not row.handle.done.is_set():  # nor leave its task waiting for it
                    try:
                        self._fail_unadmitted(row.handle, "engine_error", f"ending the request failed: {exc}")
                    except Exception:
                        log.exception("error final of request %s failed", row.handle.request.request_id)

    def _send_final(self, row):
        """The row left the batch: its text's last piece goes out, and once its request's every row has ended, the
        request's final (a row that fails here fails its request's rows still running)."""
        handle = row.handle
        row.ended = True
        last = all(choice.ended for choice in handle.rows)
        if row.finish_reason == SUPERSEDED:  # the current attempt, on another node, owns the stream and the end
            if last:
                self.streams.superseded(handle.request.request_id, handle.request.attempt)
                if row.key is not None:
                    self.store.release(row.key)
                handle.result = superseded_result(handle.request.attempt)
                handle.done.set()
            return
        if row.finish_reason != "error":
            try:
                tail = row.text.finish()
                if tail or row.logprobs:
                    self._send_text(row, tail)
            except Exception as exc:  # the row had ended well; its text's last piece failed: it ends in error
                row.finish_reason = None
                self._row_fault(row, "detokenize_error", f"turning the tokens into text failed: {exc}")
        if not last:
            return
        if row.key is not None:
            self.store.release(row.key)
        if not handle.done.is_set():  # (set when a final of this request failed to go out: _retire)
            self._deliver(handle, request_final(handle, time.perf_counter()))

    def _fail_unadmitted(self, handle, code, message):
        self._deliver(handle, unadmitted_final(handle.submitted, "error", FinalError(code, message)))

    def _deliver(self, handle, final):
        """Sends ``final`` (a Final) for the handle's attempt to its stream; the waiting task gets its JSON."""
        final = final.with_attempt(handle.request.attempt).to_json()
        try:
            self.streams.final(handle.request.request_id, final)
            self.streams.flush()  # in Redis before the task hears of it (inside a step's held writes too)
        finally:
            handle.result = final
            handle.done.set()
