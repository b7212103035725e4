"""A small, real OpenAI-compatible completions server over an in-process transformers model, for tests.

It serves `/v1/models` and `/v1/completions` with `echo` + `logprobs` the way vLLM does: the server's own
tokenizer splits the prompt, `text_offset` gives each token's first character, and token i's log-prob comes
from the logits at i-1. It is written here, not a third-party server: it checks pmpo's client path (HTTP,
batching, offsets, errors), while `shift=1` reproduces llama-cpp-python's misalignment for the self-check.
Without `echo` it generates as a server does: greedily (temperature 0 only) up to `max_tokens`, ending at the
eos token or a `stop` text; `answer` replaces the model by a fixed rule, `requests` records every request body,
`usage=False` leaves the reply's token counts out. `/v1/chat/completions` answers with the model's greedy reply
(n copies, whatever the temperature) or with fixed `chat_choices`.

Two switches reproduce other servers' replies: `stale_prefix=True` vLLM's prefix-cache bug (vllm-project/vllm#42019:
a token whose prefix an earlier request already sent gets the value the last text computed at that position, so a
text's log-probs depend on request order), `offsets=False` SGLang's echo (every `text_offset` is -1).
"""

import contextlib
import socket
import threading
import time
from typing import Callable, Iterator, Optional, Sequence, Tuple

import torch


def free_port() -> int:
    """A TCP port nobody listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def echo_app(
    lm,
    name: str = "echo-model",
    *,
    shift: int = 0,
    key: Optional[str] = None,
    completions: bool = True,
    answer: Optional[Callable[[str], str]] = None,
    requests: Optional[list] = None,
    usage: bool = True,
    chat_choices: Sequence[Tuple[str, Optional[str]]] = (),
    stale_prefix: bool = False,
    offsets: bool = True,
):
    """The FastAPI app; `shift=1`: token i gets the log-prob from the logits at i (llama.cpp's bug).

    `chat_choices`: the (content, finish_reason) choices every /v1/chat/completions request gets, whatever it asks.
    """
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse

    app = FastAPI()
    tok, model = lm.tokenizer, lm.model
    cache = _StaleCache() if stale_prefix else None

    def refused(request: Request):
        if key is not None and request.headers.get("authorization") != f"Bearer {key}":
            return JSONResponse({"error": {"message": "invalid API key"}}, status_code=401)
        return None

    @app.get("/v1/models")
    def models(request: Request):
        return refused(request) or {"object": "list", "data": [{"id": name, "object": "model", "owned_by": "test"}]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        if (bad := refused(request)) is not None:
            return bad
        body = await request.json()
        if requests is not None:
            requests.append(body)
        replies = list(chat_choices) or _chat_replies(tok, model, body)
        choices = [
            {"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": finish}
            for i, (text, finish) in enumerate(replies)
        ]
        return {"id": "x", "object": "chat.completion", "created": 0, "model": name, "choices": choices}

    if completions:

        @app.post("/v1/completions")
        async def complete(request: Request):
            if (bad := refused(request)) is not None:
                return bad
            body = await request.json()
            if body.get("model") != name:
                return JSONResponse({"error": {"message": f"model {body.get('model')} not found"}}, status_code=404)
            if requests is not None:
                requests.append(body)
            prompts = body["prompt"] if isinstance(body["prompt"], list) else [body["prompt"]]
            if not body.get("echo"):
                if body.get("temperature") != 0:
                    return JSONResponse({"error": {"message": "this server decodes greedily only"}}, status_code=400)
                return _generated(tok, model, name, prompts, body, answer, usage)
            choices = [_choice(tok, model, text, i, shift, cache, offsets) for i, text in enumerate(prompts)]
            if cache is not None:
                cache.close_request()
            return {"id": "cmpl", "object": "text_completion", "created": 0, "model": name, "choices": choices}

    return app


class _StaleCache:
    """vLLM's bug, reduced: prefixes sent in earlier requests are "cached", and a cached position reports what
    the last scored text left in the output buffer at that position instead of its own value."""

    def __init__(self):
        self.seen: set[tuple[int, ...]] = set()
        self.pending: set[tuple[int, ...]] = set()
        self.buffer: list = []

    def apply(self, ids: list[int], values: list) -> list:
        stale = [
            self.buffer[i] if tuple(ids[: i + 1]) in self.seen and i < len(self.buffer) else v
            for i, v in enumerate(values)
        ]
        self.pending.update(tuple(ids[: i + 1]) for i in range(len(ids)))
        self.buffer = stale
        return stale

    def close_request(self) -> None:
        self.seen |= self.pending  # cached from the next request on: one request's texts do not see each other
        self.pending = set()


@torch.inference_mode()
def _choice(tok, model, text: str, index: int, shift: int, cache=None, offsets_known: bool = True) -> dict:
    enc = tok(text, return_offsets_mapping=True)
    ids = enc["input_ids"]
    logprobs = model(torch.tensor([ids])).logits[0].float().log_softmax(-1)  # [T, V]
    values = [None] + [logprobs[i - 1 + shift, ids[i]].item() for i in range(1, len(ids))]
    if cache is not None:
        values = cache.apply(ids, values)
    offsets = [start for start, _ in enc["offset_mapping"]] if offsets_known else [-1] * len(ids)
    new = int(logprobs[-1].argmax())  # max_tokens 1: one greedy token after the prompt
    new_text = tok.decode([new])
    return {
        "index": index,
        "text": text + new_text,
        "finish_reason": "length",
        "logprobs": {
            "tokens": [tok.decode([i]) for i in ids] + [new_text],
            "token_logprobs": values + [logprobs[-1, new].item()],
            "text_offset": offsets + [len(text) if offsets_known else -1],
            "top_logprobs": None,
        },
    }


def _generated(tok, model, name: str, prompts: list, body: dict, answer, usage: bool) -> dict:
    """A non-echoed reply: each prompt's continuation and, when `usage`, the tokens read and written."""
    stop = body.get("stop") or []
    stop = [stop] if isinstance(stop, str) else list(stop)
    texts, new_tokens = [], 0
    for text in prompts:
        if answer is not None:
            reply, produced = answer(text), 0
        else:
            reply, produced = _greedy(tok, model, text, int(body.get("max_tokens") or 16), stop)
        cut = min([reply.index(s) for s in stop if s in reply], default=len(reply))
        texts.append(reply[:cut])
        new_tokens += produced or len(tok.encode(reply[:cut], add_special_tokens=False))
    choices = [{"index": i, "text": t, "finish_reason": "stop", "logprobs": None} for i, t in enumerate(texts)]
    prompt_tokens = sum(len(tok(t)["input_ids"]) for t in prompts)
    counts = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": new_tokens,
        "total_tokens": prompt_tokens + new_tokens,
    }
    reply = {"id": "cmpl", "object": "text_completion", "created": 0, "model": name, "choices": choices}
    return reply | ({"usage": counts} if usage else {})


def _chat_replies(tok, model, body: dict) -> list:
    """`n` (content, finish_reason) replies to the chat's messages: the model's greedy reply, n times over."""
    text = tok.apply_chat_template(body["messages"], tokenize=False, add_generation_prompt=True)
    stop = body.get("stop") or []
    stop = [stop] if isinstance(stop, str) else list(stop)
    budget = int(body.get("max_tokens") or 16)
    reply, produced = _greedy(tok, model, text, budget, stop)
    cut = min([reply.index(s) for s in stop if s in reply], default=None)
    finish = "stop" if cut is not None or produced < budget else "length"
    return [(reply[:cut], finish)] * int(body.get("n") or 1)


@torch.inference_mode()
def _greedy(tok, model, text: str, max_tokens: int, stop: list) -> tuple[str, int]:
    """Greedy decoding of one text until eos, a stop text that is one token, or `max_tokens` new tokens."""
    vocab = tok.get_vocab()
    ends = {tok.eos_token_id} | {vocab[s] for s in stop if s in vocab}
    ids = tok(text)["input_ids"]
    new: list[int] = []
    while len(new) < max_tokens:
        token = int(model(torch.tensor([ids + new])).logits[0, -1].argmax())
        new.append(token)
        if token in ends:
            break
    kept = new[:-1] if new and new[-1] in ends else new
    return tok.decode(kept, skip_special_tokens=True), len(new)


@contextlib.contextmanager
def serving(app) -> Iterator[str]:
    """Run `app` on a free local port in a thread; yields its base URL (…/v1)."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
