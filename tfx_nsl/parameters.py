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
  args = typing.get_args(annotation)
  if typing.get_origin(annotation) is typing.Union and type(None) in args:
    (inner,) = [a for a in args if a is not type(None)]
    return _base_type(inner)[0], True
  return typing.get_origin(annotation) or annotation, False


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
      if not _type_ok(value, kind):
        self.fail(f'parameter {name}={value!r} must be '
                  f'{"None or " if optional else ""}of type '
                  f'{getattr(kind, "__name__", kind)}, not '
                  f'{type(value).__name__}')


def check(params, component: str) -> Checker:
  """Type-checks a parameters dataclass; returns a Checker for its rules."""
  checker = Checker(component, {f.name: getattr(params, f.name)
                                for f in dataclasses.fields(params)})
  hints = typing.get_type_hints(type(params))
  checker.types({f.name: hints[f.name] for f in dataclasses.fields(params)})
  return checker


def from_exec_properties(cls, exec_properties: Mapping[str, Any]):
  """`cls` from exec properties: list/dict parameters arrive JSON-encoded,
  floats given as ints are made floats, absent ones take the defaults."""
  hints = typing.get_type_hints(cls)
  values = {}
  for field in dataclasses.fields(cls):
    if field.name not in exec_properties:
      continue
    value = exec_properties[field.name]
    kind, _ = _base_type(hints[field.name])
    if isinstance(value, str) and kind in (list, dict):
      value = json.loads(value) if value else None
    if kind is float and _type_ok(value, int):
      value = float(value)
    if kind is bool and _type_ok(value, int) and value in (0, 1):
      value = bool(value)  # ML Metadata (so Kubeflow) stores bools as ints.
    values[field.name] = value
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
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.origin or not os.path.isfile(spec.origin):
      raise ValueError(f'{module_function!r}: module {module!r} is not '
                       'importable here; give an import path of an installed '
                       'module (package.module.function)')
    with open(spec.origin, 'rb') as f:
      digest = hashlib.sha256(f.read()).hexdigest()[:16]
    return f'{fingerprint()} {module}+{digest}'
  global _fingerprint
  if _fingerprint is None or not _fingerprint.startswith(
      tfx_nsl.__version__ + '+'):
    root = os.path.dirname(os.path.realpath(tfx_nsl.__file__))
    folders = [root]
    checkout = os.path.dirname(root)
    if not os.path.isdir(os.path.join(root, 'components')) and os.path.isfile(
        os.path.join(checkout, 'setup.py')):
      # An editable install: the subpackages are the checkout's folders.
      folders += [os.path.join(checkout, sub) for sub in
                  ('components', 'pipelines', 'trainer_modules', 'kubeflow')]
    digest = hashlib.sha256()
    for folder in folders:
      for directory, subdirs, files in sorted(os.walk(folder)):
        subdirs.sort()
        for name in sorted(files):
          if name.endswith('.py'):
            path = os.path.join(directory, name)
            digest.update(os.path.relpath(path, folder).encode())
            with open(path, 'rb') as f:
              digest.update(f.read())
    _fingerprint = f'{tfx_nsl.__version__}+{digest.hexdigest()[:16]}'
  return _fingerprint
