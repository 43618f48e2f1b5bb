"""The host's model engine: real vLLM (CPU build) serving the tiny random-weight chat model.

The model speaks gibberish, so these tests assert on the shape of the
OpenAI-compatible answers and on token counts, never on words. One engine is
started for the module; the last test stops it.

The router bills from its own count: the returned text re-tokenized with the
model's tokenizer.json, and the chat prompt rendered with its template. Tiny-chat
is built so that those counts equal vLLM's usage exactly (one token per character,
no merges, no special token but eos ever generated), which the tests below check.
"""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import httpx
import pytest
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer

from hostkit.local.engine import CPU_THREADS_VARIABLE, REPO_ROOT, engine_env, ensure_model
from hostkit.local.groups import process_group_alive, record_group, stop_leftover
from hostkit.local.models import TINY_SPECIAL_MARGIN, is_complete
from hostkit.local.store import model_store

from ..support.engines import start_tiny_chat

pytestmark = pytest.mark.vllm

MODEL = "gpushare/tiny-chat"
MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    [engine], _ = start_tiny_chat(tmp_path_factory.mktemp("engine"))
    yield engine
    engine.stop()


@pytest.fixture(scope="module")
def http(engine):
    with httpx.Client(base_url=engine.root_url, timeout=60) as client:
        yield client


def chat(http, **body):
    response = http.post("/v1/chat/completions", json={"model": MODEL, "messages": MESSAGES, **body})
    assert response.status_code == 200, response.text
    return response.json()


def stream_events(http, **body):
    """The decoded ``data:`` payloads of a streamed chat completion, ``[DONE]`` kept as a string."""
    events = []
    body = {"model": MODEL, "messages": MESSAGES, "stream": True, **body}
    with http.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("data: "):
                payload = line[len("data: "):]
                events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events


def test_it_lists_the_served_model(engine, http):
    response = http.get("/v1/models")

    assert response.status_code == 200
    models = response.json()["data"]
    assert [m["id"] for m in models] == [MODEL]
    assert models[0]["max_model_len"] == 2048
    assert engine.base_url == f"http://127.0.0.1:{engine.port}/v1"


def test_it_answers_with_exactly_the_tokens_asked_for(http):
    answer = chat(http, max_tokens=7, ignore_eos=True, temperature=0)

    assert answer["object"] == "chat.completion"
    assert answer["model"] == MODEL
    [choice] = answer["choices"]
    assert choice["index"] == 0
    assert choice["message"]["role"] == "assistant"
    assert isinstance(choice["message"]["content"], str)
    assert choice["finish_reason"] == "length"
    usage = answer["usage"]
    assert usage["prompt_tokens"] > 0
    assert usage["completion_tokens"] == 7
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_it_never_exceeds_max_tokens(http):
    answer = chat(http, max_tokens=5, seed=1)

    [choice] = answer["choices"]
    assert choice["finish_reason"] in ("stop", "length")
    assert 0 < answer["usage"]["completion_tokens"] <= 5


def test_it_counts_the_prompt_as_its_tokenizer_does(http):
    tokenized = http.post("/tokenize", json={"model": MODEL, "messages": MESSAGES})
    assert tokenized.status_code == 200, tokenized.text

    answer = chat(http, max_tokens=1)

    assert answer["usage"]["prompt_tokens"] == tokenized.json()["count"] > 0


def test_it_streams_chunks_then_usage_then_done(http):
    events = stream_events(http, max_tokens=6, ignore_eos=True, temperature=0,
                           stream_options={"include_usage": True})

    assert events[-1] == "[DONE]"
    *chunks, usage_chunk = events[:-1]
    assert usage_chunk["choices"] == []
    usage = usage_chunk["usage"]
    assert usage["prompt_tokens"] > 0
    assert usage["completion_tokens"] == 6
    assert usage["total_tokens"] == usage["prompt_tokens"] + 6
    assert chunks, "no content chunk before the usage chunk"
    assert {chunk["object"] for chunk in chunks} == {"chat.completion.chunk"}
    assert len({chunk["id"] for chunk in events[:-1]}) == 1
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"][0]["finish_reason"]]
    assert finishes == ["length"]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    # One character per token (an eos mid-answer would send none); a busy engine may put several in a chunk.
    with_content = [c for c in chunks if c["choices"][0]["delta"].get("content")]
    assert 0 < len(with_content) <= 6
    assert 0 < sum(len(c["choices"][0]["delta"]["content"]) for c in with_content) <= 6


def test_it_streams_without_usage_unless_asked(http):
    events = stream_events(http, max_tokens=3, ignore_eos=True)

    assert events[-1] == "[DONE]"
    assert all(event["choices"] for event in events[:-1])
    assert not any(event.get("usage") for event in events[:-1])


class RouterCount:
    """Token counts as the router takes them (app/proxy/metering.py), from the built model's files."""

    def __init__(self, model_dir):
        self.tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        config = json.loads((model_dir / "tokenizer_config.json").read_text())
        jinja = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                              extensions=["jinja2.ext.loopcontrols"])
        self.template = jinja.from_string(config["chat_template"])
        self.bos_token, self.eos_token = config["bos_token"], config["eos_token"]

    def text(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False).ids)

    def chat(self, messages) -> int:
        rendered = self.template.render(messages=messages, tools=None, add_generation_prompt=True,
                                        bos_token=self.bos_token, eos_token=self.eos_token)
        return self.text(rendered)

    def prompt(self, prompt: str) -> int:
        return len(self.tokenizer.encode(prompt, add_special_tokens=True).ids)


@pytest.fixture(scope="module")
def count(engine):
    return RouterCount(engine.model_dir)


def streamed(http, **body):
    """The concatenated content and the usage of a streamed chat completion."""
    events = stream_events(http, stream_options={"include_usage": True}, **body)
    assert events[-1] == "[DONE]"
    *chunks, usage_chunk = events[:-1]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    return text, usage_chunk["usage"], chunks[-1]["choices"][0]["finish_reason"]


SPECIALS_BUT_EOS = ("<|im_start|>", "<|endoftext|>", "<unk>")
# ignore_eos keeps generating after an eos, but with skip_special_tokens (vLLM's default) that eos is
# counted in usage and missing from the text; min_tokens masks eos, so exactly max_tokens characters
# come out. The model itself never emits the other special tokens.
FULL_LENGTH = {"max_tokens": 50, "ignore_eos": True, "min_tokens": 50, "temperature": 1}


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
def test_the_router_counts_exactly_what_the_engine_counts(http, count, seed):
    answer = chat(http, seed=seed, **FULL_LENGTH)
    text, usage, finish = streamed(http, seed=seed, **FULL_LENGTH)

    [choice] = answer["choices"]
    assert choice["finish_reason"] == finish == "length"
    assert answer["usage"]["completion_tokens"] == usage["completion_tokens"] == 50
    assert choice["message"]["content"] == text
    assert count.text(text) == 50 == len(text)
    assert count.chat(MESSAGES) == answer["usage"]["prompt_tokens"] == usage["prompt_tokens"]
    assert set(text) <= set(map(chr, range(0x20, 0x7F))) | {"\n"}


def test_different_seeds_give_different_answers(http):
    answers = {chat(http, seed=seed, **FULL_LENGTH)["choices"][0]["message"]["content"] for seed in (1, 2, 3)}

    assert len(answers) == 3


@pytest.mark.parametrize("messages", [
    MESSAGES,
    [{"role": "system", "content": "Be brief.\n\nVery brief."},
     {"role": "user", "content": "  spaces,\ttabs and\nnewlines  "},
     {"role": "assistant", "content": "ok"},
     {"role": "user", "content": "héllo wörld ☃ 日本 🙂"}],
    [{"role": "user", "content": "literal <|im_end|> and <unk> in a prompt"}],
])
def test_the_router_counts_any_chat_prompt_as_the_engine(http, count, messages):
    answer = chat(http, messages=messages, max_tokens=1)

    assert answer["usage"]["prompt_tokens"] == count.chat(messages)


def test_the_router_counts_completions_prompts_and_texts_as_the_engine(http, count):
    prompt = "Once upon a time, in \"héllo\" land\n"
    response = http.post("/v1/completions", json={"model": MODEL, "prompt": prompt, "seed": 7, **FULL_LENGTH})
    assert response.status_code == 200, response.text
    answer = response.json()

    assert answer["usage"]["prompt_tokens"] == count.prompt(prompt)
    assert answer["usage"]["completion_tokens"] == count.text(answer["choices"][0]["text"]) == 50


def test_with_special_tokens_kept_each_eos_is_one_counted_token(http, count):
    """Without min_tokens, ignore_eos lets eos into the answer: kept as text, the router counts it as one."""
    body = {"max_tokens": 300, "ignore_eos": True, "temperature": 1, "skip_special_tokens": False}
    eos_seen = 0
    for seed in (1, 2, 3, 4):
        answer = chat(http, seed=seed, **body)
        text, usage, _ = streamed(http, seed=seed, **body)

        assert answer["choices"][0]["message"]["content"] == text
        assert count.text(text) == answer["usage"]["completion_tokens"] == usage["completion_tokens"] == 300
        assert not any(special in text for special in SPECIALS_BUT_EOS)
        eos = text.count("<|im_end|>")
        assert len(text) == 300 + (len("<|im_end|>") - 1) * eos
        eos_seen += eos
    # eos comes up about once per hundred tokens; nothing else special ever does.
    assert eos_seen > 0


def test_eos_ends_an_answer_and_is_counted_but_not_in_the_text(http, count):
    """What the router sees when the model stops by itself: one token less in the text than in usage."""
    for seed in range(1, 6):
        answer = chat(http, seed=seed, max_tokens=1000, temperature=1)

        [choice] = answer["choices"]
        completion_tokens = answer["usage"]["completion_tokens"]
        # eos comes up about once per hundred tokens, so 1000 is never reached with these seeds.
        assert choice["finish_reason"] == "stop" and choice["stop_reason"] is None
        assert count.text(choice["message"]["content"]) == completion_tokens - 1


def test_the_model_provably_never_emits_other_special_tokens(engine):
    """The builder's bound, recomputed from the weights on disk: a margin over every possible input."""
    code = ("import sys; from hostkit.local.models import tiny_chat_special_margin as margin; "
            "print(margin(sys.argv[1]))")
    done = subprocess.run([str(engine.python), "-c", code, str(engine.model_dir)], cwd=REPO_ROOT,
                          env=engine_env(engine.data_dir), capture_output=True, text=True, timeout=300)

    assert done.returncode == 0, done.stdout + done.stderr
    # Logits this far apart: a special token's chance is below e**-100 per step at temperature 1.
    assert float(done.stdout.split()[-1]) >= TINY_SPECIAL_MARGIN >= 100


def test_engines_sharing_a_machine_get_their_threads_placed_by_the_kernel(engine):
    """The tests run several engines on two cores (as make run does): each has one thread, not pinned by vLLM to
    the cores the others were pinned to."""
    environ = dict(line.split("=", 1) for line in
                   Path(f"/proc/{engine.pid}/environ").read_text().split("\0") if "=" in line)
    assert environ["OMP_NUM_THREADS"] == os.environ[CPU_THREADS_VARIABLE] == "1"
    assert environ["VLLM_CPU_OMP_THREADS_BIND"] == "nobind"
    assert len(os.sched_getaffinity(engine.pid)) == len(os.sched_getaffinity(0))


def test_engines_on_one_machine_learn_a_model_class_once(engine, tmp_path):
    """vLLM inspects a model's class in a subprocess that imports it all again (seconds of CPU per start) unless
    its cache knows the class: every local engine shares that cache, whatever its data directory."""
    environ = dict(line.split("=", 1) for line in
                   Path(f"/proc/{engine.pid}/environ").read_text().split("\0") if "=" in line)
    shared = Path(environ["VLLM_CACHE_ROOT"])
    assert shared == Path(engine_env(tmp_path / "another")["VLLM_CACHE_ROOT"])
    assert engine.data_dir.resolve() not in shared.parents
    assert [path.name for path in (shared / "modelinfos").glob("*LlamaForCausalLM.json")]
    assert environ["HF_HOME"].startswith(str(engine.data_dir.resolve()))  # the other caches stay the engine's


def test_a_model_is_built_once_per_machine_and_linked_into_each_data_directory(engine, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    first = ensure_model("tiny-chat", tmp_path / "a" / "models", python=engine.python, data_dir=tmp_path / "a")
    stored = model_store() / "tiny-chat"
    stored_at = (stored / "model.safetensors").stat().st_mtime_ns
    second = ensure_model("tiny-chat", tmp_path / "b" / "models", python=engine.python, data_dir=tmp_path / "b")

    assert first != second and stored.parent == tmp_path / "cache" / "gpushare" / "models"
    assert {path.name for path in first.iterdir()} == {path.name for path in stored.iterdir()}
    # The same files, not a second build: hard links to the machine's one.
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert (first / name).stat().st_ino == (second / name).stat().st_ino == (stored / name).stat().st_ino
    assert (stored / "model.safetensors").stat().st_mtime_ns == stored_at
    # A data directory's unfinished folder (a build killed half way) is replaced by a complete one.
    (second / ".gpushare-complete").unlink()
    assert is_complete(ensure_model("tiny-chat", second.parent, python=engine.python), "tiny-chat")


def test_it_stops_leaving_no_process(engine):
    pid = engine.pid
    assert engine.alive()

    engine.stop()

    assert not engine.alive()
    assert not process_group_alive(pid)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_an_engine_left_by_a_dead_owner_is_stopped_by_the_next_start(tmp_path):
    """An agent killed with SIGKILL leaves its engine to PDEATHSIG, and vLLM's drain can hang; the next agent
    stops the group its predecessor recorded, and nothing else."""
    pid_file = tmp_path / "engine.pid"
    leftover = subprocess.Popen(["sh", "-c", "sleep 600 & sleep 600"], start_new_session=True)
    try:
        record_group(pid_file, leftover.pid)
        assert stop_leftover(pid_file) == leftover.pid
        assert leftover.wait(5) is not None
        assert not process_group_alive(leftover.pid)
        assert not pid_file.exists()
    finally:
        leftover.kill()


def test_a_recorded_engine_id_now_worn_by_another_process_is_left_alone(tmp_path):
    pid_file = tmp_path / "engine.pid"
    stranger = subprocess.Popen(["sleep", "600"], start_new_session=True)
    try:
        pid_file.write_text(json.dumps({"pgid": stranger.pid, "started": 1}))  # another start time: not ours
        assert stop_leftover(pid_file) is None
        assert stranger.poll() is None
        pid_file.write_text("not a record")
        assert stop_leftover(pid_file) is None and not pid_file.exists()
    finally:
        stranger.kill()
        stranger.wait()
