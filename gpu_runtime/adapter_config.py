"""What a PEFT LoRA ``adapter_config.json`` means for serving, read the way PEFT 0.21.2 reads it (no torch).

- Missing fields take ``LoraConfig``'s defaults (r=8, lora_alpha=8, use_rslora=False, ...); missing
  target_modules take PEFT's list for Llama-family models, q_proj and v_proj.
- Which linear layers the adapter wraps (``check_target_module_exists``): target_modules as a string is a regex
  fullmatched against the full module name (``model.layers.3.self_attn.q_proj``); as a list, an entry matches the
  name itself or its last dotted parts. exclude_modules follows the same two rules. layers_to_transform, with
  layers_pattern or without, narrows a list of targets to those layers.
- Each wrapped layer's rank and alpha: the first rank_pattern / alpha_pattern key that matches the end of the full
  module name (``get_pattern_key``: ``(.*\\.)?(key)$``), else r / lora_alpha. Its scaling is alpha / r, or
  alpha / sqrt(r) with use_rslora.
- Options that change the forward pass in a way the slot LoRA does not compute are refused by name; options that do
  not touch the forward pass of a loaded adapter are ignored, as PEFT ignores them.

Every regex comes from a tenant, so each is bounded before it runs: short, at most a few repetitions and none
nested inside another, so matching a module name cannot backtrack for long.
"""

import math
import re
import re._parser as regex_parser
from dataclasses import dataclass

DEFAULT_RANK = 8  # LoraConfig.r
DEFAULT_ALPHA = 8  # LoraConfig.lora_alpha
DEFAULT_TARGETS = ("q_proj", "v_proj")  # PEFT's target_modules for llama, mistral, qwen2 when none are given
ALL_LINEAR = "all-linear"  # PEFT's shorthand: every linear layer but the output layer
# init_lora_weights values that only choose the starting A/B: a loaded adapter's weights replace them.
PLAIN_INITS = (True, False, "gaussian", "eva", "orthogonal")
# The largest alpha / r served: past it the scaled delta overflows the weights' dtype and swamps the base layer.
MAX_LORA_SCALING = 1e4
MAX_REGEX_CHARS = 256
# A regex with k repetitions can take ~len(name)**k steps on a module name; these bounds keep an adapter's
# matching (every pattern against every module name) well under a second.
MAX_REGEX_REPEATS = 3  # target_modules, exclude_modules
MAX_KEY_REPEATS = 2  # a rank_pattern / alpha_pattern key or layers_pattern entry, with PEFT's wrapper around it
MAX_PATTERN_KEYS = 64
MAX_LAYERS_PATTERNS = 8

# Options that change the math; each is refused when set (truthy), with what it does.
REFUSED_OPTIONS = {
    "use_dora": "DoRA (use_dora) rescales every weight by a learnt magnitude vector, which is not served; train "
                "plain LoRA or merge the DoRA adapter into a full model",
    "modules_to_save": "modules_to_save replaces whole layers (e.g. lm_head, embed_tokens) with trained copies, "
                       "which are not served; train without modules_to_save",
    "lora_bias": "lora_bias adds a trained bias to lora_B, which is not served",
    "trainable_token_indices": "trainable_token_indices trains new token embeddings, which are not served",
    "target_parameters": "target_parameters puts LoRA on raw parameters instead of linear layers, which is not "
                         "served",
    "layer_replication": "layer_replication stacks copies of decoder layers, which is not served",
    "alora_invocation_tokens": "activated LoRA (alora_invocation_tokens) is not served",
    "velora_config": "VeLoRA (velora_config) is not served",
    "monteclora_config": "MonteCLoRA (monteclora_config) is not served",
    "use_bdlora": "block-diagonal LoRA (use_bdlora) is not served",
    "arrow_config": "Arrow routing (arrow_config) is not served",
    "kasa_config": "KaSA (kasa_config) is not served",
    "use_qalora": "QA-LoRA (use_qalora) is not served",
    "megatron_config": "Megatron-parallel LoRA layers (megatron_config) are not served",
}
# Fields that do not change a loaded adapter's forward pass on a Llama-family base (lora_dropout acts in training;
# fan_in_fan_out only applies to Conv1D layers and PEFT turns it off for nn.Linear; the sub-configs act only with
# the init_lora_weights that selects them, and those are refused).
IGNORED_FIELDS = frozenset({
    "peft_type", "task_type", "auto_mapping", "peft_version", "base_model_name_or_path", "revision",
    "inference_mode", "lora_dropout", "fan_in_fan_out", "runtime_config", "megatron_core", "qalora_group_size",
    "loftq_config", "eva_config", "corda_config", "lora_ga_config", "ensure_weight_tying", "init_lora_weights",
})
SERVED_FIELDS = frozenset({"r", "lora_alpha", "use_rslora", "target_modules", "exclude_modules", "bias",
                           "layers_to_transform", "layers_pattern", "rank_pattern", "alpha_pattern"})
# What training keeps when it continues from an adapter: the fields that say which layers it wraps and how.
SHAPE_FIELDS = ("r", "lora_alpha", "use_rslora", "target_modules", "exclude_modules", "layers_to_transform",
                "layers_pattern", "rank_pattern", "alpha_pattern")


class AdapterRejected(ValueError):
    def __init__(self, code, message):
        super().__init__(message)
        self.code = code
        self.message = message

    def to_json(self):
        return {"code": self.code, "message": self.message}


@dataclass(frozen=True)
class ModuleLoRA:
    """One wrapped linear layer: its rank, alpha and the factor its delta is scaled by."""

    rank: int
    alpha: float
    scaling: float


def is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def positive_number(value):
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value) and value > 0
    except OverflowError:  # an integer too large for a float
        return False


def shown(value):
    """A config value as a refusal quotes it: short, whatever its size."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def peft_module_names(base):
    """Every module name of a Llama-family causal LM as PEFT walks them, with (layer, module) for the linear
    layers the slot LoRA wraps and None for the rest."""
    names = [("", None), ("model", None), ("model.embed_tokens", None), ("model.layers", None)]
    for layer in range(base.num_layers):
        prefix = f"model.layers.{layer}"
        names.append((prefix, None))
        for block in ("self_attn", "mlp"):
            names.append((f"{prefix}.{block}", None))
            names.extend((f"{prefix}.{block}.{module}", (layer, module))
                         for module, (where, _, _) in base.modules.items() if where == block)
        names.extend((f"{prefix}.{part}", None) for part in ("mlp.act_fn", "input_layernorm",
                                                             "post_attention_layernorm"))
    names.extend([("model.norm", None), ("model.rotary_emb", None), ("lm_head", None)])
    return names


def _repeats(parsed):
    """(repetitions in a parsed regex, whether one sits inside another)."""
    count, nested = 0, False
    for op, arg in parsed:
        children = []
        if op in (regex_parser.MAX_REPEAT, regex_parser.MIN_REPEAT, regex_parser.POSSESSIVE_REPEAT):
            low, high, body = arg
            inner, inner_nested = _repeats(body)
            if high > 1:
                count += 1
                nested = nested or inner > 0
            count += inner
            nested = nested or inner_nested
            continue
        if op == regex_parser.SUBPATTERN:
            children = [arg[-1]]
        elif op == regex_parser.BRANCH:
            children = arg[1]
        elif op in (regex_parser.ASSERT, regex_parser.ASSERT_NOT):
            children = [arg[1]]
        elif op == regex_parser.GROUPREF_EXISTS:
            children = [c for c in arg[1:] if c is not None]
        for child in children:
            inner, inner_nested = _repeats(child)
            count += inner
            nested = nested or inner_nested
    return count, nested


def checked_regex(pattern, what, max_repeats=MAX_REGEX_REPEATS):
    """``pattern`` compiled, once it is known to match module names quickly; else AdapterRejected."""
    if not isinstance(pattern, str) or not pattern or len(pattern) > MAX_REGEX_CHARS:
        raise AdapterRejected("bad_pattern", f"{what} must be a non-empty regex of at most {MAX_REGEX_CHARS} "
                              "characters.")
    try:
        compiled = re.compile(pattern)
        count, nested = _repeats(regex_parser.parse(pattern))
    except (re.error, RecursionError, OverflowError):
        raise AdapterRejected("bad_pattern", f"{what} is not a valid regex.") from None
    if nested or count > max_repeats:
        raise AdapterRejected("bad_pattern", f"{what} is too complex: at most {max_repeats} "
                              "repetitions (*, +, {m,n}) in all and none inside another.")
    return compiled


def _names_rule(value, field):
    """A predicate on full module names for target_modules / exclude_modules: a string is a regex fullmatch, a
    list matches a name exactly or by its last dotted parts. Also returns the list's entries (None for a regex)."""
    if isinstance(value, str):
        compiled = checked_regex(value, f"{field} {shown(value)}")
        return (lambda name: compiled.fullmatch(name) is not None), None
    if (not isinstance(value, list) or not value or len(value) > MAX_PATTERN_KEYS
            or not all(isinstance(t, str) and 0 < len(t) <= MAX_REGEX_CHARS for t in value)):
        raise AdapterRejected(f"bad_{field}", f"{field} must be a regex or a non-empty list of module names.")
    entries = frozenset(value)
    return (lambda name: name in entries or any(name.endswith(f".{t}") for t in entries)), sorted(entries)


def _layer_rule(config, base):
    """The layers a list of targets is narrowed to (None: every layer) and the regexes that find a name's layer
    index (None: PEFT's default, the first number after a dotted part)."""
    layers = config.get("layers_to_transform")
    pattern = config.get("layers_pattern")
    if layers is None:
        if pattern:
            raise AdapterRejected("bad_layers", "layers_pattern needs layers_to_transform.")
        return None, None
    layers = [layers] if is_int(layers) else layers
    if (not isinstance(layers, list) or not layers or len(set(map(repr, layers))) != len(layers)
            or not all(is_int(i) and 0 <= i < base.num_layers for i in layers)):
        raise AdapterRejected("bad_layers", "layers_to_transform must be a layer index or a non-empty list of "
                              f"distinct layer indexes within 0..{base.num_layers - 1}.")
    if pattern is None or pattern == [] or pattern == "":
        return frozenset(layers), None
    patterns = [pattern] if isinstance(pattern, str) else pattern
    if (not isinstance(patterns, list) or len(patterns) > MAX_LAYERS_PATTERNS
            or not all(isinstance(p, str) and 0 < len(p) <= MAX_REGEX_CHARS for p in patterns)):
        raise AdapterRejected("bad_layers", f"layers_pattern must be a name or a list of at most "
                              f"{MAX_LAYERS_PATTERNS} names.")
    finders = [checked_regex(rf"(?:^|.*?\.){p}\.(?P<idx>\d+)\.", f"layers_pattern {shown(p)}", MAX_KEY_REPEATS)
               for p in patterns]
    return frozenset(layers), finders


_DEFAULT_LAYER_FINDER = re.compile(r".*?\.[^.]*\.(?P<idx>\d+)\.")


def _in_layers(name, layers, finders):
    for finder in finders or [_DEFAULT_LAYER_FINDER]:
        match = finder.match(name)
        if match is not None:
            return int(match.group("idx")) in layers
    return False


def _pattern(config, field, valid, message):
    """rank_pattern / alpha_pattern as [(compiled key matcher, key, value)] in the file's order."""
    pattern = config.get(field)
    if pattern is None:
        return []
    if not isinstance(pattern, dict) or len(pattern) > MAX_PATTERN_KEYS:
        raise AdapterRejected(f"bad_{field}", f"{field} must map module name patterns to values "
                              f"(at most {MAX_PATTERN_KEYS}).")
    out = []
    for key, value in pattern.items():
        if not valid(value):
            raise AdapterRejected(f"bad_{field}", f"{field}[{shown(key)}]={shown(value)}: {message}.")
        if len(key) > MAX_REGEX_CHARS:
            raise AdapterRejected("bad_pattern", f"{field} keys must be at most {MAX_REGEX_CHARS} characters.")
        out.append((checked_regex(rf"(.*\.)?({key})$", f"{field} key {shown(key)}", MAX_KEY_REPEATS), key, value))
    return out


def _pattern_value(pattern, name, default):
    """PEFT's get_pattern_key: the value of the first key matching the end of the full module name."""
    return next((value for compiled, _, value in pattern if compiled.match(name)), default)


def check_options(config):
    """Refuses every option that would make the served math differ from PEFT's, naming it."""
    for option, why in REFUSED_OPTIONS.items():
        if config.get(option):
            raise AdapterRejected("unsupported_option", f"{option}={shown(config[option])}: {why}.")
    init = config.get("init_lora_weights", True)
    if not any(init is plain or (isinstance(plain, str) and init == plain) for plain in PLAIN_INITS):
        raise AdapterRejected("unsupported_option", f"init_lora_weights={shown(init)}: PEFT re-initialises with it "
                              "when it loads the adapter, which changes the base layers' weights (PiSSA, OLoRA, "
                              "CorDA, LoftQ, LoRA-GA) or selects a LoRA variant (MiCA); neither is served. Save the "
                              "adapter with path_initial_model_for_weight_conversion to get plain LoRA weights.")
    bias = config.get("bias", "none")
    if bias not in ("none", "all", "lora_only"):
        raise AdapterRejected("unsupported_option", f"bias={shown(bias)} must be 'none', 'all' or 'lora_only'.")
    if not isinstance(config.get("use_rslora", False), bool):
        raise AdapterRejected("invalid_config", "use_rslora must be true or false.")
    unknown = sorted(k for k, v in config.items() if k not in SERVED_FIELDS | IGNORED_FIELDS | set(REFUSED_OPTIONS)
                     and v not in (None, False, "", [], {}))
    if unknown:
        raise AdapterRejected("unsupported_option", f"{', '.join(shown(k) for k in unknown[:5])}: unknown LoRA "
                              "option(s); this server serves PEFT 0.21's LoraConfig and cannot tell whether they "
                              "change the adapter's math.")


def resolve_modules(config, base, *, max_rank):
    """{(layer, module): ModuleLoRA} for every linear layer the adapter wraps, as PEFT would wrap them."""
    check_options(config)
    rank = config.get("r", DEFAULT_RANK)
    if not is_int(rank) or not 1 <= rank <= max_rank:
        raise AdapterRejected("bad_rank", f"rank r={shown(rank)} must be an integer in 1..{max_rank}.")
    alpha = config.get("lora_alpha", DEFAULT_ALPHA)
    if not positive_number(alpha):
        raise AdapterRejected("bad_alpha", f"lora_alpha={shown(alpha)} must be a positive finite number.")
    rslora = config.get("use_rslora", False)
    targets = config.get("target_modules")
    if isinstance(targets, str) and (config.get("layers_to_transform") is not None
                                     or config.get("layers_pattern") is not None):
        raise AdapterRejected("bad_layers", "layers_to_transform and layers_pattern cannot be used with a regex "
                              "target_modules (PEFT refuses the combination).")
    if targets is None:
        targets = list(DEFAULT_TARGETS)
    elif isinstance(targets, str) and targets.lower() == ALL_LINEAR:
        targets = list(base.modules)
    targeted, entries = _names_rule(targets, "target_modules")
    excluded = config.get("exclude_modules")
    excluded = _names_rule(excluded, "exclude_modules")[0] if excluded else (lambda name: False)
    layers, finders = _layer_rule(config, base)
    ranks = _pattern(config, "rank_pattern", lambda v: is_int(v) and 1 <= v <= max_rank,
                     f"ranks must be integers in 1..{max_rank}")
    alphas = _pattern(config, "alpha_pattern", positive_number, "alphas must be positive finite numbers")
    modules, used, others = {}, set(), []
    for name, key in peft_module_names(base):
        if not targeted(name):
            continue
        if entries is not None:
            used.update(t for t in entries if name == t or name.endswith(f".{t}"))
        if excluded(name):
            continue
        if key is None:
            others.append(name)
            continue
        if layers is not None and name not in (entries or ()) and not _in_layers(name, layers, finders):
            continue
        r, a = _pattern_value(ranks, name, rank), _pattern_value(alphas, name, alpha)
        scaling = a / math.sqrt(r) if rslora else a / r
        if scaling > MAX_LORA_SCALING:
            raise AdapterRejected("bad_alpha", f"lora_alpha={shown(a)} with r={r} scales {name}'s update by "
                                  f"{scaling:.3g}; the scaling must be at most {MAX_LORA_SCALING:g}.")
        modules[key] = ModuleLoRA(r, float(a), scaling)
    unknown = sorted(set(entries or ()) - used)
    if unknown:
        raise AdapterRejected("unknown_target_modules", f"target modules {', '.join(unknown)} do not exist in "
                              f"{base.name}; choose from {', '.join(base.modules)}.")
    if others:
        raise AdapterRejected("unsupported_target_modules", f"target_modules matches {', '.join(others[:3])}: "
                              f"only the decoder layers' linear layers ({', '.join(base.modules)}) are served.")
    if not modules:
        raise AdapterRejected("bad_target_modules", "target_modules, exclude_modules and layers_to_transform leave "
                              f"no layer of {base.name} to adapt.")
    return modules


def shape_fields(config):
    """The config fields that say which layers an adapter wraps and with which rank and alpha, PEFT's defaults
    filled in: what a trained continuation of the adapter saves again."""
    defaults = {"r": DEFAULT_RANK, "lora_alpha": DEFAULT_ALPHA, "use_rslora": False,
                "target_modules": list(DEFAULT_TARGETS), "exclude_modules": None, "layers_to_transform": None,
                "layers_pattern": None, "rank_pattern": {}, "alpha_pattern": {}}
    return {name: config[name] if config.get(name) is not None else defaults[name] for name in SHAPE_FIELDS}
