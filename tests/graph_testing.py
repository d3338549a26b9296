"""Helpers for graph tests: Examples artifacts on disk, graphs as dicts."""
import os

import numpy as np


def write_examples_artifact(root, splits, payload_gzip=True):
  """An Examples artifact at `root` from {split: [feature dict]}."""
  import tensorflow as tf
  from tfx.types import artifact_utils, standard_artifacts
  from tfx_nsl.pipelines.datasets import _example
  examples = standard_artifacts.Examples()
  examples.uri = str(root)
  examples.split_names = artifact_utils.encode_split_names(list(splits))
  options = tf.io.TFRecordOptions(compression_type='GZIP' if payload_gzip
                                  else None)
  for split, rows in splits.items():
    directory = os.path.join(str(root), f'Split-{split}')
    os.makedirs(directory, exist_ok=True)
    name = 'data.tfrecord' + ('.gz' if payload_gzip else '')
    with tf.io.TFRecordWriter(os.path.join(directory, name), options) as w:
      for row in rows:
        w.write(_example(row).SerializeToString())
  return examples


def read_graph(uri):
  """{(source, target): weight} of every edge file under `uri`."""
  from tfx_nsl import graph_io
  edges = {}
  for path in graph_io.edge_files(uri):
    with open(path) as f:
      for line in f:
        source, target, weight = graph_io.parse_edge_line(line, path)
        assert (source, target) not in edges, (source, target)
        edges[(source, target)] = weight
  return edges


def clustered_embeddings(num, dim, num_clusters, spread, seed):
  rng = np.random.RandomState(seed)
  centers = rng.standard_normal((num_clusters, dim))
  assignment = rng.randint(num_clusters, size=num)
  return (centers[assignment] + spread * rng.standard_normal((num, dim))
          ).astype(np.float32)


def linear_embedding_model(uri, projection, feature='x'):
  """A Model artifact at `uri`: a SavedModel whose serving_default maps
  serialized examples to {'embedding': features[feature] @ projection}."""
  import tensorflow as tf
  from tfx.types import standard_artifacts
  width = projection.shape[0]

  class Embed(tf.Module):

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def serve(self, serialized):
      features = tf.io.parse_example(
          serialized, {feature: tf.io.FixedLenFeature([width], tf.float32)})
      return {'embedding': features[feature] @ projection}

  model = standard_artifacts.Model()
  model.uri = str(uri)
  module = Embed()
  tf.saved_model.save(module, os.path.join(model.uri, 'Format-Serving'),
                      signatures={'serving_default': module.serve})
  return model
