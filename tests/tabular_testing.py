"""A typical tabular TFX setup for evaluator tests and benchmarks: raw
examples with 20 float columns, an int category and a string target; a
Transform graph (z-scores, the label computed from the target); a binary
sigmoid Keras model with 64-unit layers on the transformed features."""
import os

import numpy as np

NUM_FLOATS = 20
FLOATS = [f'f{i:02d}' for i in range(NUM_FLOATS)]
CATEGORY = 'segment'
TARGET = 'target'
LABEL = 'label_xf'


def xf(name):
  return f'{name}_xf'


def raw_rows(num, seed=0):
  """Rows whose label depends on a few float columns and the category."""
  rng = np.random.RandomState(seed)
  x = rng.standard_normal((num, NUM_FLOATS)).astype(np.float32) * 3 + 10
  segment = rng.randint(4, size=num)
  score = (x[:, 0] - x[:, 1] + 0.5 * x[:, 2] - 5 + (segment == 2) * 3
           + rng.standard_normal(num))
  rows = []
  for i in range(num):
    row = {name: x[i, j:j + 1] for j, name in enumerate(FLOATS)}
    row[CATEGORY] = np.int64([segment[i]])
    row[TARGET] = [b'yes' if score[i] > 0 else b'no']
    rows.append(row)
  return rows


def raw_feature_spec():
  import tensorflow as tf
  spec = {name: tf.io.FixedLenFeature([1], tf.float32) for name in FLOATS}
  spec[CATEGORY] = tf.io.FixedLenFeature([1], tf.int64)
  spec[TARGET] = tf.io.FixedLenFeature([1], tf.string)
  return spec


def preprocessing_fn(inputs):
  import tensorflow as tf
  import tensorflow_transform as tft
  outputs = {xf(name): tft.scale_to_z_score(inputs[name]) for name in FLOATS}
  outputs[xf(CATEGORY)] = inputs[CATEGORY]
  outputs[LABEL] = tf.cast(tf.equal(inputs[TARGET], 'yes'), tf.int64)
  return outputs


def write_transform_graph(directory, rows):
  """A TransformGraph artifact at `directory`, analyzed on `rows`."""
  import apache_beam as beam
  import tensorflow_transform.beam as tft_beam
  from tensorflow_transform.tf_metadata import dataset_metadata
  from tensorflow_transform.tf_metadata import metadata_io
  from tensorflow_transform.tf_metadata import schema_utils
  from tfx.types import standard_artifacts
  metadata = dataset_metadata.DatasetMetadata(
      schema_utils.schema_from_feature_spec(raw_feature_spec()))
  with beam.Pipeline() as pipeline, tft_beam.Context(
      temp_dir=os.path.join(directory, 'tmp'), force_tf_compat_v1=False):
    transform_fn = (pipeline | beam.Create(
        [{k: np.asarray(v) for k, v in row.items()} for row in rows]),
                    metadata) | tft_beam.AnalyzeDataset(preprocessing_fn)
    _ = transform_fn | tft_beam.WriteTransformFn(directory)
  metadata_io.write_metadata(metadata, os.path.join(directory, 'metadata'))
  artifact = standard_artifacts.TransformGraph()
  artifact.uri = directory
  return artifact


def binary_model(uri, transform_uri, rows, epochs=5):
  """A Model artifact at `uri`: a sigmoid Keras model (20 float inputs, one
  int input, 64-unit layers) trained on the transformed `rows`."""
  import tensorflow as tf
  import tensorflow_transform as tft
  from tfx.types import standard_artifacts
  tf.keras.utils.set_random_seed(0)
  layer = tft.TFTransformOutput(transform_uri).transform_features_layer()
  raw = {k: tf.constant(np.stack([np.asarray(r[k]) for r in rows]))
         for k in raw_feature_spec()}
  transformed = layer(raw)
  inputs = {xf(n): tf.keras.Input(shape=(1,), name=xf(n)) for n in FLOATS}
  inputs[xf(CATEGORY)] = tf.keras.Input(shape=(1,), name=xf(CATEGORY),
                                        dtype=tf.int64)
  encoded = [inputs[xf(n)] for n in FLOATS] + [
      tf.keras.layers.CategoryEncoding(4, output_mode='one_hot')(
          inputs[xf(CATEGORY)])]
  x = tf.keras.layers.Concatenate()(encoded)
  for _ in range(2):
    x = tf.keras.layers.Dense(64, activation='relu')(x)
  model = tf.keras.Model(inputs, tf.keras.layers.Dense(
      1, activation='sigmoid')(x))
  model.compile(optimizer=tf.keras.optimizers.Adam(0.01),
                loss='binary_crossentropy')
  features = {k: tf.reshape(transformed[k], [-1, 1]) for k in inputs}
  model.fit(features, transformed[LABEL], epochs=epochs, batch_size=64,
            verbose=0)
  artifact = standard_artifacts.Model()
  artifact.uri = uri
  model.save(os.path.join(uri, 'Format-Serving'), save_format='tf')
  return artifact


def evaluate(root, examples, model, tag, transform_graph=None,
             baseline=None, statistics=None, **kwargs):
  """Runs the RobustnessEvaluator's executor (with a `baseline` Model
  artifact if given); returns (seconds, evaluation uri)."""
  import time
  from tfx.types import channel_utils
  from tfx.types import standard_artifacts
  from tfx_nsl.components import RobustnessEvaluator
  from tfx_nsl.components.robustness_evaluator import executor
  component = RobustnessEvaluator(
      examples=channel_utils.as_channel([examples]),
      model=channel_utils.as_channel([model]),
      transform_graph=(channel_utils.as_channel([transform_graph])
                       if transform_graph else None),
      baseline_model=(channel_utils.as_channel([baseline]) if baseline
                      else None),
      statistics=(channel_utils.as_channel([statistics]) if statistics
                  else None), **kwargs)
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
  inputs = {'examples': [examples], 'model': [model]}
  if transform_graph is not None:
    inputs['transform_graph'] = [transform_graph]
  if baseline is not None:
    inputs['baseline_model'] = [baseline]
  if statistics is not None:
    inputs['statistics'] = [statistics]
  start = time.time()
  executor.Executor(context).Do(
      inputs, {'evaluation': [evaluation], 'blessing': [blessing]},
      properties)
  return time.time() - start, evaluation.uri
