"""Component parameters: one set of checks, run at construction and again at
execution.

TFX lets an int, float or str execution parameter be a
`tfx.dsl.experimental.RuntimeParameter` (`data_types.RuntimeParameter`),
whose value is known only when the pipeline runs. Each component describes
its parameters as a frozen dataclass whose `__post_init__` calls `check`:
at construction a RuntimeParameter is checked for its type only, and the
executor builds the same dataclass from the resolved exec properties before
it reads any data, so a bad run-time value fails with the parameter's name,
the value and what is allowed.
"""
import dataclasses
import hashlib
import importlib.util
import json
import logging
import os
import typing
from typing import Any, Callable, Dict, Mapping, Optional

from tfx.orchestration import data_types

import tfx_nsl

# Exec property of every tfx-nsl component: the fingerprint of the code that
# runs it, so that TFX's cache key (which hashes exec properties) changes
# when tfx-nsl does.
FINGERPRINT_KEY = 'tfx_nsl_fingerprint'

_PTYPES = (int, float, str)


def is_runtime(value) -> bool:
  return isinstance(value, data_types.RuntimeParameter)


def _base_type(annotation):
  """(type, optional) of an annotation such as Optional[int] or List[str]."""
  inner = _strip_optional(annotation)
  return typing.get_origin(inner) or inner, inner is not annotation


def _type_ok(value, kind) -> bool:
  if kind is bool:
    return isinstance(value, bool)
  if kind is int:
    return isinstance(value, int) and not isinstance(value, bool)
  if kind is float:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
  return isinstance(value, kind)


class Checker:
  """Checks one component's parameters; `values` may hold RuntimeParameters."""

  def __init__(self, component: str, values: Mapping[str, Any]):
    self.component = component
    self.values = values

  def fail(self, message):
    raise ValueError(f'{self.component}: {message}')

  def known(self, *names) -> bool:
    """Whether these parameters have values now (not RuntimeParameters)."""
    return not any(is_runtime(self.values[n]) for n in names)

  def require(self, name: str, ok: Callable[[Any], bool], allowed: str):
    """Fails unless `ok(value)`; RuntimeParameters wait for execution."""
    value = self.values[name]
    if is_runtime(value) or value is None:
      return
    if not ok(value):
      self.fail(f'parameter {name}={value!r} is not allowed: {allowed}')

  def types(self, fields: Mapping[str, Any]):
    """Checks each value against its annotation ({name: annotation})."""
    for name, annotation in fields.items():
      if annotation is Any:
        continue  # The dataclass checks it itself.
      value = self.values[name]
      kind, optional = _base_type(annotation)
      if is_runtime(value):
        if kind not in _PTYPES:
          self.fail(f'parameter {name} cannot be a RuntimeParameter: TFX '
                    f'has int, float and str ones, and {name} is a '
                    f'{getattr(kind, "__name__", kind)}')
        if value.ptype is not kind:
          self.fail(f'parameter {name} is a {kind.__name__}; the '
                    f'RuntimeParameter {value.name!r} has ptype '
                    f'{getattr(value.ptype, "__name__", value.ptype)}: '
                    f'declare it with ptype={kind.__name__}')
        continue
      if value is None:
        if not optional:
          self.fail(f'parameter {name} is required (got None)')
        continue
      if kind is list and isinstance(value, (str, bytes)):
        self.fail(f'parameter {name} must be a list of names, e.g. '
                  f'[{value!r}], not the string {value!r}')
      if not _type_ok(value, kind):
        self.fail(f'parameter {name}={value!r} must be '
                  f'{"None or " if optional else ""}of type '
                  f'{getattr(kind, "__name__", kind)}, not '
                  f'{type(value).__name__}')


def _normalized(value, annotation):
  """`value` in the plain type its annotation names: numpy scalars as Python
  numbers, ints as floats for float fields, tuples as lists, bools stored
  as ints (ML Metadata, so Kubeflow) as bools; anything else unchanged for
  the type check to name."""
  kind, _ = _base_type(annotation)
  if hasattr(value, 'item') and not hasattr(value, '__len__'):
    value = value.item()  # numpy scalar
  if kind is float and _type_ok(value, int):
    return float(value)
  if kind is bool and _type_ok(value, int) and value in (0, 1):
    return bool(value)
  if kind is list and isinstance(value, tuple):
    return list(value)
  return value


def _elements_ok(value, annotation) -> bool:
  """Whether a list's elements / a dict's keys and values have the types
  its annotation names (List[str], Dict[str, float])."""
  inner = typing.get_args(_strip_optional(annotation))
  if isinstance(value, list) and inner:
    return all(_type_ok(v, inner[0]) for v in value)
  if isinstance(value, dict) and len(inner) == 2:
    return all(_type_ok(k, inner[0]) and _type_ok(v, inner[1])
               for k, v in value.items())
  return True


def _strip_optional(annotation):
  args = typing.get_args(annotation)
  if typing.get_origin(annotation) is typing.Union and type(None) in args:
    (inner,) = [a for a in args if a is not type(None)]
    return inner
  return annotation


def check(params, component: str) -> Checker:
  """Type-checks a parameters dataclass (after normalizing its values in
  place); returns a Checker for its rules."""
  hints = typing.get_type_hints(type(params))
  fields = {f.name: hints[f.name] for f in dataclasses.fields(params)}
  for name, annotation in fields.items():
    if annotation is not Any and not is_runtime(getattr(params, name)):
      object.__setattr__(params, name,
                         _normalized(getattr(params, name), annotation))
  checker = Checker(component, {n: getattr(params, n) for n in fields})
  checker.types(fields)
  for name, annotation in fields.items():
    value = getattr(params, name)
    if annotation is not Any and not is_runtime(value) and not _elements_ok(
        value, annotation):
      checker.fail(f'parameter {name}={value!r} must be of type '
                   f'{str(_strip_optional(annotation)).replace("typing.", "")}')
  return checker


def spec_parameters(cls, **types) -> Dict[str, Any]:
  """A ComponentSpec's PARAMETERS for a parameters dataclass: one
  ExecutionParameter per field (`types` gives the exec property type of a
  field the dataclass holds otherwise, e.g. a section as its JSON), plus the
  code fingerprint."""
  from tfx.types.component_spec import ExecutionParameter  # pylint: disable=g-import-not-at-top
  hints = typing.get_type_hints(cls)
  out = {}
  for field in dataclasses.fields(cls):
    inner = _strip_optional(hints[field.name])
    out[field.name] = ExecutionParameter(
        type=types.get(field.name, inner),
        optional=inner is not hints[field.name])
  out[FINGERPRINT_KEY] = ExecutionParameter(type=str)
  return out


def from_exec_properties(cls, exec_properties: Mapping[str, Any]):
  """`cls` from exec properties: list/dict parameters arrive JSON-encoded,
  absent ones take the defaults."""
  hints = typing.get_type_hints(cls)
  values = {}
  for field in dataclasses.fields(cls):
    if field.name not in exec_properties:
      continue
    value = exec_properties[field.name]
    kind, _ = _base_type(hints[field.name])
    if isinstance(value, str) and kind in (list, dict):
      value = json.loads(value) if value else None
    values[field.name] = value  # check() normalizes the types
  return cls(**values)


def to_exec_properties(params) -> Dict[str, Any]:
  """The dataclass as exec properties (TFX serialises lists and dicts)."""
  return {field.name: getattr(params, field.name)
          for field in dataclasses.fields(params)}


_fingerprint = None


def fingerprint(module_function: Optional[str] = None) -> str:
  """tfx-nsl's version and a digest of its Python sources, and of the source
  of `module_function` ('package.module.function', e.g. a Trainer's
  model_fn) when given.

  A component's exec properties (the Trainer's: its custom_config) carry it,
  so a cached output of other code (another release, an edited checkout,
  an edited model_fn) is not reused.
  """
  if module_function:
    module = module_function.rpartition('.')[0]
    try:
      spec = importlib.util.find_spec(module)
    except ImportError:
      spec = None
    if spec is None or not spec.origin or not os.path.isfile(spec.origin):
      # E.g. a Kubeflow compile on a machine without the image's modules:
      # the cache then sees the name only.
      logging.warning('tfx-nsl: module %r of %r is not importable here, so '
                      "the cache key holds its name, not its content",
                      module, module_function)
      return f'{fingerprint()} {module}'
    with open(spec.origin, 'rb') as f:
      digest = hashlib.sha256(f.read()).hexdigest()[:16]
    return f'{fingerprint()} {module}+{digest}'
  global _fingerprint
  if _fingerprint is None or not _fingerprint.startswith(
      tfx_nsl.__version__ + '+'):
    root = os.path.dirname(os.path.realpath(tfx_nsl.__file__))
    # (folder, its path inside the package): the subpackages' folders come
    # from the import system, so an editable checkout and an installed wheel
    # of the same code hash the same names and bytes.
    folders = [(root, '')]
    for sub in ('components', 'pipelines', 'trainer_modules', 'kubeflow'):
      spec = importlib.util.find_spec(f'tfx_nsl.{sub}')
      for location in (spec.submodule_search_locations or []) if spec else []:
        location = os.path.realpath(location)
        if os.path.dirname(location) != root:  # else walked with root
          folders.append((location, sub))
    sources = {}  # path inside the package -> file
    for folder, prefix in folders:
      for directory, subdirs, files in os.walk(folder):
        subdirs[:] = [d for d in subdirs if d != '__pycache__']
        for name in files:
          if name.endswith('.py'):
            path = os.path.join(directory, name)
            sources[os.path.join(prefix, os.path.relpath(path, folder))] = path
    digest = hashlib.sha256()
    for name in sorted(sources):
      digest.update(name.encode())
      with open(sources[name], 'rb') as f:
        digest.update(f.read())
    _fingerprint = f'{tfx_nsl.__version__}+{digest.hexdigest()[:16]}'
  return _fingerprint
