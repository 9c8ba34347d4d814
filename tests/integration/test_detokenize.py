"""Incremental detokenization with SmolLM2's byte-level tokenizer: multi-byte characters never split,
stop sequences never leak, nothing lost at the end."""

import pytest
from transformers import AutoTokenizer

from gpu_runtime.detokenize import IncrementalText

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tokenizer(base_model_store):
    return AutoTokenizer.from_pretrained(base_model_store / "smollm2-135m-instruct" / "float32")


@pytest.mark.parametrize("text", ["naïve café — 世界 🚀🚀 ok", "Ελληνικά, русский, العربية", "plain ascii"])
def test_deltas_join_to_the_decoded_text_without_broken_characters(tokenizer, text):
    ids = tokenizer(text).input_ids
    stream = IncrementalText(tokenizer)
    deltas = [stream.add(i) for i in ids] + [stream.finish()]
    assert "".join(deltas) == tokenizer.decode(ids, skip_special_tokens=True) == text
    assert not any("\ufffd" in d for d in deltas)
    if not text.isascii():  # a character split over tokens was held back until complete
        assert "" in deltas[:-1]


def test_stop_sequence_is_held_back_and_never_sent(tokenizer):
    ids = tokenizer("Hello there STOP and more").input_ids
    stream = IncrementalText(tokenizer, stop=["STOP"])
    sent = ""
    for i in ids:
        sent += stream.add(i)
        assert "ST" not in sent or "STOP" not in sent
        if stream.stopped:
            break
    assert stream.stopped and sent + stream.finish() == "Hello there "


def test_a_partial_stop_that_never_completes_is_released_at_the_end(tokenizer):
    ids = tokenizer("the end is ST").input_ids
    stream = IncrementalText(tokenizer, stop=["STOP"])
    sent = "".join(stream.add(i) for i in ids)
    assert not stream.stopped and sent + stream.finish() == "the end is ST"
