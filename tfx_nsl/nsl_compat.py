"""The one place that knows how to import neural-structured-learning here.

NSL 1.4.0 (its last release) imports `nsl.estimator` from its package
`__init__`, and that subpackage imports `tf.estimator`, which TensorFlow 2.16
removed. We register a stand-in for that subpackage before NSL loads; its
attributes raise an error that says why. Everything else in NSL (keras
wrappers, attack code in `nsl.lib`, `nsl.tools`) works on TF 2.16 + tf-keras.

NSL's Keras wrappers also need Keras 2 (`tf_keras`), which TensorFlow uses for
`tf.keras` only when TF_USE_LEGACY_KERAS=1 is set before `tf.keras` is first
resolved. `import_nsl()` checks that and fails loudly otherwise.
"""
import importlib
import logging
import os
import sys
import types

_ESTIMATOR = 'neural_structured_learning.estimator'


class _EstimatorUnavailable(types.ModuleType):

  def __getattr__(self, name):
    if name.startswith('__'):
      raise AttributeError(name)
    raise ImportError(
        f'{_ESTIMATOR}.{name} is unavailable: it needs tf.estimator, which '
        'TensorFlow >= 2.16 removed. Use neural_structured_learning.keras.')


def check_keras2():
  """Raises unless `tf.keras` is Keras 2 in this process."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  module = tf.keras.Model.__module__
  if not module.startswith('tf_keras.'):
    raise RuntimeError(
        f'tf.keras is Keras 3 ({module}), but NSL needs Keras 2. Set '
        'TF_USE_LEGACY_KERAS=1 in the environment before TensorFlow is '
        f'imported (it is {os.environ.get("TF_USE_LEGACY_KERAS")!r} here) '
        'and install tf-keras matching TensorFlow.')


class _SkipNoticeFilter(logging.Filter):
  """Drops NSL's notice that it cannot perturb non-float inputs: labels,
  ids and categorical ids are left out of every attack on purpose, and the
  trainer logs which inputs are perturbed."""

  def filter(self, record):
    return not str(record.msg).startswith('Cannot perturb non-Tensor input')


def import_nsl():
  """Returns the `neural_structured_learning` module, importable on TF 2.16."""
  os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
  absl_logger = absl_logging.get_absl_logger()
  if not any(isinstance(f, _SkipNoticeFilter) for f in absl_logger.filters):
    absl_logger.addFilter(_SkipNoticeFilter())
  try:
    import tensorflow.estimator  # noqa: F401 pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    sys.modules.setdefault(_ESTIMATOR, _EstimatorUnavailable(_ESTIMATOR))
  check_keras2()
  return importlib.import_module('neural_structured_learning')


def per_feature(value, feature_names):
  """`value` keyed by feature, for NSL configs of dict inputs.

  NSL's adversarial neighbor code looks clip bounds up by feature name when
  the inputs are a dict, and silently skips a scalar bound; a scalar must be
  spread over the features for clipping to happen.
  """
  if value is None or isinstance(value, dict):
    return value
  return {name: value for name in feature_names}
