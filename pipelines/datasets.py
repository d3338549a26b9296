"""Bundled, offline data sets written as TFRecords of tf.Examples.

Files are written once per data root and then left untouched: ExampleGen
fingerprints its input files, so rewriting them would defeat TFX caching.
"""
import os
import shutil
import tempfile

import numpy as np

from tfx_nsl import constants

DIGITS_FEATURE = 'pixels'
DIGITS_NUM_CLASSES = 10
DIGITS_SHAPE = (8, 8)


def _example(features):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  feature = {}
  for name, value in features.items():
    value = np.asarray(value).ravel()
    if value.dtype.kind == 'f':
      feature[name] = tf.train.Feature(float_list=tf.train.FloatList(value=value))
    elif value.dtype.kind in 'iub':
      feature[name] = tf.train.Feature(int64_list=tf.train.Int64List(value=value))
    else:
      feature[name] = tf.train.Feature(bytes_list=tf.train.BytesList(
          value=[v.encode() if isinstance(v, str) else v for v in value]))
  return tf.train.Example(features=tf.train.Features(feature=feature))


def write_splits(directory, splits):
  """Writes {split: iterable of feature dicts} as `<split>/data.tfrecord.gz`.

  Does nothing if `directory` exists; writes to a temporary sibling first so a
  crash never leaves a half-written data set behind.
  """
  if os.path.isdir(directory):
    return directory
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  parent = os.path.dirname(os.path.abspath(directory))
  os.makedirs(parent, exist_ok=True)
  staging = tempfile.mkdtemp(dir=parent, prefix='.staging-')
  try:
    options = tf.io.TFRecordOptions(compression_type='GZIP')
    for split, rows in splits.items():
      os.makedirs(os.path.join(staging, split))
      path = os.path.join(staging, split, 'data.tfrecord.gz')
      with tf.io.TFRecordWriter(path, options) as writer:
        for row in rows:
          writer.write(_example(row).SerializeToString())
    os.rename(staging, directory)
  finally:
    shutil.rmtree(staging, ignore_errors=True)
  return directory


def digits_splits(eval_fraction=0.2, seed=0):
  """UCI handwritten digits from scikit-learn, pixels scaled to [0, 1].

  Returns {split: list of feature dicts}; the split is a fixed permutation so
  every run sees the same examples. Ids are the row index in `load_digits`.
  """
  if not 0.0 < eval_fraction < 1.0:
    raise ValueError(f'eval_fraction must be in (0, 1), got {eval_fraction}')
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
  digits = load_digits()
  pixels = (digits.data / 16.0).astype(np.float32)
  order = np.random.RandomState(seed).permutation(len(pixels))
  num_eval = int(round(len(order) * eval_fraction))
  def rows(indices):
    return [{constants.ID_FEATURE: f'digits-{i:04d}',
             DIGITS_FEATURE: pixels[i],
             constants.LABEL_FEATURE: np.int64(digits.target[i])}
            for i in sorted(indices)]
  return {constants.TRAIN_SPLIT: rows(order[num_eval:]),
          constants.EVAL_SPLIT: rows(order[:num_eval])}


def write_digits(data_root, eval_fraction=0.2, seed=0):
  """Writes the digits splits under `data_root` and returns their folder."""
  directory = os.path.join(data_root, f'digits-eval{eval_fraction:g}-seed{seed}')
  if os.path.isdir(directory):
    return directory
  return write_splits(directory, digits_splits(eval_fraction, seed))
