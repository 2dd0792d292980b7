"""What a CA's provisioning template says, read from its registration config."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


def read_template(body: str) -> dict[str, Any] | None:
    """The template of a registration config's ``templateBody``, if it has the
    shape AWS runs (an object with its ``Resources``)."""
    try:
        template = json.loads(body, strict=False)
        resources = template["Resources"]
    except (ValueError, KeyError, TypeError):
        return None
    return template if isinstance(resources, dict) else None


@dataclass(frozen=True)
class TemplatePolicies:
    """Whose the policies attached to a CA's devices are, as its template tells.

    A template's policy has a ``PolicyName`` or a ``PolicyDocument``, never both
    (AWS refuses a template with both): JITP creates a policy only from a
    ``PolicyDocument``, and only attaches one named alone, which the account
    had before the storm. ``known`` is False when there is no template to read
    (a CA registered without one): every policy is then taken for JITP's."""

    known: bool = False
    # The names written as literals of the policies it attaches by name alone.
    named: frozenset[str] = frozenset()
    # A policy named alone whose name is computed per device (Fn::Join, Ref):
    # which of the account's policies it names cannot be read from the template.
    computed_names: bool = False
    # The documents JITP creates policies of, parsed; None when one is computed.
    documents: tuple[Any, ...] | None = ()

    def owner(self, name: str, document: Callable[[], str]) -> str | None:
        """Why policy ``name`` is the account's own (kept), or None when JITP
        created it. ``document`` fetches its document: asked only when the
        template cannot tell by the name."""
        if not self.known:
            return None
        if name in self.named:
            return "named by the CA's template: the account's own"
        if self.documents == ():
            return "the CA's template creates no policy: the account's own"
        if not self.computed_names:
            return None
        if self.documents is None:
            return "the CA's template computes the names of the account's policies it attaches"
        try:
            ours = json.loads(document(), strict=False) in self.documents
        except ValueError:
            ours = False
        return None if ours else "named by the CA's template: the account's own"


def template_policies(config: Any) -> TemplatePolicies:
    """What a CA's registration config says of its devices' policies."""
    body = config.get("templateBody") if isinstance(config, dict) else None
    template = read_template(body) if isinstance(body, str) else None
    if template is None:
        return TemplatePolicies()
    named: set[str] = set()
    computed = False
    documents: list[Any] | None = []
    for spec in template["Resources"].values():
        props = spec.get("Properties") if isinstance(spec, dict) else None
        if not isinstance(props, dict) or spec.get("Type") != "AWS::IoT::Policy":
            continue
        if "PolicyDocument" in props:
            document = props["PolicyDocument"]
            try:
                parsed = json.loads(document, strict=False) if isinstance(document, str) else None
            except ValueError:
                parsed = None
            if parsed is None or documents is None:
                documents = None  # computed (or no JSON AWS would take): not comparable
            else:
                documents.append(parsed)
        elif isinstance(props.get("PolicyName"), str):
            named.add(props["PolicyName"])
        elif "PolicyName" in props:
            computed = True
    return TemplatePolicies(
        True, frozenset(named), computed, None if documents is None else tuple(documents)
    )
