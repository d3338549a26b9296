"""RobustnessEvaluator: attack names, NSL attacks vs a direct FGSM, config."""
import json
import os

import numpy as np
import pytest

from tfx_nsl import heads
from tfx_nsl.components.robustness_evaluator import attacks
from tfx_nsl.components.robustness_evaluator.params import Gates
from tfx_nsl.components.robustness_evaluator.executor import robustness_eval_config


@pytest.mark.parametrize('name', [
    'fgsm_linf_eps0.1', 'fgsm_l2_eps1.5', 'pgd_linf_eps0.1_steps10_step0.02',
    'pgd_l2_eps0.5_steps3_step0.2_rand'])
def test_attack_names_round_trip(name):
  assert attacks.Attack.parse(name).name == name


@pytest.mark.parametrize('bad, message', [
    ('fgsm_linf', 'not an attack name'),
    ('fgsm_l1_eps0.1', "attack 'fgsm_l1_eps0.1': attack norm must be one"),
    ('fgsm_linf_eps0', 'epsilon must be > 0'),
    ('fgsm_linf_eps0.1_rand', 'fgsm is one step'),
])
def test_bad_attack_names_are_explained(bad, message):
  with pytest.raises(ValueError, match=message):
    attacks.Attack.parse(bad)


def test_pgd_needs_steps_and_step_size():
  with pytest.raises(ValueError, match='pgd attack needs'):
    attacks.Attack(method='pgd', norm='linf', epsilon=0.1)


@pytest.fixture(scope='module')
def digits_export(tmp_path_factory):
  """A small Keras model on digits, exported as our Trainer exports it, in
  a Model artifact's folder: (that folder, eval pixels, eval labels)."""
  import tensorflow as tf
  from sklearn.datasets import load_digits
  from tfx_nsl.trainer_modules import nsl_trainer
  from tfx_nsl.trainer_modules.config import TrainerConfig
  tf.keras.utils.set_random_seed(0)
  digits = load_digits()
  x = (digits.data / 16.0).astype(np.float32)
  y = digits.target.astype(np.int64)
  config = TrainerConfig.from_dict({'feature_keys': ['pixels'],
                                    'model': {'hidden_units': [32]}})
  spec = {'pixels': tf.io.FixedLenFeature([64], tf.float32)}
  model = nsl_trainer.build_base_model(
      config, {'pixels': tf.TensorSpec((None, 64), tf.float32)})
  model.compile(optimizer=tf.keras.optimizers.Adam(0.01),
                loss='sparse_categorical_crossentropy')
  model.fit({'pixels': x[:1400]}, y[:1400], epochs=15, batch_size=64,
            verbose=0)
  root = tmp_path_factory.mktemp('model')
  nsl_trainer.export_serving_model(model, spec, config,
                                   str(root / 'Format-Serving'))
  return str(root), x[1400:], y[1400:]


@pytest.fixture(scope='module')
def digits_model(digits_export):
  import tensorflow as tf
  root, x, y = digits_export
  return (tf.keras.models.load_model(os.path.join(root, 'Format-Serving')),
          x, y)


def _serialize(x, y):
  import tensorflow as tf
  return [tf.train.Example(features=tf.train.Features(feature={
      'pixels': tf.train.Feature(float_list=tf.train.FloatList(value=row)),
      'label': tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
  })).SerializeToString() for row, label in zip(x, y)]


def test_fgsm_accuracy_equals_a_direct_gradient_tape_fgsm(digits_model):
  import tensorflow as tf
  model, x, y = digits_model
  eps = 0.1
  settings = attacks.AttackSettings(label_key='label', clip_min=0.0,
                                    clip_max=1.0)
  ours = attacks.predictions_under_attacks(
      model, _serialize(x, y), ['clean', f'fgsm_linf_eps{eps}'], settings)[0]
  # Independent FGSM: x + eps * sign(d loss / d x), clipped to [0, 1].
  inputs = tf.constant(x)
  with tf.GradientTape() as tape:
    tape.watch(inputs)
    loss = tf.keras.losses.sparse_categorical_crossentropy(
        y, model({'pixels': inputs}))
  adversarial = tf.clip_by_value(
      inputs + eps * tf.sign(tape.gradient(loss, inputs)), 0.0, 1.0)
  direct = model({'pixels': adversarial}).numpy()
  np.testing.assert_allclose(ours[f'fgsm_linf_eps{eps}'], direct, atol=1e-5)
  clean_accuracy = (ours['clean'].argmax(1) == y).mean()
  attacked_accuracy = (ours[f'fgsm_linf_eps{eps}'].argmax(1) == y).mean()
  assert attacked_accuracy == (direct.argmax(1) == y).mean()
  assert clean_accuracy > 0.9 and attacked_accuracy < clean_accuracy - 0.1


def test_pgd_is_at_least_as_strong_as_fgsm_and_stays_in_the_ball(digits_model):
  import tensorflow as tf
  model, x, y = digits_model
  settings = attacks.AttackSettings(label_key='label', clip_min=0.0,
                                    clip_max=1.0)
  pgd = attacks.Attack.parse('pgd_linf_eps0.1_steps10_step0.02_rand')
  features = {'pixels': tf.constant(x)}
  perturbed = attacks.attack_features(model, features, tf.constant(y[:, None]),
                                      pgd, settings)['pixels'].numpy()
  assert np.abs(perturbed - x).max() <= 0.1 + 1e-6
  assert perturbed.min() >= 0.0 and perturbed.max() <= 1.0
  result = attacks.predictions_under_attacks(
      model, _serialize(x, y), ['fgsm_linf_eps0.1', pgd.name], settings)[0]
  accuracy = {k: (v.argmax(1) == y).mean() for k, v in result.items()}
  assert accuracy[pgd.name] <= accuracy['fgsm_linf_eps0.1'] + 0.01


def test_only_the_named_features_are_perturbed(digits_model):
  import tensorflow as tf
  model, x, y = digits_model
  features = {'pixels': tf.constant(x),
              'count': tf.ones([len(x), 1], tf.int64)}
  fgsm = attacks.Attack.parse('fgsm_linf_eps0.3')
  moved = attacks.attack_features(
      lambda f, training=False: model({'pixels': f['pixels']}), features,
      tf.constant(y[:, None]), fgsm,
      attacks.AttackSettings(label_key='label', perturb_features=['pixels']),
      head=heads.Head('multiclass'))
  assert np.abs(moved['pixels'].numpy() - x).max() > 0.29
  np.testing.assert_array_equal(moved['count'].numpy(), 1)


@pytest.mark.parametrize('named, message', [
    (['other'], r"perturb_features \['other'\] are not features of the "
                r"attack space \(model_inputs: \['count', 'pixels'\]\)"),
    (['pixels', 'count'], r"perturb_features \['count'\] are not dense float "
                          r"features.*dense floats here: \['pixels'\]"),
])
def test_perturb_features_that_cannot_move_are_refused(digits_model, named,
                                                        message):
  import tensorflow as tf
  model, x, y = digits_model
  features = {'pixels': tf.constant(x),
              'count': tf.ones([len(x), 1], tf.int64)}
  settings = attacks.AttackSettings(label_key='label', perturb_features=named)
  with pytest.raises(ValueError, match=message):
    attacks.attack_features(model, features, tf.constant(y[:, None]),
                            attacks.Attack.parse('fgsm_linf_eps0.3'),
                            settings, head=heads.Head('multiclass'))
  # The same check at the start of an evaluation, from the model's inputs
  # (this model has one, 'pixels').
  with pytest.raises(ValueError, match=r"perturb_features \['other'\] are "
                     r"not features of the attack space \(model_inputs: "
                     r"\['pixels'\]\)"):
    attacks.ModelInputs(model, attacks.AttackSettings(
        label_key='label', perturb_features=['other']))


def test_eval_config_has_one_output_per_attack_with_thresholds():
  config = robustness_eval_config(heads.Head('multiclass'), Gates(
      ['fgsm_linf_eps0.1', 'fgsm_linf_eps0.2'], 'label', 0.9,
      {'fgsm_linf_eps0.1': 0.5}, 0.02, with_baseline=True))
  assert [m.name for m in config.model_specs] == ['candidate', 'baseline']
  assert config.model_specs[1].is_baseline
  by_output = {s.output_names[0]: s for s in config.metrics_specs}
  assert list(by_output) == ['clean', 'fgsm_linf_eps0.1', 'fgsm_linf_eps0.2']
  clean = by_output['clean'].metrics[0].threshold
  assert clean.value_threshold.lower_bound.value == 0.9
  assert clean.change_threshold.absolute.value == pytest.approx(-0.02)
  eps2 = by_output['fgsm_linf_eps0.2'].metrics[0].threshold
  assert not eps2.HasField('value_threshold')
  assert not config.options.include_default_metrics.value


def _accuracy_of(computation, inputs, parts=3):
  """A native metric computation's value over `inputs`, added in `parts`
  accumulators and merged."""
  combiner = computation.combiner
  accumulators = []
  for part in np.array_split(np.arange(len(inputs)), parts):
    accumulator = combiner.create_accumulator()
    for i in part:
      accumulator = combiner.add_input(accumulator, inputs[i])
    accumulators.append(accumulator)
  return combiner.extract_output(combiner.merge_accumulators(
      accumulators))[computation.keys[0]]


@pytest.mark.parametrize('example_weighted', [False, True])
@pytest.mark.parametrize('plain', [True, False])
def test_native_accuracy_equals_keras_sparse_categorical_accuracy(
    example_weighted, plain):
  """The native metric against the Keras metric it replaces, per model and
  output: tied maxima, NaN scores, int and float labels of shape [] and
  [1], weights, an empty output, and Keras' float32 division. Plain
  extracts take the combiner's own lookup; scores under a prediction key
  take TFMA's general one."""
  import tensorflow as tf
  import tensorflow_model_analysis as tfma
  from tensorflow_model_analysis.metrics import metric_types
  from tfx_nsl.components.robustness_evaluator import tfma_module
  rng = np.random.RandomState(0)
  n, classes = 300, 4
  labels = rng.randint(classes, size=n)
  # Rounded, so that many rows have tied maxima; some scores NaN.
  predictions = {}
  for m in ('candidate', 'baseline'):
    for o in ('clean', 'pgd'):
      p = np.round(rng.rand(n, classes), 1).astype(np.float32)
      p[rng.rand(n, classes) < 0.05] = np.nan
      predictions[(m, o)] = p
  weights = rng.rand(n).astype(np.float32)
  metric = tfma_module.SparseCategoricalAccuracy()
  key = '' if plain else 'probabilities'
  config = tfma.EvalConfig(model_specs=[
      tfma.ModelSpec(name='candidate', label_key='label',
                     prediction_key=key),
      tfma.ModelSpec(name='baseline', label_key='label', is_baseline=True,
                     prediction_key=key)])
  computations = metric.computations(
      eval_config=config, model_names=['candidate', 'baseline'],
      output_names=['clean', 'pgd'], example_weighted=example_weighted)
  assert len(computations) == 4
  def by_model(value, i):  # as TFMA's extractors give multi-model values
    return {'candidate': value, 'baseline': value} if i % 3 else value

  inputs = [metric_types.StandardMetricInputs(
      label=by_model(np.int64(labels[i]) if i % 2 else
                     np.array([labels[i]], np.float32), i),
      prediction={m: {o: p[i] if plain else {key: p[i]}
                      for (mm, o), p in predictions.items() if mm == m}
                  for m in ('candidate', 'baseline')},
      example_weight=by_model(np.array([weights[i]]), i)) for i in range(n)]
  for computation in computations:
    key, = computation.keys
    assert [computation.combiner._plain(x) is not None
            for x in inputs] == [plain] * n
    assert key.name == 'sparse_categorical_accuracy'
    assert key.example_weighted == example_weighted
    keras = tf.keras.metrics.SparseCategoricalAccuracy()
    keras.update_state(labels, predictions[(key.model_name, key.output_name)],
                       sample_weight=weights if example_weighted else None)
    expected = float(keras.result().numpy())
    value = _accuracy_of(computation, inputs)
    if example_weighted:  # float32 sums in Keras, float64 here
      assert value == pytest.approx(expected, abs=1e-6)
    else:
      assert value == expected
    combiner = computation.combiner
    assert combiner.extract_output(combiner.create_accumulator())[key] == 0.0
  # 9 of 10: 0.89999998 in Keras' float32, below a 0.9 threshold.
  nine, = metric.computations(eval_config=config, model_names=['candidate'],
                              output_names=['clean'])
  value = _accuracy_of(nine, [metric_types.StandardMetricInputs(
      label=np.array([int(i < 9)]), prediction={'candidate': {
          'clean': np.array([0.2, 0.8], np.float32)}}) for i in range(10)])
  assert value < 0.9 and value == pytest.approx(0.9)
  # Scores of shape [1, classes]: TFMA squeezes them, as before.
  assert _accuracy_of(nine, [metric_types.StandardMetricInputs(
      label=np.array([int(i < 9)]), prediction={'candidate': {
          'clean': np.array([[0.2, 0.8]], np.float32)}}) for i in range(10)
                             ]) == value

  def one(label, scores=(0.2, 0.8)):
    return _accuracy_of(nine, [metric_types.StandardMetricInputs(
        label=label, prediction={'candidate': {'clean': np.asarray(
            scores)}})], parts=1)

  # TFMA looks the label key up before the model name.
  assert one({'label': np.int64(0), 'candidate': np.int64(1)}) == 0.0
  assert one({'candidate': np.int64(1)}) == 1.0
  # TFMA's errors, as before: squeezed label shapes, non-numeric scores.
  with pytest.raises(ValueError, match=r'label of shape \(2,\)'):
    one(np.array([[0], [1]]))
  with pytest.raises(TypeError):
    one(np.array([1]), np.array([0.2, 0.8], object))
  with pytest.raises(ValueError, match=r'one class index per example.*'
                     r"'clean'.*shape \(2,\)"):
    _accuracy_of(nine, [metric_types.StandardMetricInputs(
        label=np.array([0, 1]), prediction={'candidate': {
            'clean': np.array([0.2, 0.8], np.float32)}})], parts=1)
  with pytest.raises(ValueError, match='binarization'):
    metric.computations(sub_keys=[metric_types.SubKey(class_id=1)])


def test_tfma_loads_the_model_from_its_path_in_another_process(
    digits_export):
  """The model loader TFMA pickles to workers elsewhere loads the
  SavedModel itself there (no execution shares one in that process)."""
  import pickle
  import tensorflow as tf
  import tensorflow_model_analysis as tfma
  from tfx_nsl.components.robustness_evaluator import executor
  from tfx_nsl.components.robustness_evaluator import tfma_module
  root, _, _ = digits_export
  path = os.path.join(root, 'Format-Serving')
  shared = tfma_module.custom_eval_shared_model(
      path, '', tfma.EvalConfig(model_specs=[tfma.ModelSpec(
          label_key='label', model_type=tfma.TF_KERAS)]))
  assert shared.model_type == tfma.TF_KERAS
  construct = pickle.loads(pickle.dumps(shared.model_loader.construct_fn))
  assert executor._LOADED == {}  # pylint: disable=protected-access
  model = construct()
  assert isinstance(model, tf.keras.Model)
  assert model.input_names == ['pixels']


def test_component_validates_at_construction():
  from tfx.types import channel_utils, standard_artifacts
  from tfx_nsl.components import RobustnessEvaluator
  examples = channel_utils.as_channel([standard_artifacts.Examples()])
  model = channel_utils.as_channel([standard_artifacts.Model()])
  with pytest.raises(ValueError, match='not an attack name'):
    RobustnessEvaluator(examples=examples, model=model, attacks=['fgsm'])
  with pytest.raises(ValueError, match='not in attacks'):
    RobustnessEvaluator(examples=examples, model=model,
                        attacks=['fgsm_linf_eps0.1'],
                        min_attacked_accuracy={'fgsm_linf_eps0.2': 0.5})
  with pytest.raises(ValueError, match=r'min_clean_accuracy=2.0 is not '
                     r'allowed: an accuracy in \[0, 1\]'):
    RobustnessEvaluator(examples=examples, model=model, min_clean_accuracy=2)
  evaluator = RobustnessEvaluator(
      examples=examples, model=model,
      attacks=[{'method': 'pgd', 'norm': 'l2', 'epsilon': 0.5, 'steps': 5,
                'step_size': 0.2}], min_attacked_accuracy=0.3)
  assert evaluator.exec_properties['module_path'].endswith('tfma_module')
  for bad in (0, 2.5, True):
    with pytest.raises(ValueError, match=r'parameter batch_size=(0 is not '
                       r'allowed: must be >= 1|2.5 must be of type int|True '
                       r'must be of type int)'):
      RobustnessEvaluator(examples=examples, model=model, batch_size=bad)


def test_attacks_run_in_batches_of_batch_size(digits_model, monkeypatch):
  """Small read batches are gathered into attack calls of batch_size
  examples; each extract gets its own rows' predictions back."""
  from tensorflow_model_analysis import constants as tfma_constants
  from tfx_nsl.components.robustness_evaluator import tfma_module
  model, x, y = digits_model
  serialized = np.array(_serialize(x[:23], y[:23]), object)
  names = ['clean', 'fgsm_linf_eps0.1']
  settings = attacks.AttackSettings(label_key='label', clip_min=0.0,
                                    clip_max=1.0, batch_size=8)
  calls = []
  real = attacks.predictions_under_attacks
  monkeypatch.setattr(attacks, 'predictions_under_attacks',
                      lambda m, rows, *a, **k: calls.append(len(rows)) or
                      real(m, rows, *a, **k))
  do_fn = tfma_module._AttackedPredictionsDoFn([], names, settings)  # pylint: disable=protected-access
  do_fn._loaded_models = {'': model}  # pylint: disable=protected-access
  do_fn.start_bundle()
  # 23 rows, gathered as 12 (calls of 8 + 4), 9 (8 + 1), then 2 at the end
  # of the bundle.
  sizes = [2, 3, 2, 5, 1, 6, 2, 2]
  starts = np.cumsum([0] + sizes)
  out = []
  for start, end in zip(starts[:-1], starts[1:]):
    out += list(do_fn.process(
        {tfma_constants.INPUT_KEY: serialized[start:end]}))
  assert calls == [8, 4, 8, 1]
  out += [windowed.value for windowed in do_fn.finish_bundle()]
  assert calls == [8, 4, 8, 1, 2]
  assert [len(e[tfma_constants.PREDICTIONS_KEY]['clean']) for e in out] == sizes
  whole, _ = real(model, serialized.tolist(), names, settings)
  for name in names:
    np.testing.assert_allclose(np.concatenate(
        [e[tfma_constants.PREDICTIONS_KEY][name] for e in out]), whole[name],
                               atol=1e-5)


def test_compiled_attacks_take_any_batch_size(digits_model):
  """Compiled attacks pad a smaller batch to the traced size and cut the
  results back: PGD with a random start (whose shape-relaxed trace NSL
  cannot build) runs on 8 then 5 examples, and FGSM on 5 gives what it
  gives eagerly."""
  model, x, y = digits_model
  settings = attacks.AttackSettings(label_key='label', clip_min=0.0,
                                    clip_max=1.0, batch_size=8)
  inputs = attacks.ModelInputs(model, settings)
  names = ['clean', 'fgsm_linf_eps0.1', 'pgd_linf_eps0.1_steps3_step0.05_rand']
  for rows in (slice(0, 8), slice(8, 13)):
    out, _ = attacks.predictions_under_attacks(
        model, _serialize(x[rows], y[rows]), names, settings, inputs=inputs)
    assert {len(v) for v in out.values()} == {rows.stop - rows.start}
  for name in names:  # one trace each, for 8 and for 5 examples
    function = inputs.cache[('compiled', name)].function
    assert function.experimental_get_tracing_count() == 1
  eager, _ = attacks.predictions_under_attacks(
      model, _serialize(x[8:13], y[8:13]), names[:2], settings,
      inputs=attacks.ModelInputs(model, settings, compile_attacks=False))
  for name in names[:2]:
    np.testing.assert_allclose(out[name], eager[name], atol=1e-5)


def test_l2_attacks_stay_in_their_l2_ball(digits_model):
  import tensorflow as tf
  model, x, y = digits_model
  settings = attacks.AttackSettings(label_key='label')
  for name in ('fgsm_l2_eps1', 'pgd_l2_eps1_steps5_step0.3_rand'):
    perturbed = attacks.attack_features(
        model, {'pixels': tf.constant(x)}, tf.constant(y[:, None]),
        attacks.Attack.parse(name), settings)['pixels'].numpy()
    norms = np.linalg.norm(perturbed - x, axis=1)
    assert norms.max() <= 1.0 + 1e-4, name
    assert norms.mean() > 0.5, name  # the attack does move the input
  result = attacks.predictions_under_attacks(
      model, _serialize(x, y), ['clean', 'fgsm_l2_eps1'], settings)[0]
  accuracy = {k: (v.argmax(1) == y).mean() for k, v in result.items()}
  assert accuracy['fgsm_l2_eps1'] < accuracy['clean']


@pytest.fixture(scope='module')
def tabular_setup(tmp_path_factory):
  """(raw eval rows, TransformGraph, Model, Examples) of tabular_testing."""
  from graph_testing import write_examples_artifact
  import tabular_testing as tabular
  root = tmp_path_factory.mktemp('tabular')
  rows = tabular.raw_rows(1200)
  transform = tabular.write_transform_graph(str(root / 'tft'), rows[:800])
  model = tabular.binary_model(str(root / 'model'), transform.uri, rows[:800])
  examples = write_examples_artifact(root / 'examples', {'eval': rows[800:]})
  return rows[800:], transform, model, examples


def test_raw_examples_with_transform_binary_head_and_the_users_metrics(
    tmp_path, caplog, tabular_setup):
  """A tabular model as TFX users have it: raw examples, a Transform graph
  that computes the label, 20 float inputs and an int one, a sigmoid head;
  the user's AUC, calibration and slices on clean and attacked predictions."""
  import logging
  import tensorflow_model_analysis as tfma
  import tabular_testing as tabular
  from tfx_nsl.components.robustness_evaluator import report
  _, transform, model, examples = tabular_setup
  attack = 'pgd_linf_eps0.3_steps10_step0.05'
  user = tfma.EvalConfig(
      model_specs=[tfma.ModelSpec(label_key=tabular.LABEL)],
      metrics_specs=[tfma.MetricsSpec(metrics=[
          tfma.MetricConfig(class_name='AUC'),
          tfma.MetricConfig(class_name='Calibration'),
          tfma.MetricConfig(class_name='BinaryAccuracy', threshold=(
              tfma.MetricThreshold(value_threshold=tfma.GenericValueThreshold(
                  lower_bound={'value': 0.99}))))])],
      slicing_specs=[tfma.SlicingSpec(feature_keys=[tabular.CATEGORY])])
  caplog.set_level(logging.WARNING)
  suite = 'autoattack-lite_linf_eps0.3'
  _, uri = tabular.evaluate(
      str(tmp_path), examples, model, 'binary', transform_graph=transform,
      attacks=[attack, suite], min_attacked_accuracy=0.1, eval_config=user)
  metrics = {}
  for result in tfma.load_metrics(uri):
    slice_key = tuple((c.column, c.int64_value)
                      for c in result.slice_key.single_slice_keys)
    for item in result.metric_keys_and_values:
      metrics[(slice_key, item.key.output_name, item.key.name)] = (
          item.value.double_value.value)
  overall = {(o, n): v for (s, o, n), v in metrics.items() if not s}
  for output in ('clean', attack):
    assert {(output, 'binary_accuracy'), (output, 'auc'),
            (output, 'calibration')} <= set(overall)
  assert overall[('clean', 'binary_accuracy')] > 0.85
  assert overall[(attack, 'binary_accuracy')] < (
      overall[('clean', 'binary_accuracy')] - 0.05)
  assert overall[(attack, 'auc')] < overall[('clean', 'auc')]
  assert ((('segment', 2),), attack, 'auc') in metrics  # the user's slices
  # The user's 0.99 accuracy threshold gates clean accuracy (on every
  # slice, as TFMA applies it): not blessed; the attack's 0.1 passes.
  blessed, failures = report.load_validation(uri)
  assert not blessed and failures
  assert all(f.startswith('candidate/clean: binary_accuracy') for f in failures)
  assert report.load_accuracies(uri)['candidate'][attack] == overall[
      (attack, 'binary_accuracy')]
  # The suite (the int input fixed, a sigmoid head: two classes) is at least
  # as strong as PGD, and its sanity counts are written.
  assert overall[(suite, 'binary_accuracy')] <= overall[
      (attack, 'binary_accuracy')] + 0.01
  with open(os.path.join(uri, 'robustness_flags.json')) as f:
    flags = json.load(f)
  (counts,) = [by_attack[suite] for by_attack in flags.values()]
  assert set(counts) == {'black_box_only', 'zero_gradient',
                         'nonfinite_gradient', 'nondeterministic',
                         'saturated_softmax'}
  assert counts['nondeterministic'] == counts['nonfinite_gradient'] == 0
  assert not os.path.exists(os.path.join(uri, '.robustness_counts'))
  # The int input is left alone without warnings.
  text = caplog.text
  assert 'Cannot perturb' not in text and 'must be floating' not in text


def test_raw_attack_space_moves_raw_columns_through_the_transform(
    tabular_setup):
  """attack_space='raw': FGSM on the raw floats through Transform's layer
  equals a direct GradientTape FGSM on the raw floats."""
  import tensorflow as tf
  import tensorflow_transform as tft
  import tabular_testing as tabular
  from tfx_nsl.pipelines.datasets import _example
  rows, transform, model_artifact, _ = tabular_setup
  model = tf.keras.models.load_model(
      os.path.join(model_artifact.uri, 'Format-Serving'))
  serialized = [_example(r).SerializeToString() for r in rows]
  eps = 1.5  # raw units: the columns have a standard deviation of about 3
  settings = attacks.AttackSettings(
      label_key=tabular.LABEL, transform_graph=transform.uri,
      attack_space=attacks.RAW)
  ours, _ = attacks.predictions_under_attacks(
      model, serialized, ['clean', f'fgsm_linf_eps{eps}'], settings)
  layer = tft.TFTransformOutput(transform.uri).transform_features_layer()
  raw = tf.io.parse_example(tf.constant(serialized),
                            tabular.raw_feature_spec())
  floats = {k: raw[k] for k in tabular.FLOATS}
  rest = {k: v for k, v in raw.items() if k not in floats}

  def predict(x):
    out = layer({**x, **rest})
    return model({k: tf.reshape(out[k], [-1, 1])
                  for k in model.input_names})

  labels = tf.cast(tf.reshape(layer(raw)[tabular.LABEL], [-1, 1]), tf.float32)
  with tf.GradientTape() as tape:
    tape.watch(floats)
    loss = tf.keras.losses.binary_crossentropy(labels, predict(floats))
  gradients = tape.gradient(loss, floats)
  direct = predict({k: v + eps * tf.sign(gradients[k])
                    for k, v in floats.items()}).numpy()
  np.testing.assert_allclose(ours[f'fgsm_linf_eps{eps}'], direct, atol=1e-4)
  clean = ((ours['clean'][:, 0] > 0.5) == labels.numpy()[:, 0]).mean()
  attacked = ((direct[:, 0] > 0.5) == labels.numpy()[:, 0]).mean()
  assert attacked < clean - 0.05
  # Without the Transform graph there is no raw space to attack.
  from tfx.types import channel_utils, standard_artifacts
  from tfx_nsl.components import RobustnessEvaluator
  with pytest.raises(ValueError, match='pass transform_graph'):
    RobustnessEvaluator(
        examples=channel_utils.as_channel([standard_artifacts.Examples()]),
        model=channel_utils.as_channel([standard_artifacts.Model()]),
        attack_space='raw')


def test_head_inference_and_the_evaluators_head_errors():
  import tensorflow as tf
  from tfx.types import channel_utils, standard_artifacts
  from tfx_nsl.components import RobustnessEvaluator
  inputs = tf.keras.Input(shape=(3,), name='x')
  assert heads.infer(tf.keras.Model(inputs, tf.keras.layers.Dense(
      4, activation='softmax')(inputs))).name == 'multiclass'
  assert heads.infer(tf.keras.Model(inputs, tf.keras.layers.Dense(4)(
      inputs))).name == 'multiclass_logits'
  assert heads.infer(tf.keras.Model(inputs, tf.keras.layers.Dense(
      1, activation='sigmoid')(inputs))).name == 'binary'
  examples = channel_utils.as_channel([standard_artifacts.Examples()])
  model = channel_utils.as_channel([standard_artifacts.Model()])
  with pytest.raises(ValueError, match='gate classifiers'):
    RobustnessEvaluator(examples=examples, model=model, head='regression',
                        min_clean_accuracy=0.9)
  with pytest.raises(ValueError, match='gate regression models'):
    RobustnessEvaluator(examples=examples, model=model, head='binary',
                        max_clean_error=0.5)
  with pytest.raises(ValueError, match="head='sigmoid' is not allowed: one of"):
    RobustnessEvaluator(examples=examples, model=model, head='sigmoid')
  import tensorflow_model_analysis as tfma
  with pytest.raises(ValueError, match='must not set output_names'):
    RobustnessEvaluator(examples=examples, model=model, eval_config=(
        tfma.EvalConfig(metrics_specs=[tfma.MetricsSpec(output_names=['y'])])))


def test_a_regression_model_is_gated_on_attacked_squared_error(tmp_path):
  import tensorflow as tf
  from tfx.types import standard_artifacts
  from graph_testing import write_examples_artifact
  import tabular_testing as tabular
  from tfx_nsl.components.robustness_evaluator import report
  rng = np.random.RandomState(0)
  x = rng.standard_normal((600, 8)).astype(np.float32)
  y = (x @ rng.standard_normal(8)).astype(np.float32)

  def trained(name, num_train, epochs):
    tf.keras.utils.set_random_seed(0)
    inputs = {'x': tf.keras.Input(shape=(8,), name='x')}
    model = tf.keras.Model(inputs, tf.keras.layers.Dense(1)(
        tf.keras.layers.Dense(32, activation='relu')(inputs['x'])))
    model.compile(optimizer=tf.keras.optimizers.Adam(0.01), loss='mse')
    model.fit({'x': x[:num_train]}, y[:num_train], epochs=epochs,
              batch_size=32, verbose=0)
    artifact = standard_artifacts.Model()
    artifact.uri = str(tmp_path / name)
    model.save(os.path.join(artifact.uri, 'Format-Serving'), save_format='tf')
    return artifact

  artifact = trained('model', 400, 30)
  examples = write_examples_artifact(tmp_path / 'examples', {'eval': [
      {'x': row, 'label': np.float32(value)} for row, value in
      zip(x[400:], y[400:])]})
  attack = 'fgsm_linf_eps0.3'
  # One linear unit: a logit or a value; the evaluator asks, before
  # reading any data.
  with pytest.raises(ValueError, match="Pass head='binary_logits' or "):
    tabular.evaluate(str(tmp_path), examples, artifact, 'ambiguous',
                     attacks=[attack], max_clean_error=1.0)
  _, uri = tabular.evaluate(
      str(tmp_path), examples, artifact, 'regression', head='regression',
      attacks=[attack], max_clean_error=1.0, max_attacked_error=0.01)
  errors = report.load_accuracies(uri, 'mean_squared_error')['candidate']
  assert errors['clean'] < 1.0 < errors[attack]
  blessed, failures = report.load_validation(uri)
  assert not blessed and len(failures) == 1
  assert failures[0].startswith(f'candidate/{attack}: mean_squared_error')
  assert '<= 0.01' in failures[0]
  assert 'mean squared error' in open(os.path.join(
      uri, report.REPORT_HTML)).read()
  # Against a baseline: the same model passes a zero increase; a worse
  # candidate (a quarter of the data, 2 epochs) fails it, named per output.
  _, uri = tabular.evaluate(
      str(tmp_path), examples, artifact, 'same', baseline=artifact,
      head='regression', attacks=[attack], max_error_increase=0.0)
  assert report.load_validation(uri)[0]
  weaker = trained('weaker', 100, 2)
  _, uri = tabular.evaluate(
      str(tmp_path), examples, weaker, 'worse', baseline=artifact,
      head='regression', attacks=[attack], max_error_increase=0.05)
  blessed, failures = report.load_validation(uri)
  assert not blessed
  assert any(f.startswith('candidate/clean: mean_squared_error')
             for f in failures), failures


def test_wilson_intervals():
  from tfx_nsl.components.robustness_evaluator import report
  np.testing.assert_allclose(report.wilson(0.5, 100), (0.4038, 0.5962),
                             atol=1e-4)
  np.testing.assert_allclose(report.wilson(0.0, 10), (0.0, 0.2775),
                             atol=1e-4)
  np.testing.assert_allclose(report.wilson(1.0, 359), (0.9894, 1.0),
                             atol=1e-4)
  assert report.wilson(0.3, 0) == (0.0, 1.0)
  table = report.text_table({'candidate': {'clean': 0.5}},
                            counts={'candidate': 100})
  assert '0.5000 [0.404, 0.596]' in table


def test_lower_bound_failures():
  from tfx_nsl.components.robustness_evaluator import report
  accuracies = {'clean': 0.5, 'fgsm_linf_eps0.1': 0.3}
  # 0.5 on 100 examples: [0.404, 0.596]; 0.3: [0.219, 0.396].
  assert report.lower_bound_failures(accuracies, 100, {
      'clean': 0.40, 'fgsm_linf_eps0.1': 0.2}) == []
  (failure,) = report.lower_bound_failures(accuracies, 100, {
      'clean': 0.45, 'fgsm_linf_eps0.1': 0.2})
  assert failure == ('candidate/clean: 95% lower bound of accuracy = 0.4038 '
                     '(accuracy 0.5000 on 100 examples) fails >= 0.45')
  # More examples, a narrower interval: the same accuracy passes.
  assert report.lower_bound_failures(accuracies, 10000, {'clean': 0.49}) == []


def test_gate_on_lower_bound_needs_a_floor_and_a_classifier():
  from tfx_nsl.components import RobustnessEvaluator
  from tfx.types import channel_utils
  from tfx.types import standard_artifacts
  examples = channel_utils.as_channel([standard_artifacts.Examples()])
  model = channel_utils.as_channel([standard_artifacts.Model()])
  with pytest.raises(ValueError, match='gate_on_lower_bound=True applies'):
    RobustnessEvaluator(examples=examples, model=model,
                        gate_on_lower_bound=True)
  with pytest.raises(ValueError, match='gate_on_lower_bound applies to '
                     'accuracy floors'):
    Gates(['fgsm_linf_eps0.1'], 'label', max_clean_error=1.0,
          on_lower_bound=True).check(heads.Head('regression'))


def test_accuracy_floors_on_the_lower_bound_unbless(tmp_path, tabular_setup):
  """A floor just under the clean accuracy passes TFMA's threshold; on the
  lower bound of its interval it fails, and the blessing says so."""
  import tabular_testing as tabular
  from tfx_nsl.components.robustness_evaluator import report
  _, transform, model, examples = tabular_setup
  _, uri = tabular.evaluate(str(tmp_path), examples, model, 'point',
                            transform_graph=transform, attacks=[],
                            label_key=tabular.LABEL, min_clean_accuracy=0.5)
  clean = report.load_accuracies(uri)['candidate']['clean']
  count = report.load_counts(uri)['candidate']
  low = report.wilson(clean, count)[0]
  floor = round((low + clean) / 2, 4)
  assert low < floor < clean
  for on_bound in (False, True):
    tag = f'bound{on_bound}'
    _, uri = tabular.evaluate(str(tmp_path), examples, model, tag,
                              transform_graph=transform, attacks=[],
                              label_key=tabular.LABEL, min_clean_accuracy=floor,
                              gate_on_lower_bound=on_bound)
    assert report.load_validation(uri)[0]  # TFMA's point threshold passes
    blessing = tmp_path / f'blessing-{tag}'
    assert (blessing / 'BLESSED').exists() == (not on_bound)
    assert (blessing / 'NOT_BLESSED').exists() == on_bound
  page = open(os.path.join(uri, report.REPORT_HTML)).read()
  assert f'candidate/clean: 95% lower bound of accuracy = {low:.4f}' in page


@pytest.mark.parametrize('attack', [
    'fgsm_linf_eps0.3', 'pgd_l2_eps2_steps5_step0.5',
    'apgd-ce_linf_eps0.3_steps10', 'square_linf_eps0.3_queries50'])
def test_per_feature_clip_bounds(digits_model, attack):
  """clip_min / clip_max per feature: 'a' stays in [0, 1], 'b' (left out)
  is unbounded, for NSL's attacks and ours alike."""
  import tensorflow as tf
  model, x, y = digits_model
  features = {'a': tf.constant(x[:, :32]), 'b': tf.constant(x[:, 32:])}

  def two_inputs(f, training=False):
    return model({'pixels': tf.concat([f['a'], f['b']], 1)},
                 training=training)

  settings = attacks.AttackSettings(label_key='label', clip_min={'a': 0.0},
                                    clip_max={'a': 1.0})
  moved = attacks.attack_features(two_inputs, features,
                                  tf.constant(y[:, None]),
                                  attacks.Attack.parse(attack), settings,
                                  head=heads.Head('multiclass'))
  a, b = moved['a'].numpy(), moved['b'].numpy()
  assert a.min() >= 0.0 and a.max() <= 1.0
  assert not np.array_equal(a, x[:, :32])
  assert b.min() < 0.0 or b.max() > 1.0


def test_clip_bounds_name_perturbed_features(digits_model):
  import tensorflow as tf
  from tfx.types import channel_utils
  from tfx.types import standard_artifacts
  from tfx_nsl.components import RobustnessEvaluator
  model, x, y = digits_model
  with pytest.raises(ValueError, match=r"clip_max names features \['zzz'\] "
                     r"that the attacks do not perturb \(they perturb "
                     r"\['pixels'\]\)"):
    attacks.ModelInputs(model, attacks.AttackSettings(
        label_key='label', clip_max={'zzz': 1.0}))
  with pytest.raises(ValueError, match="clip_min=1.0 of feature 'a' must be "
                     'below clip_max=0.5'):
    RobustnessEvaluator(
        examples=channel_utils.as_channel([standard_artifacts.Examples()]),
        model=channel_utils.as_channel([standard_artifacts.Model()]),
        clip_min={'a': 1.0, 'b': 0.0}, clip_max={'a': 0.5})
  with pytest.raises(ValueError, match="clip_min=0.2 of feature 'a' must be "
                     'below clip_max=0.1'):
    RobustnessEvaluator(
        examples=channel_utils.as_channel([standard_artifacts.Examples()]),
        model=channel_utils.as_channel([standard_artifacts.Model()]),
        clip_min=0.2, clip_max={'a': 0.1})


def test_observed_ranges_fill_the_missing_clip_bounds():
  settings = attacks.AttackSettings(label_key='label',
                                    clip_min={'a': -1.0}, clip_max=None)
  ranges = {'a': (0.0, 5.0), 'b': (2.0, 3.0), 'c': (7.0, 8.0)}
  merged, unranged = attacks.with_observed_ranges(settings, ranges,
                                                  ['a', 'b', 'd'])
  # An explicit bound wins; a feature that is not perturbed gets none.
  assert merged.clip_min == {'a': -1.0, 'b': 2.0}
  assert merged.clip_max == {'a': 5.0, 'b': 3.0}
  assert unranged == ['d']
  # One float for every feature stays as it is.
  merged, _ = attacks.with_observed_ranges(
      attacks.AttackSettings(label_key='label', clip_min=0.0), ranges, ['b'])
  assert merged.clip_min == 0.0 and merged.clip_max == {'b': 3.0}
  with pytest.raises(ValueError, match=r"feature 'c': clip range \[9.0, "
                     r'8.0\] is empty'):
    attacks.with_observed_ranges(attacks.AttackSettings(
        label_key='label', clip_min={'c': 9.0}), ranges, ['c'])


def test_observed_ranges_read_statistics_by_feature_path(tmp_path):
  """Ranges over all splits, by feature path; a feature without numeric
  statistics or without any value seen gives none."""
  from tensorflow_metadata.proto.v0 import statistics_pb2
  from tfx.types import artifact_utils
  from tfx.types import standard_artifacts
  from tfx_nsl.components.robustness_evaluator import executor
  statistics = standard_artifacts.ExampleStatistics()
  statistics.uri = str(tmp_path)
  statistics.split_names = artifact_utils.encode_split_names(['a', 'b'])
  for split, (low, high) in (('a', (0.0, 2.0)), ('b', (-1.0, 1.0))):
    stats = statistics_pb2.DatasetFeatureStatisticsList()
    dataset = stats.datasets.add(num_examples=3)
    age = dataset.features.add(type=statistics_pb2.FeatureNameStatistics.FLOAT)
    age.path.step.append('age')
    age.num_stats.min, age.num_stats.max = low, high
    age.num_stats.common_stats.num_non_missing = 3
    empty = dataset.features.add(
        type=statistics_pb2.FeatureNameStatistics.FLOAT)
    empty.path.step.append('empty')
    empty.num_stats.common_stats.num_non_missing = 0
    text = dataset.features.add(
        type=statistics_pb2.FeatureNameStatistics.STRING)
    text.path.step.append('text')
    os.makedirs(artifact_utils.get_split_uri([statistics], split))
    with open(os.path.join(artifact_utils.get_split_uri(
        [statistics], split), 'FeatureStats.pb'), 'wb') as f:
      f.write(stats.SerializeToString())
  assert executor.observed_ranges(statistics) == {'age': (-1.0, 2.0)}


def test_clip_range_from_statistics(tmp_path, digits_export):
  """StatisticsGen's statistics of the eval examples clip the pixels as
  the explicit bounds [min, max] do (the same accuracies), where no bound
  gives others; the configuration names the statistics."""
  import html
  import tensorflow_data_validation as tfdv
  from tfx.components.statistics_gen import executor as stats_executor
  from tfx.types import artifact_utils
  from tfx.types import channel_utils
  from tfx.types import standard_artifacts
  from graph_testing import write_examples_artifact
  import tabular_testing as tabular
  from tfx_nsl.components import RobustnessEvaluator
  from tfx_nsl.components.robustness_evaluator import executor
  from tfx_nsl.components.robustness_evaluator import report
  root, x, y = digits_export
  model = standard_artifacts.Model()
  model.uri = root
  examples = write_examples_artifact(tmp_path / 'examples', {'eval': [
      {'pixels': row, 'label': np.int64(label)} for row, label in zip(x, y)]})
  statistics = standard_artifacts.ExampleStatistics()
  statistics.uri = str(tmp_path / 'statistics')
  stats_executor.Executor().Do(
      {'examples': [examples]}, {'statistics': [statistics]},
      {'exclude_splits': '[]'})
  view = tfdv.load_stats_binary(os.path.join(
      artifact_utils.get_split_uri([statistics], 'eval'), 'FeatureStats.pb'))
  assert view.datasets[0].num_examples == len(y)
  attack = 'fgsm_linf_eps0.1'
  accuracies = {}
  for tag, kwargs in (('explicit', dict(clip_min=float(x.min()),
                                        clip_max=float(x.max()))),
                      ('statistics', dict(statistics=statistics)),
                      ('none', {})):
    _, uri = tabular.evaluate(str(tmp_path), examples, model, tag,
                              attacks=[attack], **kwargs)
    accuracies[tag] = report.load_accuracies(uri)['candidate'][attack]
  assert accuracies['statistics'] == accuracies['explicit'] > 0.2
  assert accuracies['none'] != accuracies['explicit']
  with open(os.path.join(str(tmp_path), 'evaluation-statistics',
                         report.REPORT_HTML)) as f:
    page = f.read()
  assert statistics.uri in page
  assert html.escape("[{'pixels': 0.0}, {'pixels': 1.0}]") in page
  with pytest.raises(ValueError, match="pass attack_space='raw'"):
    RobustnessEvaluator(
        examples=channel_utils.as_channel([examples]),
        model=channel_utils.as_channel([model]),
        transform_graph=channel_utils.as_channel(
            [standard_artifacts.TransformGraph()]),
        statistics=channel_utils.as_channel([statistics]))


def test_report_per_class_gates_grid_and_configuration(tmp_path,
                                                        digits_export,
                                                        monkeypatch):
  """The report's parts beside the curve: accuracy per class (adding up to
  TFMA's accuracy), each gate with pass/fail, a grid of clean vs attacked
  digits (a worker's first examples: eval digits with their labels, the
  attacked ones within eps), and the configuration with the model's URI.
  The model is loaded once: TFMA's workers (here in this process) take the
  one the executor loaded for its checks."""
  import base64
  import re
  import tensorflow as tf
  from tfx.types import standard_artifacts
  from graph_testing import write_examples_artifact
  import tabular_testing as tabular
  from tfx_nsl.components.robustness_evaluator import executor
  from tfx_nsl.components.robustness_evaluator import report
  drawn = []
  grid_png = report.example_grid_png
  monkeypatch.setattr(report, 'example_grid_png',
                      lambda *args: drawn.append(args) or grid_png(*args))
  root, x, y = digits_export
  model = standard_artifacts.Model()
  model.uri = root
  examples = write_examples_artifact(tmp_path / 'examples', {'eval': [
      {'pixels': row, 'label': np.int64(label)} for row, label in zip(x, y)]})
  attack = 'fgsm_linf_eps0.1'
  loads = []
  load = tf.keras.models.load_model
  monkeypatch.setattr(tf.keras.models, 'load_model',
                      lambda path, **k: loads.append(path) or load(path, **k))
  _, uri = tabular.evaluate(str(tmp_path), examples, model, 'digits',
                            attacks=[attack], min_clean_accuracy=0.5,
                            min_attacked_accuracy=0.99, clip_min=0.0,
                            clip_max=1.0)
  assert len(loads) == 1, loads
  assert executor._LOADED == {}  # pylint: disable=protected-access
  overall = report.load_accuracies(uri)['candidate']
  with open(os.path.join(uri, executor.CLASSES_JSON)) as f:
    classes = json.load(f)['candidate']
  for name in ('clean', attack):
    per_class = classes[name]
    assert sorted(per_class, key=int) == [str(c) for c in range(10)]
    assert sum(n for _, n in per_class.values()) == len(y)
    assert sum(a * n for a, n in per_class.values()) / len(y) == (
        pytest.approx(overall[name], abs=1e-6))
    for label, (accuracy, count) in per_class.items():
      assert count == (y == int(label)).sum()
  page = open(os.path.join(uri, report.REPORT_HTML)).read()
  gates = page[page.index('<table id="gates">'):]
  gates = gates[:gates.index('</table>')]
  assert re.search(r'<td>clean accuracy</td><td>&gt;= 0.5</td><td>'
                   r'[0-9.]+</td><td>pass</td>', gates), gates
  assert re.search(rf'<td>{attack} accuracy</td><td>&gt;= 0.99</td><td>'
                   r'[0-9.]+</td><td>FAIL</td>', gates), gates
  assert '<table id="classes-candidate">' in page
  assert f'<td>candidate model</td><td>{root}</td>' in page
  assert f'<td>attack {attack}</td><td>NSL fgsm</td>' in page
  grid = re.search(r'<img id="grid" [^>]*src="data:image/png;base64,'
                   r'([^"]+)"', page)
  assert grid and base64.b64decode(grid.group(1)).startswith(b'\x89PNG')
  (images, predicted, labels), = drawn
  clean = images['clean'].reshape(-1, 64)
  assert len(clean) == report.GRID_EXAMPLES
  rows = [np.flatnonzero((x == row).all(axis=1))[0] for row in clean]
  np.testing.assert_array_equal(labels, y[rows])
  moved = images[attack].reshape(-1, 64) - clean
  assert 0 < np.abs(moved).max() <= 0.1 + 1e-6
  assert set(predicted) == {'clean', attack}


def test_image_of():
  from tfx_nsl.components.robustness_evaluator.executor import image_of
  assert image_of(np.zeros((2, 64))).shape == (2, 8, 8)
  assert image_of(np.zeros((2, 28, 28, 1))).shape == (2, 28, 28)
  assert image_of(np.zeros((2, 5, 6, 3))).shape == (2, 5, 6, 3)
  assert image_of(np.zeros((2, 20))) is None
  assert image_of(np.zeros((2, 9))) is None  # too small for a picture
  assert image_of(np.zeros((2, 1))) is None
