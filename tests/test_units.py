"""Pure-function units: data writer, Trainer config, pipeline construction."""
import os

import numpy as np
import pytest

from tfx_nsl import constants
from tfx_nsl.pipelines import datasets
from tfx_nsl.trainer_modules.config import TrainerConfig


def test_digits_splits_are_deterministic_and_disjoint():
  first = datasets.digits_splits()
  second = datasets.digits_splits()
  train_ids = [r[constants.ID_FEATURE] for r in first[constants.TRAIN_SPLIT]]
  eval_ids = [r[constants.ID_FEATURE] for r in first[constants.EVAL_SPLIT]]
  assert train_ids == [r[constants.ID_FEATURE]
                       for r in second[constants.TRAIN_SPLIT]]
  assert len(train_ids) + len(eval_ids) == 1797
  assert not set(train_ids) & set(eval_ids)
  assert len(eval_ids) == round(1797 * 0.2)
  pixels = np.stack([r[datasets.DIGITS_FEATURE]
                     for r in first[constants.TRAIN_SPLIT]])
  assert pixels.shape[1] == 64 and pixels.min() == 0.0 and pixels.max() == 1.0
  labels = {int(r[constants.LABEL_FEATURE]) for r in first[constants.EVAL_SPLIT]}
  assert labels == set(range(10))


def test_digits_bad_eval_fraction():
  with pytest.raises(ValueError, match='eval_fraction'):
    datasets.digits_splits(eval_fraction=1.0)


def test_write_digits_round_trips_and_is_written_once(tmp_path):
  import tensorflow as tf
  directory = datasets.write_digits(str(tmp_path))
  path = os.path.join(directory, 'eval', 'data.tfrecord.gz')
  mtime = os.stat(path).st_mtime_ns
  assert datasets.write_digits(str(tmp_path)) == directory
  assert os.stat(path).st_mtime_ns == mtime  # untouched: keeps TFX caching
  records = list(tf.data.TFRecordDataset(path, compression_type='GZIP'))
  assert len(records) == 359
  example = tf.train.Example.FromString(records[0].numpy())
  feature = example.features.feature
  assert len(feature[datasets.DIGITS_FEATURE].float_list.value) == 64
  assert feature[constants.ID_FEATURE].bytes_list.value[0].startswith(b'digits-')
  assert not [p for p in os.listdir(tmp_path) if p.startswith('.staging')]


def test_trainer_config_defaults_and_round_trip():
  config = TrainerConfig.from_dict(
      {'feature_keys': ['pixels'], 'adversarial': {'multiplier': 0.5}})
  assert config.adversarial['multiplier'] == 0.5
  assert config.adversarial['adv_grad_norm'] == 'infinity'
  assert config.model['hidden_units'] == [64, 64]
  assert TrainerConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize('bad, message', [
    ({}, 'feature_keys'),
    ({'feature_keys': ['x'], 'epoch': 3}, "unknown keys \\['epoch'\\]"),
    ({'feature_keys': ['x'], 'adversarial': {'step': 1}}, 'adversarial'),
    ({'feature_keys': ['x'], 'adversarial': {'adv_grad_norm': 'l3'}},
     'adv_grad_norm'),
    ({'feature_keys': ['x', 'label']}, 'label'),
    ({'feature_keys': ['x'], 'batch_size': 0}, 'batch_size'),
    ({'feature_keys': ['x'], 'model_fn': 'nodots'}, 'import path'),
])
def test_trainer_config_rejects_bad_values(bad, message):
  with pytest.raises(ValueError, match=message):
    TrainerConfig.from_dict(bad)


def test_create_pipeline_validates_and_wires(tmp_path):
  from tfx_nsl.pipelines.nsl_pipeline import create_pipeline
  kwargs = dict(pipeline_name='p', pipeline_root=str(tmp_path / 'root'),
                data_root=str(tmp_path / 'data'),
                serving_model_dir=str(tmp_path / 'serving'),
                trainer_config={'feature_keys': ['pixels']})
  pipeline = create_pipeline(**kwargs, beam_pipeline_args=['--a=b'])
  ids = [c.id for c in pipeline.components]
  assert ids == ['ImportExampleGen', 'StatisticsGen', 'SchemaGen', 'Trainer',
                 'Evaluator', 'Pusher']
  assert pipeline.beam_pipeline_args == ['--a=b']
  with pytest.raises(ValueError, match='min_accuracy'):
    create_pipeline(**kwargs, min_accuracy=1.5)
  with pytest.raises(ValueError, match='unknown keys'):
    create_pipeline(**{**kwargs, 'trainer_config': {'feature_keys': ['x'],
                                                    'lr': 1}})


def test_graph_distances_between_distributions_get_an_axis():
  config = TrainerConfig.from_dict({'feature_keys': ['x'], 'graph': {
      'distance_type': 'kl_divergence'}})
  assert config.graph['sum_over_axis'] == -1
  config = TrainerConfig.from_dict({'feature_keys': ['x'], 'graph': {}})
  assert config.graph['sum_over_axis'] is None  # l2 needs none


def test_schema_is_inferred_without_the_unlabeled_split(tmp_path):
  import json
  from tfx_nsl.pipelines.nsl_pipeline import create_pipeline
  pipeline = create_pipeline(
      pipeline_name='p', pipeline_root=str(tmp_path / 'root'),
      data_root=str(tmp_path / 'data'),
      serving_model_dir=str(tmp_path / 'serving'),
      trainer_config={'feature_keys': ['x']},
      splits=['train', 'eval', 'unlabeled'])
  schema_gen, = [c for c in pipeline.components if c.id == 'SchemaGen']
  assert json.loads(schema_gen.exec_properties['exclude_splits']) == [
      'unlabeled']
