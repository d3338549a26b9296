"""Cora as pipeline data: Planetoid splits and the citation graph file."""
import collections
import os

import numpy as np
import pytest

from tfx_nsl import constants
from tfx_nsl.pipelines import datasets



def test_cora_data_ships_inside_the_package():
  package = os.path.dirname(os.path.abspath(datasets.__file__))
  assert os.path.commonpath([datasets.CORA_DIR, package]) == package
  assert os.path.isfile(os.path.join(datasets.CORA_DIR, 'nodes.tsv'))


@pytest.fixture(scope='module')
def splits():
  return datasets.cora_splits()


def test_counts_and_labels(splits):
  train = splits[constants.TRAIN_SPLIT]
  test = splits[constants.EVAL_SPLIT]
  unlabeled = splits[constants.UNLABELED_SPLIT]
  assert (len(train), len(test), len(unlabeled)) == (140, 1000, 500 + 1068)
  # Planetoid's training papers: 20 per class.
  assert collections.Counter(
      int(r[constants.LABEL_FEATURE]) for r in train) == {
          c: 20 for c in range(7)}
  classes = datasets.cora_classes()
  assert classes == sorted(classes) and len(classes) == 7
  # The Planetoid test split's class counts (Yang et al. 2016).
  counts = collections.Counter(
      classes[int(r[constants.LABEL_FEATURE])] for r in test)
  assert counts['Neural_Networks'] == 319 and counts['Rule_Learning'] == 64


def test_features(splits):
  for rows in splits.values():
    for row in rows:
      words = row[datasets.CORA_FEATURE]
      assert words.shape == (datasets.CORA_NUM_WORDS,)
      assert words.dtype == np.float32
      assert set(np.unique(words)) <= {0.0, 1.0} and words.sum() >= 1
      assert isinstance(row[constants.ID_FEATURE], bytes)
  total = sum(row[datasets.CORA_FEATURE].sum()
              for rows in splits.values() for row in rows)
  assert total == 49216  # ones in the whole LINQS feature matrix


def test_unlabeled_has_no_label_and_ids_are_unique(splits):
  assert all(constants.LABEL_FEATURE not in r
             for r in splits[constants.UNLABELED_SPLIT])
  assert all(constants.LABEL_FEATURE in r
             for s in (constants.TRAIN_SPLIT, constants.EVAL_SPLIT)
             for r in splits[s])
  ids = [r[constants.ID_FEATURE] for rows in splits.values() for r in rows]
  assert len(ids) == len(set(ids)) == 2708
  # Validation labels exist only through cora_labels, for model selection.
  val = datasets.cora_labels('val')
  assert len(val) == 500
  assert set(val) <= {r[constants.ID_FEATURE]
                      for r in splits[constants.UNLABELED_SPLIT]}


def test_transductive_unlabeled_holds_test_papers_without_labels():
  splits = datasets.cora_splits(unlabeled_test=True)
  unlabeled = splits[constants.UNLABELED_SPLIT]
  assert len(unlabeled) == 500 + 1068 + 1000
  assert all(constants.LABEL_FEATURE not in r for r in unlabeled)
  test_ids = {r[constants.ID_FEATURE] for r in splits[constants.EVAL_SPLIT]}
  assert test_ids <= {r[constants.ID_FEATURE] for r in unlabeled}


def test_write_cora_graph(tmp_path):
  directory = datasets.write_cora_graph(str(tmp_path / 'graph'))
  with open(os.path.join(directory, datasets.CORA_GRAPH_FILE)) as f:
    lines = f.read().splitlines()
  assert len(lines) == 5429
  edges = [line.split('\t') for line in lines]
  assert all(len(e) == 3 and e[2] == '1.0' and e[0] != e[1] for e in edges)
  ids = {r[constants.ID_FEATURE].decode()
         for rows in datasets.cora_splits().values() for r in rows}
  assert {e[0] for e in edges} | {e[1] for e in edges} <= ids
  assert len({frozenset(e[:2]) for e in edges}) == 5278  # undirected edges


def test_write_cora(tmp_path):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  root = datasets.write_cora(str(tmp_path))
  counts = {}
  for split in (constants.TRAIN_SPLIT, constants.EVAL_SPLIT,
                constants.UNLABELED_SPLIT):
    path = os.path.join(root, split, 'data.tfrecord.gz')
    records = list(tf.data.TFRecordDataset(path, compression_type='GZIP'))
    counts[split] = len(records)
    example = tf.train.Example.FromString(records[0].numpy())
    feature = example.features.feature
    assert len(feature[datasets.CORA_FEATURE].float_list.value) == 1433
    assert (constants.LABEL_FEATURE in feature) == (
        split != constants.UNLABELED_SPLIT)
  assert counts == {'train': 140, 'eval': 1000, 'unlabeled': 1568}
  assert datasets.write_cora(str(tmp_path)) == root  # written once
