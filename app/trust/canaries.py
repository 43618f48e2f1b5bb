"""Canaries: requests the verifier sends that a host cannot tell from a client's.

Each is drawn from a corpus of the things people ask a chat model (a task template filled with a subject, a
detail and a name, so no two are alike: the nonce that defeats a host replaying old answers), sometimes under a
system prompt, with the parameters clients send: mostly greedy, as agents and evaluations ask, and sometimes
sampled; streamed or not; a few lengths. It goes on the ordinary request path (``proxy.gateway.canary``): the
same headers, body shape and pace as a client's, billed to the verifier and paid to the host like any request.
"""
from __future__ import annotations

import random

import orjson

TASKS = [
    "Explain {subject} to someone who has never heard of it.",
    "What are three common mistakes people make with {subject}?",
    "Write a short paragraph about {subject} for a {audience}.",
    "Give me a quick summary of {subject}, in plain words.",
    "I'm {name}, and I need to understand {subject} for {purpose}. Where should I start?",
    "Can you list the pros and cons of {subject}?",
    "Write a haiku about {subject}.",
    "How would you describe {subject} to a {audience}?",
    "What is the history of {subject}, briefly?",
    "My friend {name} says {subject} is overrated. What would you tell them?",
    "Write a two-sentence story that involves {subject}.",
    "What questions should I ask before getting into {subject}?",
    "Draft a friendly email to {name} about {subject} for {purpose}.",
    "Compare {subject} with {other}.",
    "Give me a step-by-step plan to learn about {subject} in {days} days.",
    "What is one surprising fact about {subject}?",
    "Summarize the main idea of {subject} in one sentence.",
    "Suggest a title for a blog post about {subject} aimed at a {audience}.",
]
SUBJECTS = [
    "photosynthesis", "the stock market", "machine learning", "sourdough baking", "the French Revolution",
    "black holes", "composting at home", "the water cycle", "learning to play the guitar", "remote work",
    "electric cars", "the Roman Empire", "meditation", "climate change", "public speaking", "budgeting",
    "vaccines", "the Python programming language", "running a marathon", "chess openings", "jazz music",
    "the human immune system", "renewable energy", "ancient Egypt", "bird migration", "coffee brewing",
    "time management", "the solar system", "urban gardening", "cybersecurity basics", "the Olympic Games",
    "volcanoes", "writing a resume", "the history of the internet", "recycling plastics", "honeybees",
    "the theory of evolution", "cloud computing", "knitting", "the Great Barrier Reef",
]
AUDIENCES = ["ten-year-old", "busy parent", "high school class", "retired engineer", "new employee",
             "curious tourist", "small business owner", "college freshman"]
PURPOSES = ["a presentation next week", "a school project", "my book club", "a job interview", "a podcast episode",
            "a family dinner conversation", "my newsletter", "a team meeting"]
NAMES = ["Alex", "Priya", "Jordan", "Mei", "Samuel", "Fatima", "Lukas", "Ana", "Kenji", "Grace", "Omar", "Ines",
         "Tomas", "Zoe", "Ravi", "Elena"]
SYSTEM_PROMPTS = [
    "You are a helpful assistant.",
    "You are a concise assistant. Answer briefly.",
    "You are a friendly tutor who explains things simply.",
    "You are an assistant for a small company. Be clear and professional.",
]
# (weight, temperature): greedy most of the time, the sharpest test; sampled often enough to look like traffic
# and to check the sampled path.
TEMPERATURES = [(7, 0.0), (2, 0.7), (1, 1.0)]
MAX_TOKENS = (48, 64, 96)


def prompt(rng: random.Random) -> str:
    subject, other = rng.sample(SUBJECTS, 2)
    return rng.choice(TASKS).format(subject=subject, other=other, audience=rng.choice(AUDIENCES),
                                    purpose=rng.choice(PURPOSES), name=rng.choice(NAMES), days=rng.randint(3, 30))


def request(model: str, rng: random.Random | None = None, *, greedy: bool | None = None) -> dict:
    """A canary's body for ``model``: a chat request as a client sends it. ``greedy`` forces the temperature
    (calibration measures each test on its own)."""
    rng = rng or random.SystemRandom()
    messages = [{"role": "user", "content": prompt(rng)}]
    if rng.random() < 0.4:
        messages.insert(0, {"role": "system", "content": rng.choice(SYSTEM_PROMPTS)})
    if greedy is None:
        temperature = rng.choices([t for _, t in TEMPERATURES], [w for w, _ in TEMPERATURES])[0]
    else:
        temperature = 0.0 if greedy else rng.choice([t for _, t in TEMPERATURES if t > 0])
    body = {"model": model, "messages": messages, "max_tokens": rng.choice(MAX_TOKENS), "temperature": temperature}
    if temperature and rng.random() < 0.5:
        body["top_p"] = rng.choice([0.9, 0.95, 1.0])
    if rng.random() < 0.3:
        body["seed"] = rng.randrange(2**31)
    if rng.random() < 0.5:
        body["stream"] = True
        if rng.random() < 0.5:
            body["stream_options"] = {"include_usage": True}
    return body


def encoded(body: dict) -> bytes:
    return orjson.dumps(body)
