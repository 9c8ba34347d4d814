"""Load for operators: Locust users streaming from a running VAJRA (never started by the test suite).

    pip install -e '.[load]'
    VAJRA_API_KEY=<prefix.secret> VAJRA_MODEL=smollm2-135m-instruct \\
        locust -f bench/locustfile.py --host http://127.0.0.1:8000 --headless -u 64 -r 8 -t 2m

Two users, weighted 3:1: ``InferUser`` streams ``POST /v1/models/{model}/infer`` (SSE; ``VAJRA_ADAPTER`` sends
half of its requests through that adapter) and ``OpenAIChatUser`` streams ``POST /v1/chat/completions``. Each
request is reported twice: its HTTP answer (time to the first byte) and ``ttft`` (time to the first text delta),
and a stream that ends without its final event, or with an error event, is reported as a failure.
Environment: VAJRA_API_KEY (required), VAJRA_MODEL, VAJRA_ADAPTER, VAJRA_MAX_TOKENS (default 32). ``--host`` (or
LOCUST_HOST) is the platform's URL. The tenant's quotas apply (its plan's max_concurrent_requests, default 16):
raise them for a load tenant or expect 429s.
"""

import json
import os
import time

from locust import HttpUser, between, events, task

MODEL = os.environ.get("VAJRA_MODEL", "smollm2-135m-instruct")
ADAPTER = os.environ.get("VAJRA_ADAPTER", "")
MAX_TOKENS = int(os.environ.get("VAJRA_MAX_TOKENS", "32"))


def api_key():
    key = os.environ.get("VAJRA_API_KEY", "")
    if not key:
        raise SystemExit("Set VAJRA_API_KEY to an API key of the tenant to load (Settings -> API keys).")
    return key


def final_error(data):
    """The error an event carries (a request the runtime failed), or None."""
    try:
        payload = json.loads(data)
    except ValueError:
        return None  # "[DONE]"
    error = payload.get("error") if isinstance(payload, dict) else None
    return f"{error.get('code')}: {error.get('message')}" if error else None


def fire(name, started, length=0, exception=None):
    events.request.fire(request_type="SSE", name=name, response_time=(time.perf_counter() - started) * 1000,
                        response_length=length, exception=exception, context={})


class StreamingUser(HttpUser):
    abstract = True
    wait_time = between(0.1, 0.5)

    def on_start(self):
        self.client.headers["Authorization"] = f"Bearer {api_key()}"
        self.n = 0

    def stream(self, path, body, name, delta_text, is_final):
        """POSTs ``body``, reads the SSE answer to its end; reports ``ttft`` and a missing final event."""
        started, first, ended, size, error = time.perf_counter(), None, False, 0, None
        with self.client.post(path, json=body, stream=True, catch_response=True, name=name) as response:
            if response.status_code != 200:
                response.failure(f"{response.status_code}: {response.text[:200]}")
                return
            for line in response.iter_lines(decode_unicode=True):
                if not line or not line.startswith("data: "):
                    continue
                data = line[len("data: "):]
                error = error or final_error(data)  # infer's final event; an error chunk of the OpenAI stream
                if is_final(data):
                    ended = True
                    continue
                text = delta_text(data)
                if text:
                    size += len(text)
                    if first is None:
                        first = True
                        fire(f"{name} ttft", started)
            if not ended:
                error = "the stream ended without its final event"
            if error:
                response.failure(error)
            else:
                response.success()
        fire(f"{name} complete", started, size, RuntimeError(error) if error else None)


class InferUser(StreamingUser):
    weight = 3

    @task
    def infer(self):
        self.n += 1
        # a completion prompt: a small base model often ends an instruction given as a bare prompt at once
        body = {"prompt": f"Note {self.n}. The sea at night is", "stream": True,
                "parameters": {"temperature": 0.7, "max_tokens": MAX_TOKENS}}
        if ADAPTER and self.n % 2:
            body["adapter_id"] = ADAPTER
        self.stream(f"/v1/models/{MODEL}/infer", body, "infer", self._delta, self._final)

    @staticmethod
    def _delta(data):
        payload = json.loads(data)
        return payload.get("text", "") if "finish_reason" not in payload and "id" not in payload else ""

    @staticmethod
    def _final(data):
        return '"finish_reason"' in data


class OpenAIChatUser(StreamingUser):
    weight = 1

    @task
    def chat(self):
        self.n += 1
        body = {"model": ADAPTER or MODEL, "stream": True, "max_tokens": MAX_TOKENS, "temperature": 0.7,
                "messages": [{"role": "user", "content": f"Question {self.n}: what is a tide?"}]}
        self.stream("/v1/chat/completions", body, "chat", self._delta, self._final)

    @staticmethod
    def _delta(data):
        if data == "[DONE]":
            return ""
        choices = json.loads(data).get("choices") or [{}]
        return (choices[0].get("delta") or {}).get("content", "")

    @staticmethod
    def _final(data):
        return data == "[DONE]"
