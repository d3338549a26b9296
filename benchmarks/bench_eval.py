"""RobustnessEvaluator throughput: PGD (10 steps) over 10,000 examples.

Runs the component's executor (TFX Evaluator + our TFMA extractor, Beam
DirectRunner) on digits images (the 1,797 real ones, repeated with small
pixel noise to reach --num_examples), once with clean accuracy only and once
with the PGD attack, and reports examples per second of each, medians of
--runs.

  TF_USE_LEGACY_KERAS=1 .venv/bin/python benchmarks/bench_eval.py
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

import numpy as np  # noqa: E402


def _examples(root, num_examples, seed=0):
  from sklearn.datasets import load_digits
  sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..', 'tests'))
  from graph_testing import write_examples_artifact
  digits = load_digits()
  rng = np.random.RandomState(seed)
  index = rng.randint(len(digits.data), size=num_examples)
  pixels = np.clip(digits.data[index] / 16.0 + rng.normal(
      0, 0.02, (num_examples, 64)), 0, 1).astype(np.float32)
  rows = [{'pixels': p, 'label': np.int64(l)}
          for p, l in zip(pixels, digits.target[index])]
  return write_examples_artifact(os.path.join(root, 'examples'),
                                 {'eval': rows}), pixels, digits.target[index]


def _model(root, pixels, labels):
  import tensorflow as tf
  from tfx.types import standard_artifacts
  from tfx_nsl.trainer_modules import nsl_trainer
  from tfx_nsl.trainer_modules.config import TrainerConfig
  tf.keras.utils.set_random_seed(0)
  config = TrainerConfig.from_dict({'feature_keys': ['pixels'],
                                    'model': {'hidden_units': [128, 64]}})
  model = nsl_trainer.build_base_model(
      config, {'pixels': tf.TensorSpec((None, 64), tf.float32)})
  model.compile(optimizer='adam', loss='sparse_categorical_crossentropy')
  model.fit({'pixels': pixels}, labels, epochs=3, batch_size=64, verbose=0)
  artifact = standard_artifacts.Model()
  artifact.uri = os.path.join(root, 'model')
  nsl_trainer.export_serving_model(
      model, {'pixels': tf.io.FixedLenFeature([64], tf.float32)}, config,
      os.path.join(artifact.uri, 'Format-Serving'))
  return artifact


def _evaluate(root, examples, model, attacks, tag):
  from tfx.types import standard_artifacts
  from tfx_nsl.components import RobustnessEvaluator
  from tfx_nsl.components.robustness_evaluator import executor
  from tfx_nsl.components.robustness_evaluator import report
  from tfx.types import channel_utils
  component = RobustnessEvaluator(
      examples=channel_utils.as_channel([examples]),
      model=channel_utils.as_channel([model]), attacks=attacks,
      clip_min=0.0, clip_max=1.0)
  evaluation = standard_artifacts.ModelEvaluation()
  evaluation.uri = os.path.join(root, f'evaluation-{tag}')
  blessing = standard_artifacts.ModelBlessing()
  blessing.uri = os.path.join(root, f'blessing-{tag}')
  properties = {k: v for k, v in component.exec_properties.items()
                if v is not None}
  context = executor.Executor.Context(
      beam_pipeline_args=['--direct_running_mode=in_memory',
                          '--direct_num_workers=1'],
      tmp_dir=os.path.join(root, 'tmp'))
  start = time.time()
  executor.Executor(context).Do(
      {'examples': [examples], 'model': [model]},
      {'evaluation': [evaluation], 'blessing': [blessing]}, properties)
  elapsed = time.time() - start
  return elapsed, report.load_accuracies(evaluation.uri)


def main():
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument('--num_examples', type=int, default=10_000)
  parser.add_argument('--runs', type=int, default=3)
  parser.add_argument('--attack', default='pgd_linf_eps0.1_steps10_step0.02')
  args = parser.parse_args()
  root = tempfile.mkdtemp(prefix='bench-eval-')
  examples, pixels, labels = _examples(root, args.num_examples)
  model = _model(root, pixels, labels)
  results = {'clean only': [], args.attack: []}
  accuracies = None
  for run in range(args.runs):
    for name, attacks in (('clean only', []), (args.attack, [args.attack])):
      elapsed, accuracies_run = _evaluate(root, examples, model, attacks,
                                          f'{run}-{len(attacks)}')
      results[name].append(elapsed)
      if attacks:
        accuracies = accuracies_run
  print(f'RobustnessEvaluator executor, {args.num_examples} examples, '
        f'DirectRunner in_memory, medians of {args.runs}:')
  for name, times in results.items():
    median = statistics.median(times)
    print(f'  {name:<36} {median:7.1f} s  {args.num_examples / median:8.0f} '
          f'examples/s  (runs: {", ".join(f"{t:.1f}" for t in times)})')
  print('  accuracies:', json.dumps(accuracies))


if __name__ == '__main__':
  main()
