"""OpenAI's published OpenAPI document as JSON Schema validators, for checking what clients receive."""
from __future__ import annotations

from functools import cache

import yaml
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from app import ROOT

# shared/ lies beside the repository, in development and in CI alike.
SPEC = ROOT.parent / "shared" / "reference" / "openai-openapi.yaml"


def _nullable(node):
    """The document mixes OpenAPI 3.0's ``nullable: true`` into 3.1 schemas: read it as its authors mean it."""
    if isinstance(node, dict):
        node = {key: _nullable(value) for key, value in node.items()}
        if node.pop("nullable", False):
            node = {"anyOf": [node, {"type": "null"}]}
        return node
    if isinstance(node, list):
        return [_nullable(item) for item in node]
    return node


@cache
def _registry() -> tuple[dict, Registry]:
    assert SPEC.is_file(), f"OpenAI's OpenAPI document is missing at {SPEC}"
    document = _nullable(yaml.safe_load(SPEC.read_text()))
    resource = Resource.from_contents(document, default_specification=DRAFT202012)
    return document, Registry().with_resource("urn:openai", resource)


def errors(schema_name: str, instance) -> list[str]:
    """Every way ``instance`` breaks ``#/components/schemas/<schema_name>``, in words; empty when valid."""
    _, registry = _registry()
    validator = Draft202012Validator({"$ref": f"urn:openai#/components/schemas/{schema_name}"}, registry=registry)
    return [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
            for e in validator.iter_errors(instance)]
