"""The main job end to end: `tfx-nsl run` builds a graph, augments, trains an
NSL model beside a plain baseline, judges robustness and pushes only a
robust, plain-serving model."""
import glob
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from tfx_nsl import constants
from tfx_nsl import engines
from serving_testing import digits_predictions
from tfx_nsl.pipelines import local_runner

PIPELINE = 'tfx-nsl-e2e'
NODES = ('ImportExampleGen', 'StatisticsGen', 'SchemaGen', 'GraphBuilder',
         'GraphAugmentation', 'Trainer', 'BaselineTrainer', 'Evaluator',
         'Pusher')


def _run(root, *args):
  cli = os.path.join(os.path.dirname(sys.executable), 'tfx-nsl')
  result = subprocess.run(
      [cli, 'run', '--output-root', str(root), '--pipeline-name', PIPELINE,
       *args], capture_output=True, text=True, timeout=1200)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
  return result.stdout


def _latest_states(metadata_path):
  from ml_metadata.metadata_store import metadata_store
  from tfx import v1 as tfx
  store = metadata_store.MetadataStore(
      tfx.orchestration.metadata.sqlite_metadata_connection_config(
          metadata_path))
  states = {}
  for context in store.get_contexts_by_type('node'):
    node = context.name.split('.', 1)[1]
    latest = max(store.get_executions_by_context(context.id),
                 key=lambda e: e.id)
    states[node] = latest.last_known_state
  return states


@pytest.fixture(scope='module')
def first_run(tmp_path_factory):
  root = tmp_path_factory.mktemp('runs')
  return root, _run(root)


def _summary(root):
  return local_runner.summarize(str(root / 'metadata' / f'{PIPELINE}.db'),
                                PIPELINE)


@pytest.mark.slow
def test_run_pushes_a_robust_model_and_reports(first_run):
  root, stdout = first_run
  for node in NODES:
    assert f'  {node} ' in stdout, stdout  # per-component progress
  summary = _summary(root)
  assert summary['blessed'] and summary['pushed'], summary
  assert summary['pushed_model'].startswith(str(root / 'serving' / PIPELINE))
  assert f"pushed model: {summary['pushed_model']}" in stdout
  candidate = summary['accuracies']['candidate']
  baseline = summary['accuracies']['baseline']
  assert candidate['clean'] >= 0.9
  # NSL adversarial regularization makes the model more robust than the
  # plain one trained beside it, under white-box attacks.
  assert candidate['fgsm_linf_eps0.1'] > baseline['fgsm_linf_eps0.1'] + 0.05
  assert 'fgsm_linf_eps0.1' in stdout and 'baseline' in stdout
  # The gated robust accuracy: AutoAttack's worst case per example, never
  # above what one attack of its kind leaves.
  for model in (candidate, baseline):
    assert model['autoattack_linf_eps0.1'] <= model['fgsm_linf_eps0.1'] + 0.01
  assert candidate['autoattack_linf_eps0.1'] > (
      baseline['autoattack_linf_eps0.1'] + 0.05)
  assert 'autoattack_linf_eps0.1' in stdout
  graph = summary['graph']
  assert graph['num_nodes'] == 1438 and graph['num_edges'] > 1438
  assert f"graph: {graph['num_nodes']} nodes" in stdout
  assert os.path.exists(summary['report'])


@pytest.mark.slow
def test_run_output_is_progress_and_summary_only(first_run):
  root, stdout = first_run
  lines = stdout.splitlines()
  assert lines[0].startswith(f"Running pipeline '{PIPELINE}'")
  log = lines[1].split('logs: ', 1)[1].split(' (--verbose')[0]
  assert log.startswith(str(root / 'logs'))
  progress = [line for line in lines if line.startswith('  ') and
              line.split()[0] in NODES]
  # One line each, in the runner's (topological) order.
  assert sorted(line.split()[0] for line in progress) == sorted(NODES)
  assert all(' done in ' in line for line in progress), progress
  # Keras epoch lines, TensorFlow, absl and Beam logs went to the log file.
  for noise in ('Epoch ', 'WARNING', 'tensorflow/', 'INFO:', 'absl',
                'apache_beam'):
    assert noise not in stdout, noise
  with open(log) as f:
    logged = f.read()
  assert 'Component Trainer is running.' in logged


def test_failed_run_names_the_component_and_the_log(tmp_path):
  cli = os.path.join(os.path.dirname(sys.executable), 'tfx-nsl')
  result = subprocess.run(
      [cli, 'run', '--output-root', str(tmp_path), '--no-cache',
       '--beam-arg=--direct_running_mode=bogus'],
      capture_output=True, text=True, timeout=600)
  assert result.returncode == 1, result.stdout + result.stderr
  assert 'ImportExampleGen     FAILED after' in result.stdout
  assert 'error: ImportExampleGen failed' in result.stderr
  # The cause, from the log, and where the log is.
  assert "invalid choice: 'bogus'" in result.stderr
  (log,) = glob.glob(str(tmp_path / 'logs' / '*.log'))
  assert f'full log: {log}' in result.stderr
  assert 'Traceback' in open(log).read()


@pytest.mark.slow
def test_pushed_model_is_the_plain_base_model(first_run):
  import tensorflow as tf
  root, _ = first_run
  pushed, = glob.glob(str(root / 'serving' / PIPELINE / '*'))
  serving = tf.saved_model.load(pushed).signatures[constants.SERVING_SIGNATURE]
  args, kwargs = serving.structured_input_signature
  assert not args
  assert list(kwargs) == [constants.SERVING_INPUT]
  assert kwargs[constants.SERVING_INPUT].dtype == tf.string
  assert list(serving.structured_outputs) == [constants.SERVING_OUTPUT]

  probabilities, labels = digits_predictions(pushed)
  np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
  assert (probabilities.argmax(axis=1) == labels).mean() >= 0.9


@pytest.mark.slow
def test_report_renders_in_headless_chromium(first_run, tmp_path):
  root, _ = first_run
  chromium = shutil.which('chromium')
  assert chromium, 'chromium is missing: `make test` installs it'
  report = _summary(root)['report']
  result = subprocess.run(
      [chromium, '--headless', '--no-sandbox', '--disable-gpu',
       '--disable-background-networking', '--disable-component-update',
       '--disable-sync', '--no-first-run', f'--user-data-dir={tmp_path}',
       '--virtual-time-budget=5000', '--dump-dom', f'file://{report}'],
      capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr[-2000:]
  assert 'data-plot="rendered"' in result.stdout, result.stdout[:2000]
  # The digits are 8x8 pixels: the grid of clean vs attacked examples.
  assert 'data-grid="rendered"' in result.stdout, result.stdout[:2000]
  assert 'fgsm_linf_eps0.1' in result.stdout
  for part in ('id="gates"', 'id="classes-candidate"',
               'id="classes-baseline"', 'id="configuration"'):
    assert part in result.stdout, part


def _records(root, node, key, split):
  """The records of split `split` of `node`'s output `key`, canonical and
  sorted: engines shard and order their output files their own way."""
  import tensorflow as tf
  uri = local_runner.latest_outputs(
      str(root / 'metadata' / f'{PIPELINE}.db'), PIPELINE)[node][key][0].uri
  files = sorted(glob.glob(os.path.join(uri, f'Split-{split}', '*')))
  assert files, (node, key, split)
  return sorted(tf.train.Example.FromString(r.numpy()).SerializeToString(
      deterministic=True) for r in tf.data.TFRecordDataset(
          files, compression_type='GZIP'))


@pytest.mark.slow
@pytest.mark.engines
@pytest.mark.parametrize('engine', engines.ENGINES)
def test_engine_run_trains_on_the_same_data_and_pushes(first_run, engine,
                                                       tmp_path):
  """The whole job with every Beam step on a local cluster (but any the
  engine cannot run, which falls back to the DirectRunner and says so).

  Each Beam step gives the same records as on the DirectRunner, in another
  order: Beam keeps no record order, and the Trainer's is that of its input
  files, so the trained weights differ slightly; the pushed model must
  serve the same way and be as accurate. Runs before the cached rerun below,
  which changes the direct run's latest outputs. No baseline here (CI time).
  """
  direct_root, _ = first_run
  root = tmp_path / engine
  stdout = _run(root, '--engine', engine, '--no-baseline')
  assert not engines.is_up(engine)  # Started for the run, stopped after it.
  for component_id, reason in engines.DIRECT_FALLBACK[engine].items():
    assert f'note: {component_id} runs on the DirectRunner' in stdout
    assert reason in stdout
  for node, key in (('ImportExampleGen', 'examples'),
                    ('GraphAugmentation', 'augmented_examples')):
    for split in ('train', 'eval'):
      assert _records(root, node, key, split) == _records(
          direct_root, node, key, split), (node, split)
  summary, direct = _summary(root), _summary(direct_root)
  assert summary['graph'] == direct['graph']
  assert summary['blessed'] and summary['pushed'], summary
  assert 'baseline' not in summary['accuracies']
  for attack, accuracy in direct['accuracies']['candidate'].items():
    assert summary['accuracies']['candidate'][attack] == pytest.approx(
        accuracy, abs=0.05), attack
  probabilities, labels = digits_predictions(summary['pushed_model'])
  assert (probabilities.argmax(axis=1) == labels).mean() >= 0.9


@pytest.mark.slow
def test_rerun_reuses_cache_and_a_non_robust_model_is_not_pushed(first_run):
  from ml_metadata.proto import metadata_store_pb2
  root, _ = first_run
  stdout = _run(root, '--no-adversarial', '--no-graph')
  states = _latest_states(str(root / 'metadata' / f'{PIPELINE}.db'))
  cached = metadata_store_pb2.Execution.CACHED
  for node in ('ImportExampleGen', 'StatisticsGen', 'SchemaGen',
               'GraphBuilder', 'GraphAugmentation', 'BaselineTrainer'):
    assert states[node] == cached, (node, states)
  assert states['Trainer'] != cached
  summary = _summary(root)
  # Clean accuracy is fine, but attacked accuracy misses its threshold.
  assert summary['accuracies']['candidate']['clean'] >= 0.9
  assert summary['blessed'] is False and summary['pushed'] is False, summary
  assert any('autoattack_linf_eps0.1' in f  # the gated robust accuracy
             for f in summary['threshold_failures'])
  assert 'not blessed' in stdout
  assert len(glob.glob(str(root / 'serving' / PIPELINE / '*'))) == 1


