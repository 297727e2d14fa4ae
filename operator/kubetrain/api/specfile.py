"""Reading TrainingJob YAML/JSON files safely, the way `kubectl apply` reads them.

Every failure is a `SpecFileError` whose message is one line naming the file, where (line and
column, or byte offset) and what to do; nothing here raises anything else, recurses without
bound, or expands more than a bounded amount of data:

- at most `MAX_BYTES` are read; the text is UTF-8 (a UTF-8 or UTF-16 byte-order mark is honoured,
  as kubectl does); a byte that does not decode is reported with its offset;
- one pass over the parser's events (libyaml, iterative) before anything is built refuses
  nesting deeper than `MAX_DEPTH` and aliases expanding to more than `MAX_NODES` nodes (a
  "billion laughs" file is refused in milliseconds);
- plain scalars are resolved as kubectl's YAML library (go-yaml v2, via sigs.k8s.io/yaml) resolves
  them, then numbers are normalised as they reach the API server through JSON: `1e-3` is a
  number, `2001-12-14` a string, `y`/`on` are true, `3.0` is the integer 3, an integer beyond
  int64 a float;
- only JSON's kinds of value are accepted: `!!binary`, `!!timestamp`, `!!set` and local tags
  (`!foo`) are refused, as are duplicate keys (the API server's strict field validation refuses
  them) and keys that are not scalars.
"""

from __future__ import annotations

import math
import re
import sys
from pathlib import Path
from typing import Any, cast

import yaml

MAX_BYTES = 1 << 20  # 1 MiB: a TrainingJob is a few KB; kubectl apply's annotation caps it at 256 KiB
MAX_DEPTH = 64  # nesting levels (a pod affinity, the deepest real field, needs about 12)
MAX_NODES = 100_000  # scalars + collections after expanding aliases

_INT64 = (-(1 << 63), (1 << 63) - 1)
_FLOAT_MAX_INT = 1e21  # Go's encoding/json writes integral floats below this without an exponent


class SpecFileError(ValueError):
    """A file that cannot be read or parsed; the message names the file and the place."""


# ------------------------------------------------------------------------- scalar resolution
# go-yaml v2's resolve(): a table lookup, then ints (strconv base 0), then floats; else a string.

_GO_MAP: dict[str, Any] = {}
for _words, _value in (
    (("y", "Y", "yes", "Yes", "YES", "true", "True", "TRUE", "on", "On", "ON"), True),
    (("n", "N", "no", "No", "NO", "false", "False", "FALSE", "off", "Off", "OFF"), False),
    (("", "~", "null", "Null", "NULL"), None),
    ((".nan", ".NaN", ".NAN"), math.nan),
    ((".inf", ".Inf", ".INF", "+.inf", "+.Inf", "+.INF"), math.inf),
    (("-.inf", "-.Inf", "-.INF"), -math.inf),
):
    for _w in _words:
        _GO_MAP[_w] = _value
_GO_HINT = set("+-0123456789yYnNtTfFoO~.")
_YAML_FLOAT = re.compile(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?\Z")
_GO_FLOAT = re.compile(  # strconv.ParseFloat's decimal syntax (what the '.' hint tries)
    r"[-+]?([0-9](_?[0-9])*(\.([0-9](_?[0-9])*)?)?|\.[0-9](_?[0-9])*)([eE][-+]?[0-9](_?[0-9])*)?\Z"
)
_GO_INT = re.compile(r"[-+]?(0[xX][0-9a-fA-F]+|0[oO][0-7]+|0[bB][01]+|0[0-7]*|[1-9][0-9]*)\Z")
_TIMESTAMP_START = re.compile(r"[0-9]{4}-")


def _go_int(text: str) -> int | None:
    """strconv.ParseInt/ParseUint(text, 0, 64) after go-yaml dropped the underscores."""
    if not _GO_INT.match(text):
        return None
    sign = -1 if text[0] == "-" else 1
    body = text.lstrip("+-")
    if len(body) > 1 and body[0] == "0" and body[1] in "xXoObB":
        value = int(body[2:], {"x": 16, "o": 8, "b": 2}[body[1].lower()])
    elif len(body) > 1 and body[0] == "0":
        value = int(body, 8)
    else:
        value = int(body)
    value *= sign
    return value if -(1 << 63) <= value < (1 << 64) else None


def resolve_plain(text: str) -> Any:
    """The value go-yaml v2 gives an unquoted, untagged scalar (before JSON normalisation)."""
    if text in _GO_MAP:
        return _GO_MAP[text]
    if not text or text[0] not in _GO_HINT:
        return text
    if text[0] == ".":
        return _go_float(text) if _GO_FLOAT.match(text) and "_" not in text else text
    if text[0] in "yYnNtTfFoO~":
        return text
    if _TIMESTAMP_START.match(text):
        return text  # go-yaml keeps timestamp-looking values as strings in an interface{}
    plain = text.replace("_", "")
    value = _go_int(plain)
    if value is not None:
        return value
    if _YAML_FLOAT.match(plain):
        return _go_float(plain, text)
    return text


def _go_float(text: str, original: str | None = None) -> Any:
    """strconv.ParseFloat: out of range is an error, and go-yaml then keeps the string."""
    value = float(text)
    return value if math.isfinite(value) else (original or text)


def json_number(value: int | float) -> int | float:
    """The number the API server decodes after kubectl wrote `value` as JSON (Go's encoding)."""
    if isinstance(value, float) and math.isfinite(value) and value.is_integer() and abs(value) < _FLOAT_MAX_INT:
        value = int(value)
    if isinstance(value, int) and not _INT64[0] <= value <= _INT64[1]:
        return float(value)
    return value


# ------------------------------------------------------------------------------- the loader

_JSON_TAGS = {
    "tag:yaml.org,2002:str", "tag:yaml.org,2002:int", "tag:yaml.org,2002:float", "tag:yaml.org,2002:bool",
    "tag:yaml.org,2002:null", "tag:yaml.org,2002:map", "tag:yaml.org,2002:seq", "!",
}
_SCALAR = "tag:kubetrain.dev,2026:plain"  # our own tag for untagged plain scalars


class _Resolver(yaml.resolver.BaseResolver):
    """No implicit YAML 1.1 resolution at all: plain scalars go to resolve_plain()."""

    def resolve(self, kind: Any, value: Any, implicit: Any) -> str:
        if kind is yaml.ScalarNode and implicit[0]:
            return _MERGE if value == "<<" else _SCALAR
        return str(super().resolve(kind, value, implicit))


_MERGE = "tag:yaml.org,2002:merge"


def _error(node: Any, problem: str) -> yaml.YAMLError:
    return yaml.constructor.ConstructorError(None, None, problem, node.start_mark)


class _Constructor(yaml.constructor.SafeConstructor):
    def construct_mapping(self, node: Any, deep: bool = False) -> dict[Any, Any]:
        if not isinstance(node, yaml.MappingNode):
            raise _error(node, f"expected an object, found a {node.id}")
        seen: dict[str, Any] = {}
        for key_node, _ in node.value:  # the mapping's own keys (merged ones may be overridden)
            if not isinstance(key_node, yaml.ScalarNode):
                raise _error(key_node, "a key must be a plain value, not a list or object")
            if key_node.tag == _MERGE:
                continue
            key = _json_key(self.construct_object(key_node, deep=True), key_node)
            if key in seen:
                raise _error(key_node, f"duplicate key {key!r} (also on line {seen[key].line + 1}): keep one")
            seen[key] = key_node.start_mark
        self.flatten_mapping(node)
        return {
            _json_key(self.construct_object(k, deep=True), k): self.construct_object(v, deep=deep)
            for k, v in node.value
        }

    def construct_plain(self, node: Any) -> Any:
        value = resolve_plain(node.value)
        return json_number(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value

    def construct_tagged_scalar(self, node: Any) -> Any:
        tag = node.tag.rsplit(":", 1)[-1]
        if not isinstance(node, yaml.ScalarNode):
            raise _error(node, f"!!{tag} must tag a plain value, not a {node.id}")
        text = node.value
        if tag == "str":
            return text
        value = resolve_plain(text)
        if tag == "null" and value is None:
            return None
        if tag == "bool" and isinstance(value, bool):
            return value
        if tag in ("int", "float") and isinstance(value, (int, float)) and not isinstance(value, bool):
            if tag == "int" and isinstance(value, float):
                raise _error(node, f"!!int {text!r} is not an integer: remove the tag or fix the value")
            return json_number(value)
        raise _error(node, f"cannot read {text!r} as !!{tag}: remove the tag or fix the value")

    def construct_string(self, node: Any) -> Any:
        if not isinstance(node, yaml.ScalarNode):
            raise _error(node, f"the tag {node.tag!r} must tag a plain value")
        return node.value

    def construct_not_json(self, node: Any) -> Any:
        raise _error(node, f"tag {node.tag} has no JSON equivalent (the API server takes JSON): write a plain value")


_add: Any = _Constructor.add_constructor
_add(_SCALAR, _Constructor.construct_plain)
for _t in ("str", "int", "float", "bool", "null"):
    _add(f"tag:yaml.org,2002:{_t}", _Constructor.construct_tagged_scalar)
_add("!", _Constructor.construct_string)  # "! value": a string
_add(None, _Constructor.construct_not_json)  # every other tag, local ones (!foo) included
for _t in ("binary", "timestamp", "set", "omap", "pairs", "value", "merge"):
    _add(f"tag:yaml.org,2002:{_t}", _Constructor.construct_not_json)


def _json_key(key: Any, node: Any) -> str:
    """A mapping key as sigs.k8s.io/yaml writes it into JSON (non-string keys become strings)."""
    if isinstance(key, str):
        return key
    if isinstance(key, bool):
        return "true" if key else "false"
    if isinstance(key, int):
        return str(key)
    if isinstance(key, float) and math.isfinite(key):
        return f"{key:g}"
    raise _error(node, f"key {node.value!r} cannot be a JSON key: quote it")


CParser: Any
try:
    import yaml.cyaml

    CParser = yaml.cyaml.CParser  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - PyYAML built without libyaml
    CParser = None

if CParser is not None:  # libyaml: parsing and composing in C, our resolver and constructor

    class _Loader(CParser, _Constructor, _Resolver):  # type: ignore[misc]
        def __init__(self, stream: str) -> None:
            CParser.__init__(self, stream)
            _Constructor.__init__(self)
            _Resolver.__init__(self)

else:  # pragma: no cover - PyYAML without libyaml

    class _Loader(  # type: ignore[no-redef]
        yaml.reader.Reader, yaml.scanner.Scanner, yaml.parser.Parser, yaml.composer.Composer, _Constructor, _Resolver
    ):
        def __init__(self, stream: str) -> None:
            yaml.reader.Reader.__init__(self, stream)
            yaml.scanner.Scanner.__init__(self)
            yaml.parser.Parser.__init__(self)
            yaml.composer.Composer.__init__(self)
            _Constructor.__init__(self)
            _Resolver.__init__(self)


# ----------------------------------------------------------------------------- the bounds


def _check_bounds(text: str) -> None:
    """One pass over the events: depth and alias expansion, before any object is built."""
    depth = 0
    expanded = 0  # nodes after expanding aliases
    sizes: dict[str, int] = {}  # anchor -> expanded size of its node
    open_anchors: list[tuple[str | None, int]] = []
    for event in yaml.parse(text, Loader=cast(Any, _Loader)):
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            depth += 1
            expanded += 1
            if depth > MAX_DEPTH:
                raise _bound_error(event, f"nested deeper than {MAX_DEPTH} levels: flatten it")
            open_anchors.append((event.anchor, expanded))
        elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            depth -= 1
            anchor, start = open_anchors.pop()
            if anchor is not None:
                sizes[anchor] = expanded - start + 1
        elif isinstance(event, yaml.ScalarEvent):
            expanded += 1
            if event.anchor is not None:
                sizes[event.anchor] = 1
        elif isinstance(event, yaml.AliasEvent):
            expanded += sizes.get(event.anchor or "", 1)
        if expanded > MAX_NODES:
            raise _bound_error(event, f"more than {MAX_NODES} values once aliases are expanded "
                               "(an alias bomb?): write the values out or use fewer aliases")


def _bound_error(event: Any, what: str) -> yaml.YAMLError:
    return yaml.MarkedYAMLError(problem=what, problem_mark=event.start_mark)


# --------------------------------------------------------------------------------- decoding

_NOT_YAML_CHARS = re.compile("[^\x09\x0a\x0d\x20-\x7e\x85\xa0-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def decode(data: bytes, name: str) -> str:
    """The text of a spec file: UTF-8 (or UTF-16 with a byte-order mark, as kubectl reads it)."""
    if data.startswith(b"\xef\xbb\xbf"):
        encoding, skip = "utf-8", 3
    elif data.startswith((b"\xff\xfe", b"\xfe\xff")):
        encoding, skip = ("utf-16-le" if data[0] == 0xFF else "utf-16-be"), 2
    else:
        encoding, skip = "utf-8", 0
    try:
        text = data[skip:].decode(encoding)
    except UnicodeDecodeError as exc:
        offset = exc.start + skip
        line = data[:offset].count(b"\n") + 1
        raise SpecFileError(
            f"{name}: byte offset {offset} (line {line}): byte 0x{data[offset]:02x} is not valid "
            f"{encoding.upper()}: save the file as UTF-8"
        ) from None
    bad = _NOT_YAML_CHARS.search(text)
    if bad:
        offset = skip + len(text[: bad.start()].encode(encoding))
        line = text.count("\n", 0, bad.start()) + 1
        raise SpecFileError(
            f"{name}: byte offset {offset} (line {line}): control character U+{ord(bad.group()):04X} is not "
            'allowed in YAML: remove it (write "\\u0000"-style escapes inside double quotes if you mean it)'
        )
    return text


# ------------------------------------------------------------------------------ entry points


def loads_documents(data: bytes | str, name: str = "<string>") -> list[Any]:
    """All non-empty documents of `data`, read as kubectl reads them (see the module doc)."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    if len(data) > MAX_BYTES:
        raise SpecFileError(f"{name}: larger than {MAX_BYTES} bytes: a TrainingJob is a few KB; "
                            "is this the right file?")
    text = decode(data, name)
    try:
        _check_bounds(text)
        loader = _Loader(text)
        try:
            docs = []
            while loader.check_data():
                docs.append(loader.get_data())
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        raise SpecFileError(f"{name}:{_where(exc)} not valid YAML: {_problem(exc)}") from None
    except RecursionError:  # unreachable within MAX_DEPTH; kept so no input can print a traceback
        raise SpecFileError(f"{name}: nested too deeply: flatten it") from None
    docs = [d for d in docs if d is not None]
    if not docs:
        raise SpecFileError(f"{name}: no document in the file")
    return docs


def _where(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    if mark is None:
        position = getattr(exc, "position", None)  # a ReaderError
        return f" character {position}:" if position is not None else ""
    return f" line {mark.line + 1}, column {mark.column + 1}:"


def _problem(exc: yaml.YAMLError) -> str:
    problem = getattr(exc, "problem", None)
    if problem is None:
        problem = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    context = getattr(exc, "context", None)
    text = f"{problem} ({context})" if context and "duplicate" not in str(problem) else str(problem)
    return " ".join(text.split())


def load_documents(path: str | Path) -> list[Any]:
    """All YAML documents of a file ('-' reads stdin), skipping empty ones."""
    return loads_documents(_read(path), str(path))


def load_one(path: str | Path) -> Any:
    docs = load_documents(path)
    if len(docs) != 1:
        raise SpecFileError(f"{path}: expected one TrainingJob, found {len(docs)} documents")
    return docs[0]


def _read(path: str | Path) -> bytes:
    try:
        if str(path) == "-":
            return sys.stdin.buffer.read(MAX_BYTES + 1)
        with open(path, "rb") as f:
            return f.read(MAX_BYTES + 1)
    except OSError as exc:
        raise SpecFileError(f"{path}: cannot read: {exc.strerror or exc}") from None
