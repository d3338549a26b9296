"""GraphAugmentation: core rules, executor vs nsl.tools.pack_nbrs, bad input,
unlabeled seeds, a real LocalDagRunner pipeline with an imported graph, Cora."""
import collections
import functools
import json
import os
import random
import tempfile

import pytest
import tensorflow as tf
from tfx import v1 as tfx
from tfx.components.util import examples_utils
from tfx.dsl.components.base import base_beam_executor
from tfx.proto import example_gen_pb2
from tfx.types import artifact_utils
from tfx.types import standard_artifacts

import tfx_nsl
from tfx_nsl import beam_executor
from tfx_nsl import constants
from tfx_nsl import graph_io
from tfx_nsl.components.graph_augmentation import augment_core
from tfx_nsl.components.graph_augmentation import config
from tfx_nsl.components.graph_augmentation import executor
from tfx_nsl.components.graph_augmentation import join_core
from tfx_nsl.components.graph_augmentation import records as records_io
from tfx_nsl.components.graph_augmentation import GraphAugmentation
from tfx_nsl.nsl_compat import import_nsl
from tfx_nsl.pipelines import datasets



# ---------------------------------------------------------------- helpers


def _example(node_id=None, x=None, label=None, tag=None, int_id=False):
  ex = tf.train.Example()
  f = ex.features.feature
  if node_id is not None:
    if int_id:
      f['id'].int64_list.value.append(int(node_id))
    else:
      f['id'].bytes_list.value.append(str(node_id).encode())
  if x is not None:
    f['x'].float_list.value.extend(x)
  if label is not None:
    f['label'].int64_list.value.append(label)
  if tag is not None:
    f['tag'].bytes_list.value.append(tag.encode())
  return ex


def _node(example):
  return graph_io.example_node_id(example, 'id',
                                  example.SerializeToString())[0]


def _write_records(path, examples, gzip=True):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  options = tf.io.TFRecordOptions(compression_type='GZIP' if gzip else '')
  with tf.io.TFRecordWriter(path, options) as writer:
    for ex in examples:
      writer.write(ex if isinstance(ex, bytes) else ex.SerializeToString())


def _read_records(pattern):
  files = sorted(tf.io.gfile.glob(pattern))
  records = []
  for path in files:
    compression = 'GZIP' if path.endswith('.gz') else ''
    records += [tf.train.Example.FromString(r.numpy()) for r in
                tf.data.TFRecordDataset(path, compression_type=compression)]
  return records


def _examples_artifact(uri, splits):
  """An Examples artifact with `splits` ({name: [Example]}) written as gz."""
  artifact = standard_artifacts.Examples()
  artifact.uri = uri
  artifact.split_names = artifact_utils.encode_split_names(list(splits))
  examples_utils.set_payload_format(
      artifact, example_gen_pb2.PayloadFormat.FORMAT_TF_EXAMPLE)
  for name, examples in splits.items():
    half = (len(examples) + 1) // 2  # Two shards per split.
    for i, part in enumerate((examples[:half], examples[half:])):
      _write_records(os.path.join(uri, f'Split-{name}', f'data-{i}.gz'), part)
  return artifact


def _graph_artifact(uri, lines, shards=2):
  os.makedirs(uri, exist_ok=True)
  for i in range(shards):
    with open(os.path.join(uri, graph_io.edge_shard_name(i, shards)),
              'w') as f:
      f.writelines(lines[i::shards])
  artifact = tfx_nsl.Graph()
  artifact.uri = uri
  return artifact


def _run_executor(tmp_path, splits, lines, beam_args=None, **params):
  examples = _examples_artifact(str(tmp_path / 'examples'), splits)
  graph = _graph_artifact(str(tmp_path / 'graph'), lines)
  output = standard_artifacts.Examples()
  output.uri = str(tmp_path / 'output')
  exec_properties = {
      'max_neighbors': 3, 'add_undirected_edges': False, 'id_feature': 'id',
      'seed_splits': ['train'], 'neighbor_splits': None,
      'neighbor_features': None, 'unlabeled_as_seeds': False}
  exec_properties.update(params)
  context = base_beam_executor.BaseBeamExecutor.Context(
      beam_pipeline_args=list(beam_args or constants.DEFAULT_BEAM_ARGS),
      tmp_dir=str(tmp_path / 'tmp'))
  executor.Executor(context).Do(
      {'examples': [examples], 'graph': [graph]},
      {'augmented_examples': [output]}, exec_properties)
  return output


def _split(artifact, split):
  return _read_records(os.path.join(
      artifact_utils.get_split_uri([artifact], split), '*'))


def _stats(artifact):
  return json.loads(artifact.get_string_custom_property(
      config.STATS_PROPERTY))


def _by_id(examples):
  """{id: {feature: serialized Feature}}; fails on duplicate ids."""
  result = {}
  for ex in examples:
    node = _node(ex)
    assert node not in result, node
    result[node] = {k: v.SerializeToString()
                    for k, v in ex.features.feature.items()}
  return result


def _pack_nbrs(tmp_path, labeled, unlabeled, lines, **kwargs):
  """nsl.tools.pack_nbrs on uncompressed copies of the same data."""
  nsl = import_nsl()
  root = tmp_path / 'pack_nbrs'
  root.mkdir()
  _write_records(str(root / 'labeled.tfr'), labeled, gzip=False)
  _write_records(str(root / 'unlabeled.tfr'), unlabeled, gzip=False)
  (root / 'graph.tsv').write_text(''.join(lines))
  nsl.tools.pack_nbrs(str(root / 'labeled.tfr'), str(root / 'unlabeled.tfr'),
                      str(root / 'graph.tsv'), str(root / 'out.tfr'),
                      **kwargs)
  return _read_records(str(root / 'out.tfr'))


def _random_data(seed, n_train=30, n_unlabeled=40, n_eval=20, n_edges=400):
  """Splits and edge lines with ties, duplicates, unknown and eval ids."""
  rng = random.Random(seed)
  ids = [f'n{i:03d}' for i in range(n_train + n_unlabeled + n_eval)]
  make = lambda i, labeled: _example(  # noqa: E731
      ids[i], [rng.random() for _ in range(4)],
      rng.randrange(3) if labeled else None, f't{i}')
  splits = {
      'train': [make(i, True) for i in range(n_train)],
      'unlabeled': [make(i, False)
                    for i in range(n_train, n_train + n_unlabeled)],
      'eval': [make(i, True) for i in range(n_train + n_unlabeled, len(ids))],
  }
  nodes = ids + ['ghost1', 'ghost2']
  lines = []
  for _ in range(n_edges):
    source, target = rng.sample(nodes, 2)
    weight = rng.choice([0.25, 0.5, 0.5, 0.75, 1.0])  # Many ties.
    lines.append(f'{source}\t{target}\t{weight}\n' if rng.random() < 0.9
                 else f'{source}\t{target}\n')
  lines += lines[:40]  # Exact duplicates.
  lines += ['\t'.join(l.rstrip('\n').split('\t')[:2]) + '\t0.1\n'
            for l in lines[40:60]]  # Duplicates with a smaller weight.
  return splits, lines


# ---------------------------------------------------------------- core rules


def test_feature_names_match_nsl_defaults():
  nsl = import_nsl()
  config = nsl.configs.GraphNeighborConfig()
  assert augment_core.NBR_PREFIX == config.prefix
  assert augment_core.NBR_WEIGHT_SUFFIX == config.weight_suffix
  assert augment_core.nbr_weight_name(1) == 'NL_nbr_1_weight'
  assert augment_core.nbr_feature_name(0, 'x') == 'NL_nbr_0_x'


def test_example_id_kinds():
  assert _node(_example('a1')) == 'a1'
  assert _node(_example(42, int_id=True)) == '42'
  # No id feature: a digest of the record, as GraphBuilder names it.
  no_id = _example(x=[1.0])
  assert graph_io.example_node_id(no_id, 'id', b'rec') == (
      graph_io.derive_example_id(b'rec'), True)
  assert graph_io.example_node_id(_example('a1'), 'other', b'rec')[1]
  two = _example('a')
  two.features.feature['id'].bytes_list.value.append(b'b')
  assert _node(two) is None
  # The empty string cannot name a node in the TSV format: unusable, in
  # GraphBuilder and GraphAugmentation alike (both call graph_io.node_id).
  assert _node(_example('')) is None
  assert graph_io.node_id([b''], b'rec') is None
  # numpy's fixed-width strings (GraphBuilder's shards) drop a trailing NUL.
  assert graph_io.node_id([b'a\x00'], b'rec') is None
  assert graph_io.node_id([b'a\x00b'], b'rec') is None
  bad = tf.train.Example()
  bad.features.feature['id'].bytes_list.value.append(b'\xff')
  assert _node(bad) is None
  floats = tf.train.Example()
  floats.features.feature['id'].float_list.value.append(1.0)
  assert _node(floats) is None


def test_parse_edge_rules():
  assert augment_core.parse_edge('a\tb\t0.5\n') == ('a', 'b', 0.5)
  assert augment_core.parse_edge('a\tb\r\n') == ('a', 'b', 1.0)
  for line in ('a b 1', 'a\t\t1', 'a\tb\tx', 'a\tb\tnan', 'a\tb\t1\t2', ''):
    with pytest.raises(ValueError, match='f.tsv'):
      augment_core.parse_edge(line, 'f.tsv')


def test_edge_items_and_merge():
  """The read step's rules on one file's lines, then the target join's
  merge: max weight per pair, and how many input lines made it."""
  lines = [b'a\tb\t0.5\n', b'a\tb\t0.7\r\n', b'b\ta\t0.9\n', b'a\ta\t1\n',
           b'c\td\n', b'bad line\n', b'c\t\xff\t1\n', b'c\td\tinf\n']
  for undirected in (False, True):
    counts, warned = collections.Counter(), []
    items = list(join_core.edge_items(iter(lines), undirected, 'f.tsv', counts,
                                      warned.append))
    assert counts == collections.Counter(edge_lines_read=8,
                                         malformed_edge_lines=3, self_loops=1)
    assert len(warned) == 3 and all('f.tsv' in w for w in warned)
    forward = [('b', 'a', 0.5, 1), ('b', 'a', 0.7, 1), ('a', 'b', 0.9, 1),
               ('d', 'c', 1.0, 1)]
    assert [i for i in items if i[3]] == forward
    merged = join_core.merge_edges(items)
    if undirected:
      assert [i for i in items if not i[3]] == [
          ('a', 'b', 0.5, 0), ('a', 'b', 0.7, 0), ('b', 'a', 0.9, 0),
          ('c', 'd', 1.0, 0)]
      assert merged == {'b': {'a': (0.9, 2)}, 'a': {'b': (0.9, 1)},
                        'd': {'c': (1.0, 1)}, 'c': {'d': (1.0, 0)}}
    else:
      assert merged == {'b': {'a': (0.7, 2)}, 'a': {'b': (0.9, 1)},
                        'd': {'c': (1.0, 1)}}


def test_joins_on_batches(tmp_path):
  """join_targets and join_seeds on hand-made batches, spilled or not."""
  def entries(tag):
    return ((b'tag', tf.train.Feature(bytes_list=tf.train.BytesList(
        value=[tag])).SerializeToString()),)

  for spill_dir in (None, str(tmp_path)):
    pack = functools.partial(join_core.pack, spill_dir=spill_dir)
    by_target = [
        pack(join_core.POOL, [('n1', 1, entries(b'u')), ('n2', 0, entries(b'y')),
                              ('n2', 0, entries(b'x')), ('n1', 0, entries(b'z'))]),
        pack(join_core.OTHER, ['e1']),
        pack(join_core.EDGES, [('n1', 's', 0.5, 1), ('n1', 's', 0.8, 0),
                               ('n2', 's', 0.5, 1), ('e1', 's', 0.9, 1),
                               ('ghost', 's', 0.9, 1), ('n2', 'n1', 0.3, 1)]),
    ]
    assert [join_core.role_of(b) for b in by_target] == [0, 1, 2]
    assert (by_target[0][0] == 0xff) == (spill_dir is not None)
    counts, unknown = collections.Counter(), {}
    candidates = sorted(join_core.join_targets(by_target, counts, unknown))
    # n1: the seed-split copy (preference 0) wins; n2: the smaller features.
    assert candidates == [('n1', 0.3, 'n2', entries(b'x')),
                          ('s', 0.5, 'n2', entries(b'x')),
                          ('s', 0.8, 'n1', entries(b'z'))]
    assert unknown == {'ghost': 1}
    assert counts == collections.Counter(
        duplicate_neighbor_ids=2, edges=5, edges_target_not_neighbor=1,
        edges_unknown_target=1)
    seed = _example('s', [1.0], 1).SerializeToString()
    by_source = [
        pack(join_core.CANDIDATES, candidates),
        pack(join_core.SEEDS, [('s', 'train', True, seed, False)]),
        pack(join_core.PRESENT, ['n1']),
        pack(join_core.UNNAMED_SEEDS, [('train', False, b'')]),
        pack(join_core.READ_COUNTS, {'examples_read': 4}),
    ]
    counts = collections.Counter()
    out = list(join_core.join_seeds(by_source, 1, True, counts))
    assert [split for split, _ in out] == ['train', 'train']
    first = tf.train.Example.FromString(out[0][1]).features.feature
    assert first['NL_nbr_0_tag'].bytes_list.value == [b'z']  # Top 1: 0.8.
    assert first['NL_labeled'].int64_list.value == [1]
    assert tf.train.Example.FromString(out[1][1]).features.feature[
        'NL_num_nbrs'].int64_list.value == [0]
    assert counts == collections.Counter(
        examples_read=4, neighbors_attached=1, edges_beyond_max_neighbors=1,
        edges_from_non_seed=1, seeds_written=2, seeds_with_neighbors=1,
        seeds_without_neighbors=1, unlabeled_seeds_written=1)


@pytest.mark.parametrize('k', [1, 2, 5])
def test_bounded_top_equals_full_sort(k):
  rng = random.Random(k)
  candidates = [(rng.choice([0.1, 0.5, 0.9]), f'id{i:02d}', ())
                for i in range(40)]
  # pack_nbrs' order: (weight, id) descending, ties to the larger id.
  expected = sorted(candidates, reverse=True)[:k]
  rng.shuffle(candidates)
  acc = augment_core.top_create()
  for c in candidates:
    acc = augment_core.top_add(acc, c, k)
    assert len(acc[1]) <= k  # Bounded whatever the degree.
  assert augment_core.top_extract(acc) == (40, expected)
  acc = augment_core.top_create()
  for c in [(0.5, 'a', ()), (0.5, 'b', ()), (0.7, 'a0', ())]:
    augment_core.top_add(acc, c, 3)
  assert augment_core.top_extract(acc)[1] == [
      (0.7, 'a0', ()), (0.5, 'b', ()), (0.5, 'a', ())]


def test_augment_and_payload_subset():
  seed = _example('s', [1.0], 1).SerializeToString()
  nbr = _example('n', [2.0, 3.0], None, 'tag')
  entries, missing = augment_core.payload_entries(nbr, ['x', 'label'])
  assert missing == ['label']
  out = tf.train.Example.FromString(augment_core.augment(
      seed, [(0.5, 'n', entries)], labeled=False))
  f = out.features.feature
  assert list(f['NL_num_nbrs'].int64_list.value) == [1]
  assert list(f['NL_nbr_0_weight'].float_list.value) == [0.5]
  assert list(f['NL_nbr_0_x'].float_list.value) == [2.0, 3.0]
  assert 'NL_nbr_0_tag' not in f and 'NL_nbr_0_id' not in f
  assert list(f[augment_core.LABELED_FEATURE].int64_list.value) == [0]
  assert list(f['label'].int64_list.value) == [1]


def test_augment_fast_equals_reference():
  """Appending serialized features parses to what the proto path builds."""
  seed = _example('s', [1.0, 2.0], 1, 'seed').SerializeToString()
  nbr1 = _example('n1', [2.0, 3.0], 4, 'a')
  nbr2 = _example('n2', [5.0], None, None)
  nbr2.features.feature['weight'].float_list.value.append(7.0)  # Collides.
  for features in (None, ['x', 'tag'], ['x', 'label', 'weight']):
    neighbors = []
    for i, nbr in enumerate((nbr1, nbr2)):
      entries, missing = augment_core.payload_entries(nbr, features)
      subset = tf.train.Example()
      for name in features or nbr.features.feature:
        if name in nbr.features.feature:
          subset.features.feature[name].CopyFrom(nbr.features.feature[name])
      assert missing == [n for n in features or []
                         if n not in nbr.features.feature]
      assert augment_core.entries_to_example(entries) == (
          subset.SerializeToString(deterministic=True))
      neighbors.append((0.9 - i * 0.4, f'n{i}', entries))
    for labeled in (None, True, False):
      for count in (0, 1, 2):
        want = tf.train.Example.FromString(augment_core.augment(
            seed, neighbors[:count], labeled))
        got = tf.train.Example.FromString(augment_core.augment_fast(
            seed, neighbors[:count], labeled))
        assert got == want
  # Huge weights round as protobuf does; large counts encode as varints.
  assert tf.train.Feature.FromString(
      augment_core.float_feature_bytes(1e300)).float_list.value[0] == (
          float('inf'))
  for value in (0, 1, 127, 128, 300, 2**40):
    assert augment_core.int64_feature_bytes(value) == tf.train.Feature(
        int64_list=tf.train.Int64List(value=[value])).SerializeToString()
  # A seed augmented before takes the reference path (pack_nbrs appends).
  again = augment_core.augment(seed, neighbors[:1])
  assert augment_core.has_neighbor_features(
      tf.train.Example.FromString(again))
  assert augment_core.augment_fast(
      again, neighbors, None, True) == augment_core.augment(again, neighbors)


def test_gzip_writer_writes_tfrecords(tmp_path):
  """The output sink's files read back as gzip TFRecords, in order."""
  records = [b'', b'x', os.urandom(70000)] + [b'r%d' % i for i in range(3000)]
  plain = str(tmp_path / 'plain.tfr')
  _write_records(plain, records, gzip=False)
  with open(plain, 'rb') as f:
    assert f.read() == b''.join(records_io.tfrecord_frame(r) for r in records)
  path = str(tmp_path / 'out.gz')
  writer = records_io._GzipWriter(open(path, 'wb'))
  writer._CHUNK_BYTES = 1000  # Many chunks through the helper thread.
  for r in records:
    writer.write_record(r)
  writer.close()
  got = [r.numpy() for r in tf.data.TFRecordDataset(
      path, compression_type='GZIP')]
  assert got == records


def test_buckets_are_stable():
  # Fixed values (CRC-32 of the UTF-8 id): a salted hash would differ
  # between processes and runs.
  assert [join_core.bucket_of(n, 7) for n in ('a', 'n0000001', '42')] == [
      4, 2, 3]
  assert [join_core.bucket_of(n, 1000) for n in ('a', 'n0000001', '42')] == [
      907, 369, 288]
  assert join_core.bucket_of('anything', 1) == 0
  assert beam_executor.runs_locally(['--direct_running_mode=in_memory'])
  assert beam_executor.runs_locally(['--runner=DirectRunner'])
  assert not beam_executor.runs_locally(['--runner=DataflowRunner'])


# ---------------------------------------------------------------- vs pack_nbrs


@pytest.mark.parametrize('undirected,k', [(False, 2), (True, 3)])
def test_executor_matches_pack_nbrs(tmp_path, undirected, k):
  splits, lines = _random_data(seed=7 + k)
  output = _run_executor(tmp_path, splits, lines, max_neighbors=k,
                         add_undirected_edges=undirected)
  expected = _pack_nbrs(tmp_path, splits['train'], splits['unlabeled'], lines,
                        add_undirected_edges=undirected, max_nbrs=k)
  got = _by_id(_split(output, 'train'))
  want = _by_id(expected)
  assert set(got) == set(want)
  assert got == want
  # The data exercise the interesting cases: some seeds are full, some not.
  nbrs = [tf.train.Feature.FromString(v['NL_num_nbrs']).int64_list.value[0]
          for v in got.values()]
  assert max(nbrs) == k and min(nbrs) < k
  # Splits it does not touch are byte-identical copies; names and format kept.
  assert artifact_utils.decode_split_names(output.split_names) == [
      'train', 'unlabeled', 'eval']
  assert examples_utils.get_payload_format(output) == (
      example_gen_pb2.PayloadFormat.FORMAT_TF_EXAMPLE)
  assert examples_utils.get_file_format(output) == 'tfrecords_gzip'
  for name in ('unlabeled', 'eval'):
    src = os.path.join(tmp_path, 'examples', f'Split-{name}')
    dst = artifact_utils.get_split_uri([output], name)
    assert sorted(os.listdir(dst)) == sorted(os.listdir(src))
    for f in os.listdir(src):
      with open(os.path.join(src, f), 'rb') as a, open(
          os.path.join(dst, f), 'rb') as b:
        assert a.read() == b.read()
  out_files = os.listdir(artifact_utils.get_split_uri([output], 'train'))
  assert out_files and all(f.startswith('data_tfrecord-') and f.endswith('.gz')
                           for f in out_files)
  stats = _stats(output)
  assert stats['duplicate_edges'] >= 40
  assert stats['edges_unknown_target'] > 0  # The ghosts.
  assert stats['edges_target_not_neighbor'] > 0  # Eval examples.
  assert stats['seeds_written'] == 30
  _check_accounting(stats, len(lines))


def test_many_buckets_give_the_same_output(tmp_path, monkeypatch):
  """The joins' hash buckets (one for small inputs) change nothing."""
  splits, lines = _random_data(seed=11)
  spill_parent = tmp_path / 'spill'  # The context has no temp dir here.
  spill_parent.mkdir()
  monkeypatch.setattr(tempfile, 'tempdir', str(spill_parent))
  written = []
  monkeypatch.setattr(join_core, 'pack', lambda *args, pack=join_core.pack: (
      written.append(pack(*args)) or written[-1]))
  one = _run_executor(tmp_path / 'one', splits, lines, max_neighbors=3,
                      add_undirected_edges=True)
  assert written and all(w[0] == join_core._SPILLED for w in written)
  assert not list(spill_parent.iterdir())  # Removed after the run.
  monkeypatch.setattr(join_core, 'BYTES_PER_BUCKET', 300)
  monkeypatch.setattr(join_core, 'BATCH_ITEMS',
                      dict.fromkeys(join_core.BATCH_ITEMS, 3))
  many = _run_executor(tmp_path / 'many', splits, lines, max_neighbors=3,
                       add_undirected_edges=True)
  assert _by_id(_split(many, 'train')) == _by_id(_split(one, 'train'))
  assert _stats(many) == _stats(one)
  # As other runners do it: the batches themselves through the shuffle, not
  # paths of files that hold them.
  packed = []
  monkeypatch.setattr(executor.Executor, '_spill_dir',
                      lambda self, pipeline: None)
  monkeypatch.setattr(join_core, 'unpack', lambda value, unpack=(
      join_core.unpack): packed.append(value[0]) or unpack(value))
  shuffled = _run_executor(tmp_path / 'shuffled', splits, lines,
                           max_neighbors=3, add_undirected_edges=True)
  assert packed and join_core._SPILLED not in packed
  assert _by_id(_split(shuffled, 'train')) == _by_id(_split(one, 'train'))
  assert _stats(shuffled) == _stats(one)
  expected = _pack_nbrs(tmp_path, splits['train'], splits['unlabeled'], lines,
                        add_undirected_edges=True, max_nbrs=3)
  assert _by_id(_split(many, 'train')) == _by_id(expected)


def _check_accounting(stats, num_lines):
  """Every edge line is accounted for in exactly one counter."""
  assert stats['edge_lines_read'] == num_lines
  assert num_lines == (stats['malformed_edge_lines'] + stats['self_loops']
                       + stats['duplicate_edges']
                       + stats['edges'] - stats['reverse_edges_added'])
  assert stats['edges'] == (
      stats['edges_unknown_target'] + stats['edges_target_not_neighbor']
      + stats['edges_from_non_seed'] + stats['edges_beyond_max_neighbors']
      + stats['neighbors_attached'])


# ---------------------------------------------------------------- bad input


def test_bad_inputs_are_counted_not_lost(tmp_path):
  train = [_example('a', [1.0], 0), _example('b', [2.0], 1),
           _example('c', [3.0], 0),
           _example('d', [4.0], 1),
           _example('d', [4.5], 1),  # Duplicate seed id: both kept.
           _example(None, [5.0], 1),  # No id: named by its digest.
           _example(None, [5.5], 0)]
  train[-1].features.feature['id'].bytes_list.value.extend([b'e', b'f'])
  # ^ Unusable id (two values): kept, no neighbors.
  derived = _node(train[-2])
  unlabeled = [_example('u1', [6.0]), _example('u1', [6.5]),  # Duplicate.
               _example('u2', None, tag='no x')]  # Lacks the copied 'x'.
  lines = ['a\tb\t0.9\n', 'a\tb\t0.3\n',  # Duplicate: max weight wins.
           'a\ta\t1.0\n',  # Self-loop.
           'a\tghost\t0.8\n',  # Unknown target.
           'ghost2\ta\t0.8\n',  # Unknown source.
           'b\tu1\t0.5\n', 'c\tu2\t0.5\n', 'd\ta\t0.2\n',
           'u1\ta\t0.4\n',  # From a non-seed.
           'a\tb\n'.replace('\t', ' '),  # Malformed.
           'a\tc\tabc\n',  # Malformed weight.
           'a\tc\tinf\n',  # Not finite.
           f'{derived}\ta\t0.7\n']  # The digest-named example has a.
  output = _run_executor(tmp_path, {'train': train, 'unlabeled': unlabeled},
                         lines, neighbor_features=['x'], max_neighbors=2)
  stats = _stats(output)
  assert stats['examples_read'] == 10 and stats['examples_without_id'] == 1
  assert stats['ids_derived_from_content'] == 1
  assert stats['malformed_edge_lines'] == 3
  assert stats['self_loops'] == 1
  assert stats['duplicate_edges'] == 1
  assert stats['edges_unknown_target'] == 1
  assert stats['edges_unknown_source'] == 1
  assert stats['unknown_source_nodes'] == 1
  assert stats['edges_from_non_seed'] == 2  # ghost2 -> a and u1 -> a.
  assert stats['duplicate_seed_ids'] == 1
  assert stats['duplicate_neighbor_ids'] == 2  # 'u1' and seed 'd'.
  assert stats['neighbor_examples_missing_features'] == 1
  assert stats['missing_neighbor_feature:x'] == 1
  assert stats['seeds_written'] == 7
  _check_accounting(stats, len(lines))

  out = _split(output, 'train')
  assert len(out) == 7  # Every seed written, the unusable-id one too.
  feats = {}
  for ex in out:
    node = _node(ex)
    feats.setdefault(node, []).append(ex.features.feature)
  a, = feats['a']
  assert a['NL_num_nbrs'].int64_list.value == [1]
  assert a['NL_nbr_0_weight'].float_list.value == [pytest.approx(0.9)]
  assert a['NL_nbr_0_x'].float_list.value == [2.0]
  assert set(k for k in a if k.startswith('NL_nbr_0_')) == {
      'NL_nbr_0_weight', 'NL_nbr_0_x'}  # Only the listed feature copied.
  b, = feats['b']  # Duplicate neighbor id: the smaller payload, always.
  want = min(_example(x=[x]).SerializeToString(deterministic=True)
             for x in (6.0, 6.5))
  assert b['NL_nbr_0_x'] == (
      tf.train.Example.FromString(want).features.feature['x'])
  c, = feats['c']  # Neighbor lacking 'x': weight but no copy.
  assert c['NL_num_nbrs'].int64_list.value == [1] and 'NL_nbr_0_x' not in c
  assert len(feats['d']) == 2
  assert all(d['NL_nbr_0_x'].float_list.value == [1.0] for d in feats['d'])
  none, = feats[None]
  assert none['NL_num_nbrs'].int64_list.value == [0]
  named, = [e.features.feature for e in out if 'id' not in e.features.feature]
  assert named['NL_num_nbrs'].int64_list.value == [1]
  assert named['NL_nbr_0_x'].float_list.value == [1.0]


def test_joins_graph_builder_graph_on_id_less_examples(tmp_path):
  """Examples without an id feature: both components name them by the same
  digest, so GraphBuilder's graph joins (docs/design.md's content-derived ids)."""
  from tfx_nsl.components.graph_builder import executor as builder
  from tfx_nsl.components.graph_builder.params import GraphBuilderParams
  rng = random.Random(3)
  train = [_example(x=[rng.random() for _ in range(4)], label=i % 2)
           for i in range(40)]
  examples = _examples_artifact(str(tmp_path / 'examples'), {'train': train})
  graph = tfx_nsl.Graph()
  graph.uri = str(tmp_path / 'graph')
  context = base_beam_executor.BaseBeamExecutor.Context(
      beam_pipeline_args=list(constants.DEFAULT_BEAM_ARGS),
      tmp_dir=str(tmp_path / 'tmp'))
  builder.Executor(context).Do(
      {'examples': [examples]}, {'graph': [graph]}, GraphBuilderParams(
          embedding_features=['x'], similarity_threshold=-1.0,
          max_neighbors=2, undirected=False).to_exec_properties())
  output = standard_artifacts.Examples()
  output.uri = str(tmp_path / 'output')
  executor.Executor(context).Do(
      {'examples': [examples], 'graph': [graph]},
      {'augmented_examples': [output]},
      {'max_neighbors': 2, 'add_undirected_edges': False, 'id_feature': 'id',
       'seed_splits': ['train'], 'neighbor_splits': None,
       'neighbor_features': None, 'unlabeled_as_seeds': False})
  stats = _stats(output)
  assert stats['ids_derived_from_content'] == 40
  assert stats['edges_unknown_target'] == stats['edges_unknown_source'] == 0
  assert stats['neighbors_attached'] == 80
  out = _split(output, 'train')
  assert [e.features.feature['NL_num_nbrs'].int64_list.value[0]
          for e in out] == [2] * 40


def test_wrong_id_feature_fails_with_a_hint(tmp_path):
  splits = {'train': [_example('a', [1.0], 0)]}
  # Absent while the graph does not name digests: fails before the
  # pipeline, listing the features there are.
  with pytest.raises(ValueError, match=r"usable id feature 'paper'.*absent.*"
                     r"like 'a'.*\['id', 'label', 'x'\]. Set id_feature"):
    _run_executor(tmp_path / 'one', splits, ['a\tb\n'], id_feature='paper')
  # Present but unusable in every example: fails before the pipeline.
  with pytest.raises(ValueError, match=r"usable id feature 'x'.*holds "
                     r"\[1.0\]. Set id_feature"):
    _run_executor(tmp_path / 'two', splits, ['a\tb\n'], id_feature='x')
  # Usable but matching nothing: fails after the join, with the counts.
  with pytest.raises(ValueError, match=r"No seed example got a neighbor.*"
                     r"1 name targets that no example has"):
    _run_executor(tmp_path / 'three', splits, ['a\tghost\n'])


def test_refuses_other_payload_formats(tmp_path):
  examples = _examples_artifact(str(tmp_path / 'examples'),
                                {'train': [_example('a', [1.0], 0)]})
  examples_utils.set_payload_format(
      examples, example_gen_pb2.PayloadFormat.FORMAT_PROTO)
  output = standard_artifacts.Examples()
  output.uri = str(tmp_path / 'output')
  with pytest.raises(ValueError, match='payload format FORMAT_PROTO'):
    executor.Executor().Do(
        {'examples': [examples],
         'graph': [_graph_artifact(str(tmp_path / 'graph'), ['a\tb\n'])]},
        {'augmented_examples': [output]}, {'max_neighbors': 2})


def test_executor_imports_no_standard_tfx_component():
  """A worker running this executor skips TFX's components and TFMA."""
  import subprocess
  import sys
  code = ('import sys; from tfx_nsl.components.graph_augmentation import '
          'executor; print(sorted(m for m in sys.modules if m.startswith('
          '("tfx.components", "tensorflow_model_analysis"))))')
  out = subprocess.run([sys.executable, '-c', code], check=True,
                       capture_output=True, text=True).stdout
  assert out.strip() == '[]'


def test_unusable_graph_fails(tmp_path):
  splits = {'train': [_example('a', [1.0], 0), _example('b', [1.0], 0)]}
  with pytest.raises(ValueError, match='No usable edge.*2 are malformed'):
    _run_executor(tmp_path / 'one', splits, ['a,b,1\n', 'a b\n'])
  with pytest.raises(ValueError, match='No seed example got a neighbor'):
    _run_executor(tmp_path / 'two', splits, ['x\ty\t1\n'])
  with pytest.raises(ValueError, match='has no edges.*stats.json'):
    _run_executor(tmp_path / 'three', splits, [])


def test_component_validates_parameters():
  examples = tfx.dsl.Importer(
      source_uri='/nonexistent', artifact_type=standard_artifacts.Examples
  ).with_id('ex').outputs['result']
  graph = tfx.dsl.Importer(
      source_uri='/nonexistent', artifact_type=tfx_nsl.Graph
  ).with_id('g').outputs['result']
  component = GraphAugmentation(examples=examples, graph=graph)
  assert component.exec_properties['max_neighbors'] == 3
  assert component.exec_properties['seed_splits'] == ['train']
  assert 'augmented_examples' in component.outputs
  bad = [
      (dict(max_neighbors=0), 'max_neighbors=0 is not allowed: must be >= 1'),
      (dict(max_neighbors=True), 'max_neighbors=True must be of type int'),
      (dict(seed_splits='train'), r"e.g. \['train'\]"),
      (dict(seed_splits=[]), 'at least one'),
      (dict(neighbor_splits=['train', 'train']), 'distinct non-empty names'),
      (dict(neighbor_features=['NL_nbr_0_x']), 'features this component'),
      (dict(add_undirected_edges='yes'), r"add_undirected_edges='yes' must be of type bool"),
      (dict(id_feature=''), 'id_feature'),
      (dict(unlabeled_as_seeds=True, seed_splits=['train', 'unlabeled']),
       'do not also list it'),
  ]
  for kwargs, message in bad:
    with pytest.raises(ValueError, match=message):
      GraphAugmentation(examples=examples, graph=graph, **kwargs)


# ---------------------------------------------------------------- unlabeled


def test_unlabeled_as_seeds_int_ids(tmp_path):
  train = [_example(i, [float(i)], i % 2, int_id=True) for i in range(1, 4)]
  unlabeled = [_example(i, [float(i)], int_id=True) for i in range(10, 13)]
  lines = ['1\t10\t0.5\n', '10\t11\t0.6\n', '11\t1\t0.7\n', '12\t99\t1\n']
  output = _run_executor(tmp_path, {'train': train, 'unlabeled': unlabeled},
                         lines, unlabeled_as_seeds=True,
                         add_undirected_edges=True)
  out = {_node(e): e.features.feature
         for e in _split(output, 'train')}
  assert sorted(out) == ['1', '10', '11', '12', '2', '3']
  marks = {k: v[augment_core.LABELED_FEATURE].int64_list.value[0]
           for k, v in out.items()}
  assert marks == {'1': 1, '2': 1, '3': 1, '10': 0, '11': 0, '12': 0}
  assert 'label' not in out['10']
  # 10's neighbors: 11 (0.6) and 1 (0.5, reversed edge); int ids copied.
  assert out['10']['NL_nbr_0_id'].int64_list.value == [11]
  assert out['10']['NL_nbr_1_id'].int64_list.value == [1]
  assert out['12']['NL_num_nbrs'].int64_list.value == [0]
  assert out['2']['NL_num_nbrs'].int64_list.value == [0]
  # The unlabeled split itself is still there, unchanged.
  assert len(_split(output, 'unlabeled')) == 3
  assert all(augment_core.LABELED_FEATURE not in e.features.feature
             for e in _split(output, 'unlabeled'))
  assert _stats(output)['unlabeled_seeds_written'] == 3


# ---------------------------------------------------------------- pipelines


def test_local_dag_runner_with_imported_graph(tmp_path):
  """ImportExampleGen -> Importer(Graph) -> GraphAugmentation, for real."""
  splits, lines = _random_data(seed=3, n_train=20, n_unlabeled=20, n_eval=10,
                               n_edges=150)
  data = tmp_path / 'data'
  for name, examples in splits.items():
    _write_records(str(data / name / 'data.tfrecord.gz'), examples)
  graph_dir = tmp_path / 'my_graph'
  graph_dir.mkdir()
  (graph_dir / 'graph.tsv').write_text(''.join(lines))  # A user's NSL file.

  example_gen = tfx.components.ImportExampleGen(
      input_base=str(data),
      input_config=tfx.proto.Input(splits=[
          tfx.proto.Input.Split(name=n, pattern=f'{n}/*') for n in splits]))
  graph = tfx.dsl.Importer(source_uri=str(graph_dir),
                           artifact_type=tfx_nsl.Graph).with_id('graph')
  augment = GraphAugmentation(
      examples=example_gen.outputs['examples'],
      graph=graph.outputs['result'], max_neighbors=2)
  pipeline = tfx.dsl.Pipeline(
      pipeline_name='augment_test', pipeline_root=str(tmp_path / 'root'),
      components=[example_gen, graph, augment],
      metadata_connection_config=(
          tfx.orchestration.metadata.sqlite_metadata_connection_config(
              str(tmp_path / 'metadata.db'))),
      beam_pipeline_args=list(constants.DEFAULT_BEAM_ARGS))
  tfx.orchestration.LocalDagRunner().run(pipeline)

  root = tmp_path / 'root' / augment.id / 'augmented_examples'
  runs = list(root.iterdir())
  assert len(runs) == 1
  out = _read_records(str(runs[0] / 'Split-train' / '*.gz'))
  want = _pack_nbrs(tmp_path, splits['train'], splits['unlabeled'], lines,
                    max_nbrs=2)
  assert _by_id(out) == _by_id(want)
  assert len(_read_records(str(runs[0] / 'Split-eval' / '*.gz'))) == 10


def _cora():
  """(papers {id: (label, words)}, citing->cited lines, {id: split})."""
  def rows(name):
    with open(os.path.join(datasets.CORA_DIR, name)) as f:
      return [line.rstrip('\n').split('\t') for line in f][1:]
  papers = {r[0]: (r[1], [int(w) for w in r[2].split()])
            for r in rows('nodes.tsv')}
  lines = [f'{citing}\t{cited}\t1.0\n' for cited, citing in rows('edges.tsv')]
  split = {r[0]: r[1] for r in rows('planetoid_split.tsv')}
  return papers, lines, split



def test_cora_citation_graph(tmp_path):
  papers, lines, planetoid = _cora()
  labels = sorted({label for label, _ in papers.values()})

  def paper(pid, labeled):
    ex = _example(int(pid), int_id=False)
    ex.features.feature['words'].int64_list.value.extend(papers[pid][1])
    if labeled:
      ex.features.feature['label'].int64_list.value.append(
          labels.index(papers[pid][0]))
    return ex

  order = sorted(papers, key=int)
  splits = {
      'train': [paper(p, True) for p in order if planetoid[p] == 'train'],
      'eval': [paper(p, True) for p in order if planetoid[p] == 'test'],
      'unlabeled': [paper(p, False) for p in order
                    if planetoid[p] in ('val', 'other')],
  }
  assert len(splits['train']) == 140
  output = _run_executor(tmp_path, splits, lines, max_neighbors=2,
                         add_undirected_edges=True)
  got = _by_id(_split(output, 'train'))
  want = _by_id(_pack_nbrs(tmp_path, splits['train'], splits['unlabeled'],
                           lines, max_nbrs=2, add_undirected_edges=True))
  assert got == want
  # Every train paper is cited or cites (no isolated node in Cora); those
  # whose citations all point into the held-out test split get none.
  neighbors = {}
  pool = {_node(e)
          for e in splits['train'] + splits['unlabeled']}
  for line in lines:
    a, b, _ = line.split('\t')
    neighbors.setdefault(a, set()).add(b)
    neighbors.setdefault(b, set()).add(a)
  for pid, feats in got.items():
    n = tf.train.Feature.FromString(feats['NL_num_nbrs']).int64_list.value[0]
    assert n == min(2, len(neighbors[pid] & pool)), pid
  stats = _stats(output)
  assert stats['edge_lines_read'] == 5429
  assert stats['edges'] == 2 * 5278  # Undirected, mutual citations merged.
  assert stats['malformed_edge_lines'] == stats['self_loops'] == 0
  assert stats['edges_unknown_target'] == 0
  assert stats['seeds_with_neighbors'] == sum(
      1 for p in got if neighbors[p] & pool)
  _check_accounting(stats, 5429)
