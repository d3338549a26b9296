"""TFMA hooks for the standard TFX Evaluator: attacked predictions, and a
native multi-class accuracy.

The Evaluator imports `custom_extractors` from this module (its
`module_path`). Our extractor replaces TFMA's PredictionsExtractor: for each
batch and each model (candidate, baseline) it returns one prediction per
TFMA output name, `clean` and one per attack, so TFMA's own metrics,
thresholds and baseline comparisons apply to attacked accuracy unchanged.
"""
from collections.abc import Mapping
import functools
import time

from absl import logging
import apache_beam as beam
from apache_beam.transforms.window import GlobalWindows
import numpy as np
import tensorflow as tf
from tensorflow_model_analysis import constants as tfma_constants
from tensorflow_model_analysis.api import model_eval_lib
from tensorflow_model_analysis.api import types as tfma_types
from tensorflow_model_analysis.extractors import example_weights_extractor
from tensorflow_model_analysis.extractors import extractor
from tensorflow_model_analysis.extractors import features_extractor
from tensorflow_model_analysis.extractors import labels_extractor
from tensorflow_model_analysis.extractors import slice_key_extractor
from tensorflow_model_analysis.extractors import unbatch_extractor
from tensorflow_model_analysis.metrics import metric_types
from tensorflow_model_analysis.metrics import metric_util
from tensorflow_model_analysis.utils import config_util
from tensorflow_model_analysis.utils import model_util
from tensorflow_model_analysis.utils import util

from tfx_nsl import heads
from tfx_nsl.components.robustness_evaluator import attacks
from tfx_nsl.components.robustness_evaluator import report

_PROGRESS_SECONDS = 30
_NUMBERS = (np.ndarray, np.generic)

# Beam counters (namespace NAMESPACE).
NAMESPACE = 'tfx_nsl.Robustness'
COUNTERS = {
    'examples_attacked': 'examples predicted under the attacks, per model',
}


class SparseCategoricalAccuracy(metric_types.Metric):
  """Keras' sparse_categorical_accuracy as a native TFMA metric: the
  weighted share of examples whose label equals the argmax of the
  prediction (attacks.top_class: the first of tied maxima, NaN skipped), 0
  without examples, divided in float32 as Keras does (9 of 10 is
  0.89999998, below a 0.9 threshold, in both).

  TFMA has no native multi-class accuracy; its wrapper of the Keras metric
  ran an eager TF update per batch and output, about 0.15 ms an example
  and output, most of a clean digits evaluation (docs/benchmarks.md). Same
  name and value, so thresholds and `load_metrics` see no change.
  """

  def __init__(self, name='sparse_categorical_accuracy'):
    super().__init__(metric_util.merge_per_key_computations(
        _accuracy_computations), name=name)


def _accuracy_computations(name=None, eval_config=None, model_name='',
                           output_name='', sub_key=None,
                           example_weighted=False):
  if sub_key is not None:
    raise ValueError(f'{name} takes no binarization (sub key {sub_key}): it '
                     'is the accuracy over all classes')
  key = metric_types.MetricKey(name=name, model_name=model_name,
                               output_name=output_name,
                               example_weighted=example_weighted)
  return [metric_types.MetricComputation(
      keys=[key], preprocessors=None,
      combiner=_AccuracyCombiner(key, eval_config, example_weighted))]


class _AccuracyCombiner(beam.CombineFn):
  """(weight of the correct examples, weight of all) -> accuracy."""

  def __init__(self, key, eval_config, example_weighted):
    self._key = key
    self._eval_config = eval_config
    self._example_weighted = example_weighted
    self._names = [n for n in (key.model_name, key.output_name) if n]
    # The model's label_key, as TFMA finds it (looked up before the names).
    specs = list(eval_config.model_specs) if eval_config else []
    self._label_key = next((spec.label_key for spec in specs if (
        spec.name if len(specs) > 1 else '') == key.model_name), '')

  def create_accumulator(self):
    return np.zeros(2)

  def _plain(self, element):
    """[(label, prediction, weight)] when the extracts are plain: each model
    and output name a key of a dict, numeric arrays of at most one
    dimension under them. Else None, and TFMA's
    to_label_prediction_example_weight decides (label and prediction keys,
    label vocabularies, sparse labels, prefixed keys, squeezing, its
    errors): it costs about 25 us an example and output, most of a clean
    digits run's metrics (docs/benchmarks.md)."""
    label, prediction = element.label, element.prediction
    if self._label_key and isinstance(label, Mapping) and any(
        str(k) == self._label_key or str(k).startswith(self._label_key + '/')
        for k in label):
      return None
    weight = element.example_weight if self._example_weighted else None
    for name in self._names:
      if not isinstance(prediction, Mapping) or name not in prediction:
        return None
      prediction = prediction[name]
      label, weight = (value[name] if isinstance(value, Mapping) and
                       name in value else value for value in (label, weight))
    if weight is None:
      weight = 1.0
    elif (isinstance(weight, _NUMBERS) and weight.dtype.kind in 'biuf' and
          np.size(weight) == 1):
      weight = float(np.sum(weight))
    else:
      return None
    if (isinstance(label, _NUMBERS) and isinstance(prediction, np.ndarray)
        and label.dtype.kind in 'biuf' and prediction.dtype.kind == 'f'
        and label.ndim <= 1 and prediction.ndim == 1):
      return [(label, prediction, weight)]
    return None

  def add_input(self, accumulator, element):
    triples = self._plain(element) or (
        metric_util.to_label_prediction_example_weight(
            element, eval_config=self._eval_config,
            model_name=self._key.model_name,
            output_name=self._key.output_name,
            example_weighted=self._example_weighted, flatten=False))
    for label, prediction, weight in triples:
      label, prediction = np.asarray(label), np.asarray(prediction)
      if label.size != 1 or prediction.ndim != 1:
        raise ValueError(
            f'{self._key.name} takes one class index per example and one '
            f'score per class; output {self._key.output_name!r} has a label '
            f'of shape {label.shape} and a prediction of shape '
            f'{prediction.shape} (one-hot labels: use CategoricalAccuracy '
            'in your eval_config)')
      # A float row's argmax unless it stops at a NaN; top_class otherwise.
      top = prediction.argmax() if prediction.dtype.kind == 'f' else None
      if top is None or prediction[top] != prediction[top]:
        top = attacks.top_class(prediction)
      if not isinstance(weight, float):
        weight = float(np.sum(weight))
      accumulator[0] += weight * float(label.flat[0] == top)
      accumulator[1] += weight
    return accumulator

  def merge_accumulators(self, accumulators):
    return np.sum(list(accumulators), axis=0)

  def extract_output(self, accumulator):
    correct, total = accumulator
    return {self._key: float(np.float32(correct) / np.float32(total))
                       if total else 0.0}


# The metric classes of heads.Head.tfma_metrics() that this module computes
# natively (MetricConfig.module); TFMA has native ones for the others.
NATIVE_METRICS = {SparseCategoricalAccuracy.__name__: __name__}


def attack_names(eval_config):
  names = []
  for spec in eval_config.metrics_specs:
    for name in spec.output_names:
      if name not in names:
        names.append(name)
  return names or [attacks.CLEAN]


class _AttackedPredictionsDoFn(model_util.DoFnWithModels):
  """Batched extracts -> predictions keyed by model, then attack name.

  The extracts of a bundle wait until they hold `settings.batch_size`
  examples, which are then attacked in calls of exactly that many (the last
  of a bundle may be smaller): the batches TFXIO makes are sized for
  reading, not for attacks.
  """

  def __init__(self, eval_shared_models, names, settings):
    super().__init__({m.model_name: m.model_loader for m in eval_shared_models})
    self._names = names
    self._settings = settings
    self._examples = beam.metrics.Metrics.counter(NAMESPACE,
                                                  'examples_attacked')
    self._pending, self._rows = [], 0
    self._progress = None
    self._inputs = {}  # model name -> (attacks.ModelInputs, heads.Head)
    self._grid_wanted = bool(settings.counts_dir)

  def start_bundle(self):
    self._pending, self._rows = [], 0

  def process(self, batched_extract):
    self._pending.append(batched_extract)
    self._rows += util.batch_size(batched_extract)
    if self._rows >= self._settings.batch_size:
      yield from self._flush()

  def finish_bundle(self):
    super().finish_bundle()
    for extract in self._flush():
      yield GlobalWindows.windowed_value(extract)

  def _flush(self):
    pending, self._pending, self._rows = self._pending, [], 0
    if not pending:
      return
    sizes = [util.batch_size(e) for e in pending]
    serialized = np.concatenate([
        np.asarray(e[tfma_constants.INPUT_KEY], object).ravel()
        for e in pending])
    size = self._settings.batch_size
    outputs, transformed, flags, classes = {}, {}, {}, {}
    for model_name, model in self._loaded_models.items():
      if model_name not in self._inputs:
        self._inputs[model_name] = (
            attacks.ModelInputs(model, self._settings),
            heads.infer(model, self._settings.head))
      inputs, head = self._inputs[model_name]
      chunks = []
      for i in range(0, len(serialized), size):
        # The report's grid: the candidate's first examples in this worker.
        grid = (self._grid_wanted and head.classification and
                model_name != report.BASELINE)
        chunk = attacks.predictions_under_attacks(
            model, serialized[i:i + size].tolist(), self._names,
            self._settings, inputs=inputs, head=head,
            flags=flags.setdefault(model_name, {}),
            classes=classes.setdefault(model_name, {}), keep_features=grid)
        if grid:
          report.store_worker_grid(
              self._settings.counts_dir, serialized[i], chunk[2][0],
              chunk[0], chunk[2][1])
          self._grid_wanted = False
        chunks.append(chunk)
      outputs[model_name] = {name: np.concatenate([c[0][name] for c in chunks])
                             for name in self._names}
      transformed[model_name] = {
          key: np.concatenate([c[1][key] for c in chunks])
          for key in chunks[0][1]}
    if self._settings.counts_dir and (any(flags.values()) or
                                      any(classes.values())):
      report.store_worker_counts(self._settings.counts_dir,
                                 {'flags': flags, 'classes': classes})
    self._examples.inc(len(serialized))
    self._log_progress(len(serialized))
    offsets = np.cumsum([0] + sizes)
    single = len(outputs) == 1
    has_features = any(transformed.values())
    for extract, start, end in zip(pending, offsets[:-1], offsets[1:]):
      predictions = {model_name: {name: values[start:end]
                                  for name, values in by_name.items()}
                     for model_name, by_name in outputs.items()}
      features = {model_name: {key: values[start:end]
                               for key, values in by_key.items()}
                  for model_name, by_key in transformed.items()}
      if single:
        predictions = next(iter(predictions.values()))
        features = next(iter(features.values()))
      extract = util.copy_and_set_by_keys(
          extract, [tfma_constants.PREDICTIONS_KEY], predictions)
      if has_features:
        # TFMA looks labels and slice features up here first.
        extract[tfma_constants.TRANSFORMED_FEATURES_KEY] = features
      yield extract

  def _log_progress(self, count):
    now = time.time()
    if self._progress is None:
      self._progress = [now, now, 0]  # started, last logged, examples
    self._progress[2] += count
    started, logged, total = self._progress
    if now - logged >= _PROGRESS_SECONDS or logged == started:
      self._progress[1] = now
      logging.info(
          'RobustnessEvaluator: %d examples attacked by %d attacks in this '
          'worker (%.0f examples/s, batches of %d)', total,
          len(self._names) - (attacks.CLEAN in self._names), total / max(
              now - started, 1e-9), self._settings.batch_size)


def AttackedPredictionsExtractor(eval_shared_model, eval_config, settings):  # pylint: disable=invalid-name
  models = model_util.verify_and_update_eval_shared_models(eval_shared_model)
  names = attack_names(eval_config)
  for name in names:
    if name != attacks.CLEAN:
      attacks.Attack.parse(name)  # fail now on a malformed name
  return extractor.Extractor(
      stage_name='ExtractAttackedPredictions',
      ptransform=beam.ParDo(_AttackedPredictionsDoFn(models, names, settings)))


def custom_eval_shared_model(eval_saved_model_path, model_name, eval_config,
                             **kwargs):
  """TFMA's shared model, loaded by executor.loaded_model: the model the
  execution already loaded for its checks when the workers run in its
  process, else the SavedModel (as TFMA would, without compiling it)."""
  from tfx_nsl.components.robustness_evaluator import executor  # pylint: disable=g-import-not-at-top
  return model_eval_lib.default_eval_shared_model(
      eval_saved_model_path=eval_saved_model_path, model_name=model_name,
      eval_config=eval_config, custom_model_loader=tfma_types.ModelLoader(
          construct_fn=functools.partial(executor.loaded_model,
                                         eval_saved_model_path),
          tags=[tf.saved_model.SERVING]), **kwargs)


def custom_extractors(eval_shared_model, eval_config, tensor_adapter_config):
  """The Evaluator's extractor list, with attacked predictions."""
  # TFX reloads this module before calling it, so the settings live in the
  # executor module.
  from tfx_nsl.components.robustness_evaluator import executor  # pylint: disable=g-import-not-at-top
  settings = executor.current_attack_settings()
  if settings is None:
    raise RuntimeError('custom_extractors runs inside RobustnessEvaluator, '
                       'which provides the attack settings')
  models = model_util.verify_and_update_eval_shared_models(eval_shared_model)
  eval_config = config_util.update_eval_config_with_defaults(
      eval_config, has_baseline=len(models) > 1,
      rubber_stamp=model_util.has_rubber_stamp(models))
  representations = (tensor_adapter_config.tensor_representations
                     if tensor_adapter_config else None)
  return [
      features_extractor.FeaturesExtractor(
          eval_config=eval_config, tensor_representations=representations),
      # Before the labels: a label that Transform computes is looked up in
      # the transformed features that the attack step adds.
      AttackedPredictionsExtractor(eval_shared_model, eval_config, settings),
      labels_extractor.LabelsExtractor(eval_config=eval_config),
      example_weights_extractor.ExampleWeightsExtractor(eval_config=eval_config),
      unbatch_extractor.UnbatchExtractor(),
      slice_key_extractor.SliceKeyExtractor(eval_config=eval_config),
  ]
