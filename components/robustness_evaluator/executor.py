"""RobustnessEvaluator executor: TFX's Evaluator with attack settings, an
EvalConfig built for the model's head, and a robustness report written next
to TFMA's results."""
import contextlib
import dataclasses
import json
import os
import threading

import numpy as np

from absl import logging
from google.protobuf import json_format
import tensorflow_model_analysis as tfma
import tensorflow as tf
from tfx.components.evaluator import constants
from tfx.components.evaluator import executor as evaluator_executor
from tfx.types import artifact_utils
from tfx.types import standard_component_specs
from tfx.utils import path_utils

from tfx_nsl import beam_executor
from tfx_nsl import heads
from tfx_nsl.components.robustness_evaluator import attacks
from tfx_nsl.components.robustness_evaluator import report
from tfx_nsl.components.robustness_evaluator import tfma_module
from tfx_nsl.components.robustness_evaluator.params import RobustnessParams

TRANSFORM_GRAPH_KEY = 'transform_graph'
STATISTICS_KEY = standard_component_specs.STATISTICS_KEY
STATISTICS_NEED_RAW = (
    "RobustnessEvaluator: statistics give the raw features' ranges, and "
    'with transform_graph the attacks move the transformed model inputs: '
    "pass attack_space='raw', or clip_min / clip_max in the model inputs' "
    'units instead of statistics')
# The suites' sanity counts: {model: {attack: {flag: examples}}}.
FLAGS_JSON = 'robustness_flags.json'
# Accuracy per class: {model: {attack: {class: [accuracy, examples]}}}.
CLASSES_JSON = 'robustness_classes.json'
_COUNTS_DIR = '.robustness_counts'  # the workers' parts, removed after
# Examples shown clean and attacked in the report's grid.

# The Evaluator calls `tfma_module.custom_extractors` with a fixed signature,
# so the attack settings of the running execution wait here for it; the
# extractors then carry them to the Beam workers.
_CURRENT = threading.local()


def current_attack_settings():
  return getattr(_CURRENT, 'settings', None)


@contextlib.contextmanager
def _attack_settings(settings):
  _CURRENT.settings = settings
  try:
    yield
  finally:
    _CURRENT.settings = None


# The models an execution in this process loaded for its checks, by
# serving path, while it runs: TFMA's model loader takes them
# (tfma_module.custom_eval_shared_model) instead of loading the SavedModel
# once more; a worker in another process loads it.
_LOADED = {}
_LOADED_LOCK = threading.Lock()


def loaded_model(path):
  with _LOADED_LOCK:
    model = _LOADED.get(path)
  return model if model is not None else tf.keras.models.load_model(
      path, compile=False)


@contextlib.contextmanager
def _sharing(path, model):
  with _LOADED_LOCK:
    _LOADED[path] = model
  try:
    yield
  finally:
    with _LOADED_LOCK:
      if _LOADED.get(path) is model:  # not an overlapping execution's
        del _LOADED[path]


def _threshold(lower_bound, max_drop, upper_bound=None, max_increase=None):
  threshold = tfma.MetricThreshold()
  if lower_bound is not None:
    threshold.value_threshold.lower_bound.value = lower_bound
  if upper_bound is not None:
    threshold.value_threshold.upper_bound.value = upper_bound
  if max_drop is not None:
    threshold.change_threshold.direction = (
        tfma.MetricDirection.HIGHER_IS_BETTER)
    threshold.change_threshold.absolute.value = -max_drop
  if max_increase is not None:
    threshold.change_threshold.direction = (
        tfma.MetricDirection.LOWER_IS_BETTER)
    threshold.change_threshold.absolute.value = max_increase
  return threshold


def _output_copy(spec, output_name, ours, clean):
  """The user's MetricsSpec for one output; metrics that the gates already
  compute (`ours`: {class name: MetricConfig}) are left to the gates, which
  take the user's threshold on the clean output when they set none."""
  copy = tfma.MetricsSpec()
  copy.CopyFrom(spec)
  copy.output_names[:] = [output_name]
  copy.ClearField('model_names')
  kept = []
  for metric in copy.metrics:
    if metric.class_name in ours:
      if clean and metric.HasField('threshold') and not ours[
          metric.class_name].HasField('threshold'):
        ours[metric.class_name].threshold.CopyFrom(metric.threshold)
      continue
    if not clean:
      for field in ('threshold', 'per_slice_thresholds',
                    'cross_slice_thresholds'):
        metric.ClearField(field)
    kept.append(metric)
  del copy.metrics[:]
  copy.metrics.extend(kept)
  if not clean:
    for field in ('thresholds', 'per_slice_thresholds',
                  'cross_slice_thresholds'):
      copy.ClearField(field)
  return copy if kept or copy.thresholds else None


def robustness_eval_config(head, gates, user_config=None):
  """The EvalConfig TFMA runs: one output per attack (and 'clean'), the
  head's metrics and the accuracy gates on each, and the user's metrics on
  each (their thresholds on the clean output only)."""
  if user_config is not None and user_config.metrics_specs and any(
      spec.output_names for spec in user_config.metrics_specs):
    raise ValueError('eval_config metrics_specs must not set output_names: '
                     'RobustnessEvaluator names one output per attack')
  # The models are Keras SavedModels (loaded_model loads them so): saying
  # so spares TFMA loading each one more time to find out.
  model_specs = [tfma.ModelSpec(name=report.CANDIDATE,
                                label_key=gates.label_key,
                                model_type=tfma.TF_KERAS)]
  if gates.with_baseline:
    model_specs.append(tfma.ModelSpec(name=report.BASELINE,
                                      label_key=gates.label_key,
                                      is_baseline=True,
                                      model_type=tfma.TF_KERAS))
  else:
    model_specs[0].name = ''
  gates.check(head)
  metrics_specs = []
  gated, *others = head.tfma_metrics()
  for name in [attacks.CLEAN, *gates.attack_names]:
    clean = name == attacks.CLEAN
    lower = (gates.min_clean_accuracy if clean
             else gates.min_attacked_accuracy.get(name))
    upper = (gates.max_clean_error if clean
             else gates.max_attacked_error.get(name))
    drop = gates.max_accuracy_drop if gates.with_baseline else None
    increase = gates.max_error_increase if gates.with_baseline else None
    ours = {c: tfma.MetricConfig(
        class_name=c, module=tfma_module.NATIVE_METRICS.get(c, ''))
            for c in [gated, *others] + (['ExampleCount'] if clean else [])}
    if any(v is not None for v in (lower, drop, upper, increase)):
      ours[gated].threshold.CopyFrom(_threshold(lower, drop, upper,
                                                increase))
    copies = [_output_copy(spec, name, ours, clean=name == attacks.CLEAN)
              for spec in (user_config.metrics_specs if user_config else [])]
    metrics_specs.append(tfma.MetricsSpec(metrics=list(ours.values()),
                                          output_names=[name]))
    metrics_specs.extend(copy for copy in copies if copy is not None)
  config = tfma.EvalConfig(
      model_specs=model_specs, metrics_specs=metrics_specs,
      slicing_specs=[tfma.SlicingSpec()] + list(
          user_config.slicing_specs if user_config else []))
  if user_config is not None:
    config.options.CopyFrom(user_config.options)
  # The model's compiled metrics know only its own output, not the attacks.
  config.options.include_default_metrics.value = False
  return config


def _serving_path(model_artifact):
  return path_utils.serving_model_path(
      model_artifact.uri, path_utils.is_old_model_artifact(model_artifact))


def _check_model(path, settings, attack_names):
  """(the candidate at `path`, its head, its perturbed features); fails
  before any data is read when the label, the model's inputs and the
  Transform graph do not fit together, or when white-box attacks meet a
  model without gradients (checked on the model's inputs; in the raw space
  the first batch tells)."""
  model = loaded_model(path)
  perturbed = attacks.ModelInputs(model, settings).perturbed
  if settings.attack_space != attacks.RAW:
    attacks.check_gradients(model, settings, attack_names)
  return model, heads.infer(model, settings.head), perturbed


def observed_ranges(statistics):
  """{feature: (min, max)} of the numeric features of an ExampleStatistics
  artifact, over all its splits."""
  from tfx.components.statistics_gen import stats_artifact_utils  # pylint: disable=g-import-not-at-top
  ranges = {}
  for split in artifact_utils.decode_split_names(statistics.split_names):
    view = stats_artifact_utils.load_statistics(statistics, split)
    for dataset in view.proto().datasets:
      for feature in dataset.features:
        stats = feature.num_stats
        if (not feature.HasField('num_stats') or
            not stats.common_stats.num_non_missing or
            not np.isfinite([stats.min, stats.max]).all()):
          continue  # no values seen: no range
        name = '.'.join(feature.path.step) or feature.name
        low, high = ranges.get(name, (np.inf, -np.inf))
        ranges[name] = (min(low, stats.min), max(high, stats.max))
  return ranges


def _configuration(params, settings, input_dict, exec_properties):
  """{setting: text} for the report: the models, the attacks (a suite with
  its members and budgets) and the settings they share."""
  config = {}
  for key, role in ((standard_component_specs.MODEL_KEY, 'candidate model'),
                    (standard_component_specs.BASELINE_MODEL_KEY,
                     'baseline model'),
                    (standard_component_specs.EXAMPLES_KEY, 'examples'),
                    (TRANSFORM_GRAPH_KEY, 'transform graph'),
                    (STATISTICS_KEY, 'statistics (clip range)')):
    if input_dict.get(key):
      config[role] = artifact_utils.get_single_uri(input_dict[key])
  config['example splits'] = json.dumps(_example_splits(exec_properties))
  for name in params.attack_names:
    attack = attacks.Attack.parse(name)
    config[f'attack {name}'] = ', '.join(
        f'{method} {options}' for method, options in attack.suite) if (
            attack.suite) else f'NSL {attack.method}'
  for field in ('attack_space', 'perturb_features', 'batch_size', 'head',
                'gate_on_lower_bound', 'fail_on_flags'):
    config[field] = str(getattr(params, field))
  config['clip range'] = f'[{settings.clip_min}, {settings.clip_max}]'
  return config


def _example_splits(exec_properties):
  """The evaluated splits (TFX's Evaluator's default: eval)."""
  return json.loads(exec_properties.get(
      standard_component_specs.EXAMPLE_SPLITS_KEY) or 'null') or ['eval']


def image_of(values):
  """[k, h, w(, c)] images of a perturbed feature's [k, ...] values, or
  None: a feature of shape [h, w], [h, w, 1 or 3], or a flat one whose
  size is a square of at least 16 (e.g. 8x8 digits, 28x28 MNIST)."""
  shape = values.shape[1:]
  if len(shape) == 3 and shape[-1] in (1, 3):
    return values[..., 0] if shape[-1] == 1 else values
  if len(shape) == 2 and min(shape) > 1:
    return values
  size = int(np.prod(shape))
  side = int(round(size ** 0.5))
  if len(shape) == 1 and size >= 16 and side * side == size:
    return values.reshape(-1, side, side)
  return None


def _example_grid(counts_dir, settings, head):
  """The report's grid (report.example_grid_png) of the examples a worker
  stored (its first ones, for the candidate), or None without an
  image-like perturbed feature or for a regression model."""
  stored = report.load_worker_grid(counts_dir) if head.classification else None
  if stored is None or attacks.CLEAN not in stored[0]:
    return None
  features, predictions, labels = stored
  clean = features[attacks.CLEAN]
  feature = next((k for k in attacks.perturbed_features(clean, settings)
                  if image_of(clean[k]) is not None), None)
  if feature is None:
    return None
  return report.example_grid_png(
      {name: image_of(values[feature]) for name, values in features.items()},
      {name: attacks.predicted_classes(p, head)
       for name, p in predictions.items()}, labels.astype(int))


def _unbless(blessing):
  """Turns TFX's blessing into NOT_BLESSED (as its Evaluator writes it)."""
  blessed = os.path.join(blessing.uri, constants.BLESSED_FILE_NAME)
  if tf.io.gfile.exists(blessed):
    tf.io.gfile.remove(blessed)
  # GFile creates its file at the first write, not at open.
  with tf.io.gfile.GFile(os.path.join(blessing.uri,
                                      constants.NOT_BLESSED_FILE_NAME),
                         'w') as f:
    f.write('')
  blessing.set_int_custom_property(constants.ARTIFACT_PROPERTY_BLESSED_KEY,
                                   constants.NOT_BLESSED_VALUE)


class Executor(beam_executor.BeamExecutor, evaluator_executor.Executor):
  """Runs TFMA with attacked predictions, then writes the report (TFX's
  Evaluator executor, without its ephemeral sdist on the DirectRunner)."""

  def Do(self, input_dict, output_dict, exec_properties):
    # Checked before any data is read (RuntimeParameters have values now).
    params = RobustnessParams.from_exec_properties(exec_properties)
    settings = params.attack_settings(
        artifact_utils.get_single_uri(input_dict[TRANSFORM_GRAPH_KEY])
        if input_dict.get(TRANSFORM_GRAPH_KEY) else None)
    gates = params.gates(with_baseline=bool(input_dict.get(
        standard_component_specs.BASELINE_MODEL_KEY)))
    candidate_path = _serving_path(artifact_utils.get_single_instance(
        input_dict[standard_component_specs.MODEL_KEY]))
    model, head, perturbed = _check_model(candidate_path, settings,
                                          gates.attack_names)
    if input_dict.get(STATISTICS_KEY):
      if (settings.transform_graph and
          settings.attack_space != attacks.RAW):
        raise ValueError(STATISTICS_NEED_RAW)
      statistics = artifact_utils.get_single_instance(
          input_dict[STATISTICS_KEY])
      settings, unranged = attacks.with_observed_ranges(
          settings, observed_ranges(statistics), perturbed)
      logging.info('RobustnessEvaluator: clip range from %s: [%s, %s]',
                   statistics.uri, settings.clip_min, settings.clip_max)
      if unranged:
        logging.warning('RobustnessEvaluator: the statistics have no range '
                        'for perturbed features %s; they stay unbounded '
                        'unless clip_min / clip_max bound them', unranged)
    key = standard_component_specs.EVAL_CONFIG_KEY
    user_config = None
    if exec_properties.get(key):
      user_config = json_format.Parse(exec_properties[key], tfma.EvalConfig())
    exec_properties = {**exec_properties, key: json_format.MessageToJson(
        robustness_eval_config(head, gates, user_config))}
    logging.info('RobustnessEvaluator: head %s, attacks %s, batches of %d%s',
                 head.name, gates.attack_names, settings.batch_size,
                 ', Transform applied' if settings.transform_graph else '')
    evaluation_uri = artifact_utils.get_single_uri(output_dict['evaluation'])
    counts_dir = os.path.join(evaluation_uri, _COUNTS_DIR)
    with _attack_settings(dataclasses.replace(
        settings, head=head.name, counts_dir=counts_dir)), _sharing(
            candidate_path, model):
      super().Do(input_dict, output_dict, exec_properties)
    worker_counts = report.merge_worker_counts(counts_dir)
    grid_png = _example_grid(counts_dir, settings, head)
    if tf.io.gfile.isdir(counts_dir):
      tf.io.gfile.rmtree(counts_dir)
    flags = {model: by_attack for model, by_attack in
             worker_counts.get('flags', {}).items() if by_attack}
    classes = report.class_accuracies(worker_counts.get('classes', {}))
    for name, content in ((FLAGS_JSON, flags), (CLASSES_JSON, classes)):
      with tf.io.gfile.GFile(os.path.join(evaluation_uri, name), 'w') as f:
        json.dump(content, f, indent=1, sort_keys=True)
    raised = report.raised_flags(flags)
    for flag in raised:
      logging.warning('RobustnessEvaluator sanity flag: %s', flag)
    metric = None if head.classification else head.gated_metric
    values = report.load_accuracies(evaluation_uri, metric)
    counts = None if metric else report.load_counts(evaluation_uri)
    blessed, failures = report.load_validation(evaluation_uri)
    ours = []  # gates TFMA's thresholds cannot express
    if raised and params.fail_on_flags:
      ours += [f'sanity flag (fail_on_flags): {f}' for f in raised]
    if gates.on_lower_bound and counts:
      ours += report.lower_bound_failures(
          values.get(report.CANDIDATE, {}), counts.get(report.CANDIDATE),
          gates.accuracy_floors())
    if ours and blessed:
      _unbless(artifact_utils.get_single_instance(output_dict['blessing']))
      blessed = False
    failures = failures + ours
    report.write_report(evaluation_uri, report.Page(
        accuracies=values, counts=counts, blessed=blessed, failures=failures,
        metric=metric, flags=raised, gates=report.gate_rows(gates, values,
                                                            counts),
        classes=classes, configuration=_configuration(
            params, settings, input_dict, exec_properties),
        grid_png=grid_png))
    logging.info('Robustness (blessed: %s):\n%s', blessed, report.text_table(
        values, metric=metric or 'accuracy', counts=counts))
    for failure in failures:
      logging.warning('Robustness threshold not met: %s', failure)
