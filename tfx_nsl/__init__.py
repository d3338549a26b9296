"""tfx-nsl: Neural Structured Learning as TFX pipeline components.

Public API. Heavy modules (TFX pipelines, TensorFlow) load on first use so
that `import tfx_nsl` stays cheap, e.g. for KFP's entrypoint, which imports
custom artifact classes by their TYPE_NAME (`tfx_nsl.Graph`).
"""
import importlib
import os

# NSL's Keras wrappers need Keras 2. TensorFlow reads this when `tf.keras` is
# first resolved, so it must be set before then; entry points set it too.
os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')

__version__ = '0.1.0'

# name -> module that defines it; resolved lazily (PEP 562).
_LAZY = {
    'Graph': 'tfx_nsl.types',
    'create_pipeline': 'tfx_nsl.pipelines.nsl_pipeline',
    'run_local': 'tfx_nsl.pipelines.local_runner',
    'import_nsl': 'tfx_nsl.nsl_compat',
}

__all__ = ['Graph', '__version__', *_LAZY]


def lazy_getattr(module_name, lazy):
  """A module __getattr__ (PEP 562) that imports each name of `lazy` ({name:
  the module defining it}) on first use."""
  def __getattr__(name):
    if name in lazy:
      return getattr(importlib.import_module(lazy[name]), name)
    raise AttributeError(f'module {module_name!r} has no attribute {name!r}')
  return __getattr__


__getattr__ = lazy_getattr(__name__, _LAZY)
