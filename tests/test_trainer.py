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


# --- Transform as TFX users have it: a label computed by Transform, string
# and optional raw features, transformed or raw examples, any head.

COLORS = [b'red', b'green', b'blue']


def _user_preprocessing_fn(inputs):
  import tensorflow as tf
  import tensorflow_transform as tft
  color = inputs['color']  # optional: one value or none
  color = tf.sparse.to_dense(tf.SparseTensor(
      color.indices, color.values, [color.dense_shape[0], 1]), '')[:, 0]
  return {'x_xf': tft.scale_to_z_score(inputs['x']),
          'color_xf': tft.compute_and_apply_vocabulary(
              color, num_oov_buckets=1, vocab_filename='color'),
          'label_xf': tft.compute_and_apply_vocabulary(
              inputs['target'][:, 0], vocab_filename='target')}


def _user_raw_examples(num, seed, neighbors):
  """Raw examples: float x, an optional string `color` (missing in every
  5th), a string `target` (the class name), an id; with raw neighbors."""
  import tensorflow as tf
  examples, x, labels = _data(num, seed, neighbors=0)
  rng = np.random.RandomState(seed)
  raw = []
  for i, (example, label) in enumerate(zip(examples, labels)):
    feature = {'x': example.features.feature['x'],
               'id': example.features.feature['id'],
               'target': tf.train.Feature(bytes_list=tf.train.BytesList(
                   value=[f'class{label}'.encode()]))}
    if i % 5:
      feature['color'] = tf.train.Feature(bytes_list=tf.train.BytesList(
          value=[COLORS[rng.randint(3)]]))
    for n, j in enumerate(rng.choice(np.flatnonzero(labels == label),
                                     neighbors)):
      feature[f'NL_nbr_{n}_x'] = tf.train.Feature(
          float_list=tf.train.FloatList(value=x[j]))
      feature[f'NL_nbr_{n}_color'] = tf.train.Feature(
          bytes_list=tf.train.BytesList(value=[COLORS[j % 3]]))
      feature[f'NL_nbr_{n}_weight'] = tf.train.Feature(
          float_list=tf.train.FloatList(value=[1.0]))
    raw.append(tf.train.Example(features=tf.train.Features(feature=feature)))
  return raw, labels


def _raw_feature_spec():
  import tensorflow as tf
  return {'x': tf.io.FixedLenFeature([DIM], tf.float32),
          'color': tf.io.VarLenFeature(tf.string),
          'target': tf.io.FixedLenFeature([1], tf.string),
          'id': tf.io.FixedLenFeature([1], tf.string)}


@pytest.fixture(scope='module')
def user_transform(tmp_path_factory):
  """A Transform graph as TFX's Transform writes it, for the user's
  preprocessing_fn, analyzed on raw examples."""
  import apache_beam as beam
  import tensorflow as tf
  import tensorflow_transform.beam as tft_beam
  from tensorflow_transform.tf_metadata import dataset_metadata, schema_utils
  directory = str(tmp_path_factory.mktemp('user_tft'))
  examples, _ = _user_raw_examples(300, 5, neighbors=0)
  spec = _raw_feature_spec()
  rows = [{k: v for k, v in tf.io.parse_example(
      tf.constant([e.SerializeToString()]), spec).items()} for e in examples]
  rows = [{'x': r['x'].numpy()[0], 'target': r['target'].numpy()[0],
           'id': r['id'].numpy()[0],
           'color': r['color'].values.numpy()} for r in rows]
  metadata = dataset_metadata.DatasetMetadata(
      schema_utils.schema_from_feature_spec(spec))
  with beam.Pipeline() as pipeline, tft_beam.Context(
      temp_dir=os.path.join(directory, 'tmp'), force_tf_compat_v1=False):
    transform_fn = (pipeline | beam.Create(rows), metadata) | (
        tft_beam.AnalyzeDataset(_user_preprocessing_fn))
    _ = transform_fn | tft_beam.WriteTransformFn(directory)
  from tensorflow_transform.tf_metadata import metadata_io
  metadata_io.write_metadata(metadata, os.path.join(directory, 'metadata'))
  return directory


def _user_fn_args(root, tft_dir, custom_config, transformed, neighbors=2,
                  train_steps=150):
  """FnArgs with a transform graph and no schema, on raw or transformed
  (Transform's output, neighbors included) examples."""
  import tensorflow as tf
  import tensorflow_transform as tft
  from tfx.components.trainer.fn_args_utils import FnArgs
  root = str(root)
  output = tft.TFTransformOutput(tft_dir)
  layer = output.transform_features_layer()
  for split, seed, count in (('train', 0, 600), ('eval', 1, 300)):
    os.makedirs(os.path.join(root, split), exist_ok=True)
    examples, _ = _user_raw_examples(count, seed, neighbors)
    if transformed:
      examples = [_transformed(e, layer, neighbors) for e in examples]
    _write(os.path.join(root, split, 'data.gz'), examples)
  return FnArgs(
      train_files=[os.path.join(root, 'train', '*')],
      eval_files=[os.path.join(root, 'eval', '*')],
      train_steps=train_steps, eval_steps=None, schema_path=None,
      serving_model_dir=os.path.join(root, 'serving'),
      model_run_dir=os.path.join(root, 'run'),
      transform_graph_path=tft_dir, custom_config=custom_config)


def _transformed(example, layer, neighbors):
  """What Transform then GraphAugmentation write: transformed features,
  neighbors' transformed features prefixed."""
  import tensorflow as tf
  spec = _raw_feature_spec()

  def transform(prefix):
    raw = tf.train.Example()
    for name in spec:
      if prefix + name in example.features.feature:
        raw.features.feature[name].CopyFrom(
            example.features.feature[prefix + name])
    if prefix:  # neighbors carry no target or id: fill them for parsing
      raw.features.feature['target'].bytes_list.value.append(b'class0')
      raw.features.feature['id'].bytes_list.value.append(b'n')
    return layer(tf.io.parse_example(tf.constant([raw.SerializeToString()]),
                                     spec))

  out = tf.train.Example()
  for prefix, names in [('', ('x_xf', 'color_xf', 'label_xf'))] + [
      (f'NL_nbr_{n}_', ('x_xf', 'color_xf')) for n in range(neighbors)]:
    values = transform(prefix)
    for name in names:
      value = values[name].numpy().ravel()
      feature = out.features.feature[prefix + name]
      if value.dtype.kind == 'f':
        feature.float_list.value.extend(value)
      else:
        feature.int64_list.value.extend(value)
    if prefix:
      out.features.feature[prefix + 'weight'].float_list.value.append(1.0)
  return out


def _user_records():
  """Serialized raw records as a client sends them: no target, no id, and
  `color` left out of every 5th."""
  import tensorflow as tf
  examples, labels = _user_raw_examples(300, 1, neighbors=0)
  records = []
  for example in examples:
    raw = tf.train.Example()
    for name in ('x', 'color'):
      if name in example.features.feature:
        raw.features.feature[name].CopyFrom(example.features.feature[name])
    records.append(raw.SerializeToString())
  return tf.constant(records), labels


USER = {'feature_keys': ['x_xf', 'color_xf'], 'label_key': 'label_xf',
        'num_classes': NUM_CLASSES, 'epochs': 3, 'learning_rate': 0.01,
        'model': {'hidden_units': [16]}, 'distribution': 'default'}


@pytest.mark.parametrize('transformed', [True, False],
                         ids=['transformed_examples', 'raw_plus_graph'])
def test_label_from_transform_string_and_optional_features(
    tmp_path, user_transform, transformed):
  import tensorflow as tf
  from tfx_nsl.trainer_modules import nsl_trainer
  args = _user_fn_args(tmp_path, user_transform,
                       {**USER, 'graph': GRAPH, 'adversarial': ADVERSARIAL},
                       transformed)
  config = nsl_trainer.TrainerConfig.from_dict(args.custom_config)
  route = nsl_trainer.examples_route(
      config, nsl_trainer._transform_output(args), args.train_files)  # pylint: disable=protected-access
  assert route == (nsl_trainer.TRANSFORMED if transformed else nsl_trainer.RAW)
  nsl_trainer.run_fn(args)
  serving = tf.saved_model.load(args.serving_model_dir).signatures[
      constants.SERVING_SIGNATURE]
  records, labels = _user_records()
  probabilities = serving(examples=records)[constants.SERVING_OUTPUT].numpy()
  # The vocabulary of `target` is ordered by frequency, not by class id.
  import tensorflow_transform as tft
  vocabulary = tft.TFTransformOutput(user_transform).vocabulary_by_name(
      'target')
  predicted = np.array([int(vocabulary[i].decode()[5:])
                        for i in probabilities.argmax(1)])
  assert (predicted == labels).mean() > 0.85


def test_serving_parses_only_the_raw_features_the_model_reads(
    tmp_path, user_transform):
  import tensorflow as tf
  import tensorflow_transform as tft
  from tfx_nsl.trainer_modules import nsl_trainer
  output = tft.TFTransformOutput(user_transform)
  # Neither the target (label only), nor the id: never serving inputs.
  assert nsl_trainer.serving_raw_features(output, ['x_xf', 'color_xf']) == [
      'color', 'x']
  assert nsl_trainer.serving_raw_features(output, ['x_xf']) == ['x']
  with pytest.raises(ValueError, match='not all outputs of Transform'):
    nsl_trainer.serving_raw_features(output, ['nope'])
  # A record with only the features the model reads is served; one without
  # the required `x` fails naming it.
  args = _user_fn_args(tmp_path, user_transform, USER, transformed=True,
                       neighbors=0, train_steps=20)
  nsl_trainer.run_fn(args)
  serving = tf.saved_model.load(args.serving_model_dir).signatures[
      constants.SERVING_SIGNATURE]
  records, _ = _user_records()
  assert serving(examples=records[:5])[constants.SERVING_OUTPUT].shape == (5, 3)
  no_x = tf.train.Example()
  no_x.features.feature['color'].bytes_list.value.append(b'red')
  with pytest.raises(tf.errors.InvalidArgumentError, match='x'):
    serving(examples=tf.constant([no_x.SerializeToString()]))


def _binary_and_regression_fn_args(root, head):
  """Plain (no Transform) data: class 2 vs the rest, or a real target."""
  import tensorflow as tf
  from tensorflow_metadata.proto.v0 import schema_pb2
  from tfx.utils import io_utils
  args = make_fn_args(root, {})
  for split, seed, count in (('train', 0, 600), ('eval', 1, 300)):
    examples, x, labels = _data(count, seed, neighbors=2)
    for example, row, label in zip(examples, x, labels):
      example.features.feature['label'].Clear()
      if head == 'regression':
        example.features.feature['label'].float_list.value.append(
            float(row[:3].sum()))
      else:
        example.features.feature['label'].int64_list.value.append(
            int(label == 2))
    _write(os.path.join(str(root), split, 'data.gz'), examples)
  schema = io_utils.parse_pbtxt_file(args.schema_path, schema_pb2.Schema())
  for feature in schema.feature:
    if feature.name == 'label' and head == 'regression':
      feature.type = schema_pb2.FLOAT
  io_utils.write_pbtxt_file(args.schema_path, schema)
  return args


@pytest.mark.parametrize('head', ['binary', 'binary_logits', 'regression'])
def test_binary_and_regression_heads(tmp_path, head):
  import tensorflow as tf
  from tfx_nsl.trainer_modules import nsl_trainer
  args = _binary_and_regression_fn_args(tmp_path, head)
  args.custom_config = {**BASE, 'head': head, 'graph': GRAPH,
                        'adversarial': ADVERSARIAL}
  nsl_trainer.run_fn(args)
  serving = tf.saved_model.load(args.serving_model_dir).signatures[
      constants.SERVING_SIGNATURE]
  examples, x, labels = _data(300, 1, neighbors=0)
  records = tf.constant([tf.train.Example(features=tf.train.Features(
      feature={'x': e.features.feature['x']})).SerializeToString()
                         for e in examples])
  name = {'binary': 'probabilities', 'binary_logits': 'logits',
          'regression': 'predictions'}[head]
  outputs = serving(examples=records)
  assert list(outputs) == [name]
  values = outputs[name].numpy()
  assert values.shape == (300, 1)
  if head == 'regression':
    target = x[:, :3].sum(1)
    assert np.mean((values[:, 0] - target) ** 2) < 0.3 * np.var(target)
  else:
    threshold = 0.0 if head == 'binary_logits' else 0.5
    assert ((values[:, 0] > threshold) == (labels == 2)).mean() > 0.9


def _logits_model_fn(input_specs, config):
  import tensorflow as tf
  assert input_specs['x'].dtype == tf.float32
  assert input_specs['x'].shape.as_list() == [None, DIM]
  inputs = {k: tf.keras.Input(type_spec=s, name=k)
            for k, s in input_specs.items()}
  x = tf.keras.layers.Dense(16, activation='relu')(inputs['x'])
  return tf.keras.Model(inputs, tf.keras.layers.Dense(config.num_classes)(x))


def test_make_run_fn_takes_the_users_model_fn_and_infers_logits(tmp_path):
  import tensorflow as tf
  from tfx_nsl.trainer_modules import nsl_trainer
  args = make_fn_args(tmp_path, {**BASE, 'adversarial': ADVERSARIAL})
  nsl_trainer.make_run_fn(_logits_model_fn)(args)
  serving = tf.saved_model.load(args.serving_model_dir).signatures[
      constants.SERVING_SIGNATURE]
  assert list(serving.structured_outputs) == ['logits']


def test_add_nsl_in_the_users_own_run_fn(tmp_path):
  """The user's compiled model and export code; add_nsl in between."""
  import tensorflow as tf
  from tfx_nsl.trainer_modules import add_nsl
  args = make_fn_args(tmp_path, {})
  tf.keras.utils.set_random_seed(0)
  inputs = {'x': tf.keras.Input(shape=(DIM,), name='x')}
  hidden = tf.keras.layers.Dense(16, activation='relu')(inputs['x'])
  model = tf.keras.Model(inputs, tf.keras.layers.Dense(
      NUM_CLASSES, activation='softmax')(hidden))
  model.compile(optimizer=tf.keras.optimizers.Adam(0.01),
                loss='sparse_categorical_crossentropy',
                metrics=['accuracy'])
  fit_model, train, evaluation = add_nsl(
      model, args, label_key='label', graph=GRAPH, adversarial=ADVERSARIAL)
  history = fit_model.fit(train, steps_per_epoch=200, validation_data=evaluation,
                          verbose=0)
  assert 'scaled_graph_loss' in history.history
  assert 'scaled_adversarial_loss' in history.history
  _, x, labels = _data(300, 1, neighbors=0)
  assert (model({'x': x}).numpy().argmax(1) == labels).mean() > 0.85


@pytest.mark.parametrize('change, message', [
    ({'label_key': 'nope'}, "features \\['nope'\\] are not in the schema"),
    ({'feature_keys': ['id']}, "'id' is variable-length in the raw"),
    ({'head': 'softmax'}, "custom_config\\['head'\\] must be one of"),
    ({'examples': 'transformed'}, "'transformed' but the Trainer has no"),
])
def test_bad_trainer_input_is_named(tmp_path, change, message):
  from tfx_nsl.trainer_modules import nsl_trainer
  with pytest.raises(ValueError, match=message):
    nsl_trainer.run_fn(make_fn_args(tmp_path, {**BASE, **change}))


def test_a_string_label_and_an_ambiguous_head_are_explained(
    tmp_path, user_transform):
  import tensorflow as tf
  from tfx_nsl import heads
  from tfx_nsl.trainer_modules import nsl_trainer
  args = _user_fn_args(tmp_path, user_transform,
                       {**USER, 'label_key': 'target'}, transformed=False,
                       neighbors=0)
  with pytest.raises(ValueError, match="label 'target' is a string feature"):
    nsl_trainer.run_fn(args)
  inputs = {'x': tf.keras.Input(shape=(DIM,), name='x')}
  one_unit = tf.keras.Model(inputs, tf.keras.layers.Dense(1)(inputs['x']))
  with pytest.raises(ValueError, match="Pass head='binary_logits' or "
                     "'regression'"):
    heads.infer(one_unit)
