"""The main job end to end: `tfx-nsl run` pushes a plain, servable model."""
import glob
import os
import subprocess
import sys

import numpy as np
import pytest

from tfx_nsl import constants
from tfx_nsl.pipelines import datasets, local_runner

PIPELINE = 'tfx-nsl-e2e'


def _run(root, *args):
  cli = os.path.join(os.path.dirname(sys.executable), 'tfx-nsl')
  result = subprocess.run(
      [cli, 'run', '--output-root', str(root), '--pipeline-name', PIPELINE,
       '--train-steps', '300', *args],
      capture_output=True, text=True, timeout=900)
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


@pytest.mark.slow
def test_run_pushes_a_blessed_model(first_run):
  root, stdout = first_run
  for node in ('ImportExampleGen', 'StatisticsGen', 'SchemaGen', 'Trainer',
               'Evaluator', 'Pusher'):
    assert f'  {node} ' in stdout, stdout  # per-component progress
  summary = local_runner.summarize(
      str(root / 'metadata' / f'{PIPELINE}.db'), PIPELINE)
  assert summary['blessed'] and summary['pushed'], summary
  assert summary['accuracy'] >= 0.9
  assert summary['eval_examples'] == 359
  assert summary['pushed_model'].startswith(str(root / 'serving' / PIPELINE))
  assert f"pushed model: {summary['pushed_model']}" in stdout


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

  # Raw features only: no label, no id, no NL_ neighbor features.
  rows = datasets.digits_splits()[constants.EVAL_SPLIT]
  serialized = [tf.train.Example(features=tf.train.Features(feature={
      datasets.DIGITS_FEATURE: tf.train.Feature(float_list=tf.train.FloatList(
          value=row[datasets.DIGITS_FEATURE]))})).SerializeToString()
                for row in rows]
  probabilities = serving(examples=tf.constant(serialized))[
      constants.SERVING_OUTPUT].numpy()
  assert probabilities.shape == (len(rows), datasets.DIGITS_NUM_CLASSES)
  np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
  labels = np.array([row[constants.LABEL_FEATURE] for row in rows])
  assert (probabilities.argmax(axis=1) == labels).mean() >= 0.9


@pytest.mark.slow
def test_rerun_reuses_cache_and_gate_blocks_push(first_run):
  from ml_metadata.proto import metadata_store_pb2
  root, _ = first_run
  stdout = _run(root, '--min-accuracy', '0.9999')
  metadata_path = str(root / 'metadata' / f'{PIPELINE}.db')
  states = _latest_states(metadata_path)
  cached = metadata_store_pb2.Execution.CACHED
  for node in ('ImportExampleGen', 'StatisticsGen', 'SchemaGen', 'Trainer'):
    assert states[node] == cached, (node, states)
  assert states['Evaluator'] != cached
  summary = local_runner.summarize(metadata_path, PIPELINE)
  assert summary['blessed'] is False and summary['pushed'] is False, summary
  assert 'not blessed' in stdout
  assert len(glob.glob(str(root / 'serving' / PIPELINE / '*'))) == 1
