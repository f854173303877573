"""Parsing config files without running code from them.

YAML's Python tags (`!!python/object/apply:os.system [...]`) make a loader call arbitrary Python.
Configs are read with PyYAML's safe loader plus two tags that are only data: `!!python/tuple`, and
the one eval that Detectron2's own `Base-RetinaNet.yaml` uses for its anchor sizes,

    !!python/object/apply:eval ["[[x, x * 2**(1.0/3), x * 2**(2.0/3) ] for x in [32, 64, 128, 256, 512 ]]"]

which is evaluated by walking its syntax tree: numbers, lists, tuples, arithmetic and list
comprehensions only (no names but the comprehension's own, no calls, no attributes). Any other
Python tag is refused with an error naming the file and the key. `allow_unsafe=True` loads a file
the user trusts with PyYAML's unrestricted loader, with a warning.
"""

from __future__ import annotations

import ast
import logging
import operator
from typing import IO, Any, Dict, List, Set, Union

import yaml

__all__ = ["load_yaml", "safe_eval", "UnsafeConfigError"]

logger = logging.getLogger(__name__)

_PYTHON_TAG = "tag:yaml.org,2002:python/"
_EVAL_TAG = _PYTHON_TAG + "object/apply:eval"
_TUPLE_TAG = _PYTHON_TAG + "tuple"

_BINARY = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}
# A config holds small numbers; a bound on integer powers keeps `9**9**9` from hanging the loader.
_MAX_INT_EXPONENT = 256


class UnsafeConfigError(ValueError):
    """A config file that asks for Python to be run, refused because the user did not opt in."""


def safe_eval(expression: str) -> Any:
    """Evaluate `expression` if it is only arithmetic on numbers, lists, tuples and list comprehensions.

    Raises:
        ValueError: naming the first construct that is not allowed.
    """
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError as error:
        raise ValueError(f"cannot parse {expression!r}: {error.msg}") from None
    return _evaluate(tree.body, {}, expression)


def _evaluate(node: ast.AST, names: Dict[str, Any], source: str) -> Any:
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return node.value
    if isinstance(node, ast.List):
        return [_evaluate(e, names, source) for e in node.elts]
    if isinstance(node, ast.Tuple):
        return tuple(_evaluate(e, names, source) for e in node.elts)
    if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load) and node.id in names:
        return names[node.id]
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_number(_evaluate(node.operand, names, source), source))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left = _number(_evaluate(node.left, names, source), source)
        right = _number(_evaluate(node.right, names, source), source)
        if isinstance(node.op, ast.Pow) and isinstance(left, int) and isinstance(right, int):
            if abs(right) > _MAX_INT_EXPONENT:
                raise ValueError(f"integer exponent {right} in {source!r} is too large")
        return _BINARY[type(node.op)](left, right)
    if isinstance(node, ast.ListComp):
        return _list_comprehension(node, names, source)
    what = f"name '{node.id}'" if isinstance(node, ast.Name) else f"{type(node).__name__} '{ast.unparse(node)}'"
    raise ValueError(
        f"{what} is not allowed in {source!r}: only numbers, lists, tuples, arithmetic and list comprehensions are"
    )


def _number(value: Any, source: str) -> Union[int, float]:
    if type(value) not in (int, float):
        raise ValueError(f"arithmetic on a {type(value).__name__} is not allowed in {source!r}")
    return value


def _list_comprehension(node: ast.ListComp, names: Dict[str, Any], source: str) -> List[Any]:
    results: List[Any] = []

    def loop(generators: List[ast.comprehension], scope: Dict[str, Any]) -> None:
        if not generators:
            results.append(_evaluate(node.elt, scope, source))
            return
        generator, rest = generators[0], generators[1:]
        if not isinstance(generator.target, ast.Name) or generator.ifs or generator.is_async:
            raise ValueError(f"only 'for NAME in ITERABLE' clauses are allowed in {source!r}")
        iterable = _evaluate(generator.iter, scope, source)
        if not isinstance(iterable, (list, tuple)):
            raise ValueError(f"a comprehension may only loop over a list or tuple in {source!r}")
        for item in iterable:
            loop(rest, {**scope, generator.target.id: item})

    loop(node.generators, names)
    return results


class _SafeConfigLoader(yaml.SafeLoader):
    """PyYAML's safe loader plus `!!python/tuple` and the restricted eval."""


def _construct_eval(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    return safe_eval(_eval_argument(node))


def _eval_argument(node: yaml.Node) -> str:
    if isinstance(node, yaml.SequenceNode) and len(node.value) == 1 and isinstance(node.value[0], yaml.ScalarNode):
        return node.value[0].value
    raise ValueError("the eval tag must hold a list of one string")


_SafeConfigLoader.add_constructor(_EVAL_TAG, _construct_eval)
_SafeConfigLoader.add_constructor(_TUPLE_TAG, lambda loader, node: tuple(loader.construct_sequence(node, deep=True)))


def _check_python_tags(node: yaml.Node, key: str, filename: str, seen: Set[int]) -> None:
    """Refuse Python tags other than the admitted ones, and eval expressions that are not allowed,
    naming the file and the key before anything is constructed."""
    if id(node) in seen:  # an alias of a node already checked (aliases may even form cycles)
        return
    seen.add(id(node))
    where = f"Config file {filename}, key '{key or '<root>'}' (line {node.start_mark.line + 1})"
    if node.tag == _EVAL_TAG:
        try:
            safe_eval(_eval_argument(node))
        except ValueError as error:
            raise UnsafeConfigError(f"{where}: the eval tag is refused: {error}") from None
        return
    if node.tag.startswith(_PYTHON_TAG) and node.tag != _TUPLE_TAG:
        tag = "!!" + node.tag[len("tag:yaml.org,2002:") :]
        raise UnsafeConfigError(
            f"{where} uses the Python tag '{tag}', which could run code; it is refused. Load a config "
            "you trust with merge_from_file(..., allow_unsafe=True)."
        )
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            _check_python_tags(key_node, key, filename, seen)
            child = f"{key}.{key_node.value}" if key else str(key_node.value)
            _check_python_tags(value_node, child, filename, seen)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _check_python_tags(item, f"{key}[{index}]", filename, seen)


def load_yaml(stream: Union[str, IO], filename: str, allow_unsafe: bool = False) -> Any:
    """Parse one YAML document safely (see the module docstring); `filename` is for messages."""
    if allow_unsafe:
        logger.warning(
            "Loading config %s with yaml.unsafe_load (allow_unsafe=True): any Python it holds runs now. "
            "Do this only for files you trust.",
            filename,
        )
        return yaml.unsafe_load(stream)
    loader = _SafeConfigLoader(stream)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_python_tags(node, "", filename, set())
        return loader.construct_document(node)
    finally:
        loader.dispose()
