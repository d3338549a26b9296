"""RobustnessEvaluator throughput: clean only vs clean + PGD-10, two models.

Runs the component's executor (TFX Evaluator + our TFMA extractor, Beam
DirectRunner in_memory, one worker) over --num_examples examples of each
model, once with clean metrics only and once with the PGD attack added, and
reports examples per second of each, medians of --runs (runs interleaved):

  digits    the 1,797 digits images repeated with small pixel noise, a
            128-64 dense softmax model on the 64 pixels
  tabular   raw tabular examples (20 float columns, an int category, a
            string target) through a Transform graph that z-scores them and
            computes the label; a sigmoid model with 21 inputs and 64-64
            dense layers; binary accuracy and AUC (tests/tabular_testing.py)

  TF_USE_LEGACY_KERAS=1 .venv/bin/python benchmarks/bench_eval.py

With --suite (default autoattack_linf_eps0.1; '' to skip) the digits model
is also evaluated under that AutoAttack suite, whole Do(). In the same run,
on the same digits arrays in memory, the floors: a bare compiled
tf.function loop of clean + the same PGD (NSL's: sign steps, projection,
clip) in batches of the component's batch size, and autoattack.run_suite
alone on those batches (our kernels without TFX, TFMA or Beam). With
--art N, ART 1.20's AutoProjectedGradientDescent (CE; targeted DLR towards
the 9 most likely wrong classes) and SquareAttack (5,000 queries) on the
first N digits, each on the examples the previous ones left robust, as the
suite runs: seconds for N, and per 10,000 by proportion.
"""
import argparse
import json
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..', 'tests'))

import numpy as np  # noqa: E402


def _digits(root, num_examples, seed=0):
  """(examples, model, transform graph, evaluator kwargs) of digits."""
  import tensorflow as tf
  from sklearn.datasets import load_digits
  from tfx.types import standard_artifacts
  from graph_testing import write_examples_artifact
  from tfx_nsl.trainer_modules import nsl_trainer
  from tfx_nsl.trainer_modules.config import TrainerConfig
  digits = load_digits()
  rng = np.random.RandomState(seed)
  index = rng.randint(len(digits.data), size=num_examples)
  pixels = np.clip(digits.data[index] / 16.0 + rng.normal(
      0, 0.02, (num_examples, 64)), 0, 1).astype(np.float32)
  labels = digits.target[index]
  examples = write_examples_artifact(
      os.path.join(root, 'digits-examples'),
      {'eval': [{'pixels': p, 'label': np.int64(l)}
                for p, l in zip(pixels, labels)]})
  tf.keras.utils.set_random_seed(0)
  config = TrainerConfig.from_dict({'feature_keys': ['pixels'],
                                    'model': {'hidden_units': [128, 64]}})
  model = nsl_trainer.build_base_model(
      config, {'pixels': tf.TensorSpec((None, 64), tf.float32)})
  model.compile(optimizer='adam', loss='sparse_categorical_crossentropy')
  model.fit({'pixels': pixels}, labels, epochs=3, batch_size=64, verbose=0)
  artifact = standard_artifacts.Model()
  artifact.uri = os.path.join(root, 'digits-model')
  nsl_trainer.export_serving_model(
      model, {'pixels': tf.io.FixedLenFeature([64], tf.float32)}, config,
      os.path.join(artifact.uri, 'Format-Serving'))
  return examples, artifact, None, {'clip_min': 0.0, 'clip_max': 1.0}


def _tabular(root, num_examples):
  import tabular_testing as tabular
  from graph_testing import write_examples_artifact
  train = tabular.raw_rows(2000, seed=1)
  transform = tabular.write_transform_graph(
      os.path.join(root, 'tabular-tft'), train)
  model = tabular.binary_model(os.path.join(root, 'tabular-model'),
                               transform.uri, train)
  examples = write_examples_artifact(
      os.path.join(root, 'tabular-examples'),
      {'eval': tabular.raw_rows(num_examples, seed=2)})
  return examples, model, transform, {'label_key': tabular.LABEL}


def _digits_arrays(examples):
  """(pixels, labels) of the digits Examples artifact, as the model sees
  them."""
  import tensorflow as tf
  files = tf.io.gfile.glob(os.path.join(examples.uri, 'Split-eval', '*'))
  spec = {'pixels': tf.io.FixedLenFeature([64], tf.float32),
          'label': tf.io.FixedLenFeature([1], tf.int64)}
  parsed = [tf.io.parse_single_example(r, spec) for r in
            tf.data.TFRecordDataset(files, compression_type='GZIP')]
  return (np.stack([p['pixels'].numpy() for p in parsed]),
          np.array([int(p['label'][0]) for p in parsed]))


def _loaded(model_artifact):
  import tensorflow as tf
  return tf.keras.models.load_model(
      os.path.join(model_artifact.uri, 'Format-Serving'), compile=False)


def floor_pgd(model, pixels, labels, attack_name, batch):
  """Seconds of a bare compiled loop: clean predictions and the PGD attack
  of `attack_name` (NSL's rule: no random start, sign steps, projection on
  the eps-ball, clip to [0, 1]) over batches of `batch`, after a warm-up."""
  import tensorflow as tf
  from tfx_nsl.components.robustness_evaluator import attacks
  attack = attacks.Attack.parse(attack_name)
  loss = tf.keras.losses.SparseCategoricalCrossentropy()

  @tf.function(reduce_retracing=True)
  def clean_and_attacked(x, y):
    adv = x
    for _ in range(attack.steps):
      with tf.GradientTape() as tape:
        tape.watch(adv)
        value = loss(y, model({'pixels': adv}))
      adv = adv + attack.step_size * tf.sign(tape.gradient(value, adv))
      adv = tf.clip_by_value(tf.clip_by_value(
          adv, x - attack.epsilon, x + attack.epsilon), 0.0, 1.0)
    return model({'pixels': x}), model({'pixels': adv})

  batches = [(tf.constant(pixels[i:i + batch]), tf.constant(labels[i:i + batch]))
             for i in range(0, len(pixels), batch)]
  for x, y in batches[:1] + batches[-1:]:
    clean_and_attacked(x, y)
  start = time.time()
  correct = 0
  for x, y in batches:
    _, attacked = clean_and_attacked(x, y)
    correct += int((attacked.numpy().argmax(1) == y.numpy()).sum())
  return time.time() - start, correct / len(pixels)


def floor_suite(model, pixels, labels, suite_name, batch):
  """Seconds of autoattack.run_suite alone over batches of `batch` (a
  warm-up batch first), and the robust accuracy it finds."""
  import tensorflow as tf
  from tfx_nsl import heads
  from tfx_nsl.components.robustness_evaluator import attacks
  from tfx_nsl.components.robustness_evaluator import autoattack
  attack = attacks.Attack.parse(suite_name)
  head = heads.infer(model)
  ball = autoattack.Ball(attack.norm, attack.epsilon, 0.0, 1.0)

  def logits_fn(x, fixed):
    return autoattack.class_logits(model({'pixels': x}), head)

  autoattack.run_suite(logits_fn, pixels[:batch], labels[:batch], ball,
                       attack.suite)
  start = time.time()
  robust = 0
  for i in range(0, len(pixels), batch):
    _, broken_by = autoattack.run_suite(
        logits_fn, tf.constant(pixels[i:i + batch]), labels[i:i + batch],
        ball, attack.suite)
    robust += int((broken_by == -1).sum())
  return time.time() - start, robust / len(pixels)


def art_suite(model, pixels, labels, epsilon, count):
  """Seconds of ART's APGD-CE, APGD-T (9 targets) and Square on the first
  `count` digits, each on the examples still robust; robust accuracy."""
  import tensorflow as tf
  from art.attacks.evasion import AutoProjectedGradientDescent
  from art.attacks.evasion import SquareAttack
  from art.estimators.classification import TensorFlowV2Classifier
  from tfx_nsl.components.robustness_evaluator import autoattack
  x, y = pixels[:count], labels[:count]
  image = tf.keras.Input((8, 8, 1))
  # The model outputs probabilities; ART's losses get their logarithm.
  logits = tf.keras.layers.Lambda(lambda p: tf.math.log(
      tf.maximum(p, 1e-30)))(model({'pixels': tf.keras.layers.Reshape(
          (64,))(image)}))
  classifier = TensorFlowV2Classifier(
      tf.keras.Model(image, logits), nb_classes=10, input_shape=(8, 8, 1),
      clip_values=(0.0, 1.0), channels_first=False,
      loss_object=tf.keras.losses.SparseCategoricalCrossentropy(
          from_logits=True))
  wrong = lambda a, rows: model({'pixels': a.reshape(-1, 64)}).numpy(  # noqa: E731
  ).argmax(1) != y[rows]
  targets = autoattack.top_targets(
      tf.math.log(tf.maximum(model({'pixels': x}), 1e-30)),
      autoattack.integer_labels(y), 9).numpy()
  runs = [(AutoProjectedGradientDescent, dict(loss_type='cross_entropy'),
           None)]
  runs += [(AutoProjectedGradientDescent, dict(
      loss_type='difference_logits_ratio', targeted=True), t) for t in targets]
  runs += [(SquareAttack, dict(max_iter=5000, p_init=0.8, nb_restarts=1),
            None)]
  start = time.time()
  broken = wrong(x, np.arange(count))
  for attack, options, target in runs:
    if attack is AutoProjectedGradientDescent:
      options = dict(eps_step=2 * epsilon, max_iter=100, nb_random_init=1,
                     **options)
    rows = np.flatnonzero(~broken)
    if not len(rows):
      break
    found = attack(classifier, norm=np.inf, eps=epsilon, batch_size=512,
                   verbose=False, **options).generate(
                       x[rows].reshape(-1, 8, 8, 1),
                       y[rows] if target is None else target[rows])
    broken[rows] |= wrong(found, rows)
  return time.time() - start, float((~broken).mean())


def main():
  import tabular_testing as tabular
  from tfx_nsl.components.robustness_evaluator import report
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument('--num_examples', type=int, default=10_000)
  parser.add_argument('--runs', type=int, default=3)
  parser.add_argument('--attack', default='pgd_linf_eps0.1_steps10_step0.02')
  parser.add_argument('--models', default='digits,tabular')
  parser.add_argument('--suite', default='autoattack_linf_eps0.1')
  parser.add_argument('--art', type=int, default=0,
                      help='digits ART attacks (0: not run)')
  args = parser.parse_args()
  from tfx_nsl.components.robustness_evaluator import attacks as attacks_lib
  batch = attacks_lib.DEFAULT_BATCH_SIZE
  root = tempfile.mkdtemp(prefix='bench-eval-')
  setups = {name: {'digits': _digits, 'tabular': _tabular}[name](
      root, args.num_examples) for name in args.models.split(',')}
  evaluations = {m: [('clean only', []), (args.attack, [args.attack])]
                 for m in setups}
  if args.suite and 'digits' in setups:
    evaluations['digits'].append((args.suite, [args.suite]))
  times = {(m, label): [] for m, runs in evaluations.items()
           for label, _ in runs}
  if 'digits' in setups:
    digits_model = _loaded(setups['digits'][1])
    pixels, labels = _digits_arrays(setups['digits'][0])
    times[('digits', f'floor: compiled loop, clean + {args.attack}')] = []
    if args.suite:
      times[('digits', f'floor: run_suite alone, {args.suite}')] = []
  accuracies = {}
  for run in range(args.runs):
    for name, (examples, model, transform, kwargs) in setups.items():
      for label, attacks in evaluations[name]:
        elapsed, uri = tabular.evaluate(
            root, examples, model, f'{name}-{run}-{label}',
            transform_graph=transform, attacks=attacks, **kwargs)
        times[(name, label)].append(elapsed)
        accuracies[name] = report.load_accuracies(uri)['candidate']
    if 'digits' in setups:
      elapsed, accuracy = floor_pgd(digits_model, pixels, labels, args.attack,
                                    batch)
      times[('digits', f'floor: compiled loop, clean + {args.attack}')].append(
          elapsed)
      accuracies['digits floor pgd'] = accuracy
      if args.suite:
        elapsed, accuracy = floor_suite(digits_model, pixels, labels,
                                        args.suite, batch)
        times[('digits', f'floor: run_suite alone, {args.suite}')].append(
            elapsed)
        accuracies['digits floor suite'] = accuracy
  if args.art and 'digits' in setups:
    epsilon = attacks_lib.Attack.parse(args.suite).epsilon
    elapsed, accuracy = art_suite(digits_model, pixels, labels, epsilon,
                                  args.art)
    print(f'  ART APGD-CE + APGD-T + Square, {args.art} digits: {elapsed:.1f} s'
          f' ({elapsed / args.art * args.num_examples:.0f} s per '
          f'{args.num_examples} by proportion), robust accuracy {accuracy:.4f}')
  print(f'RobustnessEvaluator executor (whole Do()), {args.num_examples} '
        f'examples, DirectRunner in_memory, medians of {args.runs}:')
  for (name, label), values in times.items():
    median = statistics.median(values)
    print(f'  {name:<8} {label:<36} {median:7.1f} s  '
          f'{args.num_examples / median:8.0f} examples/s  '
          f'(runs: {", ".join(f"{t:.1f}" for t in values)})')
  print('  accuracies:', json.dumps(accuracies))


if __name__ == '__main__':
  main()
