"""AWS's query protocol (IAM's and STS's): a form-encoded ``Action=...`` request,
an XML answer, both shaped by botocore's model of the service."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs
from xml.etree import ElementTree

from botocore.model import ServiceModel, Shape, StructureShape

from loadgen.emulator.api.errors import ApiError

# A query operation's handler: its flat parameters (``RoleName``, ``MaxItems``,
# ...) as strings, and its output members by name.
QueryHandler = Callable[[dict[str, str]], dict[str, Any]]


class QueryService:
    def __init__(self, model: ServiceModel, handlers: Mapping[str, QueryHandler]) -> None:
        self.model = model
        self.handlers = dict(handlers)
        self.namespace = model.metadata.get("xmlNamespace", "")
        self._error_shapes = {shape.name: shape for shape in model.error_shapes}
        self._codes = {
            shape.name: str(shape.metadata.get("error", {}).get("code", shape.name))
            for shape in model.error_shapes
        }

    def parse(self, target: str, body: bytes) -> tuple[str, dict[str, str]]:
        """The action and its parameters, from the form body (or the query string)."""
        form = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
        for key, values in parse_qs(target.partition("?")[2], keep_blank_values=True).items():
            form.setdefault(key, values)
        params = {key: values[-1] for key, values in form.items()}
        action = params.pop("Action", "")
        params.pop("Version", None)
        if action not in self.handlers:
            raise ApiError(
                "InvalidAction",
                f"{self.model.service_name} action {action or '(none)'} is not emulated",
                400,
            )
        return action, params

    def call(self, action: str, params: dict[str, str]) -> dict[str, Any]:
        return self.handlers[action](params)

    def render(self, action: str, result: Mapping[str, Any], request_id: str) -> bytes:
        root = ElementTree.Element(f"{action}Response", xmlns=self.namespace)
        op = self.model.operation_model(action)
        shape = op.output_shape
        if shape is not None:
            wrapper = shape.serialization.get("resultWrapper", f"{action}Result")
            _structure(ElementTree.SubElement(root, wrapper), result, shape)
        metadata = ElementTree.SubElement(root, "ResponseMetadata")
        ElementTree.SubElement(metadata, "RequestId").text = request_id
        return _xml(root)

    def render_error(self, error: ApiError, request_id: str) -> tuple[int, bytes]:
        """(status, body); ``error.code`` may be the model's shape name
        (``NoSuchEntityException``) or the code on the wire (``NoSuchEntity``)."""
        shape = self._error_shapes.get(error.code) or self._error_shapes.get(
            error.code + "Exception"
        )
        code, status = error.code, error.status
        if shape is not None:
            code = self._codes[shape.name]
            status = int(shape.metadata.get("error", {}).get("httpStatusCode", status))
        root = ElementTree.Element("ErrorResponse", xmlns=self.namespace)
        element = ElementTree.SubElement(root, "Error")
        ElementTree.SubElement(element, "Type").text = "Sender" if status < 500 else "Receiver"
        ElementTree.SubElement(element, "Code").text = code
        ElementTree.SubElement(element, "Message").text = error.message
        ElementTree.SubElement(root, "RequestId").text = request_id
        return status, _xml(root)


def _xml(root: ElementTree.Element) -> bytes:
    return bytes(ElementTree.tostring(root, encoding="utf-8", xml_declaration=True))


def _structure(element: ElementTree.Element, value: Mapping[str, Any], shape: Shape) -> None:
    assert isinstance(shape, StructureShape)
    for name, member in shape.members.items():
        item = value.get(name)
        if item is not None:
            _value(element, member.serialization.get("name", name), item, member)


def _value(parent: ElementTree.Element, name: str, value: Any, shape: Shape) -> None:
    element = ElementTree.SubElement(parent, name)
    kind = shape.type_name
    if kind == "structure":
        _structure(element, value, shape)
    elif kind == "list":
        member = shape.member
        item_name = member.serialization.get("name", "member")
        for item in value:
            _value(element, item_name, item, member)
    elif kind == "boolean":
        element.text = "true" if value else "false"
    elif kind == "timestamp":
        when = value if isinstance(value, datetime) else datetime.fromtimestamp(value, UTC)
        element.text = when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    else:
        element.text = str(value)
