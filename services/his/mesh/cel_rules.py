"""The CRDs' own CEL rules (`x-kubernetes-validations`), evaluated as the API server would.

A CRD's OpenAPI schema can carry CEL rules the API server evaluates on every create and update
(Istio's: a duration of at least 1ms, ports in 1-65535, only one of selector/targetRefs, ...).
JSON Schema cannot express them, so `his.mesh.schema` evaluates them here with cel-expr-python,
the Python binding of CEL's C++ implementation (the same language definition as cel-go, which
the API server uses), and what the API server would refuse becomes a finding before kubectl apply.

Kubernetes' semantics, as far as a check of the objects alone can follow them:
- a rule applies where it is written: `self` is the node the schema puts it on, each item of an
  array, each value of a map; a field that is absent or null is not evaluated;
- `self` holds the fields the schema declares (unknown fields are pruned by the server; here the
  strict schema check reports them), numbers typed as the schema says, property names escaped as
  Kubernetes escapes them (`namespace` → `__namespace__`, `a-b` → `a__dash__b`);
- `message`, else `messageExpression`, else `failed rule: <rule>`; `fieldPath` is added to the
  place; an evaluation error fails the rule, as it fails the request;
- transition rules (those that read `oldSelf`) only run on an update, against the stored object,
  which a check of files does not have: they are skipped and listed, never counted as passed;
- the Kubernetes CEL libraries beyond standard CEL: the strings, optional and bindings
  (`cel.bind`) extensions of the C++ runtime; implemented here: URLs (`url`, `isURL`,
  `getScheme`, `getHost`, `getHostname`, `getPort`, `getEscapedPath`), `isIP`/`isCIDR`, lists
  (`isSorted`, `sum`, `min`, `max`, `indexOf`, `lastIndexOf`), regex (`find`, `findAll`) and
  sets (`sets.contains`, `sets.equivalent`, `sets.intersects`). A rule that does not compile (a
  function not here: quantity, `ip()`/`cidr()` objects, semver, format, ...) is listed as not
  evaluated, never passed silently. Istio 1.28's rules all compile (a test checks it).

Limits: rule cost budgets are not estimated (the API server refuses such a CRD, not an object);
durations follow CEL's C++ parser, which refuses `µs` where Go's accepts it.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import re2
from cel_expr_python import cel
from cel_expr_python.ext import ext_bindings, ext_optional, ext_strings

Schema = Mapping[str, Any]
Place = tuple[int | str, ...]  # field path from the object's root

RULES = "x-kubernetes-validations"
# Kubernetes escapes a property name that is a CEL reserved word as __word__ (apiserver/cel).
_RESERVED = frozenset(
    {
        *("true", "false", "null", "in", "as", "break", "const", "continue", "else", "for"),
        *("function", "if", "import", "let", "loop", "package", "namespace", "return", "var"),
        *("void", "while"),
    }
)
_ESCAPES = {"__": "__underscores__", ".": "__dot__", "-": "__dash__", "/": "__slash__"}
_ESCAPABLE = re.compile(r"^[A-Za-z_.\-/][A-Za-z0-9_.\-/]*$")
_STRING_LITERAL = re.compile(r"""'(?:\\.|[^'\\])*'|"(?:\\.|[^"\\])*\"""")
_OLD_SELF = re.compile(r"\boldSelf\b")


@dataclass(frozen=True)
class Violation:
    """A rule the object breaks: where (`place`, plus the rule's own `fieldPath`), the rule, its
    message, the value of `self`, and the evaluation error when it failed by error."""

    place: Place
    field_path: str
    rule: str
    message: str
    value: Any
    error: str = ""


@dataclass(frozen=True)
class Unevaluated:
    """A rule that applied to the object but was not evaluated, and why."""

    place: Place
    rule: str
    reason: str


@dataclass
class Outcome:
    """What evaluating one object's rules gave; `evaluated` counts rule evaluations."""

    violations: list[Violation] = field(default_factory=list)
    unevaluated: list[Unevaluated] = field(default_factory=list)
    evaluated: int = 0


def evaluate(obj: Any, schema: Schema) -> Outcome:
    """Evaluate every CEL rule of `schema` (an openAPIV3Schema) at its place in `obj`."""
    outcome = Outcome()
    # As the API server gets it: JSON (a YAML date is the string written, as kubectl sends it).
    obj = json.loads(json.dumps(obj, default=str))
    for place, node, node_schema in _nodes(obj, schema, ()):
        for rule in node_schema.get(RULES, []):
            _apply(rule, place, node, node_schema, outcome)
    return outcome


def rules_in(schema: Schema) -> Iterator[tuple[Place, Mapping[str, Any]]]:
    """Every rule of a schema with its schema place (`*` for an item or map value)."""
    for rule in schema.get(RULES, []):
        yield (), rule
    for name, sub in (schema.get("properties") or {}).items():
        for place, rule in rules_in(sub):
            yield (name, *place), rule
    for word in ("items", "additionalProperties"):
        sub = schema.get(word)
        if isinstance(sub, dict):
            for place, rule in rules_in(sub):
                yield ("*", *place), rule


def compile_error(rule: str) -> str:
    """Why `rule` cannot be evaluated here ('' when it can): it does not compile, returns no
    bool, or is a transition rule."""
    if is_transition(rule):
        return "transition rule (reads oldSelf): the API server runs it on update only"
    program = _program(rule)
    return program if isinstance(program, str) else ""


def is_transition(rule: str) -> bool:
    """Whether a rule reads `oldSelf` (outside string literals)."""
    return bool(_OLD_SELF.search(_STRING_LITERAL.sub("''", rule)))


# --- walking the object with its schema -------------------------------------------------------


def _nodes(value: Any, schema: Schema, place: Place) -> Iterator[tuple[Place, Any, Schema]]:
    """Each present, non-null node whose JSON type fits its schema, with its place."""
    if value is None or not _fits(value, schema):
        return  # absent or null: not evaluated; a wrong type is the schema check's finding
    yield place, value, schema
    if isinstance(value, dict):
        properties = schema.get("properties")
        extra = schema.get("additionalProperties")
        for name, item in value.items():
            if properties and name in properties:
                yield from _nodes(item, properties[name], (*place, name))
            elif isinstance(extra, dict):
                yield from _nodes(item, extra, (*place, name))
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(value):
            yield from _nodes(item, schema["items"], (*place, index))


def _fits(value: Any, schema: Schema) -> bool:
    if schema.get("x-kubernetes-int-or-string"):
        return isinstance(value, int | str) and not isinstance(value, bool)
    kind = schema.get("type")
    if kind is None:
        return True
    return {
        "object": isinstance(value, dict),
        "array": isinstance(value, list),
        "string": isinstance(value, str),
        "boolean": isinstance(value, bool),
        "integer": isinstance(value, int) and not isinstance(value, bool),
        "number": isinstance(value, int | float) and not isinstance(value, bool),
    }.get(str(kind), True)


def _cel_value(value: Any, schema: Schema) -> Any:
    """`value` as CEL sees it: declared fields only, escaped names, numbers typed by schema."""
    if value is None or not _fits(value, schema):
        return value
    if isinstance(value, dict):
        properties = schema.get("properties")
        extra = schema.get("additionalProperties")
        if properties:
            kept = {
                escaped: _cel_value(item, properties[name])
                for name, item in value.items()
                if name in properties and (escaped := escape(name)) is not None
            }
            if schema.get("x-kubernetes-preserve-unknown-fields"):
                kept.update({n: v for n, v in value.items() if n not in properties})
            return kept
        if isinstance(extra, dict):
            return {name: _cel_value(item, extra) for name, item in value.items()}
        return value
    if isinstance(value, list):
        items = schema.get("items")
        return [_cel_value(item, items) for item in value] if isinstance(items, dict) else value
    if schema.get("type") == "number":
        return float(value)
    return value


def escape(name: str) -> str | None:
    """A property name as a CEL rule reads it (Kubernetes' rule), None when it cannot."""
    if name in _RESERVED:
        return f"__{name}__"
    if not _ESCAPABLE.match(name):
        return None
    return re.sub(r"__|[.\-/]", lambda match: _ESCAPES[match[0]], name)


# --- evaluating -------------------------------------------------------------------------------


def _apply(
    rule: Mapping[str, Any], place: Place, node: Any, schema: Schema, outcome: Outcome
) -> None:
    text = str(rule.get("rule", ""))
    reason = compile_error(text)
    if reason:
        outcome.unevaluated.append(Unevaluated(place, text, reason))
        return
    program = _program(text)
    assert not isinstance(program, str)  # compile_error said it compiles
    data = {"self": _cel_value(node, schema)}
    outcome.evaluated += 1
    result = program.eval(data=data)
    returned = result.type()
    if returned == cel.Type.BOOL and result.value() is True:
        return
    if returned not in (cel.Type.BOOL, cel.Type.ERROR):
        # `self` is typed dyn here, so this shows only now; the API server, which types `self`
        # from the schema, would have refused the CRD itself.
        outcome.evaluated -= 1  # counted above; it was not really evaluated
        outcome.unevaluated.append(
            Unevaluated(place, text, f"returns {returned.name().lower()}, not bool")
        )
        return
    # The C++ runtime prefixes its status code (INVALID_ARGUMENT: ...); the reason is the rest.
    error = re.sub(r"^[A-Z_]+: ", "", str(result.value())) if returned == cel.Type.ERROR else ""
    outcome.violations.append(
        Violation(
            place=place,
            field_path=str(rule.get("fieldPath", "")),
            rule=text,
            message=_message(rule, data),
            value=node,
            error=error,
        )
    )


def _message(rule: Mapping[str, Any], data: dict[str, Any]) -> str:
    """The rule's message as the API server gives it."""
    if rule.get("message"):
        return str(rule["message"])
    expression = rule.get("messageExpression")
    if expression:
        program = _program(str(expression), returns="string")
        if not isinstance(program, str):
            result = program.eval(data=data)
            if result.type() == cel.Type.STRING and str(result.value()).strip():
                return str(result.value())
    return f"failed rule: {rule.get('rule', '')}"


@cache
def _program(text: str, returns: str = "bool") -> cel.Expression | str:
    """A compiled rule (or message expression, `returns="string"`), or why it does not compile
    (cached: the same rules recur on every object)."""
    try:
        program = _environment().compile(text)
    except RuntimeError as error:  # cel-expr-python reports compile errors as RuntimeError
        return f"does not compile here: {_first_line(str(error))}"
    want = cel.Type.BOOL if returns == "bool" else cel.Type.STRING
    got = program.return_type()
    if got not in (want, cel.Type.DYN):
        return f"returns {got.name().lower()}, not {want.name().lower()}"
    return program


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else text


@cache
def _environment() -> cel.Env:
    """CEL with the Kubernetes libraries the CRD rules may use (see the module's docstring)."""
    return cel.NewEnv(
        variables={"self": cel.Type.DYN},
        extensions=[
            ext_strings.ExtStrings(),
            ext_optional.ExtOptional(),
            ext_bindings.ExtBindings(),
            _kubernetes(),
        ],
    )


# --- the Kubernetes library functions (k8s.io/apiserver/pkg/cel/library) ----------------------

# Kubernetes' URL is an opaque CEL type; cel-expr-python cannot return opaque values from
# Python, so a URL is a map of its parts here, reachable only through the getters below.
_URL = cel.Type.Map(cel.Type.STRING, cel.Type.STRING)
_URL_PARTS = {
    "getScheme": "scheme",
    "getHost": "host",
    "getHostname": "hostname",
    "getPort": "port",
    "getEscapedPath": "path",
}


def _kubernetes() -> cel.CelExtension:
    def overload(
        name: str, returns: cel.Type, params: list[cel.Type], impl: Callable[..., Any], **kw: Any
    ) -> cel.FunctionDecl:
        return cel.FunctionDecl(name, [cel.Overload(name, returns, params, impl=impl, **kw)])

    string, boolean, dyn = cel.Type.STRING, cel.Type.BOOL, cel.Type.DYN
    listed, strings = cel.Type.List(dyn), cel.Type.List(string)
    getters = [
        overload(getter, string, [_URL], _getter(part), is_member=True)
        for getter, part in _URL_PARTS.items()
    ]
    member = {"is_member": True}
    lists = [
        overload("isSorted", boolean, [listed], _is_sorted, **member),
        overload("sum", dyn, [listed], _sum, **member),
        overload("min", dyn, [listed], _least, **member),
        overload("max", dyn, [listed], _greatest, **member),
        overload("indexOf", cel.Type.INT, [listed, dyn], _index_of, **member),
        overload("lastIndexOf", cel.Type.INT, [listed, dyn], _last_index_of, **member),
    ]
    sets = [
        overload("sets.contains", boolean, [listed, listed], lambda a, b: all(x in a for x in b)),
        overload("sets.equivalent", boolean, [listed, listed], _equivalent),
        overload("sets.intersects", boolean, [listed, listed], lambda a, b: any(x in a for x in b)),
    ]
    regex = [
        overload("find", string, [string, string], _find, **member),
        cel.FunctionDecl(
            "findAll",
            [
                cel.Overload("findAll", strings, [string, string], is_member=True, impl=_find_all),
                cel.Overload(
                    "findAll_limit",
                    strings,
                    [string, string, cel.Type.INT],
                    is_member=True,
                    impl=_find_all,
                ),
            ],
        ),
    ]
    return cel.CelExtension(
        "his.kubernetes",
        [
            overload("url", _URL, [string], _url),
            overload("isURL", boolean, [string], is_url),
            overload("isIP", boolean, [string], is_ip),
            overload("isCIDR", boolean, [string], is_cidr),
            *getters,
            *lists,
            *sets,
            *regex,
        ],
    )


# Kubernetes' lists library (k8s.io/apiserver/pkg/cel/library/lists.go).


def _is_sorted(items: list[Any]) -> bool:
    return list(items) == sorted(items)


def _sum(items: list[Any]) -> Any:
    return sum(items) if items else 0


def _least(items: list[Any]) -> Any:
    if not items:
        raise ValueError("min called on empty list")
    return min(items)


def _greatest(items: list[Any]) -> Any:
    if not items:
        raise ValueError("max called on empty list")
    return max(items)


def _index_of(items: list[Any], item: Any) -> int:
    return next((index for index, x in enumerate(items) if x == item), -1)


def _last_index_of(items: list[Any], item: Any) -> int:
    return next((index for index in reversed(range(len(items))) if items[index] == item), -1)


def _equivalent(a: list[Any], b: list[Any]) -> bool:
    return all(x in b for x in a) and all(x in a for x in b)


# Kubernetes' regex library (RE2, as Go's regexp): the first match or '', and all matches.


def _find(text: str, pattern: str) -> str:
    match = re2.search(pattern, text)
    return match.group(0) if match else ""


def _find_all(text: str, pattern: str, limit: int = -1) -> list[str]:
    found = [m.group(0) for m in re2.finditer(pattern, text)]
    return found if limit < 0 else found[:limit]


def _getter(part: str) -> Callable[[dict[str, str]], str]:
    return lambda url: url[part]


def _url(text: str) -> dict[str, str]:
    try:
        return parse_request_uri(text)
    except ValueError as error:
        raise ValueError(f"URL parse error during conversion from string: {error}") from error


def is_url(text: str) -> bool:
    """Kubernetes' `isURL`: whether Go's url.ParseRequestURI accepts the string."""
    try:
        parse_request_uri(text)
    except ValueError:
        return False
    return True


_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*):")
_ESCAPE_OK = re.compile(r"%(?![0-9A-Fa-f]{2})")
_PORT = re.compile(r"^(?::\d*)?$")


def parse_request_uri(text: str) -> dict[str, str]:
    """The parts of a URL as Go's url.ParseRequestURI gives them (an absolute URI or an absolute
    path; no fragment). Raises ValueError with Go's reason."""
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in text):
        raise ValueError(f"parse {text!r}: net/url: invalid control character in URL")
    if not text:
        raise ValueError('parse "": empty url')
    parts = {"scheme": "", "host": "", "hostname": "", "port": "", "path": ""}
    if text == "*":
        return {**parts, "path": "*"}
    if text.startswith(":"):
        raise ValueError(f"parse {text!r}: missing protocol scheme")
    rest = text
    if match := _SCHEME.match(text):
        parts["scheme"], rest = match[1].lower(), text[match.end() :]
    rest = rest.partition("?")[0]
    if not rest.startswith("/"):
        if parts["scheme"]:
            return parts  # an opaque URL (mailto:x): valid, no host, no path
        raise ValueError(f"parse {text!r}: invalid URI for request")
    if parts["scheme"] and rest.startswith("//"):
        authority, slash, path = rest[2:].partition("/")
        rest = slash + path
        host = authority.rpartition("@")[2]
        hostname, port = _split_host(host, text)
        parts.update(host=host, hostname=hostname, port=port)
    if _ESCAPE_OK.search(rest):
        raise ValueError(f"parse {text!r}: invalid URL escape")
    parts["path"] = rest
    return parts


def _split_host(host: str, text: str) -> tuple[str, str]:
    if host.startswith("["):
        close = host.find("]")
        if close < 0:
            raise ValueError(f"parse {text!r}: missing ']' in host")
        hostname, colon_port = host[1:close], host[close + 1 :]
    else:
        colon = host.rfind(":")
        hostname, colon_port = (host[:colon], host[colon:]) if colon >= 0 else (host, "")
    if not _PORT.match(colon_port):
        raise ValueError(f"parse {text!r}: invalid port {colon_port!r} after host")
    return hostname, colon_port[1:]


def is_ip(text: str) -> bool:
    """Kubernetes' `isIP`: an IPv4 or IPv6 address, without a zone, not IPv4-mapped IPv6."""
    if "%" in text:
        return False
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return False
    return not (isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped)


def is_cidr(text: str) -> bool:
    """Kubernetes' `isCIDR`: an address and a prefix length (host bits may be set)."""
    address, slash, length = text.partition("/")
    if not slash or not length.isdigit() or not is_ip(address):
        return False
    try:
        ipaddress.ip_network(text, strict=False)
    except ValueError:
        return False
    return True
