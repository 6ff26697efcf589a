"""Reading a study spec file: strict YAML, validation, and one `SpecError` that lists every problem.

`load_spec` reads a YAML file (duplicate keys are an error) and validates it as a `StudySpec`;
every validation error becomes one line `<field path>: <message>`, so a user fixes a spec in one
pass. Imported by `gahb-scale validate`: no Ray, no MLflow, no torch here.
"""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from ..errors import UserInputError, printable, short_repr
from ..limits import MAX_INT_DIGITS, MAX_SPEC_BYTES, MAX_SPEC_NODES
from .spec import PATTERN_HINTS, StudySpec, did_you_mean, results_below, results_folder_name


def _message(err: dict) -> str:
    """A readable message for one pydantic error dict (without its location)."""
    kind, msg = err["type"], err["msg"]
    if kind == "spec":  # a message of the spec's own validators
        return msg
    if kind == "missing":
        return "required field is missing"
    if kind == "string_pattern_mismatch" and err.get("ctx", {}).get("pattern") in PATTERN_HINTS:
        return f"{PATTERN_HINTS[err['ctx']['pattern']]} (got {short_repr(err.get('input'))})"
    if kind == "extra_forbidden":
        name, known = err["loc"][-1] if err["loc"] else "?", _known_fields(err["loc"][:-1])
        if known is None:
            return "unknown field"
        return f"unknown field{did_you_mean(name, known)}; allowed: {', '.join(known)}"
    if msg.startswith("Value error, "):  # a ValueError raised by one of the spec's validators
        return msg[len("Value error, "):]
    return f"{msg} (got {short_repr(err.get('input'))})"


def _loc_str(loc: typing.Iterable[str | int]) -> str:
    text = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc)
    return text.removeprefix(".") or "(top level)"


def _model_in(ann: Any) -> type[BaseModel] | None:
    """The model a field holds: X for X, list[X], X | None, Annotated[X, ...]; None if none."""
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann
    return next(filter(None, map(_model_in, typing.get_args(ann))), None)


def _known_fields(parent: tuple) -> list[str] | None:
    """Field names of the model found at location `parent` inside a StudySpec (None if not a model)."""
    cls: type[BaseModel] | None = StudySpec
    for part in (part for part in parent if not isinstance(part, int)):
        if cls is None or part not in cls.model_fields:
            return None
        cls = _model_in(cls.model_fields[part].annotation)
    return None if cls is None else list(cls.model_fields)


class SpecError(UserInputError):
    """An invalid study spec. `errors` holds (field path, message) pairs; the message names the
    source file and lists every error, one per line, as `<field path>: <message>`."""

    def __init__(self, source: str, errors: list[tuple[str, str]] | None = None, problem: str | None = None):
        self.source = source
        self.errors = list(errors or [])
        if problem is not None:
            text = f"{source}: {problem}"
        else:
            n = len(self.errors)
            lines = [f"{source}: {n} error{'s' if n != 1 else ''} in the study spec:"]
            lines += [f"  {path}: {msg}" for path, msg in self.errors]
            text = "\n".join(lines)
        super().__init__(text)


def parse_spec(data: Any, source: str = "<spec>", missing_folders: list[str] | None = None) -> StudySpec:
    """Validate an already-parsed spec (a mapping); raise SpecError listing every problem. With a
    list as `missing_folders`, dataset folders that do not exist are added to it, not refused."""
    if not isinstance(data, dict):
        got = "an empty document" if data is None else f"a {type(data).__name__}"
        raise SpecError(source, problem=f"the top level must be a mapping of spec fields (name, image_size, "
                                        f"datasets, ...), got {got}")
    try:
        return StudySpec.model_validate(data, context={"missing_folders": missing_folders})
    except ValidationError as exc:
        raise SpecError(source, [(_loc_str(err["loc"]), _message(err)) for err in exc.errors()]) from None


class _StrictLoader(yaml.SafeLoader):
    """A safe YAML loader that rejects duplicate keys (PyYAML silently keeps the last one) and
    integers of more than MAX_INT_DIGITS digits."""


def _mapping_without_duplicates(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    loader.flatten_mapping(node)
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark,
                    f"found duplicate key {short_repr(key)} (first at line {seen[key] + 1})", key_node.start_mark)
            seen[key] = key_node.start_mark.line
        except TypeError:  # unhashable key: let the normal constructor report it
            pass
    return loader.construct_mapping(node, deep=deep)


def _bounded_int(loader: _StrictLoader, node: yaml.ScalarNode) -> int:
    # The text is checked before it is converted: sexagesimal (1:2:3) and long digit strings cost
    # time growing with their length, and Python refuses more than 4,300 digits with a ValueError.
    too_long = yaml.constructor.ConstructorError(
        None, None, f"an integer of more than {MAX_INT_DIGITS} digits (no count or seed is that large)",
        node.start_mark)
    if len(node.value) > 4 * MAX_INT_DIGITS:  # room for '_' separators and a 0b prefix
        raise too_long
    value = loader.construct_yaml_int(node)
    if abs(value) >= 10**MAX_INT_DIGITS:
        raise too_long
    return value


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates)
_StrictLoader.add_constructor("tag:yaml.org,2002:int", _bounded_int)


def _expanded_nodes(root: yaml.Node) -> int:
    """How many nodes the document has once every alias is expanded; a YAMLError as soon as that
    exceeds MAX_SPEC_NODES or an alias refers to a node that contains it. Each node is visited
    once (an alias is a second reference to the same node object), so the count costs the size of
    the file, not of its expansion."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in open_nodes:
            raise yaml.YAMLError(f"an alias at line {node.start_mark.line + 1} refers to a node that contains it "
                                 f"(an infinite document)")
        open_nodes.add(key)
        if isinstance(node, yaml.SequenceNode):
            children = node.value
        elif isinstance(node, yaml.MappingNode):
            children = [part for pair in node.value for part in pair]
        else:
            children = []
        total = 1
        for child in children:
            total += size(child)
            if total > MAX_SPEC_NODES:
                raise yaml.YAMLError(f"more than {MAX_SPEC_NODES:,} values once its aliases are expanded (at line "
                                     f"{node.start_mark.line + 1}); a study spec needs a few hundred")
        open_nodes.discard(key)
        sizes[key] = total
        return total

    return size(root)


def _load_yaml(text: str) -> Any:
    """`yaml.load(text, _StrictLoader)`, with the document's expanded size checked between
    composing its nodes and building Python objects from them."""
    loader = _StrictLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _expanded_nodes(node)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def load_spec(path: str | Path, results_dir: str | None = None, results_root: str | None = None,
              missing_folders: list[str] | None = None) -> StudySpec:
    """Read and validate a study spec YAML file; raise SpecError (naming the file) on any problem.
    `results_dir` replaces the spec's `storage.results_dir` before validation, so defaults that
    depend on it follow it; `results_root` (the CLI's --results) does so with the folder of the same
    name in that root: ROOT/<last part of results_dir, by default the study's name>. With a list as
    `missing_folders`, dataset folders that do not exist are listed there instead of refused."""
    path = Path(path)
    source = printable(str(path))
    if not path.exists():
        raise SpecError(source, problem="no such study spec file")
    if not path.is_file():
        raise SpecError(source, problem="not a file")
    try:
        if path.stat().st_size > MAX_SPEC_BYTES:
            raise SpecError(source, problem=f"{path.stat().st_size:,} bytes, more than a study spec may hold "
                                            f"({MAX_SPEC_BYTES:,}; a spec is a few KB)")
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(source, problem=f"cannot read: {exc}") from None
    try:
        data = _load_yaml(text)
    except RecursionError:
        raise SpecError(source, problem="not valid YAML: nested too deeply") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown position"
        what = " ".join(p for p in (exc.context, exc.problem) if p)
        raise SpecError(source, problem=f"not valid YAML at {where}: {what}") from None
    except yaml.YAMLError as exc:
        raise SpecError(source, problem=f"not valid YAML: {exc}") from None
    if isinstance(data, dict) and isinstance(storage := data.get("storage") or {}, dict):
        if results_root is not None:
            given = storage.get("results_dir") if isinstance(storage.get("results_dir"), str) else None
            name = (results_folder_name(given) if given else None) or data.get("name")
            results_dir = results_below(results_root, name) if isinstance(name, str) and name else results_dir
        if results_dir is not None:
            data["storage"] = {**storage, "results_dir": results_dir}
    try:
        return parse_spec(data, source, missing_folders)
    except RecursionError:
        raise SpecError(source, problem="nested too deeply to be a study spec") from None
