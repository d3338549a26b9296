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
"""
import argparse
import json
import os
import statistics
import sys
import tempfile

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


def main():
  import tabular_testing as tabular
  from tfx_nsl.components.robustness_evaluator import report
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument('--num_examples', type=int, default=10_000)
  parser.add_argument('--runs', type=int, default=3)
  parser.add_argument('--attack', default='pgd_linf_eps0.1_steps10_step0.02')
  parser.add_argument('--models', default='digits,tabular')
  args = parser.parse_args()
  root = tempfile.mkdtemp(prefix='bench-eval-')
  setups = {name: {'digits': _digits, 'tabular': _tabular}[name](
      root, args.num_examples) for name in args.models.split(',')}
  times = {(m, a): [] for m in setups for a in ('clean only', args.attack)}
  accuracies = {}
  for run in range(args.runs):
    for name, (examples, model, transform, kwargs) in setups.items():
      for label, attacks in (('clean only', []), (args.attack, [args.attack])):
        elapsed, uri = tabular.evaluate(
            root, examples, model, f'{name}-{run}-{len(attacks)}',
            transform_graph=transform, attacks=attacks, **kwargs)
        times[(name, label)].append(elapsed)
        accuracies[name] = report.load_accuracies(uri)['candidate']
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
