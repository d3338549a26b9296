"""Trainer run_fn: graph, adversarial and combined NSL regularization,
unlabeled seeds, tf.distribute, and an unchanged serving signature."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tfx_nsl import constants

DIM = 8
NUM_CLASSES = 3


def _write_schema(path):
  from tensorflow_metadata.proto.v0 import schema_pb2
  from tfx.utils import io_utils
  schema = schema_pb2.Schema()
  x = schema.feature.add(name='x', type=schema_pb2.FLOAT)
  x.shape.dim.add(size=DIM)
  x.presence.min_fraction = 1.0
  # Unlabeled seeds make the label optional, as SchemaGen would infer.
  label = schema.feature.add(name='label', type=schema_pb2.INT)
  label.value_count.max = 1
  schema.feature.add(name='id', type=schema_pb2.BYTES)
  io_utils.write_pbtxt_file(path, schema)


def _data(num, seed, neighbors, unlabeled_every=0, no_neighbor_every=0):
  """Gaussian classes; neighbors are examples of the same class."""
  import tensorflow as tf
  centers = np.random.RandomState(99).standard_normal((NUM_CLASSES, DIM)) * 1.5
  rng = np.random.RandomState(seed)
  labels = rng.randint(NUM_CLASSES, size=num)
  x = (centers[labels] + rng.standard_normal((num, DIM))).astype(np.float32)
  examples = []
  for i in range(num):
    feature = {'x': tf.train.Feature(float_list=tf.train.FloatList(value=x[i])),
               'id': tf.train.Feature(bytes_list=tf.train.BytesList(
                   value=[f'n{i}'.encode()]))}
    if not (unlabeled_every and i % unlabeled_every == 0):
      feature['label'] = tf.train.Feature(int64_list=tf.train.Int64List(
          value=[labels[i]]))
    count = 0 if no_neighbor_every and i % no_neighbor_every == 0 else neighbors
    same = np.flatnonzero(labels == labels[i])
    for n, j in enumerate(rng.choice(same, count)):
      feature[f'NL_nbr_{n}_x'] = tf.train.Feature(
          float_list=tf.train.FloatList(value=x[j]))
      feature[f'NL_nbr_{n}_weight'] = tf.train.Feature(
          float_list=tf.train.FloatList(value=[1.0]))
    feature['NL_num_nbrs'] = tf.train.Feature(
        int64_list=tf.train.Int64List(value=[count]))
    examples.append(tf.train.Example(features=tf.train.Features(
        feature=feature)))
  return examples, x, labels


def _write(path, examples):
  import tensorflow as tf
  with tf.io.TFRecordWriter(path, tf.io.TFRecordOptions(
      compression_type='GZIP')) as writer:
    for example in examples:
      writer.write(example.SerializeToString())


def make_fn_args(root, custom_config, train_steps=150):
  """FnArgs as TFX's Trainer would pass them, on generated data."""
  from tfx.components.trainer.fn_args_utils import FnArgs
  root = str(root)
  os.makedirs(os.path.join(root, 'train'), exist_ok=True)
  os.makedirs(os.path.join(root, 'eval'), exist_ok=True)
  train, _, _ = _data(600, 0, neighbors=2, unlabeled_every=3,
                      no_neighbor_every=7)
  evaluation, _, _ = _data(300, 1, neighbors=0)
  _write(os.path.join(root, 'train', 'data.gz'), train)
  _write(os.path.join(root, 'eval', 'data.gz'), evaluation)
  _write_schema(os.path.join(root, 'schema.pbtxt'))
  return FnArgs(
      train_files=[os.path.join(root, 'train', '*')],
      eval_files=[os.path.join(root, 'eval', '*')],
      train_steps=train_steps, eval_steps=None,
      schema_path=os.path.join(root, 'schema.pbtxt'),
      serving_model_dir=os.path.join(root, 'serving'),
      model_run_dir=os.path.join(root, 'run'),
      transform_graph_path=None, custom_config=custom_config)


def _serving_accuracy(serving_dir):
  import tensorflow as tf
  examples, _, labels = _data(300, 1, neighbors=0)
  # Raw features only: no label, no id, no neighbor features.
  serialized = []
  for example in examples:
    raw = tf.train.Example()
    raw.features.feature['x'].CopyFrom(example.features.feature['x'])
    serialized.append(raw.SerializeToString())
  serving = tf.saved_model.load(serving_dir).signatures[
      constants.SERVING_SIGNATURE]
  probabilities = serving(examples=tf.constant(serialized))[
      constants.SERVING_OUTPUT].numpy()
  return float((probabilities.argmax(axis=1) == labels).mean()), serving


BASE = {'feature_keys': ['x'], 'num_classes': NUM_CLASSES, 'epochs': 3,
        'model': {'hidden_units': [16]}, 'learning_rate': 0.01,
        'distribution': 'default'}
GRAPH = {'max_neighbors': 2, 'multiplier': 0.2}
ADVERSARIAL = {'multiplier': 0.2, 'adv_step_size': 0.05}


def _signature(serving):
  args, kwargs = serving.structured_input_signature
  return (args, {k: (v.shape.as_list(), v.dtype) for k, v in kwargs.items()},
          {k: (v.shape.as_list(), v.dtype)
           for k, v in serving.structured_outputs.items()})


@pytest.mark.parametrize('regularization', [
    {'graph': GRAPH}, {'adversarial': ADVERSARIAL},
    {'graph': GRAPH, 'adversarial': ADVERSARIAL}])
def test_regularized_training_serves_like_a_plain_model(tmp_path,
                                                        regularization):
  from tfx_nsl.trainer_modules import nsl_trainer
  plain = make_fn_args(tmp_path / 'plain', BASE)
  nsl_trainer.run_fn(plain)
  plain_accuracy, plain_serving = _serving_accuracy(plain.serving_model_dir)
  args = make_fn_args(tmp_path / 'nsl', {**BASE, **regularization})
  nsl_trainer.run_fn(args)
  accuracy, serving = _serving_accuracy(args.serving_model_dir)
  assert _signature(serving) == _signature(plain_serving)
  assert plain_accuracy > 0.85 and accuracy > 0.85
  assert os.listdir(os.path.join(args.model_run_dir, 'logs'))  # TensorBoard


def test_exported_model_reloads_as_keras_for_gradients(tmp_path):
  import tensorflow as tf
  from tfx_nsl.trainer_modules import nsl_trainer
  args = make_fn_args(tmp_path, {**BASE, 'adversarial': ADVERSARIAL})
  nsl_trainer.run_fn(args)
  model = tf.keras.models.load_model(args.serving_model_dir)
  x = tf.constant(np.random.RandomState(0).rand(4, DIM), tf.float32)
  with tf.GradientTape() as tape:
    tape.watch(x)
    loss = tf.reduce_sum(model({'x': x}))
  gradient = tape.gradient(loss, x)
  assert gradient is not None and gradient.shape == (4, DIM)
  assert model.input_names == ['x']  # no label, no neighbor inputs


def test_unlabeled_seeds_and_missing_neighbors_parse(tmp_path):
  from tfx_nsl.trainer_modules import nsl_trainer
  from tfx_nsl.trainer_modules.config import TrainerConfig
  args = make_fn_args(tmp_path, BASE)
  config = TrainerConfig.from_dict({**BASE, 'graph': GRAPH})
  _, raw_spec = nsl_trainer.feature_spec_from_schema(args.schema_path)
  inputs = nsl_trainer._Inputs(config, raw_spec, None)  # pylint: disable=protected-access
  features, label, weight = next(iter(
      inputs.dataset(args.train_files, False, 600)))
  assert 'NL_nbr_1_x' in features and 'label' not in features
  # Every 3rd example has no label: weight 0; the rest weight 1.
  np.testing.assert_array_equal(weight.numpy()[:, 0],
                                (np.arange(600) % 3 != 0).astype(np.float32))
  assert label.numpy().min() >= 0
  # Every 7th example has no neighbors: zero features, weight 0.
  nbr_weight = features['NL_nbr_0_weight'].numpy()[:, 0]
  np.testing.assert_array_equal(nbr_weight,
                                (np.arange(600) % 7 != 0).astype(np.float32))
  assert not features['NL_nbr_1_x'].numpy()[::7].any()


_MIRRORED = r'''
import json, sys
import tensorflow as tf
cpu, = tf.config.list_physical_devices('CPU')
tf.config.set_logical_device_configuration(
    cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
sys.path.insert(0, sys.argv[1])
from test_trainer import make_fn_args, _serving_accuracy, BASE, GRAPH, ADVERSARIAL
from tfx_nsl.trainer_modules import nsl_trainer
config = {**BASE, 'graph': GRAPH, 'adversarial': ADVERSARIAL}
if sys.argv[3] == 'mirrored':
  config.update(distribution='mirrored', devices=['/cpu:0', '/cpu:1'])
args = make_fn_args(sys.argv[2], config)
strategy = nsl_trainer.make_strategy(
    nsl_trainer.TrainerConfig.from_dict(config))
nsl_trainer.run_fn(args)
print(json.dumps({'replicas': strategy.num_replicas_in_sync,
                  'accuracy': _serving_accuracy(args.serving_model_dir)[0]}))
'''


@pytest.mark.slow
def test_mirrored_strategy_on_two_cpus_matches_one_device(tmp_path):
  # Both at once (CI time): each leaves much of the 2 cores idle.
  runs = {mode: subprocess.Popen(
      [sys.executable, '-c', _MIRRORED, os.path.dirname(__file__),
       str(tmp_path / mode), mode],
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
      env={**os.environ, 'TF_USE_LEGACY_KERAS': '1'})
          for mode in ('default', 'mirrored')}
  results = {}
  for mode, run in runs.items():
    stdout, stderr = run.communicate(timeout=600)
    assert run.returncode == 0, stderr[-4000:]
    results[mode] = json.loads(stdout.strip().splitlines()[-1])
  assert results['mirrored']['replicas'] == 2
  assert results['default']['replicas'] == 1
  assert results['mirrored']['accuracy'] > 0.85
  assert abs(results['mirrored']['accuracy'] -
             results['default']['accuracy']) < 0.05


def _preprocessing_fn(inputs):
  import tensorflow_transform as tft
  return {'x_scaled': tft.scale_to_z_score(inputs['x'])}


def _write_transform_graph(directory):
  """A Transform graph (z-score of `x`) as TFX's Transform would write it."""
  import tensorflow as tf
  import tensorflow_transform.beam as tft_beam
  from tensorflow_transform.tf_metadata import dataset_metadata, schema_utils
  _, x, _ = _data(200, 2, neighbors=0)
  metadata = dataset_metadata.DatasetMetadata(
      schema_utils.schema_from_feature_spec(
          {'x': tf.io.FixedLenFeature([DIM], tf.float32)}))
  import apache_beam as beam
  with beam.Pipeline() as pipeline, tft_beam.Context(
      temp_dir=os.path.join(directory, 'tmp'), force_tf_compat_v1=False):
    data = pipeline | beam.Create([{'x': row} for row in x])
    transform_fn = (data, metadata) | tft_beam.AnalyzeDataset(
        _preprocessing_fn)
    _ = transform_fn | tft_beam.WriteTransformFn(directory)
  # TFX's Transform also writes the raw schema next to the graph.
  from tensorflow_transform.tf_metadata import metadata_io
  metadata_io.write_metadata(metadata, os.path.join(directory, 'metadata'))
  return directory


def test_transform_graph_is_applied_to_seeds_neighbors_and_serving(tmp_path):
  import tensorflow as tf
  from tfx_nsl.trainer_modules import nsl_trainer
  args = make_fn_args(tmp_path, {**BASE, 'feature_keys': ['x_scaled'],
                                 'graph': GRAPH})
  args.transform_graph_path = _write_transform_graph(str(tmp_path / 'tft'))
  nsl_trainer.run_fn(args)
  # Serving takes raw `x` and applies the Transform graph inside.
  accuracy, serving = _serving_accuracy(args.serving_model_dir)
  assert accuracy > 0.85
  assert list(serving.structured_input_signature[1]) == [
      constants.SERVING_INPUT]
  # Neighbors go through the same Transform as their seed.
  from tfx_nsl.trainer_modules.config import TrainerConfig
  import tensorflow_transform as tft
  config = TrainerConfig.from_dict({**BASE, 'feature_keys': ['x_scaled'],
                                    'graph': GRAPH})
  _, raw_spec = nsl_trainer.feature_spec_from_schema(args.schema_path)
  inputs = nsl_trainer._Inputs(  # pylint: disable=protected-access
      config, raw_spec, tft.TFTransformOutput(args.transform_graph_path),
      nsl_trainer.RAW)
  features, _, _ = next(iter(inputs.dataset(args.train_files, False, 50)))
  assert set(features) >= {'x_scaled', 'NL_nbr_0_x_scaled', 'NL_nbr_0_weight'}
  assert 'x' not in features
  assert abs(float(tf.reduce_mean(features['x_scaled']))) < 1.0
