"""TFMA hooks for the standard TFX Evaluator: attacked predictions.

The Evaluator imports `custom_extractors` from this module (its
`module_path`). Our extractor replaces TFMA's PredictionsExtractor: for each
batch and each model (candidate, baseline) it returns one prediction per
TFMA output name, `clean` and one per attack, so TFMA's own metrics,
thresholds and baseline comparisons apply to attacked accuracy unchanged.
"""
import apache_beam as beam
import numpy as np
from tensorflow_model_analysis import constants as tfma_constants
from tensorflow_model_analysis.extractors import example_weights_extractor
from tensorflow_model_analysis.extractors import extractor
from tensorflow_model_analysis.extractors import features_extractor
from tensorflow_model_analysis.extractors import labels_extractor
from tensorflow_model_analysis.extractors import slice_key_extractor
from tensorflow_model_analysis.extractors import unbatch_extractor
from tensorflow_model_analysis.utils import config_util
from tensorflow_model_analysis.utils import model_util
from tensorflow_model_analysis.utils import util

from tfx_nsl.components.robustness_evaluator import attacks

def attack_names(eval_config):
  names = []
  for spec in eval_config.metrics_specs:
    for name in spec.output_names:
      if name not in names:
        names.append(name)
  return names or [attacks.CLEAN]


class _AttackedPredictionsDoFn(model_util.BatchReducibleBatchedDoFnWithModels):
  """Batched extracts -> predictions keyed by model, then attack name."""

  def __init__(self, eval_shared_models, names, settings):
    super().__init__({m.model_name: m.model_loader for m in eval_shared_models})
    self._names = names
    self._settings = settings
    self._examples = beam.metrics.Metrics.counter('tfx_nsl.Robustness',
                                                  'examples_attacked')

  def _batch_reducible_process(self, batched_extract):
    serialized = np.asarray(batched_extract[tfma_constants.INPUT_KEY]).ravel()
    outputs = {name: attacks.predictions_under_attacks(
        model, serialized.tolist(), self._names, self._settings)
               for name, model in self._loaded_models.items()}
    if len(outputs) == 1:
      outputs = next(iter(outputs.values()))
    self._examples.inc(len(serialized))
    return [util.copy_and_set_by_keys(
        batched_extract, [tfma_constants.PREDICTIONS_KEY], outputs)]


def AttackedPredictionsExtractor(eval_shared_model, eval_config, settings):  # pylint: disable=invalid-name
  models = model_util.verify_and_update_eval_shared_models(eval_shared_model)
  names = attack_names(eval_config)
  for name in names:
    if name != attacks.CLEAN:
      attacks.Attack.parse(name)  # fail now on a malformed name
  return extractor.Extractor(
      stage_name='ExtractAttackedPredictions',
      ptransform=beam.ParDo(_AttackedPredictionsDoFn(models, names, settings)))


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
      labels_extractor.LabelsExtractor(eval_config=eval_config),
      example_weights_extractor.ExampleWeightsExtractor(eval_config=eval_config),
      AttackedPredictionsExtractor(eval_shared_model, eval_config, settings),
      unbatch_extractor.UnbatchExtractor(),
      slice_key_extractor.SliceKeyExtractor(eval_config=eval_config),
  ]
