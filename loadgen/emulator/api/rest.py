"""AWS's REST-JSON protocol (the one boto3's ``iot`` client speaks), both ways,
read from botocore's own service model: which operation a method and path are,
the operation's input members from the URI, query string, headers and JSON
body, and its output and errors as botocore parses them."""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, unquote

from botocore.model import OperationModel, ServiceModel, Shape, StructureShape

from loadgen.emulator.api.errors import ApiError


@dataclass(frozen=True)
class Route:
    operation: OperationModel
    method: str
    # Literal segments, "{name}" (one segment) or "{name+}" (the rest, last).
    segments: tuple[str, ...]

    @property
    def greedy(self) -> bool:
        return bool(self.segments) and self.segments[-1].endswith("+}")

    def match(self, segments: list[str]) -> dict[str, str] | None:
        """The URI labels' raw (still percent-encoded) values, if it matches."""
        if self.greedy:
            if len(segments) < len(self.segments):
                return None
        elif len(segments) != len(self.segments):
            return None
        labels: dict[str, str] = {}
        for i, pattern in enumerate(self.segments):
            if pattern.endswith("+}"):
                labels[pattern[1:-2]] = "/".join(segments[i:])
                break
            if pattern.startswith("{"):
                if not segments[i]:
                    return None
                labels[pattern[1:-1]] = segments[i]
            elif pattern != segments[i]:
                return None
        return labels


def _split_path(path: str) -> list[str]:
    path = path.rstrip("/") if path != "/" else path
    return path.split("/")[1:]


def _specificity(route: Route) -> tuple[int, ...]:
    # A literal segment wins over a label, a label over a greedy label:
    # PUT /thing-groups/addThingToThingGroup is not UpdateThingGroup.
    return tuple(2 if s.endswith("+}") else 1 if s.startswith("{") else 0 for s in route.segments)


class RestJsonService:
    """One REST-JSON service (``iot``) as its botocore model describes it."""

    def __init__(self, model: ServiceModel) -> None:
        self.model = model
        routes: dict[str, list[Route]] = {}
        for name in model.operation_names:
            op = model.operation_model(name)
            path = op.http["requestUri"].split("?", 1)[0]
            route = Route(op, op.http.get("method", "POST"), tuple(_split_path(path)))
            routes.setdefault(route.method, []).append(route)
        for method_routes in routes.values():
            method_routes.sort(key=_specificity)
        self._routes = routes
        self._error_status = {
            shape.name: int(shape.metadata.get("error", {}).get("httpStatusCode", 400))
            for shape in model.error_shapes
        }

    def route(self, method: str, path: str) -> tuple[OperationModel, dict[str, str]]:
        segments = _split_path(path)
        for route in self._routes.get(method, []):
            labels = route.match(segments)
            if labels is not None:
                return route.operation, labels
        raise ApiError(
            "UnknownOperationException",
            f"no {self.model.service_name} operation {method} {path}",
            404,
        )

    def parse(
        self, method: str, target: str, headers: Mapping[str, str], body: bytes
    ) -> tuple[str, dict[str, Any]]:
        """The operation a request calls, and its input members by member name."""
        path, _, query = target.partition("?")
        op, labels = self.route(method, path)
        shape = op.input_shape
        params: dict[str, Any] = {}
        if shape is None:
            return op.name, params
        query_values = parse_qs(query, keep_blank_values=True)
        payload = shape.serialization.get("payload")
        document = _json_body(body) if body.strip() else {}
        for name, member in shape.members.items():
            location = member.serialization.get("location")
            wire = member.serialization.get("name", name)
            if location == "uri":
                if wire in labels:
                    params[name] = _scalar(unquote(labels[wire]), member, name)
            elif location == "querystring":
                if member.type_name == "map":
                    continue  # (no iot operation the emulator serves takes one)
                values = query_values.get(wire)
                if values is None:
                    continue
                if member.type_name == "list":
                    params[name] = [_scalar(v, member.member, name) for v in values]
                else:
                    params[name] = _scalar(values[-1], member, name)
            elif location == "header":
                value = headers.get(wire.lower())
                if value is not None:
                    params[name] = _scalar(value, member, name)
            elif location is None:
                if name == payload:
                    params[name] = _check(document, member, name)
                elif payload is None and wire in document:
                    params[name] = _check(document[wire], member, name)
        missing = [name for name in shape.required_members if params.get(name) is None]
        if missing:
            raise ApiError(
                "InvalidRequestException",
                f"{len(missing)} validation error(s) detected: "
                + "; ".join(
                    f"Value null at '{n}' failed to satisfy constraint: Member must not be null"
                    for n in missing
                ),
            )
        return op.name, params

    def render(
        self, operation: str, result: Mapping[str, Any]
    ) -> tuple[int, dict[str, str], bytes]:
        """(status, headers, body) for an operation's output members."""
        op = self.model.operation_model(operation)
        status = int(op.http.get("responseCode", 200))
        headers: dict[str, str] = {}
        body: dict[str, Any] = {}
        shape = op.output_shape
        if shape is not None:
            for name, member in shape.members.items():
                value = result.get(name)
                if value is None:
                    continue
                location = member.serialization.get("location")
                wire = member.serialization.get("name", name)
                if location == "header":
                    text = str(_out(value, member))
                    headers[wire] = text.lower() if isinstance(value, bool) else text
                elif location == "statusCode":
                    status = int(value)
                else:
                    body[wire] = _out(value, member)
        return status, headers, json.dumps(body).encode()

    def render_error(self, error: ApiError) -> tuple[int, dict[str, str], bytes]:
        """As AWS answers: the code in ``x-amzn-ErrorType`` (botocore reads it
        there first), the status the model gives that error, a JSON message."""
        status = self._error_status.get(error.code, error.status)
        body: dict[str, Any] = {"message": error.message}
        extra = getattr(error, "fields", None)
        if isinstance(extra, Mapping):
            body.update(extra)
        return status, {"x-amzn-ErrorType": error.code}, json.dumps(body).encode()


def _json_body(body: bytes) -> dict[str, Any]:
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # nested past the stack
        raise ApiError("SerializationException", f"the request body is not JSON: {exc}") from None
    if not isinstance(document, dict):
        raise ApiError("SerializationException", "the request body is not a JSON object")
    return document


def _invalid(name: str, value: object, what: str) -> ApiError:
    return ApiError("InvalidRequestException", f"{name}: {str(value)[:100]!r} is not {what}")


def _scalar(value: str, shape: Shape, name: str) -> Any:
    """A URI, query string or header value as its shape's type."""
    kind = shape.type_name
    if kind in ("integer", "long"):
        try:
            return int(value)
        except ValueError:
            raise _invalid(name, value, "an integer") from None
    if kind == "boolean":
        if value.lower() not in ("true", "false"):
            raise _invalid(name, value, "true or false")
        return value.lower() == "true"
    if kind in ("float", "double"):
        try:
            return float(value)
        except ValueError:
            raise _invalid(name, value, "a number") from None
    if kind == "timestamp":
        return _timestamp(value, name)
    return value


def _timestamp(value: object, name: str) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise _invalid(name, value, "a timestamp") from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        return parsed.timestamp()
    raise _invalid(name, value, "a timestamp")


_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "boolean": (bool,),
    "integer": (int,),
    "long": (int,),
    "float": (int, float),
    "double": (int, float),
    "blob": (str,),
    "structure": (dict,),
    "map": (dict,),
    "list": (list,),
}


def _check(value: Any, shape: Shape, name: str) -> Any:
    """A body member as parsed, once its JSON type is the shape's (timestamps
    become epoch seconds); AWS refuses the request otherwise."""
    if value is None:
        return None
    kind = shape.type_name
    if kind == "timestamp":
        return _timestamp(value, name)
    expected = _JSON_TYPES.get(kind)
    if expected is not None and (
        not isinstance(value, expected) or (kind != "boolean" and isinstance(value, bool))
    ):
        raise ApiError("SerializationException", f"{name}: expected a JSON {kind}")
    if isinstance(shape, StructureShape):
        out = {}
        for key, item in value.items():
            member = shape.members.get(key)
            out[key] = _check(item, member, f"{name}.{key}") if member is not None else item
        return out
    if kind == "list":
        member_shape = shape.member
        return [_check(item, member_shape, f"{name}[{i}]") for i, item in enumerate(value)]
    if kind == "map":
        value_shape = shape.value
        return {k: _check(v, value_shape, f"{name}.{k}") for k, v in value.items()}
    return value


def _out(value: Any, shape: Shape) -> Any:
    """An output value as REST-JSON carries it (timestamps: epoch seconds)."""
    kind = shape.type_name
    if kind == "timestamp":
        if isinstance(value, datetime):
            return value.timestamp()
        if isinstance(value, str):
            try:
                return _timestamp(value, shape.name)
            except ApiError:  # not the client's fault: sent as it is
                return value
        return value
    if kind == "blob":
        raw = value.encode() if isinstance(value, str) else bytes(value)
        return base64.b64encode(raw).decode()
    if isinstance(shape, StructureShape):
        out = {}
        for key, member in shape.members.items():
            item = value.get(key)
            if item is not None:
                out[member.serialization.get("name", key)] = _out(item, member)
        return out
    if kind == "list":
        return [_out(item, shape.member) for item in value]
    if kind == "map":
        return {k: _out(v, shape.value) for k, v in value.items()}
    if kind in ("float", "double") and isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value
