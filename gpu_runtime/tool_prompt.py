"""A chat with tools as the base model's chat template gets it, for the node (its prompt) and the web (its count of
the prompt's tokens) alike: no torch, no library.

A template that mentions ``tools`` renders them itself (transformers' ``apply_chat_template(tools=...)``): it gets
the tools as OpenAI spells them and the conversation as it is, a call's arguments parsed into an object. A template
without tools support (SmolLM2's) gets the tools in the system message, with the call convention of
gpu_runtime.grammar_spec (``<tool_call>{"name": ..., "arguments": ...}</tool_call>``); an earlier call in the
conversation is written in that convention, and a tool's result as a user message in ``<tool_response>``.
"""

import json

from .grammar_spec import TOOL_CALL_CLOSE, TOOL_CALL_OPEN

TOOLS_PREAMBLE = ("You can call functions. To call one, answer with only " + TOOL_CALL_OPEN +
                  '{"name": <function name>, "arguments": <its arguments as a JSON object>}' + TOOL_CALL_CLOSE +
                  "\nThe functions:")


def template_takes_tools(template):
    return isinstance(template, str) and "tools" in template


def call_text(name, arguments):
    """A call in the convention; ``arguments`` is the JSON text of an object."""
    return f'{TOOL_CALL_OPEN}{{"name": {json.dumps(name)}, "arguments": {arguments}}}{TOOL_CALL_CLOSE}'


def _parsed(arguments):
    try:
        return json.loads(arguments)
    except (ValueError, RecursionError):  # not JSON, or nested past the parser: the template gets the text
        return arguments


def prompt_messages(messages, tools, template):
    """(messages, tools or None) for ``template`` (its source): ``messages`` in the contract's shape
    (gpu_runtime.generation), ``tools`` [{"name", "description", "parameters"}] or empty."""
    messages = list(messages)
    if template_takes_tools(template):
        rendered = []
        for message in messages:
            if message.get("tool_calls"):
                message = {**message, "tool_calls": [
                    {**call, "function": {**call["function"], "arguments": _parsed(call["function"]["arguments"])}}
                    for call in message["tool_calls"]]}
            rendered.append(message)
        return rendered, ([{"type": "function", "function": dict(tool)} for tool in tools] or None)
    rendered = []
    for message in messages:
        if message["role"] == "tool":
            rendered.append({"role": "user", "content": f"<tool_response>\n{message['content']}\n</tool_response>"})
        elif message.get("tool_calls"):
            calls = "\n".join(call_text(call["function"]["name"], call["function"]["arguments"])
                              for call in message["tool_calls"])
            rendered.append({"role": "assistant", "content": "\n".join(filter(None, [message["content"], calls]))})
        else:
            rendered.append({"role": message["role"], "content": message["content"]})
    if tools:
        described = "\n".join(json.dumps({key: tool[key] for key in ("name", "description", "parameters")
                                          if tool.get(key) is not None}) for tool in tools)
        preamble = f"{TOOLS_PREAMBLE}\n{described}"
        if rendered and rendered[0]["role"] == "system":
            rendered[0] = {"role": "system", "content": f"{rendered[0]['content']}\n\n{preamble}"}
        else:
            rendered.insert(0, {"role": "system", "content": preamble})
    return rendered, None
