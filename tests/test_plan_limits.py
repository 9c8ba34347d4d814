"""Quotas come from the tenant's plan (billing.plans.plan_limits), and every bad sampling parameter or prompt that
cannot fit the context is refused on the web: a 400 (429 for concurrency) naming the field and the limit, with
the database unchanged and no task sent (the Celery app's send_task spied on, after real commits). Prompts are
counted with the real SmolLM2 tokenizer and chat template from the model store, as the runtime counts them."""

import json
import subprocess
import sys

import pytest
from django.test import Client

from adapters.models import BaseModel
from adapters.prompt_tokens import prompt_tokens
from serving.models import InferenceRequest
from tests.factories import create_key, make_node, make_request, put_on_plan
from tests.helpers import assert_error

pytestmark = pytest.mark.django_db(transaction=True)
BASE = "smollm2-135m-instruct"
INFER, CHAT, COMPLETIONS = f"/v1/models/{BASE}/infer", "/v1/chat/completions", "/v1/completions"

@pytest.fixture
def base(db):
    return BaseModel.objects.create(name=BASE, context_length=2048)


@pytest.fixture
def node(base):
    return make_node("n1", base=BASE, slots=4)


@pytest.fixture
def alice_api(alice, acme):
    return Client(headers={"Authorization": f"Bearer {create_key(alice, acme)[1]}"})


@pytest.fixture
def charlie_api(charlie, contoso):
    return Client(headers={"Authorization": f"Bearer {create_key(charlie, contoso)[1]}"})


def post(client, path, body):
    return client.post(path, json.dumps(body), content_type="application/json")


def body_for(path, prompt="Hi", **sampling):
    """A request to ``path`` with these sampling parameters, in that endpoint's shape."""
    if path == INFER:
        return {"prompt": prompt, "parameters": sampling}
    if path == CHAT:
        return {"model": BASE, "messages": [{"role": "user", "content": prompt}], **sampling}
    return {"model": BASE, "prompt": prompt, **sampling}


def refused(client, path, body, status, unchanged_db, sent, *, code=None, param=None):
    with unchanged_db():
        error = assert_error(post(client, path, body), status, code=code, param=param)
    assert sent == [], "a refused request sends no task"
    return error


ENDPOINTS = [INFER, CHAT, COMPLETIONS]


# ---- quotas from the plan -------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", ENDPOINTS)
def test_max_tokens_over_the_plans_cap_is_400_and_other_plans_are_not_affected(
        path, acme, alice_api, charlie_api, node, sent, unchanged_db):
    put_on_plan(acme, max_tokens=8)
    param = "parameters.max_tokens" if path == INFER else "max_tokens"
    error = refused(alice_api, path, body_for(path, max_tokens=9), 400, unchanged_db, sent,
                    code="max_tokens_exceeded", param=param)
    assert "max_tokens is 9, over the limit of 8 on the plan 'small'" in error["message"]  # worded alike everywhere
    assert post(alice_api, path, body_for(path, max_tokens=8)).status_code == 200
    assert post(charlie_api, path, body_for(path, max_tokens=9)).status_code == 200, "contoso is on the standard plan"
    assert [args[0]["sampling"]["max_tokens"] for _, args, _, _ in sent] == [8, 9]
    assert InferenceRequest.objects.filter(tenant=acme).get().max_tokens == 8


def test_max_completion_tokens_over_the_plans_cap_names_that_field(acme, alice_api, node, sent, unchanged_db):
    put_on_plan(acme, max_tokens=8)
    error = refused(alice_api, CHAT, body_for(CHAT, max_completion_tokens=9), 400, unchanged_db, sent,
                    code="max_tokens_exceeded", param="max_completion_tokens")
    assert "max_completion_tokens is 9" in error["message"] and "'small'" in error["message"]


@pytest.mark.parametrize("path", ENDPOINTS)
def test_without_max_tokens_the_default_stays_under_a_small_plans_cap(path, acme, alice_api, node, sent):
    put_on_plan(acme, max_tokens=8)
    assert post(alice_api, path, body_for(path)).status_code == 200
    [(_, args, _, _)] = sent
    assert args[0]["sampling"]["max_tokens"] == 8


@pytest.mark.parametrize("path", ENDPOINTS)
def test_concurrency_over_the_plans_limit_is_429_with_retry_after(path, acme, contoso, alice, alice_api, charlie_api,
                                                                  base, node, sent, unchanged_db):
    put_on_plan(acme, max_concurrent_requests=2)
    for i in range(2):
        make_request(acme, base, request_id=f"req_busy{i}", api="infer", node=node, max_tokens=4)
    with unchanged_db():
        response = post(alice_api, path, body_for(path, max_tokens=4))
        error = assert_error(response, 429)
    assert sent == []
    assert response.headers["Retry-After"] == "1"
    assert "limit of 2 concurrent requests on the plan 'small'" in error["message"], error
    make_request(contoso, base, request_id="req_busy_c", api="infer", node=node, max_tokens=4)
    assert post(charlie_api, path, body_for(path, max_tokens=4)).status_code == 200, "contoso's plan allows 16"
    InferenceRequest.objects.filter(pk="req_busy0").update(status=InferenceRequest.SUCCEEDED)
    assert post(alice_api, path, body_for(path, max_tokens=4)).status_code == 200, "one finished: room for one"


def test_rows_answered_but_not_yet_recorded_do_not_hold_the_concurrency_quota(acme, alice, alice_api, base, node,
                                                                              sent, settings):
    """The control plane lags (e.g. reconnecting after a broker restart): a row whose final event is on its stream
    is recorded (billed once) when the quota would refuse, and the request goes through; rows still answering do
    hold it."""
    import redis

    from billing.models import UsageEvent
    from gpu_runtime.streams import StreamWriter

    put_on_plan(acme, max_concurrent_requests=2)
    for i in range(2):
        make_request(acme, base, request_id=f"req_busy{i}", api="infer", node=node, max_tokens=4,
                     status=InferenceRequest.RUNNING)
    writer = StreamWriter(redis.Redis.from_url(settings.REDIS_URL), ttl_seconds=60)
    writer.delta("req_busy0", "Hello")
    writer.final("req_busy0", {"finish_reason": "stop", "attempt": 1, "gpu_ms": 12.0, "error": None,
                               "usage": {"prompt_tokens": 3, "completion_tokens": 1, "cached_tokens": 0},
                               "timings": {"first_token_ms": 20.0, "total_ms": 30.0}})
    writer.delta("req_busy1", "Hel")  # still answering

    assert post(alice_api, INFER, body_for(INFER, max_tokens=4)).status_code == 200
    done = InferenceRequest.objects.get(pk="req_busy0")
    assert done.status == InferenceRequest.SUCCEEDED and done.completion_tokens == 1 and done.gpu_ms == 12.0
    assert UsageEvent.objects.filter(request_id="req_busy0").count() == 1
    assert InferenceRequest.objects.get(pk="req_busy1").status == InferenceRequest.RUNNING
    assert len(sent) == 1
    # now two requests are really in progress: the next one is refused
    assert_error(post(alice_api, INFER, body_for(INFER, max_tokens=4)), 429)
    assert len(sent) == 1 and UsageEvent.objects.count() == 1


def test_the_submit_reads_the_plan_without_a_query_more_than_the_spend_check(acme, alice, base, node, sent,
                                                                             django_assert_num_queries):
    from serving.dispatch import inference_submit
    from tenants.keys import principal_from_key

    put_on_plan(acme, max_tokens=8)
    principal = principal_from_key(create_key(alice, acme)[1])
    sampling = {"temperature": 0.0, "max_tokens": 4, "top_p": 1.0, "top_k": 0, "stop": [], "seed": None}
    inference_submit(principal=principal, base_model=base, prompt="warm", sampling=sampling, api="infer")  # caches
    # one account read (plan limits and spend cap share it; the plan is cached), the up nodes, then BEGIN, lock the
    # tenant (not on SQLite: its BEGIN IMMEDIATE holds the write lock), count its active requests, insert, COMMIT:
    # as many as before plans set the quotas; the price the answer shows (cost_for) comes from that account read too
    from django.db import connection

    from serving.dispatch import cost_for

    with django_assert_num_queries(7 if connection.features.has_select_for_update else 6):
        row = inference_submit(principal=principal, base_model=base, prompt="Hi", sampling=sampling, api="infer")
        assert cost_for(row)["units"] == 1  # a base-model request is cold: 1 unit


# ---- bad sampling parameters ------------------------------------------------------------------------

BAD_SAMPLING = [
    ({"temperature": -0.1}, "temperature", "0"),
    ({"temperature": 2.1}, "temperature", "2"),
    ({"top_p": 0}, "top_p", "(0, 1]"),
    ({"top_p": 1.1}, "top_p", "1"),
    ({"max_tokens": 0}, "max_tokens", "1"),
    ({"max_tokens": 2049}, "max_tokens", "2048"),  # the standard plan's cap
]


@pytest.mark.parametrize("path", ENDPOINTS)
@pytest.mark.parametrize("change, field, limit", BAD_SAMPLING, ids=[f"{f}={v[f]}" for v, f, _ in BAD_SAMPLING])
def test_bad_sampling_is_400_naming_the_field_and_limit(path, change, field, limit, alice_api, node, sent,
                                                        unchanged_db):
    param = f"parameters.{field}" if path == INFER else field  # /infer nests them under "parameters"
    error = refused(alice_api, path, body_for(path, **change), 400, unchanged_db, sent, param=param)
    assert error["message"].startswith((param, field)) and limit in error["message"], error


# ---- prompts past the context, counted in tokens ----------------------------------------------------

def test_the_web_counts_prompts_and_chats_as_the_runtime_does(base):
    from django.conf import settings

    from adapters.prompt_tokens import VARIANT
    from gpu_runtime.base_model import load_tokenizer

    runtime = load_tokenizer(f"{settings.VAJRA_MODEL_STORE}/{BASE}/{VARIANT}")
    prompts = ["Hello", " x" * 300, "héllo wörld 😀 " * 7, "<|im_start|>user\nhi<|im_end|>", "a\n\n  b\t" * 9]
    chats = [[{"role": "user", "content": "Hi"}],
             [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
              {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": " x" * 50 + "😀"}]]
    for prompt in prompts:
        assert prompt_tokens(base, prompt=prompt) == len(runtime(prompt).input_ids), prompt
    for messages in chats:
        ids = runtime.apply_chat_template(messages, add_generation_prompt=True, return_dict=False, tokenize=True)
        ids = ids["input_ids"] if isinstance(ids, dict) else ids
        assert prompt_tokens(base, messages=messages) == len(ids), messages


# a template using what transformers gives templates beyond plain Jinja: {% generation %}, namespace, dict,
# strftime_now, reasoning under its aliases, keys set to None left out, tools, the special tokens
RICH_TEMPLATE = (
    "{{ bos_token }}{% set ns = namespace(n=0) %}{% if tools %}{{ tools | tojson }}{{ dict(a=1) | tojson }}{% endif %}"
    "{% for m in messages %}{% set ns.n = ns.n + 1 %}<|im_start|>{{ m.role }}{% if m.name is defined %} "
    "({{ m.name }}){% endif %}{% if m.thinking is defined %} <think>{{ m.thinking }}</think>{% endif %}\n"
    "{% if m.role == 'assistant' %}{% generation %}{{ m.content }}{% endgeneration %}{% else %}{{ m.content }}"
    "{% endif %}{{ eos_token }}\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant {{ ns.n }} "
    "{{ strftime_now('%Y') | length }}\n{% endif %}")
RICH_CHATS = [[{"role": "system", "content": "Be brief.", "name": None},
               {"role": "user", "content": "Hi", "name": "bo"}],
              [{"role": "user", "content": "héllo 😀"},
               {"role": "assistant", "content": "Hello!", "reasoning_content": "a greeting back"},
               {"role": "user", "content": " x" * 20}]]


def web_store(tmp_path, settings, template=RICH_TEMPLATE, **config):
    """SmolLM2's tokenizer files under a model store of their own, with ``template`` and tokenizer_config.json
    ``config`` changes; the web reads this store from now on."""
    import shutil
    from pathlib import Path

    from adapters.prompt_tokens import VARIANT

    directory = tmp_path / BASE / VARIANT
    directory.mkdir(parents=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "config.json"):
        shutil.copy(Path(settings.VAJRA_MODEL_STORE) / BASE / VARIANT / name, directory / name)
    (directory / "chat_template.jinja").write_text(template)
    if config:
        config_file = directory / "tokenizer_config.json"
        config_file.write_text(json.dumps({**json.loads(config_file.read_text()), **config}))
    settings.VAJRA_MODEL_STORE = str(tmp_path)
    return directory


def test_the_web_renders_chat_templates_as_the_runtime_and_transformers_do(tmp_path, settings):
    from transformers import AutoTokenizer

    from gpu_runtime.base_model import load_tokenizer
    from gpu_runtime.datasets import records_from_jsonl
    from gpu_runtime.tokenizer import Tokenizer
    from gpu_runtime.tool_prompt import prompt_messages
    from gpu_runtime.training_data import encode_record
    from training.tokens import training_tokens

    # the end token as transformers saves it (an AddedToken's fields): its content is the variable's value
    end = {"__type": "AddedToken", "content": "<|im_end|>", "special": True, "lstrip": False, "rstrip": False,
           "normalized": False, "single_word": False}
    directory = web_store(tmp_path, settings, eos_token=end)
    base = BaseModel(name=BASE)
    tools = [{"name": "weather", "description": "Today's weather", "parameters": {"type": "object"}}]
    runtime, theirs = load_tokenizer(directory), AutoTokenizer.from_pretrained(directory)
    assert isinstance(runtime, Tokenizer) and (runtime.bos_token, runtime.eos_token) == ("<|im_start|>", "<|im_end|>")
    for messages in RICH_CHATS:
        for offered in ((), tools):
            rendered, as_tools = prompt_messages(messages, offered, RICH_TEMPLATE)  # as the runtime's _prompt_ids
            ids = [len(t.apply_chat_template(rendered, tools=as_tools, add_generation_prompt=True, tokenize=True,
                                             return_dict=False)) for t in (runtime, theirs)]
            assert ids[0] == ids[1]
            assert prompt_tokens(base, messages=messages, tools=offered) == ids[0], (messages, offered)
    # training records, as the trainer encodes them
    data = "\n".join(json.dumps({"messages": chat}) for chat in [
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi", "name": "bo"},
         {"role": "assistant", "content": "Hello!"}],
        [{"role": "user", "content": "héllo 😀"}, {"role": "assistant", "content": "Hi"},
         {"role": "user", "content": " x" * 20}, {"role": "assistant", "content": "x"}]]).encode()
    records = list(records_from_jsonl(data))
    trained = sum(len(encode_record(runtime, r, runtime.eos_token_id)[0]) for r in records)
    assert trained == sum(len(encode_record(theirs, r, theirs.eos_token_id)[0]) for r in records)
    assert training_tokens(base, data=data) == (trained, True)


def test_the_web_counts_the_whole_prompt_whatever_tokenizer_json_truncates_or_pads(tmp_path, settings):
    from tokenizers import Tokenizer as Backend

    from gpu_runtime.base_model import load_tokenizer

    directory = web_store(tmp_path, settings)
    backend = Backend.from_file(str(directory / "tokenizer.json"))
    backend.enable_truncation(max_length=5)
    backend.enable_padding(length=64, pad_id=0, pad_token="<|endoftext|>")
    backend.save(str(directory / "tokenizer.json"))
    runtime = load_tokenizer(directory)  # transformers' (a padding section), encoding the whole text unpadded
    base = BaseModel(name=BASE)
    for prompt in ("Hi", " x" * 30):
        assert prompt_tokens(base, prompt=prompt) == len(runtime(prompt).input_ids)
    ids = runtime.apply_chat_template(RICH_CHATS[1], add_generation_prompt=True, tokenize=True, return_dict=False)
    assert prompt_tokens(base, messages=RICH_CHATS[1]) == len(ids) > 5


@pytest.mark.parametrize("files", ["named templates", "special_tokens_map.json", "class defaults"])
def test_the_web_does_not_count_a_chat_it_cannot_render_as_the_node_does(tmp_path, settings, files):
    """Named templates (transformers picks one by the request), or special tokens the node's AutoTokenizer takes from
    elsewhere than the config: the web leaves the chat to the character bound (None), a raw prompt still counts."""
    if files == "class defaults":  # a class AutoTokenizer fills in, a template reading a token the config lacks
        directory = web_store(tmp_path, settings, tokenizer_class="GPT2Tokenizer", bos_token=None)
    else:
        directory = web_store(tmp_path, settings)
    if files == "named templates":
        (directory / "additional_chat_templates").mkdir()
        (directory / "additional_chat_templates" / "rag.jinja").write_text("{{ messages | length }}")
    elif files == "special_tokens_map.json":
        (directory / "special_tokens_map.json").write_text(json.dumps({"bos_token": "<|endoftext|>"}))
    base = BaseModel(name=BASE)
    assert prompt_tokens(base, messages=RICH_CHATS[0]) is None
    assert prompt_tokens(base, prompt="Hi there") == 2


def test_counting_a_prompt_loads_no_torch():
    code = ("import django, sys; django.setup(); from adapters.models import BaseModel; "
            "from adapters.prompt_tokens import prompt_tokens; b = BaseModel(name='smollm2-135m-instruct'); "
            "n = prompt_tokens(b, prompt='Hi there'); "
            "c = prompt_tokens(b, messages=[{'role': 'user', 'content': 'Hi'}]); "
            "print(n, c, sorted(m for m in ('torch', 'transformers', 'peft') if m in sys.modules))")
    import os

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "DJANGO_SETTINGS_MODULE": "vajra.settings"})
    assert out.stdout.split() == ["2", "31", "[]"], out.stderr[-2000:]


@pytest.mark.parametrize("path", ENDPOINTS)
def test_a_prompt_one_token_past_the_context_is_refused_in_tokens(path, base, alice_api, node, sent, unchanged_db):
    base.context_length = 64
    base.save()
    param = "messages" if path == CHAT else "prompt"
    words = 64 - (prompt_tokens(base, messages=[{"role": "user", "content": ""}]) if path == CHAT else 0)
    fits, over = " x" * (words - 1), " x" * words  # " x" is one token; few characters: 2 per token, not 8
    assert len(over) < 64 * 8, "under the old character bound: only a token count catches it"
    error = refused(alice_api, path, body_for(path, over, max_tokens=1), 400, unchanged_db, sent,
                    code="context_length_exceeded", param=param)
    assert f"{param} {'are' if path == CHAT else 'is'} 64 tokens and max_tokens is 1: 65 tokens, over the context " \
           "of 64 tokens" in error["message"], error
    assert post(alice_api, path, body_for(path, fits, max_tokens=1)).status_code == 200
    assert len(sent) == 1 and InferenceRequest.objects.count() == 1


def test_max_tokens_counts_against_the_context_too(base, alice_api, node, sent, unchanged_db):
    base.context_length = 64
    base.save()
    error = refused(alice_api, COMPLETIONS, body_for(COMPLETIONS, " x" * 60, max_tokens=5), 400, unchanged_db, sent,
                    code="context_length_exceeded", param="prompt")
    assert "lower max_tokens to at most 4" in error["message"], error
    assert post(alice_api, COMPLETIONS, body_for(COMPLETIONS, " x" * 60, max_tokens=4)).status_code == 200


def test_without_the_model_store_the_character_bound_stays(base, alice_api, node, sent, settings, tmp_path,
                                                           unchanged_db):
    settings.VAJRA_MODEL_STORE = str(tmp_path)  # a web pod without the model files
    base.context_length = 64
    base.save()
    assert prompt_tokens(base, prompt="Hi") is None
    assert post(alice_api, COMPLETIONS, body_for(COMPLETIONS, " x" * 64, max_tokens=1)).status_code == 200, \
        "the runtime decides"
    with unchanged_db():
        response = post(alice_api, COMPLETIONS, body_for(COMPLETIONS, "x" * (64 * 8 + 1), max_tokens=1))
        assert_error(response, 400, code="context_length_exceeded", param="prompt")
    assert len(sent) == 1, "the refused one sent nothing"
