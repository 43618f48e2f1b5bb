"""``/v1/models`` through the official OpenAI SDK, and OpenAI's error shape for every refusal."""
import httpx
import openai
import pytest

from app.accounts import api_keys

from ..support.factories import make_host, make_key


@pytest.fixture
def sdk(app):
    """An OpenAI SDK client talking to the app in-process (no network)."""
    clients = []

    def make(api_key: str) -> openai.OpenAI:
        http = httpx.Client(transport=httpx.WSGITransport(app=app), base_url="http://gpushare.test")
        clients.append(http)
        return openai.OpenAI(base_url="http://gpushare.test/v1", api_key=api_key, http_client=http, max_retries=0)

    yield make
    for http in clients:
        http.close()


def test_it_lists_the_models_healthy_hosts_serve_through_the_sdk(sdk, people):
    make_host(people.bob, ["meta-llama/Llama-3.1-8B-Instruct", "Qwen/Qwen2.5-7B-Instruct"])
    make_host(people.bob, ["google/gemma-2-9b-it"], healthy=False, name="sick")
    make_host(people.bob, ["mistralai/Mistral-7B-Instruct-v0.3"], status="pending", name="new")
    make_host(people.bob, ["HuggingFaceTB/SmolLM2-135M-Instruct"], enabled=False, name="off")
    _, secret = make_key(people.alice)
    models = sdk(secret).models.list()
    assert [m.id for m in models] == ["meta-llama/Llama-3.1-8B-Instruct", "Qwen/Qwen2.5-7B-Instruct"]
    assert all(m.object == "model" and m.owned_by == "gpushare" for m in models)
    llama = models.data[0].model_dump()
    assert llama["pricing"] == {"currency": "USD", "input_per_million_tokens": "0.05",
                                "output_per_million_tokens": "0.08", "reference_input_per_million_tokens": "0.15",
                                "reference_output_per_million_tokens": "0.60"} and llama["context_length"] == 131072
    assert sdk(secret).models.retrieve("Qwen/Qwen2.5-7B-Instruct").id == "Qwen/Qwen2.5-7B-Instruct"


def test_it_hides_models_outside_the_allowlist(sdk, people):
    make_host(people.bob, ["Qwen/Qwen2.5-7B-Instruct", "google/gemma-2-9b-it"])
    _, secret = make_key(people.alice, allowed_models=["google/gemma-2-9b-it"])
    assert [m.id for m in sdk(secret).models.list()] == ["google/gemma-2-9b-it"]
    with pytest.raises(openai.NotFoundError) as error:
        sdk(secret).models.retrieve("Qwen/Qwen2.5-7B-Instruct")
    assert error.value.body["code"] == "model_not_found"


def test_it_refuses_a_revoked_key_in_openai_shape(sdk, people):
    key, secret = make_key(people.alice)
    api_keys.revoke_key(people.alice, key)
    with pytest.raises(openai.AuthenticationError) as error:
        sdk(secret).models.list()
    assert error.value.status_code == 401 and error.value.body["code"] == "invalid_api_key"
    assert secret not in str(error.value.body) and key.key_hash not in str(error.value.body)


@pytest.mark.parametrize("headers, code", [
    ({}, "missing_api_key"),
    ({"Authorization": "Basic abc"}, "invalid_api_key"),
    ({"Authorization": "Bearer "}, "invalid_api_key"),
    ({"Authorization": "Bearer sk-not-ours"}, "invalid_api_key"),
    ({"Authorization": "Bearer gpsk_" + "A" * 38}, "invalid_api_key"),
])
def test_it_refuses_missing_and_malformed_keys(client, ctx, headers, code):
    response = client.get("/v1/models", headers=headers)
    body = response.get_json()
    assert response.status_code == 401
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["code"] == code and body["error"]["type"] == "authentication_error"
    sent = headers.get("Authorization", "").partition(" ")[2].strip()
    if sent:
        assert sent not in response.get_data(as_text=True)


def test_it_answers_unknown_paths_and_methods_in_openai_shape(client, ctx):
    response = client.get("/v1/no-such-thing")
    assert response.status_code == 404 and response.get_json()["error"]["type"] == "not_found_error"
    response = client.delete("/v1/models", headers={"Authorization": "Bearer x"})
    assert response.status_code == 405 and "error" in response.get_json()
