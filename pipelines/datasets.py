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


# Cora citation graph (LINQS), Planetoid split, bundled with the package
# (data/cora/README.md); TFX_NSL_CORA_DIR points elsewhere.
CORA_DIR = os.environ.get('TFX_NSL_CORA_DIR') or os.path.join(
    os.path.dirname(os.path.abspath(__file__)), 'data', 'cora')
CORA_FEATURE = 'words'
CORA_NUM_WORDS = 1433
CORA_NUM_CLASSES = 7
CORA_GRAPH_FILE = 'graph.tsv'


def _read_tsv(path):
  """Rows of a TSV file with one header line, as lists of strings."""
  with open(path, encoding='utf-8') as f:
    lines = f.read().splitlines()
  return [line.split('\t') for line in lines[1:] if line]


def _cora_folder(cora_dir=None):
  """The folder of the Cora TSV files (`CORA_DIR` unless given)."""
  directory = os.path.abspath(cora_dir or CORA_DIR)
  if not os.path.isfile(os.path.join(directory, 'nodes.tsv')):
    raise FileNotFoundError(
        f'Cora is not in {directory}: expected nodes.tsv, edges.tsv and '
        'planetoid_split.tsv there (the format: pipelines/data/cora/README.md)')
  return directory


def cora_classes(cora_dir=None):
  """Cora's class names, sorted: the label of an example is an index here."""
  rows = _read_tsv(os.path.join(_cora_folder(cora_dir), 'nodes.tsv'))
  return sorted({label for _, label, _ in rows})


def cora_splits(cora_dir=None, unlabeled_test=False):
  """Cora with the Planetoid split, as {split: list of feature dicts}.

  Every example has `id` (the LINQS paper id), `words` (1433 floats, the
  multi-hot bag of words) and, where labeled, `label` (index into the sorted
  class names). Splits:
    train:     the 140 labeled Planetoid training papers (20 per class).
    eval:      the 1000 Planetoid test papers, labeled.
    unlabeled: every other paper (Planetoid's 500 validation papers and the
               1068 others) with no label feature at all.
  With `unlabeled_test`, the test papers are also written to 'unlabeled'
  without their label (the transductive setting of Planetoid and GCN: the
  test papers' features and citations are known, their labels are not).
  Examples keep the order of nodes.tsv within each split.
  """
  directory = _cora_folder(cora_dir)
  nodes = _read_tsv(os.path.join(directory, 'nodes.tsv'))
  split_of = dict(_read_tsv(os.path.join(directory, 'planetoid_split.tsv')))
  classes = sorted({label for _, label, _ in nodes})
  splits = {constants.TRAIN_SPLIT: [], constants.EVAL_SPLIT: [],
            constants.UNLABELED_SPLIT: []}
  for paper_id, label, words in nodes:
    multi_hot = np.zeros(CORA_NUM_WORDS, np.float32)
    multi_hot[[int(w) for w in words.split()]] = 1.0
    row = {constants.ID_FEATURE: paper_id.encode(), CORA_FEATURE: multi_hot}
    unlabeled = dict(row)
    row[constants.LABEL_FEATURE] = np.int64(classes.index(label))
    planetoid = split_of[paper_id]
    if planetoid == 'train':
      splits[constants.TRAIN_SPLIT].append(row)
    elif planetoid == 'test':
      splits[constants.EVAL_SPLIT].append(row)
      if unlabeled_test:
        splits[constants.UNLABELED_SPLIT].append(unlabeled)
    elif planetoid in ('val', 'other'):
      splits[constants.UNLABELED_SPLIT].append(unlabeled)
    else:
      raise ValueError(f'unknown Planetoid split {planetoid!r} of paper '
                       f'{paper_id} in {directory}')
  return splits


def cora_labels(split, cora_dir=None):
  """{paper id (bytes): label index} of one Planetoid split ('train', 'val',
  'test' or 'other'), e.g. to score a model on the validation papers, whose
  labels `cora_splits` leaves out."""
  directory = _cora_folder(cora_dir)
  classes = cora_classes(directory)
  split_of = dict(_read_tsv(os.path.join(directory, 'planetoid_split.tsv')))
  return {paper_id.encode(): classes.index(label)
          for paper_id, label, _ in _read_tsv(
              os.path.join(directory, 'nodes.tsv'))
          if split_of[paper_id] == split}


def write_cora(data_root, cora_dir=None, unlabeled_test=False):
  """Writes the Cora splits under `data_root` and returns their folder."""
  name = 'cora-planetoid' + ('-transductive' if unlabeled_test else '')
  directory = os.path.join(data_root, name)
  if os.path.isdir(directory):
    return directory
  return write_splits(directory, cora_splits(cora_dir, unlabeled_test))


def write_cora_graph(directory, cora_dir=None):
  """Writes Cora's citations as NSL's TSV graph `<directory>/graph.tsv`.

  One `citing<TAB>cited<TAB>1.0` line per citation (5429 lines, each pair
  once); use GraphAugmentation's add_undirected_edges=True to follow them
  both ways. The folder is what `graph_uri` of `create_pipeline` takes.
  Does nothing if the file exists. Returns `directory`.
  """
  path = os.path.join(directory, CORA_GRAPH_FILE)
  if os.path.isfile(path):
    return directory
  edges = _read_tsv(os.path.join(_cora_folder(cora_dir), 'edges.tsv'))
  os.makedirs(directory, exist_ok=True)
  staging = path + '.tmp'
  with open(staging, 'w', encoding='utf-8') as f:
    for cited, citing in edges:
      f.write(f'{citing}\t{cited}\t1.0\n')
  os.rename(staging, path)
  return directory
