"""The official `openai` Python package as a real client of `minfer serve`.

Run by scripts/test-openai-client.sh (which installs the package and starts the server):
    python tests/openai_client.py http://127.0.0.1:PORT MODEL_NAME
Chat and completions, streaming and not, the usage chunk, seeds, logprobs, and the errors the
client maps to its exception types. Exits non-zero on the first failed check.
"""

import sys

import openai

base, model = sys.argv[1], sys.argv[2]
client = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=120)
checks = 0


def check(cond, what):
    global checks
    if not cond:
        sys.exit(f"FAILED: {what}")
    checks += 1


models = client.models.list()
check([m.id for m in models.data] == [model], f"models.list: {models}")

messages = [{"role": "user", "content": "What is the capital of France?"}]
r = client.chat.completions.create(model=model, messages=messages, max_tokens=20, temperature=0)
text = r.choices[0].message.content
check(r.object == "chat.completion" and r.model == model, f"chat object/model: {r}")
check(isinstance(text, str) and len(text) > 0, f"chat content: {r}")
check(r.choices[0].finish_reason in ("stop", "length"), f"finish_reason: {r}")
check(r.usage.completion_tokens > 0 and r.usage.total_tokens ==
      r.usage.prompt_tokens + r.usage.completion_tokens, f"usage: {r.usage}")

stream = client.chat.completions.create(
    model=model, messages=messages, max_tokens=20, temperature=0, stream=True,
    stream_options={"include_usage": True})
chunks = list(stream)
streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
check(streamed == text, f"streamed chat {streamed!r} != {text!r}")
check(chunks[-1].usage is not None and chunks[-1].usage.completion_tokens ==
      r.usage.completion_tokens, f"usage chunk: {chunks[-1]}")
finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
check(finishes == [r.choices[0].finish_reason], f"stream finish reasons: {finishes}")

c = client.completions.create(model=model, prompt="The three primary colors are", max_tokens=12,
                              temperature=0)
check(c.object == "text_completion" and len(c.choices[0].text) > 0, f"completion: {c}")
s = "".join(x.choices[0].text for x in client.completions.create(
    model=model, prompt="The three primary colors are", max_tokens=12, temperature=0,
    stream=True))
check(s == c.choices[0].text, f"streamed completion {s!r} != {c.choices[0].text!r}")

sampled = [client.chat.completions.create(
    model=model, messages=messages, max_tokens=12, temperature=0.9, seed=7,
    presence_penalty=0.5, frequency_penalty=0.3).choices[0].message.content for _ in range(2)]
check(sampled[0] == sampled[1], f"same seed, different text: {sampled}")

lp = client.chat.completions.create(model=model, messages=messages, max_tokens=5, temperature=0,
                                    logprobs=True, top_logprobs=2)
content = lp.choices[0].logprobs.content
check(len(content) == lp.usage.completion_tokens and all(len(t.top_logprobs) == 2 for t in content),
      f"logprobs: {lp.choices[0].logprobs}")

stop = client.chat.completions.create(model=model, messages=messages, max_tokens=20, temperature=0,
                                      stop=[text[len(text) // 2:len(text) // 2 + 3]])
check(stop.choices[0].message.content == text[:text.find(text[len(text) // 2:len(text) // 2 + 3])]
      and stop.choices[0].finish_reason == "stop", f"stop: {stop}")

try:
    client.chat.completions.create(model="no-such-model", messages=messages)
    check(False, "unknown model accepted")
except openai.NotFoundError as e:
    check(e.status_code == 404, f"404: {e}")
try:
    client.chat.completions.create(model=model, messages=[])
    check(False, "empty messages accepted")
except openai.BadRequestError as e:
    check(e.body.get("param") == "messages", f"400 param: {e.body}")
try:
    client.chat.completions.create(model=model, messages=messages, max_tokens=10**6)
    check(False, "max_tokens over the context accepted")
except openai.BadRequestError as e:
    check(e.body.get("param") == "max_tokens", f"400 param: {e.body}")

print(f"openai {openai.__version__} client against {base}: {checks} checks passed")
