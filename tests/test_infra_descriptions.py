"""OCCO's infrastructure descriptions and node definitions: read as Occopus reads them, ordered in
dependency levels, their templates rendered in Jinja2's sandbox, bad input refused with the offending key."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from berthd.infra import description, documents, templates
from berthd.sources.caller import Caller

# OCCO's own tutorial files (occopus/docs, tutorials/docker-ping), unchanged
DOCKER_PING = """\
infra_name: pinde-docker-infra
user_id: somebody@somewhere.com

nodes:
  - &R
    name: ping-receiver
    type: docker_ping_receiver_node
    variables:
      message: "Hello World! I am the receiver node."
  - &S
    name: ping-sender
    type: docker_ping_sender_node

dependencies:
  - [ *S, *R ]
"""
DOCKER_PING_NODES = """\
'node_def:docker_ping_receiver_node':
  -
    resource:
      type: docker
      endpoint: replace_with_your_docker_endpoint
      origin: https://s3.lpds.sztaki.hu/docker/busybox_helloworld.tar
      image: busybox_helloworld
      tag: latest
    contextualisation:
      type: docker
      env: ["message={{variables.message}}"]
      command: "sh -c /root/start.sh"
    health_check:
      ping: False

'node_def:docker_ping_sender_node':
  -
    resource:
      type: docker
      endpoint: replace_with_your_docker_endpoint
      origin: https://s3.lpds.sztaki.hu/docker/busybox_ping.tar
      image: busybox_ping
      tag: latest
    contextualisation:
      type: docker
      env: ["target_ip={{getip('ping-receiver')}}"]
      command: "sh -c /root/start.sh"
    health_check:
      ping: False
"""
ROOT = Caller(0, 0, (0,))


def parse(text: str) -> description.Description:
    return description.parse_description(documents.load(text))


def refused(text: str) -> str:
    with pytest.raises(documents.DocumentError) as caught:
        desc = parse(text)
        description.levels(desc)
    return str(caught.value)


def names(addresses: dict[str, list[str]] | None = None, **variables: Any) -> templates.Names:
    known = addresses or {}
    return templates.Names(
        variables=variables,
        infra_id="3fa9c1",
        infra_name="demo",
        node_id="demo-web-1",
        addresses=known.get,
    )


def test_occo_docker_ping_files_are_read_unchanged_and_deploy_receiver_then_sender() -> None:
    desc = parse(DOCKER_PING)
    assert desc.infra_name == "pinde-docker-infra"
    assert desc.dependencies == [("ping-sender", "ping-receiver")]
    assert description.levels(desc) == [["ping-receiver"], ["ping-sender"]]
    defs = description.parse_node_definitions(documents.load(DOCKER_PING_NODES))
    sender = defs["docker_ping_sender_node"][0]
    assert sender.resource_type == "docker"
    assert sender.health_check.ping is False
    env = templates.render_value(
        sender.contextualisation["env"], names({"ping-receiver": ["127.0.0.1"]}), "env"
    )
    assert env == ["target_ip=127.0.0.1"]


def test_without_dependencies_each_node_is_a_level_of_its_own_in_file_order() -> None:
    desc = parse(
        "infra_name: x\nnodes:\n  - {name: b, type: t}\n  - {name: a, type: t}\n  - {name: c, type: t}\n"
    )
    assert description.levels(desc) == [["b"], ["a"], ["c"]]


def test_three_levels_with_names_instead_of_aliases_and_the_connection_form() -> None:
    desc = parse(
        "infra_name: mix\nnodes:\n  - {name: db, type: t}\n  - {name: cache, type: t}\n"
        "  - {name: web, type: t, scaling: {min: 2}}\n  - {name: edge, type: t}\n"
        "dependencies:\n  - [web, db]\n  - {connection: [web, cache]}\n  - [edge, web]\n"
    )
    assert description.levels(desc) == [["db", "cache"], ["web"], ["edge"]]
    web = desc.nodes[2]
    assert (web.min, web.max) == (2, 2)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "infra_name: x\nnodes: [{name: a, type: t}, {name: b, type: t}, {name: c, type: t}]\n"
            "dependencies: [[a, b], [b, c], [c, a]]\n",
            "Cycle detected. Nodes in the cycle: a, b, c, a",
        ),
        (
            "infra_name: x\nnodes: [{name: a, type: t}]\ndependencies: [[a, a]]\n",
            "dependencies[0]: node 'a' depends on itself",
        ),
        (
            "infra_name: x\nnodes: [{name: a, type: t}]\ndependencies: [[a, ghost]]\n",
            "dependencies[0][1]: the dependency names no node of the description: 'ghost'",
        ),
        (
            "infra_name: my.infra\nnodes: [{name: a, type: t}]\n",
            "infra_name: infra_name \"my.infra\" cannot contain '.' character",
        ),
        ("infra_name: under_score\nnodes: [{name: a, type: t}]\n", "may contain only [a-z,0-9,-] characters"),
        ("infra_name: " + "x" * 64 + "\nnodes: [{name: a, type: t}]\n", "is too long"),
        ("nodes: [{name: a, type: t}]\n", "infra_name must be defined in infrastructure description"),
        ("infra_name: x\n", "nodes section must be defined"),
        ("infra_name: x\nnodes: [{name: a}]\n", "nodes[0].type: missing key \"type\" in node 'a'"),
        (
            "infra_name: x\nnodes: [{name: a, type: t, colour: red}]\n",
            "nodes[0].colour: unknown key 'colour' in node 'a'",
        ),
        (
            "infra_name: x\nnodes: [{name: a, type: t}]\nextra: 1\n",
            "extra: unknown key 'extra' in infrastructure description",
        ),
        (
            "infra_name: x\nnodes: [{name: a, type: t, scaling: {min: 3, max: 2}}]\n",
            "nodes[0].scaling.max: max is less than min",
        ),
        ("infra_name: x\nnodes: [{name: a, type: t, filter: [1]}]\n", "has to be a dict!"),
        (
            "infra_name: x\nnodes: [{name: a, type: t}, {name: a, type: t}]\n",
            "nodes[1].name: node 'a' is defined twice",
        ),
        ("infra_name: x\nnodes: [ {name: a, type: t\n", "invalid YAML"),
        ("infra_name: !!python/object/apply:os.system ['true']\nnodes: []\n", "invalid YAML"),
    ],
)
def test_bad_descriptions_are_refused_naming_the_offending_key(text: str, expected: str) -> None:
    assert expected in refused(text)


def test_invalid_yaml_says_where_and_never_quotes_the_file() -> None:
    message = refused("infra_name: secret-value-123\nnodes:\n  - name: a\n   type: [\n")
    assert "line" in message and "secret-value-123" not in message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "'node_def:a':\n  - {contextualisation: {type: docker}}\n",
            "'node_def:a'[0].resource: Missing 'resource' section!".replace("'node_def:a'", "node_def:a"),
        ),
        (
            "'node_def:a':\n  - resource: {type: ec2}\n",
            "node_def:a[0].resource.type: unknown resource type 'ec2'",
        ),
        ("'node_def:a':\n  - resource: {endpoint: x}\n", "node_def:a[0].resource.type: Missing key 'type'"),
        (
            "'node:a':\n  - resource: {type: docker}\n",
            "Node definition must begin with 'node_def:<nodename>'!",
        ),
        ("'node_def:a': {resource: {type: docker}}\n", "Node definition has to be a list of dictionaries!"),
        (
            "'node_def:a':\n  - resource: {type: docker}\n    cloud: 1\n",
            "node_def:a[0].cloud: Invalid section 'cloud'",
        ),
        (
            "'node_def:a':\n  - resource: {type: docker}\n    health_check: {ports: [70000]}\n",
            "health_check.ports",
        ),
    ],
)
def test_bad_node_definitions_are_refused_naming_the_offending_key(text: str, expected: str) -> None:
    with pytest.raises(documents.DocumentError) as caught:
        description.parse_node_definitions(documents.load(text))
    assert expected in str(caught.value)


def test_a_billion_laughs_document_is_refused_not_expanded() -> None:
    lines = ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 9):
        prev = chr(ord("a") + i - 1)
        here = chr(ord("a") + i)
        lines.append(f"{here}: &{here} [{', '.join(['*' + prev] * 10)}]")
    with pytest.raises(documents.DocumentError, match="more than"):
        documents.load("\n".join(lines) + "\n")


def test_variables_are_merged_deeply_the_node_winning() -> None:
    desc = parse(
        "infra_name: x\nvariables: {a: 1, deep: {k: infra, keep: yes}}\n"
        "nodes: [{name: n, type: t, variables: {a: 2, deep: {k: node}}}]\n"
    )
    assert description.merged_variables(desc, desc.nodes[0]) == {"a": 2, "deep": {"k": "node", "keep": True}}


def test_filter_keeps_the_alternatives_whose_resource_contains_it() -> None:
    resource = {"type": "docker", "endpoint": "local", "labels": {"zone": "a", "gpu": "no"}}
    assert description.matches_filter(resource, {"type": "docker", "labels": {"zone": "a"}})
    assert not description.matches_filter(resource, {"type": "local"})
    assert not description.matches_filter(resource, {"missing": 1})


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{{ ''.__class__ }}", "refused by the sandbox"),
        ("{{ ''.__class__.__mro__[1].__subclasses__() }}", "refused by the sandbox"),
        ("{{ variables.__class__ }}", "refused by the sandbox"),
        ("{{ undefined_name }}", "'undefined_name' is undefined"),
        ("{{ variables.nope }}", "has no attribute 'nope'"),
        ("{% for i in range(100) %}x{% endfor %}", "only expressions"),
        ("{% macro m() %}{% endmacro %}", "only expressions"),
        ("{% include 'x' %}", "only expressions"),
        ("{{ 'a' * 100000000 }}", "repetition"),
        ("{{ 2 ** 100000 }}", "power above"),
        ("{{ ''|center(1000000000) }}", "no filter named 'center'"),
        ("{{ getip('later') }}", "later is not deployed before this node"),
        ("{{ lipsum() }}", "'lipsum' is undefined"),
    ],
)
def test_templates_cannot_leave_the_sandbox_or_run_long(template: str, expected: str) -> None:
    with pytest.raises(templates.TemplateError) as caught:
        templates.render(template, names(), "nodes[0].env[0]")
    assert expected in str(caught.value)
    assert str(caught.value).startswith("nodes[0].env[0]: ")


def test_templates_see_occo_names() -> None:
    rendered = templates.render(
        "{{infra_id}} {{infra_name}} {{node_id}} {{variables.port}} {{getip('db')}} {{getipall('db')|join(',')}}",
        names({"db": ["10.0.0.1", "10.0.0.2"]}, port=8080),
        "x",
    )
    assert rendered == "3fa9c1 demo demo-web-1 8080 10.0.0.1 10.0.0.1,10.0.0.2"


def test_imports_read_files_beside_the_importing_one(tmp_path: Path) -> None:
    (tmp_path / "vars.yaml").write_text("message: hello\n")
    (tmp_path / "script.sh").write_text("echo hi\n")
    main = tmp_path / "infra.yaml"
    main.write_text(
        "infra_name: x\nvariables:\n  imported: !yaml_import {url: 'file://vars.yaml'}\n"
        "  script: !text_import script.sh\nnodes: [{name: a, type: t}]\n"
    )
    desc = description.parse_description(documents.load_file(ROOT, str(main)))
    assert desc.variables == {"imported": {"message": "hello"}, "script": "echo hi\n"}


@pytest.mark.parametrize("target", ["../secret.yaml", "/etc/hostname", "file://../secret.yaml", "link.yaml"])
def test_an_import_escaping_its_folder_is_refused(tmp_path: Path, target: str) -> None:
    folder = tmp_path / "infra"
    folder.mkdir()
    (tmp_path / "secret.yaml").write_text("password: hunter2\n")
    os.symlink(tmp_path / "secret.yaml", folder / "link.yaml")
    main = folder / "infra.yaml"
    main.write_text(f"infra_name: x\nvariables: !yaml_import '{target}'\nnodes: [{{name: a, type: t}}]\n")
    with pytest.raises(documents.DocumentError) as caught:
        documents.load_file(ROOT, str(main))
    assert "leaves the importing file's folder" in str(caught.value)
    assert "hunter2" not in str(caught.value)


def test_an_inline_document_cannot_import() -> None:
    with pytest.raises(documents.DocumentError, match="inline document cannot import"):
        documents.load("a: !text_import x.txt\n")


def test_a_file_the_caller_cannot_read_is_refused_as_if_missing(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to read as another user")
    private = tmp_path / "private.yaml"
    private.write_text("infra_name: x\nnodes: [{name: a, type: t}]\n")
    private.chmod(0o600)
    nobody = Caller(65534, 65534, (65534,))
    with pytest.raises(documents.DocumentError) as forbidden:
        documents.load_file(nobody, str(private))
    with pytest.raises(documents.DocumentError) as missing:
        documents.load_file(nobody, str(tmp_path / "missing.yaml"))
    assert "no such file, or you may not read that file" in str(forbidden.value)
    assert "no such file, or you may not read that file" in str(missing.value)
