"""Fine-tuning on the resident base (VAJRA paper 4.3, Algorithm 3; the engine thread shares: gpu_runtime.engine).

A job's trainable LoRA pairs live beside the engine's slot buffers and run through the same layer wrappers
(gpu_runtime.lora) on the same frozen base weights: no second copy of the base, only A/B require grad. The
engine thread owns the model, so a ``TrainingRun`` never runs by itself: the engine calls ``micro_step()``
between inference steps (inference first, gpu_runtime.engine), and everything slow that is not a forward or
backward pass (reading the dataset, tokenizing, fetching weights, writing checkpoints) happens on the job's
Celery task thread (``prepare`` and ``drive`` below).

Merge rule (Algorithm 3's MergeAdapters): training an adapter that has a version continues from that
version's A/B (same layers, ranks, alphas and scaling: its config's layers_to_transform, rank_pattern,
alpha_pattern and use_rslora are saved again with the trained pair) and the new version is the trained pair, so
MergeAdapters(A_old, A_train) = A_train warm-started from A_old. A new adapter starts as PEFT starts one:
A Kaiming-uniform, B zero, so its delta is zero before the first step.

Loss: token cross-entropy on the answer only (assistant turns of chat records, the completion of
prompt/completion records, each with its end token), averaged over the optimizer step's answer tokens, so
gradient accumulation over micro-batches equals one big batch.

Learning rate: each optimizer step runs at the job's schedule's rate for that step
(gpu_runtime.training_spec ``Hyperparameters.learning_rate_at``: constant, linear or cosine after a linear warmup),
set on the optimizer just before the step and reported with it.

Validation: a job with a validation file measures the loss of every validation record (the same answer-token
cross-entropy, no gradients, dropout off) after each epoch's last step, a micro-batch per engine turn like the
training itself, and reports it as the step's ``eval_loss``.

Cancel: a cancelled job writes a checkpoint of where it got to (unless its last step was just written), so the
weights it trained stay downloadable like any checkpoint.

Metering: each optimizer step reports gradients = trainable elements x the tokens of the step's records
(gpu_runtime.training_spec ``training_gradients``: the same however the step is split into micro-batches), its
tokens, forward+backward (+ optimizer) ms and loss, keyed by (job, step). Checkpoints (weights + AdamW state,
safetensors, never pickle) go to ``<output_uri>/checkpoints/step-<n>/`` every ``checkpoint_every`` steps; a
redelivered job resumes after the last complete one and re-reports the steps after it under the same keys, which the
control plane ignores, so no step is billed twice. Data order is a permutation per epoch from the seed, so
a resumed job sees the same batches.
"""

import logging
import math
import queue
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .adapter_config import ModuleLoRA
from .answer_loss import answer_loss
from .base_model import use_torch_threads
from .lora import adapter_weights_from_tensors
from .pausable import Pausable
from .step_clock import smoothed
from .training_checkpoints import Checkpoint, last_checkpoint, read_checkpoint, write_checkpoint
from .training_data import IGNORE, load_examples
from .training_spec import TrainingFailed, training_gradients

log = logging.getLogger("vajra.runtime.trainer")


def peft_name(layer, module):
    block = "mlp" if module in {"gate_proj", "up_proj", "down_proj"} else "self_attn"
    return f"base_model.model.model.layers.{layer}.{block}.{module}"


def settle(tensor):
    """Waits for the work queued on ``tensor``'s CUDA stream before a pass pauses, so the time it took is the pass's
    (its metered compute) and not left to run under the next inference step's clock; nothing to wait for on a CPU."""
    if tensor.is_cuda:
        torch.cuda.current_stream(tensor.device).synchronize()


class TrainableLoRA:
    """The job's A [r, in] / B [out, r] per (layer, module), fp32 parameters on the model's device.

    A new adapter wraps ``targets`` in every layer with one rank and alpha; one trained on from an adapter takes
    its ``modules`` ((layer, module) -> adapter_config.ModuleLoRA) and its config's ``shape`` fields."""

    def __init__(self, facts, *, rank, alpha, targets, device, seed, init=None, dropout=0.0, modules=None,
                 shape=None):
        if modules is None:
            modules = {(layer, module): ModuleLoRA(rank, float(alpha), float(alpha) / rank)
                       for layer in range(facts.num_layers) for module in targets}
        self.rank = max(m.rank for m in modules.values())
        self.alpha, self.targets = float(alpha), tuple(sorted({module for _, module in modules}))
        self.shape = dict(shape or {})
        self.scaling = {key: m.scaling for key, m in modules.items()}
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        generator = torch.Generator().manual_seed(seed)
        self.pairs = {}
        for (layer, module), lora in sorted(modules.items()):
            _, fan_in, fan_out = facts.modules[module]
            if init is not None and (layer, module) in init:
                A, B = (t.detach().to(torch.float32).clone() for t in init[(layer, module)])
            else:
                A = torch.empty(lora.rank, fan_in)
                nn.init.kaiming_uniform_(A, a=math.sqrt(5), generator=generator)
                B = torch.zeros(fan_out, lora.rank)
            self.pairs[(layer, module)] = (nn.Parameter(A.to(device)), nn.Parameter(B.to(device)))

    def parameters(self):
        return [p for pair in self.pairs.values() for p in pair]

    def numel(self):
        return sum(p.numel() for p in self.parameters())

    def tensors(self):
        """PEFT names -> CPU tensors (a snapshot: safe to write while training goes on)."""
        out = {}
        for (layer, module), (A, B) in self.pairs.items():
            prefix = peft_name(layer, module)
            out[f"{prefix}.lora_A.weight"] = A.detach().to("cpu", copy=True).contiguous()
            out[f"{prefix}.lora_B.weight"] = B.detach().to("cpu", copy=True).contiguous()
        return out

    def peft_config(self, base_model):
        config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model,
                  "r": self.rank, "lora_alpha": self.alpha, "lora_dropout": 0.0, "target_modules": list(self.targets),
                  "bias": "none", "fan_in_fan_out": False, "inference_mode": True}
        return {**config, **self.shape}  # an adapter trained on from another keeps that one's layers and patterns


@dataclass
class TrainingRun:
    """One job as the engine thread sees it; ``events`` carries its reports to the job's task thread."""

    spec: object
    hp: object
    model: object
    pool: object
    lora: TrainableLoRA
    examples: list
    validation: list = field(default_factory=list)  # validation Examples: an eval loss after each epoch
    step: int = 0  # optimizer steps done
    total_steps: int = 0
    started_step: int = 0  # where this run started (a resumed job: its last checkpoint)
    micro_steps: int = 0
    events: queue.Queue = field(default_factory=queue.Queue)
    finished: bool = False
    optimizer: object = None
    _chunks: list = field(default_factory=list)
    _micro: int = 0
    _step_targets: int = 0
    _step_tokens: int = 0
    _step_loss: float = 0.0
    _step_ms: float = 0.0
    _perm: tuple = (None, None)
    _forwarding: Pausable = None  # the micro-batch's forward pass while it is paused
    _should_yield: object = None  # what the forward pass asks at each layer (the engine's, at the last call)
    _forward_ms: float = 0.0  # the forward pass under way: its compute so far, over its calls
    _pending: list = None  # a micro-batch between its forward pass and the end of its backward pass
    _eval: list = None  # [next validation record, loss sum, answer tokens] while the epoch's eval runs
    _checkpointed: int = 0  # the last step written as a checkpoint
    paused: int = 0  # passes paused for inference (resumed later, nothing lost)
    forward_ms: float = None  # moving average of a whole forward pass's compute
    micro_ms: float = None  # moving average of a whole micro-batch's compute (forward and backward, over its calls)
    _micro_ms: float = 0.0  # the micro-batch under way: its compute so far
    top_ms: float = None  # moving average of one piece of the forward's top (gpu_runtime.answer_loss)

    @property
    def next_work_ms(self):
        """How long the next call may hold the engine before it can give way: a piece of the forward's top when no
        backward is pending (None while unknown), else nothing worth waiting for (one layer)."""
        return self.top_ms if self._pending is None else 0.0
    eval_ms: float = 0.0  # validation passes (not metered: no gradients)
    last_loss: float = None  # the last reported step's training loss
    last_eval_loss: float = None

    def __post_init__(self):
        self.optimizer = torch.optim.AdamW(self.lora.parameters(), lr=self.hp.learning_rate, weight_decay=0.0)
        self.total_steps = self.hp.total_steps(len(self.examples))
        self.steps_per_epoch = math.ceil(len(self.examples) / self.hp.batch_size)
        self.trainable = self.lora.numel()

    @property
    def job_id(self):
        return self.spec.job_id

    def _batch(self, step):
        epoch, index = divmod(step, self.steps_per_epoch)
        if self._perm[0] != epoch:
            generator = torch.Generator().manual_seed(self.hp.seed * 1000 + epoch)
            self._perm = (epoch, torch.randperm(len(self.examples), generator=generator).tolist())
        chosen = self._perm[1][index * self.hp.batch_size:(index + 1) * self.hp.batch_size]
        return [self.examples[i] for i in chosen]

    def micro_step(self, should_yield=None):
        """Works on one micro-batch (engine thread only); ends the optimizer step after the step's last one.

        A micro-batch is a forward pass, then a backward pass one decoder layer at a time: every layer's input
        is cut from the graph (``detach``) in the forward pass, so the backward can stop between layers and go
        on at the next call, with nothing lost. ``should_yield`` (the engine: "an inference request is
        waiting") is asked at every layer, forward and backward, before each piece of the forward's top (the
        vocabulary projection and loss: gpu_runtime.answer_loss) and between the forward and the backward: a yes
        pauses the pass there and it goes on from there at the next call. The forward pass runs on a thread of
        its own that waits while it is paused (gpu_runtime.pausable: never beside the engine thread), so its
        stack survives the pause. An arriving request waits for one layer's work or one piece of the top, not a
        micro-step, and no compute is thrown away.
        Returns True when a micro-batch was finished by this call."""
        if self.finished:
            return False
        if self._eval is not None:
            return self._eval_micro_batch()
        started = time.perf_counter()
        try:
            if self._pending is None:
                if self._forwarding is None:
                    self._forwarding = Pausable(self._forward, name=f"train-forward-{self.job_id}")
                self._should_yield = should_yield
                try:
                    finished = self._forwarding.resume()
                except BaseException:
                    self.end_paused_pass()
                    raise
                finally:
                    self._forward_ms += (time.perf_counter() - started) * 1000
                if not finished:
                    self.paused += 1
                    return False
                self._forwarding = None
                ms, self._forward_ms = self._forward_ms, 0.0
                self.forward_ms = smoothed(self.forward_ms, ms)
                if should_yield is not None and should_yield():  # the backward goes on at the next call
                    self.paused += 1
                    return False
            done = self._backward(should_yield)
        finally:
            ms = (time.perf_counter() - started) * 1000
            self._step_ms += ms
            self._micro_ms += ms
        if not done:
            self.paused += 1
            return False
        self._micro += 1
        self.micro_steps += 1
        self.micro_ms = smoothed(self.micro_ms, self._micro_ms)
        self._micro_ms = 0.0
        if self._micro == len(self._chunks):
            rate = self.hp.learning_rate_at(self.step + 1, self.total_steps)
            for group in self.optimizer.param_groups:
                group["lr"] = rate
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.step += 1
            self._chunks = []
            if self.validation and (self.step % self.steps_per_epoch == 0 or self.step >= self.total_steps):
                self._eval = [0, 0.0, 0]  # the epoch ends: its step is reported with the eval loss
            else:
                self._report_step()
        return True

    def _eval_micro_batch(self):
        """The validation loss on the next micro-batch of the validation records; after the last, the step
        that ended the epoch is reported with it. Forward only, with no graph: nothing to pause or throw away."""
        index, loss_sum, targets = self._eval
        chunk = self.validation[index:index + self.hp.micro_batch_size]
        started = time.perf_counter()
        self.pool.groups = []
        self.pool.trainable = self.lora
        self.lora.dropout.eval()
        try:
            with torch.no_grad():
                ids, labels, mask = self._tensors(chunk)
                hidden = self.model.model(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
                answer = labels[:, 1:]
                rows = answer != IGNORE
                logits = self.model.lm_head(hidden[:, :-1][rows])
                loss_sum += float(F.cross_entropy(logits.float(), answer[rows], reduction="sum"))
                targets += int(rows.sum())
        finally:
            self.lora.dropout.train()
            self.pool.trainable = None
        self.eval_ms += (time.perf_counter() - started) * 1000
        index += len(chunk)
        if index < len(self.validation):
            self._eval = [index, loss_sum, targets]
            return True
        self._eval = None
        self.last_eval_loss = round(loss_sum / max(1, targets), 6)
        self._report_step(eval_loss=self.last_eval_loss)
        return True

    def _tensors(self, chunk):
        """(ids, labels, attention mask) of a micro-batch, padded on the right, on the model's device."""
        device = next(self.model.parameters()).device
        width = max(len(e.ids) for e in chunk)
        ids = torch.tensor([e.ids + [0] * (width - len(e.ids)) for e in chunk], device=device)
        labels = torch.tensor([e.labels + [IGNORE] * (width - len(e.labels)) for e in chunk], device=device)
        mask = torch.tensor([[1] * len(e.ids) + [0] * (width - len(e.ids)) for e in chunk], device=device)
        return ids, labels, mask

    def _forward(self, pausable):
        """The forward pass, its loss and the loss's gradient at the final hidden states
        (gpu_runtime.answer_loss), on the Pausable's thread: at each decoder layer and each piece of the top it
        pauses when ``_should_yield`` says so, handing the model back as inference uses it (no trainable pair in
        the pool, these hooks silent) until it goes on. The backward from the final norm down is
        ``_backward``'s, layer by layer."""
        use_torch_threads()  # a thread of its own: the node's thread count, not every core
        if not self._chunks:
            batch = self._batch(self.step)
            size = self.hp.micro_batch_size
            self._chunks = [batch[i:i + size] for i in range(0, len(batch), size)]
            self._micro, self._step_loss, self._step_ms = 0, 0.0, 0.0
            self._step_targets = max(1, sum(e.targets for e in batch))
            self._step_tokens = sum(len(e.ids) for e in batch)
        ids, labels, mask = self._tensors(self._chunks[self._micro])
        cuts = []  # per layer: [its input, cut from the graph; its output]
        running = [True]  # the hooks act only on this pass's layers, not on inference's between its pauses

        def give_way():
            check = self._should_yield
            if check is None or not check():
                return
            settle(ids)
            self.pool.trainable, running[0] = None, False
            try:
                pausable.pause()
            finally:
                self.pool.groups = []
                self.pool.trainable, running[0] = self.lora, True

        def cut(module, args):
            if not running[0]:
                return None
            give_way()
            x = args[0].detach().requires_grad_(True)
            cuts.append([x, None])
            return (x, *args[1:])

        def keep(module, args, output):
            if running[0]:
                cuts[-1][1] = output[0] if isinstance(output, tuple) else output

        layers = self.model.model.layers
        hooks = [h for layer in layers for h in (layer.register_forward_pre_hook(cut),
                                                 layer.register_forward_hook(keep))]
        self.pool.groups = []  # no serving adapter on these rows: only the job's pair
        self.pool.trainable = self.lora
        try:
            with torch.enable_grad():
                hidden = self.model.model(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
            loss_sum, grad, piece_ms = answer_loss(self.model.lm_head, hidden.detach(), labels[:, 1:],
                                                   self._step_targets, give_way)
            self.top_ms = smoothed(self.top_ms, piece_ms)
        finally:
            self.pool.trainable = None
            for hook in hooks:
                hook.remove()
        self._step_loss += float(loss_sum) / self._step_targets
        cuts[-1][1] = hidden  # the last layer's backward starts at the final norm's output
        self._pending = [cuts, len(cuts) - 1, grad]  # the next layer whose backward is due, and its output's gradient

    def _backward(self, should_yield):
        """Layer by layer, from where it stopped; at least one layer per call. True when it reached the bottom."""
        cuts, index, grad = self._pending
        while index >= 0:
            x, output = cuts[index]
            output.backward(grad)
            grad = x.grad
            cuts[index] = None  # its activations are not needed any more
            index -= 1
            self._pending[1:] = [index, grad]
            if index >= 0 and should_yield is not None and should_yield():
                settle(grad)
                return False
        self._pending = None
        return True

    def _report_step(self, eval_loss=None):
        loss = self.last_loss = round(self._step_loss, 6)
        metering = {"gradients": training_gradients(self.trainable, self._step_tokens), "micro_batches": self._micro,
                    "tokens": self._step_tokens, "compute_ms": round(self._step_ms, 3), "loss": loss,
                    "learning_rate": self.optimizer.param_groups[0]["lr"]}
        if eval_loss is not None:
            metering["eval_loss"] = eval_loss
        self.events.put(("step", self.step, metering))
        done = self.step >= self.total_steps
        if done or self.step % self.spec.checkpoint_every == 0:
            self._checkpointed = self.step
            self.events.put(("checkpoint" if not done else "done",
                             Checkpoint(self.step, self.lora.tensors(), self.optimizer_tensors(), loss)))
        if done:
            self.finished = True

    def end_paused_pass(self):
        """A forward pass paused mid-way is abandoned: its thread unwinds and ends."""
        if self._forwarding is not None:
            self._forwarding.close()
            self._forwarding = None

    def fail(self, code, message):
        self.finished = True
        self.end_paused_pass()
        self.events.put(("failed", code, message))

    def cancel(self):
        """Ends the run; the steps it trained since its last checkpoint are written as one (engine thread)."""
        self.finished = True
        self.end_paused_pass()
        checkpoint = None
        if self.step > max(self.started_step, self._checkpointed):
            checkpoint = Checkpoint(self.step, self.lora.tensors(), self.optimizer_tensors(), self.last_loss)
        self.events.put(("cancelled", checkpoint))

    # ---- optimizer state as tensors (safetensors, never pickle) ------------------------------------------------
    def optimizer_tensors(self):
        out = {}
        for i, param in enumerate(self.lora.parameters()):
            for key, value in self.optimizer.state.get(param, {}).items():
                out[f"{i}.{key}"] = torch.as_tensor(value).detach().to("cpu", copy=True).contiguous()
        return out

    def load_optimizer(self, tensors):
        for i, param in enumerate(self.lora.parameters()):
            state = {key.split(".", 1)[1]: value.to(param.device) if key.endswith("exp_avg") or
                     key.endswith("exp_avg_sq") else value for key, value in tensors.items()
                     if key.split(".", 1)[0] == str(i)}
            if state:
                self.optimizer.state[param] = state


# ---- the job's task thread ------------------------------------------------------------------------------------
def prepare(spec, *, base, pool, facts, max_rank=64, init_adapter=None):
    """Builds the run off the engine thread: dataset, tokens, the trainable pair (from ``init_adapter``, the
    adapter store's HostAdapter of the current version, or new), and the last checkpoint's weights and
    optimizer state when the job is resumed."""
    hp = spec.hp(max_rank=max_rank)
    tokenizer = base.tokenizer
    eos = base.model.generation_config.eos_token_id
    eos_id = (eos[0] if isinstance(eos, list) else eos) if eos is not None else tokenizer.eos_token_id
    examples = load_examples(spec, tokenizer, eos_id)
    validation = (load_examples(spec, tokenizer, eos_id, uri=spec.validation_uri, what="validation_file")
                  if spec.validation_uri else [])
    rank, alpha, targets = hp.rank, hp.alpha, hp.target_modules
    init = modules = shape = None
    if init_adapter is not None:  # continue from the current version: its shape wins
        facts_in = init_adapter.facts
        rank, alpha, targets = facts_in.rank, facts_in.alpha, facts_in.target_modules
        modules, shape = facts_in.modules, facts_in.shape
        init = init_adapter.weights
    unknown = sorted(set(targets) - set(facts.modules))
    if unknown:
        raise TrainingFailed("unknown_target_modules", f"target modules {unknown} are not in {facts.name}")
    device = next(base.model.parameters()).device
    resume = last_checkpoint(spec)
    if resume is not None:
        saved = read_checkpoint(resume)
        trained = modules or [(layer, module) for layer in range(facts.num_layers) for module in targets]
        init = adapter_weights_from_tensors(saved.tensors, _Facts(trained))
    lora = TrainableLoRA(facts, rank=rank, alpha=alpha, targets=targets, device=device, seed=hp.seed, init=init,
                         dropout=hp.dropout, modules=modules, shape=shape)
    run = TrainingRun(spec, hp, base.model, pool, lora, examples, validation)
    if resume is not None:
        run.load_optimizer(saved.optimizer)
        run.step = run.started_step = run._checkpointed = saved.step
        log.info("training job %s resumes after step %d from %s", spec.job_id, run.step, resume)
    return run


@dataclass(frozen=True)
class _Facts:  # what adapter_weights_from_tensors needs: the (layer, module) pairs to read
    modules: object


def drive(run, *, on_step, on_checkpoint, on_progress, timeout_s=None):
    """The task thread's side of a run: turns the engine's events into reports and files until the run ends.
    Returns the result for ``control.training_finished``."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    started = time.monotonic()
    last_loss = None
    while True:
        wait = None if deadline is None else max(0.1, deadline - time.monotonic())
        try:
            event = run.events.get(timeout=wait)
        except queue.Empty:
            return {"status": "failed", "error": {"code": "timeout", "message": "the training job ran out of time"},
                    "adapter": None, "steps": run.step, "final_loss": last_loss}
        kind = event[0]
        if kind == "step":
            _, step, metering = event
            last_loss = metering["loss"]
            on_step(step, metering)
            elapsed = time.monotonic() - started
            done_here = step - run.started_step
            eta = elapsed / done_here * (run.total_steps - step) if done_here else None
            on_progress({"step": step, "total_steps": run.total_steps, "loss": metering["loss"],
                         "eval_loss": metering.get("eval_loss"), "learning_rate": metering["learning_rate"],
                         "eta_s": None if eta is None else round(eta, 1)})
        elif kind == "checkpoint":
            checkpoint = event[1]
            uri, _ = write_checkpoint(run, checkpoint)
            on_checkpoint(checkpoint.step, uri, checkpoint.loss)
        elif kind == "done":
            checkpoint = event[1]
            _, adapter = write_checkpoint(run, checkpoint, final=True)
            return {"status": "succeeded", "error": None, "adapter": adapter, "steps": checkpoint.step,
                    "final_loss": checkpoint.loss}
        elif kind == "failed":
            return {"status": "failed", "error": {"code": event[1], "message": event[2]}, "adapter": None,
                    "steps": run.step, "final_loss": last_loss}
        elif kind == "cancelled":
            if event[1] is not None:  # where it got to, kept like any checkpoint
                uri, _ = write_checkpoint(run, event[1])
                on_checkpoint(event[1].step, uri, event[1].loss)
            return {"status": "cancelled", "error": None, "adapter": None, "steps": run.step, "final_loss": last_loss}
