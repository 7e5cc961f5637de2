"""JSON Schema helpers shared by the edge and the generation service."""

from __future__ import annotations

from typing import Any


def closed_objects(schema: Any) -> Any:
    """The schema with `additionalProperties: false` wherever an object schema lists its
    properties (all it requires among them) and says nothing of others: what OpenAI's strict
    mode requires of a schema. Whatever validates against the result validates against the
    schema as given."""
    if isinstance(schema, list):
        return [closed_objects(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    closed = {key: closed_objects(value) for key, value in schema.items()}
    properties = schema.get("properties")
    required = schema.get("required", [])
    if (
        isinstance(properties, dict)
        and isinstance(required, list)
        and all(name in properties for name in required)
        and "patternProperties" not in schema
    ):
        closed.setdefault("additionalProperties", False)
    return closed
