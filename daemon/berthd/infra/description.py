"""OCCO's infrastructure descriptions and node definitions, checked as Occopus 1.x reads them, and the
order a description is deployed in.

A description: `infra_name` (required), `user_id`, `nodes` (required), `dependencies`, `variables`; any other
key is an error. A node: `name`, `type` (required), `scaling` (`min`, default 1; `max`, default `min`),
`filter`, `variables`. A dependency is `[dependent, dependee]` or `{connection: [dependent, dependee]}`,
whose items are node mappings (YAML aliases, as in OCCO's files) or node names. Where OCCO is lenient,
berthd refuses: a dependency naming no node (OCCO ignores it), a self-dependency, a cycle (OCCO's words:
`Cycle detected.`, with the nodes in it).

Node definitions: `'node_def:NAME'` keys, each a list of alternatives with `resource` (required, with a
`type`), `contextualisation`, `health_check`, `config_management`.

Every error names the path of the offending key (`nodes[1].scaling.min`), never the file's text.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import msgspec

from berthd.infra.documents import DocumentError

HOSTNAME = re.compile(r"^[a-z0-9-]{1,63}\Z", re.IGNORECASE)
DESCRIPTION_KEYS = ("user_id", "infra_name", "nodes", "dependencies", "variables")
NODE_KEYS = ("name", "type", "scaling", "filter", "variables")
ALTERNATIVE_KEYS = ("resource", "contextualisation", "health_check", "config_management")
HEALTH_KEYS = ("ping", "ports", "urls", "timeout")
RESOURCE_TYPES = ("docker", "local", "git", "archive")
MAX_INSTANCES = 100
DEFAULT_HEALTH_TIMEOUT = 600
NODE_DEF = "node_def:"


class Node(msgspec.Struct, frozen=True):
    name: str
    type: str
    min: int = 1
    max: int = 1
    filter: dict[str, Any] = msgspec.field(default_factory=dict)
    variables: dict[str, Any] = msgspec.field(default_factory=dict)


class Description(msgspec.Struct, frozen=True):
    infra_name: str
    nodes: list[Node]
    dependencies: list[tuple[str, str]]  # (dependent, dependee)
    variables: dict[str, Any] = msgspec.field(default_factory=dict)
    user_id: str | None = None


class HealthCheck(msgspec.Struct, frozen=True):
    ping: bool = True
    ports: list[int] = msgspec.field(default_factory=list)
    urls: list[str] = msgspec.field(default_factory=list)
    timeout: float = DEFAULT_HEALTH_TIMEOUT


class Alternative(msgspec.Struct, frozen=True):
    resource: dict[str, Any]
    contextualisation: dict[str, Any] = msgspec.field(default_factory=dict)
    health_check: HealthCheck = msgspec.field(default_factory=HealthCheck)
    config_management: dict[str, Any] = msgspec.field(default_factory=dict)

    @property
    def resource_type(self) -> str:
        return str(self.resource["type"])


def _error(path: str, message: str) -> DocumentError:
    return DocumentError(f"{path}: {message}" if path else message)


def _hostname_problem(value: object) -> str | None:
    """OCCO's `is_valid_hostname`, in its words."""
    if not isinstance(value, str):
        return "must be a string"
    if "." in value:
        return "cannot contain '.' character"
    if len(value) > 63:
        return "is too long"
    if not HOSTNAME.match(value):
        return "may contain only [a-z,0-9,-] characters"
    return None


def _mapping(value: object, path: str, what: str) -> Mapping[str, Any]:
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise _error(path, f"{what} must be a mapping")
    return value


def _unknown(keys: Mapping[str, Any], allowed: tuple[str, ...], path: str, where: str) -> None:
    for key in keys:
        if key not in allowed:
            raise _error(f"{path}.{key}" if path else key, f"unknown key {key!r} in {where}")


def parse_description(value: object) -> Description:
    doc = _mapping(value, "", "an infrastructure description")
    _unknown(doc, DESCRIPTION_KEYS, "", "infrastructure description")
    if "infra_name" not in doc:
        raise _error("infra_name", "infra_name must be defined in infrastructure description")
    problem = _hostname_problem(doc["infra_name"])
    if problem:
        raise _error("infra_name", f'infra_name "{doc["infra_name"]}" {problem}')
    if "nodes" not in doc:
        raise _error("nodes", "nodes section must be defined in infrastructure description")
    raw_nodes = doc["nodes"]
    if not isinstance(raw_nodes, list) or not raw_nodes:
        raise _error("nodes", "nodes must be a non-empty list")
    nodes = [_parse_node(raw, f"nodes[{i}]") for i, raw in enumerate(raw_nodes)]
    names = [n.name for n in nodes]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise _error(f"nodes[{i}].name", f"node {name!r} is defined twice")
    dependencies = _parse_dependencies(doc.get("dependencies"), set(names))
    variables = doc.get("variables") or {}
    _mapping(variables, "variables", "variables")
    user_id = doc.get("user_id")
    return Description(
        str(doc["infra_name"]),
        nodes,
        dependencies,
        dict(variables),
        None if user_id is None else str(user_id),
    )


def _parse_node(raw: object, path: str) -> Node:
    node = _mapping(raw, path, "a node")
    if "name" not in node:
        raise _error(f"{path}.name", 'missing key "name" in node')
    problem = _hostname_problem(node["name"])
    if problem:
        raise _error(f"{path}.name", f'node "{node["name"]}" {problem}')
    name = str(node["name"])
    if "type" not in node:
        raise _error(f"{path}.type", f'missing key "type" in node {name!r}')
    if not isinstance(node["type"], str) or not node["type"]:
        raise _error(f"{path}.type", "a node's type is the name of a node definition")
    _unknown(node, NODE_KEYS, path, f"node {name!r}")
    scaling = _mapping(node.get("scaling") or {}, f"{path}.scaling", "scaling")
    _unknown(scaling, ("min", "max"), f"{path}.scaling", f"scaling of node {name!r}")
    low = scaling.get("min", 1)
    high = scaling.get("max", low)
    for key, number in (("min", low), ("max", high)):
        if isinstance(number, bool) or not isinstance(number, int) or not 0 <= number <= MAX_INSTANCES:
            raise _error(f"{path}.scaling.{key}", f"must be a whole number from 0 to {MAX_INSTANCES}")
    if high < low:
        raise _error(f"{path}.scaling.max", "max is less than min")
    if "filter" in node and not isinstance(node["filter"], dict):
        raise _error(f"{path}.filter", f"unknown type of filter in node {name!r} - has to be a dict!")
    variables = _mapping(node.get("variables") or {}, f"{path}.variables", "variables")
    return Node(name, node["type"], low, high, dict(node.get("filter") or {}), dict(variables))


def _parse_dependencies(raw: object, names: set[str]) -> list[tuple[str, str]]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise _error("dependencies", "dependencies must be a list")
    pairs: list[tuple[str, str]] = []
    for i, item in enumerate(raw):
        path = f"dependencies[{i}]"
        if isinstance(item, dict):
            if "connection" not in item:
                raise _error(f"{path}.connection", "undefined connection")
            item, path = item["connection"], f"{path}.connection"
        if not isinstance(item, list) or len(item) != 2:
            raise _error(path, "a dependency is a pair [dependent, dependee]")
        ends: list[str] = []
        for j, end in enumerate(item):
            name = end.get("name") if isinstance(end, dict) else end
            if not isinstance(name, str) or name not in names:
                shown = name if isinstance(name, str) else type(name).__name__
                raise _error(f"{path}[{j}]", f"the dependency names no node of the description: {shown!r}")
            ends.append(name)
        if ends[0] == ends[1]:
            raise _error(path, f"node {ends[0]!r} depends on itself")
        pairs.append((ends[0], ends[1]))
    return pairs


def levels(description: Description) -> list[list[str]]:
    """The nodes in deploy order: each level's nodes depend only on nodes of earlier levels. Without
    dependencies, one node a level in file order (OCCO's sequential order). A cycle is refused, in OCCO's
    words, naming the nodes in it."""
    order = [n.name for n in description.nodes]
    if not description.dependencies:
        return [[name] for name in order]
    needs: dict[str, set[str]] = {name: set() for name in order}
    for dependent, dependee in description.dependencies:
        needs[dependent].add(dependee)
    placed: set[str] = set()
    result: list[list[str]] = []
    while len(placed) < len(order):
        level = [name for name in order if name not in placed and needs[name] <= placed]
        if not level:
            raise DocumentError(f"Cycle detected. Nodes in the cycle: {', '.join(_cycle(needs, placed))}")
        result.append(level)
        placed.update(level)
    return result


def _cycle(needs: dict[str, set[str]], placed: set[str]) -> list[str]:
    """One cycle among the nodes not placed (each of them waits on another one of them)."""
    start = next(name for name in needs if name not in placed)
    path, seen = [start], {start: 0}
    while True:
        step = sorted(needs[path[-1]] - placed)[0]
        if step in seen:
            return [*path[seen[step] :], step]
        seen[step] = len(path)
        path.append(step)


def parse_node_definitions(value: object) -> dict[str, list[Alternative]]:
    doc = _mapping(value, "", "node definitions")
    if not doc:
        raise _error("", "no node definitions ('node_def:NAME' keys) in the document")
    found: dict[str, list[Alternative]] = {}
    for key, raw in doc.items():
        if not key.startswith(NODE_DEF) or not key[len(NODE_DEF) :]:
            raise _error(key, "Node definition must begin with 'node_def:<nodename>'!")
        name = key[len(NODE_DEF) :]
        if not HOSTNAME.match(name.replace("_", "-")):
            raise _error(key, "a node definition's name is letters, digits, '-' and '_', at most 63")
        if not isinstance(raw, list) or not raw or not all(isinstance(a, dict) for a in raw):
            raise _error(key, "Node definition has to be a list of dictionaries!")
        found[name] = [_parse_alternative(alt, f"{key}[{i}]") for i, alt in enumerate(raw)]
    return found


def _parse_alternative(alt: Mapping[str, Any], path: str) -> Alternative:
    for key in alt:
        if key not in ALTERNATIVE_KEYS:
            raise _error(f"{path}.{key}", f"Invalid section {key!r}")
    if "resource" not in alt:
        raise _error(f"{path}.resource", "Missing 'resource' section!")
    resource = _mapping(alt["resource"], f"{path}.resource", "resource")
    if "type" not in resource:
        raise _error(f"{path}.resource.type", "Missing key 'type'")
    if resource["type"] not in RESOURCE_TYPES:
        raise _error(
            f"{path}.resource.type",
            f"unknown resource type {resource['type']!r}: berthd has {', '.join(RESOURCE_TYPES)}",
        )
    sections: dict[str, dict[str, Any]] = {}
    for section in ("contextualisation", "config_management"):
        if section in alt:
            body = _mapping(alt[section], f"{path}.{section}", section)
            if "type" not in body:
                raise _error(f"{path}.{section}.type", "Missing key 'type'!")
            sections[section] = dict(body)
    if "config_management" in sections:
        raise _error(f"{path}.config_management", "berthd has no config management (chef, puppet)")
    health = _parse_health(alt.get("health_check"), f"{path}.health_check")
    return Alternative(dict(resource), sections.get("contextualisation", {}), health)


def _parse_health(raw: object, path: str) -> HealthCheck:
    if raw is None:
        return HealthCheck()
    body = _mapping(raw, path, "health_check")
    _unknown(body, HEALTH_KEYS, path, "health_check")
    ping = body.get("ping", True)
    if not isinstance(ping, bool):
        raise _error(f"{path}.ping", "must be true or false")
    ports = body.get("ports") or []
    if not isinstance(ports, list) or not all(
        isinstance(p, int) and not isinstance(p, bool) and 0 < p < 65536 for p in ports
    ):
        raise _error(f"{path}.ports", "must be a list of TCP ports (1 to 65535)")
    urls = body.get("urls") or []
    if not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
        raise _error(f"{path}.urls", "must be a list of URLs")
    timeout = body.get("timeout", DEFAULT_HEALTH_TIMEOUT)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout <= 86400:
        raise _error(f"{path}.timeout", "must be a number of seconds from 1 to 86400")
    return HealthCheck(ping, list(ports), list(urls), float(timeout))


def merged_variables(description: Description, node: Node) -> dict[str, Any]:
    """OCCO's `dict_merge`: the infrastructure's variables under the node's, mappings merged deeply, the
    node winning."""
    return _merge(description.variables, node.variables)


def _merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    result = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = _merge(result[key], value)
        else:
            result[key] = value
    return result


def matches_filter(resource: Mapping[str, Any], wanted: Mapping[str, Any]) -> bool:
    """OCCO's filter: the resource contains every key of `wanted` with the same value (deeply)."""
    for key, value in wanted.items():
        if key not in resource:
            return False
        have = resource[key]
        if isinstance(value, dict) and isinstance(have, dict):
            if not matches_filter(have, value):
                return False
        elif have != value:
            return False
    return True
