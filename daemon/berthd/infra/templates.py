"""OCCO's templates (`env`, `command`, `context_variables`, health-check `urls`), rendered in Jinja2's
sandbox with OCCO's names: `{{variables.x}}`, `{{getip('node')}}`, `{{getipall('node')}}`, `{{infra_id}}`,
`{{infra_name}}`, `{{node_id}}`.

The templates come from clients, so beyond the sandbox (no attributes starting with `_`, no unsafe
methods) a template may only be expressions: no loops, macros, blocks, imports or includes, so rendering
takes time in proportion to its text. Repetition (`'a' * N`) and powers are bounded, and so is what a
template may render to. An undefined name is an error (OCCO renders it as an empty string silently).
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from typing import Any

from berthd.infra.documents import DocumentError

MAX_TEMPLATE = 8192  # characters of one template
MAX_RENDERED = 65536  # characters it may render to
MAX_REPEAT = 65536  # items or characters a `*` may make
MAX_EXPONENT = 64
MAX_BITS = 4096  # of a number a `*` or `**` may make
FILTERS = (
    "default", "d", "lower", "upper", "title", "capitalize", "trim", "string", "int", "float", "length",
    "count", "first", "last", "join", "tojson", "urlencode", "list", "min", "max", "abs", "round",
)  # fmt: skip
ALLOWED_NODES = (
    "Template", "Output", "TemplateData", "Const", "Name", "Getattr", "Getitem", "Slice", "Call", "Filter",
    "Test", "CondExpr", "Compare", "Operand", "And", "Or", "Not", "Neg", "Pos", "Add", "Sub", "Mul", "Div",
    "FloorDiv", "Mod", "Pow", "Concat", "List", "Tuple", "Dict", "Pair", "Keyword",
)  # fmt: skip


class TemplateError(DocumentError):
    pass


class _Environment:
    """One sandboxed Jinja2 environment, made at first use (Jinja2 is imported lazily)."""

    _env: Any = None

    @classmethod
    def get(cls) -> Any:
        if cls._env is None:
            cls._env = _make_environment()
        return cls._env


def _make_environment() -> Any:
    from jinja2 import StrictUndefined
    from jinja2.sandbox import SandboxedEnvironment

    class Sandbox(SandboxedEnvironment):
        intercepted_binops = frozenset({"*", "**"})

        def call_binop(self, context: Any, op: str, left: Any, right: Any) -> Any:
            if op == "**":
                if isinstance(right, int | float) and abs(right) > MAX_EXPONENT:
                    raise TemplateError(f"a power above {MAX_EXPONENT} is refused")
                if isinstance(left, int) and isinstance(right, int) and _bits(left) * abs(right) > MAX_BITS:
                    raise TemplateError(f"a number of more than {MAX_BITS} bits is refused")
                return operator.pow(left, right)
            if op == "*":
                for seq, times in ((left, right), (right, left)):
                    repeated = isinstance(seq, str | list | tuple) and isinstance(times, int)
                    if repeated and len(seq) * times > MAX_REPEAT:
                        raise TemplateError(f"a repetition of more than {MAX_REPEAT} is refused")
                if isinstance(left, int) and isinstance(right, int) and _bits(left) + _bits(right) > MAX_BITS:
                    raise TemplateError(f"a number of more than {MAX_BITS} bits is refused")
                return operator.mul(left, right)
            return super().call_binop(context, op, left, right)

    env = Sandbox(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True)
    env.filters = {name: env.filters[name] for name in FILTERS if name in env.filters}
    env.tests = {name: env.tests[name] for name in ("defined", "undefined", "none", "number", "string")}
    env.globals = {}
    return env


def _bits(number: int) -> int:
    return max(1, abs(number).bit_length())


def check_template(text: str, where: str) -> Any:
    """The compiled template, refused when it is more than expressions."""
    from jinja2 import TemplateSyntaxError, nodes

    if len(text) > MAX_TEMPLATE:
        raise TemplateError(f"{where}: a template longer than {MAX_TEMPLATE} characters")
    env = _Environment.get()
    try:
        tree = env.parse(text)
    except TemplateSyntaxError as exc:
        raise TemplateError(f"{where}: invalid template (line {exc.lineno}): {exc.message}") from None
    for node in tree.find_all(nodes.Node):
        if type(node).__name__ not in ALLOWED_NODES:
            raise TemplateError(
                f"{where}: a template may hold only expressions ({{{{ ... }}}}), not "
                f"{type(node).__name__.lower()} statements"
            )
    for node in tree.find_all(nodes.Filter):
        if node.name not in env.filters:
            raise TemplateError(f"{where}: no filter named {node.name!r}")
    return env.from_string(tree)


class Names:
    """What a template of one instance sees."""

    def __init__(
        self,
        *,
        variables: Mapping[str, Any],
        infra_id: str,
        infra_name: str,
        node_id: str,
        addresses: Callable[[str], list[str] | None],
    ) -> None:
        self.variables = variables
        self.infra_id = infra_id
        self.infra_name = infra_name
        self.node_id = node_id
        self._addresses = addresses

    def _ips(self, node: object) -> list[str]:
        if not isinstance(node, str):
            raise TemplateError("getip() and getipall() take a node's name")
        found = self._addresses(node)
        if found is None:
            raise TemplateError(
                f"getip({node!r}): {node} is not deployed before this node (it must be a dependee)"
            )
        return found

    def context(self) -> dict[str, Any]:
        return {
            "variables": self.variables,
            "infra_id": self.infra_id,
            "infra_name": self.infra_name,
            "node_id": self.node_id,
            "getip": lambda node: (self._ips(node) or [""])[0],
            "getipall": self._ips,
        }


def render(text: str, names: Names, where: str) -> str:
    from jinja2 import TemplateError as JinjaError
    from jinja2.exceptions import SecurityError, UndefinedError

    template = check_template(text, where)
    try:
        out = template.render(names.context())
    except TemplateError as exc:
        raise TemplateError(f"{where}: {exc}") from None
    except SecurityError as exc:
        raise TemplateError(f"{where}: refused by the sandbox: {exc}") from None
    except UndefinedError as exc:
        raise TemplateError(f"{where}: {exc.message}") from None
    except JinjaError as exc:
        raise TemplateError(f"{where}: {exc.message or type(exc).__name__}") from None
    except (TypeError, ValueError, ArithmeticError, LookupError) as exc:
        raise TemplateError(f"{where}: {type(exc).__name__}: {exc}") from None
    if len(out) > MAX_RENDERED:
        raise TemplateError(f"{where}: renders to more than {MAX_RENDERED} characters")
    return str(out)


def render_value(value: Any, names: Names, where: str) -> Any:
    """Every string in a value (lists and mappings walked) rendered."""
    if isinstance(value, str):
        return render(value, names, where)
    if isinstance(value, list):
        return [render_value(v, names, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {k: render_value(v, names, f"{where}.{k}") for k, v in value.items()}
    return value
