"""GraphBuilder executor: embeddings -> similarity graph, as one Beam pipeline.

No step holds the corpus or the edge list; the steps that need many nodes
read them from files beside the output, so only paths and small models
travel as side inputs (portable runners such as Flink, Spark and Dataflow
send side inputs to the SDK workers again for every bundle). Each element
is a batch of arrays, never one Python object per pair.

  read      TFXIO RecordBatches (or RunInference outputs) -> EmbeddingBatch,
            stored per bundle as batch files, each with its Summary
  plan      the merged Summaries -> the dimensions and the id boundaries of
            the node shards (corpus.py)
  shard     each batch file validated on its own, its rows routed to their
            id-range shard; each shard sorted by id and stored as one file
  score     exact: a block of one shard's rows against one shard;
            lsh: the rows of one (round, bucket) grouped, one matrix product
            per bucket piece; partition: k-means centroids from a capped
            sample, nodes shuffled to groups of neighbouring partitions,
            each group scored against the groups its nodes probe
  merge     edges keyed by source shard: dedupe (max weight; LSH only, the
            other modes never meet a pair twice), top-k per source, reverse
            edges if undirected (not needed for exact graphs without a
            top-k, symmetric by construction), then sorted TSV shards
  stats     per-shard parts merged by a combiner (counts, degree histogram,
            a spanning forest for isolated nodes and components); recall on
            a fixed sample of queries against their exact top-k, computed
            shard by shard and merged by a combiner
"""
import collections
import json
import os
from typing import Any, Dict, List

from absl import logging
import apache_beam as beam
from apache_beam.options.pipeline_options import DirectOptions
from apache_beam.transforms.window import GlobalWindows
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import tensorflow as tf
import threadpoolctl
from tfx.components.util import tfxio_utils
from tfx.types import artifact_utils
from tfx.utils import io_utils
from tfx.utils import path_utils

from tfx_nsl import beam_executor
from tfx_nsl import graph_io
from tfx_nsl.components.graph_builder import corpus
from tfx_nsl.components.graph_builder import graph_core
from tfx_nsl.components.graph_builder.params import EXACT
from tfx_nsl.components.graph_builder.params import GraphBuilderParams
from tfx_nsl.components.graph_builder.params import LSH

NAMESPACE = 'tfx_nsl.GraphBuilder'
_RAW_RECORD = '__raw_record__'
_PARTIAL_STATS = '.stats-partial.json'
_CORPUS_DIR = '.corpus'  # Removed when the pipeline is done.
_EXAMPLES_NAMED_IN_LOGS = 5
_NO_EXAMPLES = ('GraphBuilder found no examples in splits {splits}; nothing to '
                'build a graph from')
# Rows a read bundle holds before it stores them.
_STORE_ROWS = 1 << 18
# Queries of one partition-mode product batch.
_MAX_BLOCK_QUERIES = 8192
# k-means sample: points per centroid, and the most rows of the sample.
_SAMPLE_PER_CENTROID = 32
_REJECTED = 'rejected'
# Candidate edges a top-k merge buffers before it cuts them down.
_MIN_COMPACT_EDGES = 1 << 20
GroupFile = collections.namedtuple('GroupFile', ['group', 'path'])
# The k-means model of partition mode: centroids and the group of each.
PartitionModel = collections.namedtuple('PartitionModel',
                                        ['centroids', 'group_of'])


# Beam counters (namespace NAMESPACE), also written to stats.json.
COUNTERS = {
    'examples_read_<split>': 'examples read from that split',
    'ids_derived_from_content': 'examples without the id feature, named by a '
                                'digest of their bytes',
    'unusable_id': 'examples whose id feature is unusable: several values, '
                   'floats, the empty string, tabs or line breaks (left out, '
                   'logged)',
    'missing_embedding': 'examples lacking an embedding feature (left out)',
    'wrong_dimension': 'embeddings of another length than the most common '
                       'one (left out)',
    'non_finite_embedding': 'embeddings with NaN or infinity (left out)',
    'zero_embedding': 'all-zero embeddings, which have no cosine (left out)',
    'embedding_too_large': "embeddings whose dot products overflow float32 "
                           "(similarity 'dot' only; left out)",
    'nodes': 'graph nodes',
    'scored_pairs': 'similarities computed',
    'lsh_buckets': 'LSH buckets scored (lsh mode)',
    'partitions': 'k-means regions (partition mode)',
    'edges_written': 'edges written to the edge files',
}


def _counter(name):
  assert name in COUNTERS or name.startswith('examples_read_'), name
  return beam.metrics.Metrics.counter(NAMESPACE, name)


def _column(record_batch, name):
  index = record_batch.schema.get_field_index(name)
  return None if index < 0 else record_batch.column(index)


def _warn_unusable_id(serialized, id_feature, values):
  logging.warning(
      'GraphBuilder left out example %s (named by its digest): its id '
      'feature %r holds %s, not one int64 or one non-empty UTF-8 value '
      'without tabs or line breaks',
      graph_io.derive_example_id(serialized), id_feature, values)


def _ids_from(record_batch, id_feature):
  """Example ids as str (graph_io.node_id; None: unusable) and how many were
  derived from the example's bytes."""
  column = _column(record_batch, id_feature)
  raw = _column(record_batch, _RAW_RECORD)
  values = column.to_pylist() if column is not None else [None] * len(
      record_batch)
  ids = np.empty(record_batch.num_rows, object)
  derived = 0
  logged = 0
  for i, value in enumerate(values):
    derived += not value
    ids[i] = graph_io.node_id(value, None if value else raw[i].as_py()[0])
    if ids[i] is None and logged < _EXAMPLES_NAMED_IN_LOGS:
      logged += 1
      _warn_unusable_id(raw[i].as_py()[0], id_feature,
                        graph_io.describe_id(value))
  return ids, derived


def _lengths_and_flat(column, num_rows):
  if column is None:
    return np.full(num_rows, -1, np.int64), np.zeros(0, np.float32)
  lengths = pc.list_value_length(column).fill_null(-1).to_numpy(
      zero_copy_only=False).astype(np.int64)
  flat = column.flatten().to_numpy(zero_copy_only=False).astype(np.float32)
  return lengths, flat


class _ExtractFeatures(beam.DoFn):
  """RecordBatch -> EmbeddingBatch from numeric features."""

  def __init__(self, split, params):
    self._split = split
    self._params = params
    self._read = _counter(f'examples_read_{split}')
    self._derived = _counter('ids_derived_from_content')

  def process(self, record_batch: pa.RecordBatch):
    ids, derived = _ids_from(record_batch, self._params.id_feature)
    self._read.inc(record_batch.num_rows)
    self._derived.inc(derived)
    lengths, flats = [], []
    for feature in self._params.embedding_features:
      column = _column(record_batch, feature)
      if column is not None and not pa.types.is_floating(
          column.type.value_type) and not pa.types.is_integer(
              column.type.value_type):
        raise ValueError(
            f'embedding feature {feature!r} in split {self._split!r} holds '
            f'{column.type.value_type} values; it must be a float or int list')
      feature_lengths, flat = _lengths_and_flat(column, record_batch.num_rows)
      lengths.append(feature_lengths)
      flats.append(flat)
    yield corpus.EmbeddingBatch(ids, np.stack(lengths, axis=1), flats)


class _KeyById(beam.DoFn):
  """A raw record -> (its node id, the record), before an embedding model.

  The id comes from the record's own bytes, as GraphAugmentation reads them
  (a record parsed and re-serialized may not have the same bytes).
  """

  def __init__(self, split, params):
    self._id_feature = params.id_feature
    self._read = _counter(f'examples_read_{split}')
    self._derived = _counter('ids_derived_from_content')
    self._logged = 0

  def process(self, serialized):
    example = tf.train.Example.FromString(serialized)
    example_id, derived = graph_io.example_node_id(example, self._id_feature,
                                                   serialized)
    self._read.inc()
    self._derived.inc(int(derived))
    if example_id is None and self._logged < _EXAMPLES_NAMED_IN_LOGS:
      self._logged += 1
      _warn_unusable_id(serialized, self._id_feature,
                        graph_io.describe_example_id(example, self._id_feature))
    yield example_id, serialized


def _embedding_row(keyed_log, params):
  """(id, PredictionLog of the embedding model) -> (id, embedding)."""
  example_id, prediction_log = keyed_log
  outputs = prediction_log.predict_log.response.outputs
  key = params.embedding_output or (next(iter(outputs)) if len(
      outputs) == 1 else None)
  if key not in outputs:
    raise ValueError(
        f'the embedding model returns outputs {sorted(outputs)}; set '
        'embedding_output to the one that holds the embedding')
  return example_id, tf.make_ndarray(outputs[key]).reshape(-1).astype(
      np.float32)


def _rows_to_batch(rows):
  ids = np.array([r[0] for r in rows], object)
  lengths = np.array([[len(r[1])] for r in rows], np.int64)
  flat = np.concatenate([r[1] for r in rows]) if rows else np.zeros(0)
  return corpus.EmbeddingBatch(ids, lengths, [flat.astype(np.float32)])


def _cache_bytes(params):
  """Bytes of shard and group files a worker keeps loaded."""
  return params.memory_budget_mb * 2**20 // 2


class _StoreBatches(beam.DoFn):
  """EmbeddingBatches -> Staged batch files, a few per bundle."""

  def __init__(self, directory):
    self._directory = directory
    self._batches = []
    self._rows = 0

  def start_bundle(self):
    self._batches, self._rows = [], 0

  def process(self, batch):
    if len(batch.ids):
      self._batches.append(batch)
      self._rows += len(batch.ids)
    if self._rows >= _STORE_ROWS:
      yield self._store()

  def finish_bundle(self):
    if self._batches:
      yield GlobalWindows.windowed_value(self._store())

  def _store(self):
    batch = corpus.concat_batches(self._batches)
    self._batches, self._rows = [], 0
    return corpus.Staged(corpus.store_batch(batch, self._directory),
                         corpus.summarize(batch))


class _Summarize(beam.CombineFn):
  """Staged files -> one Summary (counts and a bounded id sample)."""

  def create_accumulator(self):
    return corpus.Summary(0, [], [])

  def add_input(self, accumulator, staged):
    return corpus.merge_summaries([accumulator, staged.summary])

  def merge_accumulators(self, accumulators):
    return corpus.merge_summaries(accumulators)

  def extract_output(self, accumulator):
    return accumulator


def _features(params):
  # With an embedding model, its output is the one "feature".
  return params.embedding_features or [
      f'model output {params.embedding_output or params.embedding_signature}']


def _plan(summary, params):
  try:
    plan = corpus.plan(summary, _features(params), params.num_shards,
                       params.memory_budget_mb * 2**20)
  except ValueError as e:
    raise ValueError(f'{e} of splits {params.splits}') from None
  logging.info('GraphBuilder: %d examples, %d dimensions, %d node shards',
               summary.num_rows, sum(plan.dims), len(plan.boundaries) + 1)
  return plan


_WHY_LEFT_OUT = {
    'missing_embedding': 'lack one of the embedding features {features}',
    'wrong_dimension': 'have embedding lengths other than {dims}',
    'non_finite_embedding': 'have NaN or infinite embedding values',
    'zero_embedding': 'have an all-zero embedding (no direction for cosine)',
    'embedding_too_large': (f'have an embedding norm above '
                            f'{graph_core.MAX_DOT_NORM:.3g}, whose dot '
                            'products overflow float32 (scale the embeddings '
                            'down)'),
}


class _Validate(beam.DoFn):
  """A staged batch file -> its usable rows, keyed by node shard; the
  rejections are counted, named in the log (first few) and, as counts,
  sent to the 'rejected' output."""

  def __init__(self, params):
    self._params = params
    self._logged = collections.Counter()

  def process(self, staged, plan):
    batch = corpus.load_batch(staged.path)
    ids, vectors, rejected = corpus.validate(batch, plan.dims,
                                             self._params.similarity)
    for name, left_out in rejected.items():
      _counter(name).inc(len(left_out))
      if len(left_out):
        yield beam.pvalue.TaggedOutput(_REJECTED, (name, len(left_out)))
      # Unusable ids were named when they were read.
      if (len(left_out) and name in _WHY_LEFT_OUT and
          self._logged[name] < _EXAMPLES_NAMED_IN_LOGS):
        self._logged[name] += 1
        logging.warning(
            'GraphBuilder left out %d examples that %s, e.g. %s',
            len(left_out), _WHY_LEFT_OUT[name].format(
                features=_features(self._params), dims=plan.dims),
            left_out[:_EXAMPLES_NAMED_IN_LOGS].tolist())
    yield from corpus.route(ids, vectors, plan.boundaries)


def _store_shard(keyed, directory, params):
  shard, parts = keyed
  ids, vectors = corpus.sort_shard(list(parts), graph_io.DERIVED_ID_PREFIX,
                                   params.id_feature)
  _counter('nodes').inc(len(ids))
  return corpus.ShardFile(shard, corpus.store_arrays(
      directory, f'shard{shard}', ids=ids, vectors=vectors), len(ids))


def _layout(shard_files, plan, rejected, params):
  """The node shards' Layout; none without examples (_finish_stats says so)."""
  if plan is None:
    return
  layout = corpus.Layout.of(shard_files, len(plan.boundaries) + 1)
  if not layout.num_nodes:
    rejected = collections.Counter(rejected)
    raise ValueError(
        f'GraphBuilder: none of the {sum(rejected.values())} examples of '
        f'splits {params.splits} is usable: {rejected["unusable_id"]} have '
        f'an unusable id feature {params.id_feature!r}, '
        f'{rejected["missing_embedding"]} lack an embedding feature, '
        f'{rejected["wrong_dimension"]} have the wrong dimension and '
        f'{sum(rejected[n] for n in corpus.REJECTIONS[3:])} are not finite, '
        'all zero or too large (see the log for examples of each)')
  logging.info('GraphBuilder corpus: %d nodes in %d shards',
               layout.num_nodes, layout.num_shards)
  yield layout


def _edge_bytes(edges):
  return 20 + (0 if edges.tgt_id is None else edges.tgt_id.itemsize)


def _by_shard(edges, layout):
  """(source shard, edges), in elements of at most corpus.ELEMENT_BYTES."""
  shard = layout.shard_of(edges.src)
  for s in np.unique(shard):
    part = graph_core.take(edges, shard == s)
    for rows in corpus.pieces(len(part.src), _edge_bytes(part)):
      yield int(s), graph_core.take(part, rows)


def _block_sources(params):
  """Sources of one top-k merge: their top-k fits in one element."""
  if params.max_neighbors is None:
    return None
  return max(1, corpus.ELEMENT_BYTES // (64 * params.max_neighbors))


def _candidates(edges, layout, params):
  """Scored edges keyed for the merge: by (source shard, block of
  _block_sources sources) for a top-k, whose merged accumulators then stay
  one small element each; by (source shard, 0) without one."""
  block = _block_sources(params)
  for shard, part in _by_shard(edges, layout):
    if block is None:
      yield (shard, 0), part
      continue
    blocks = part.src // block
    for b in np.unique(blocks):
      yield (shard, int(b)), graph_core.take(part, blocks == b)


def _shards(layout):
  return [s for s, f in enumerate(layout.files) if f is not None]


def _exact_units(layout, params):
  """(query shard, first row, end row, corpus shard): each ordered pair of
  shards (each unordered one, with its diagonal, without a top-k)."""
  every_pair = params.max_neighbors is None
  block = params.mode.block_size
  for i in _shards(layout):
    count = int(layout.offsets[i + 1] - layout.offsets[i])
    for start in range(0, count, block):
      for j in _shards(layout):
        if j >= i or not every_pair:
          yield i, start, min(count, start + block), j


class _ScoreExact(beam.DoFn):
  """Exact: a block of one shard's rows against one shard."""

  def __init__(self, params):
    self._params = params

  def process(self, unit, layout):
    params, capacity = self._params, _cache_bytes(self._params)
    i, start, end, j = unit
    rows = slice(start, end)
    query_ids, query_names, queries = layout.nodes(i, capacity)
    col_ids, col_names, columns = layout.nodes(j, capacity)
    if params.max_neighbors is not None:
      edges = graph_core.cross_edges(
          query_ids[rows], queries[rows], col_ids, columns,
          params.max_neighbors, params.similarity_threshold, col_names)
      pairs = (end - start) * len(col_ids)
    elif i == j:
      edges = graph_core.pair_edges(start, end, queries,
                                    params.similarity_threshold,
                                    offset=query_ids[0], names=query_names)
      num = len(query_ids)
      pairs = (end - start) * (num - 1) - (start + end - 1) * (end - start) // 2
    else:
      edges = graph_core.cross_pair_edges(
          query_ids[rows], queries[rows], query_names[rows], col_ids, columns,
          col_names, params.similarity_threshold)
      pairs = (end - start) * len(col_ids)
    _counter('scored_pairs').inc(pairs)
    yield from _candidates(edges, layout, params)


class _LshCodes(beam.DoFn):
  """LSH: one shard's rows, keyed by (round, bucket code)."""

  def __init__(self, params):
    self._params = params

  def process(self, shard, layout):
    mode = self._params.mode
    ids, names, vectors = layout.nodes(shard, _cache_bytes(self._params))
    for round_index in range(mode.rounds):
      codes, projections = graph_core.lsh_codes(vectors, mode.splits,
                                                mode.seed + round_index)
      order = np.argsort(codes, kind='stable')
      bounds = np.flatnonzero(np.r_[True, np.diff(codes[order]) != 0, True])
      row_bytes = names.itemsize + vectors[0].nbytes + 12
      for a, b in zip(bounds[:-1], bounds[1:]):
        code = int(codes[order[a]])
        for piece in corpus.pieces(b - a, row_bytes):
          rows = order[a:b][piece]
          yield ((round_index, code),
                 (ids[rows], names[rows], vectors[rows], projections[rows]))


def _score_bucket(keyed, layout, params):
  """LSH: the pieces of one bucket, one matrix product each."""
  _, parts = keyed
  ids, names, vectors, projections = (np.concatenate(a) for a in zip(*parts))
  pieces = graph_core.bucket_pieces(np.zeros(len(ids), np.int64), projections,
                                    ids, params.mode.max_bucket_size)
  _counter('lsh_buckets').inc(len(pieces))
  _counter('scored_pairs').inc(sum(len(p) ** 2 for p in pieces))
  edges = graph_core.concat_edges([
      graph_core.bucket_edges(ids[p], vectors[p], params.max_neighbors,
                              params.similarity_threshold, names[p])
      for p in pieces])
  yield from _candidates(edges, layout, params)


def _num_partitions(layout, params):
  return max(1, layout.num_nodes // params.mode.size)


def _sample_size(layout, dim, params):
  """Rows of the k-means sample: enough per centroid, within a quarter of
  the memory budget."""
  return min(_SAMPLE_PER_CENTROID * _num_partitions(layout, params),
             params.memory_budget_mb * 2**20 // 4 // (4 * dim))


def _kmeans_sample(shard, layout, directory, params):
  """One shard's part of the k-means sample, stored as a file (its path):
  rows whose seeded id hash falls below the sampling rate, so the sample
  does not depend on the sharding."""
  ids, names, vectors = layout.nodes(shard, _cache_bytes(params))
  rate = _sample_size(layout, vectors.shape[1], params) / layout.num_nodes
  keep = corpus.id_hash(names, params.mode.seed) < rate * 2.0**32
  return corpus.store_arrays(directory, f'sample{shard}', ids=ids[keep],
                             vectors=vectors[keep])


def _partition_model(sample_files, layout, params):
  samples = [corpus.load_arrays(path) for path in sample_files]
  # In node order, so the k-means does not depend on the order of shards.
  ids = np.concatenate([s['ids'] for s in samples])
  sample = np.concatenate([s['vectors'] for s in samples])[np.argsort(ids)]
  centroids = graph_core.partition_centroids(
      sample, _num_partitions(layout, params), params.mode.seed)
  _counter('partitions').inc(len(centroids))
  return PartitionModel(centroids, graph_core.partition_groups(
      centroids, params.mode.seed))


class _Assign(beam.DoFn):
  """Partition: one shard's rows with their probes, keyed by the group of
  their nearest partition."""

  def __init__(self, params):
    self._params = params

  def process(self, shard, layout, model):
    ids, names, vectors = layout.nodes(shard, _cache_bytes(self._params))
    probes = graph_core.nearest_partitions(vectors, model.centroids,
                                           self._params.mode.probes)
    group = model.group_of[probes[:, 0]]
    order = np.argsort(group, kind='stable')
    bounds = np.flatnonzero(np.r_[True, np.diff(group[order]) != 0, True])
    row_bytes = names.itemsize + vectors[0].nbytes + 8 + probes[0].nbytes
    for a, b in zip(bounds[:-1], bounds[1:]):
      for piece in corpus.pieces(b - a, row_bytes):
        rows = order[a:b][piece]
        yield int(group[rows[0]]), (ids[rows], names[rows], vectors[rows],
                                    probes[rows])


def _store_group(keyed, directory):
  """One group's nodes, stored by (nearest partition, index): the members
  of partition partitions[i] are rows bounds[i]:bounds[i + 1]."""
  group, parts = keyed
  ids, names, vectors, probes = (np.concatenate(a) for a in zip(*parts))
  order = np.lexsort((ids, probes[:, 0]))
  partitions, bounds = np.unique(probes[order, 0], return_index=True)
  return GroupFile(group, corpus.store_arrays(
      directory, f'group{group}', ids=ids[order], names=names[order],
      vectors=vectors[order], probes=probes[order], partitions=partitions,
      bounds=np.r_[bounds, len(ids)]))


class _ScoreGroup(beam.DoFn):
  """Partition: the nodes of one group of partitions, each against the
  members of the partitions it probes, read from their groups' files."""

  def __init__(self, params, threads):
    self._params = params
    self._threads = threads

  def process(self, group_file, layout, model, group_files):
    params, capacity = self._params, _cache_bytes(self._params)
    own = corpus.CACHE.load(group_file.path, capacity)
    members = {}
    for group in np.unique(model.group_of[np.unique(own['probes'])]):
      stored = corpus.CACHE.load(group_files[group], capacity)
      bounds = stored['bounds']
      for i, partition in enumerate(stored['partitions']):
        rows = slice(bounds[i], bounds[i + 1])
        members[partition] = (stored['ids'][rows], stored['vectors'][rows],
                              stored['names'][rows])
    empty = (np.zeros(0, np.int64), None, None)
    for start in range(0, len(own['ids']), _MAX_BLOCK_QUERIES):
      rows = slice(start, start + _MAX_BLOCK_QUERIES)
      # Many small products: one BLAS thread each is several times faster
      # than BLAS threads contending for the cores (OpenBLAS: the limit is
      # process-wide), so threads score several partitions at once instead.
      with threadpoolctl.threadpool_limits(1, user_api='blas'):
        edges, pairs = graph_core.block_edges(
            own['ids'][rows], own['vectors'][rows], own['probes'][rows],
            lambda p: members.get(p, empty), params.max_neighbors,
            params.similarity_threshold, threads=self._threads)
      _counter('scored_pairs').inc(pairs)
      yield from _candidates(edges, layout, params)


def _single_local_worker(pipeline):
  """Whether `pipeline` runs on a DirectRunner with one worker (the default;
  direct_num_workers=0 means a worker per core)."""
  return (beam_executor.is_local(pipeline) and
          pipeline.options.view_as(DirectOptions).direct_num_workers == 1)


def _scoring_threads(pipeline):
  """Threads a partition-mode scorer uses: this host's cores for a
  single-worker DirectRunner, whose one bundle thread would leave the other
  cores idle; 1 elsewhere, where the runner already runs a worker per core."""
  if not _single_local_worker(pipeline):
    return 1
  if hasattr(os, 'sched_getaffinity'):
    return len(os.sched_getaffinity(0))
  return os.cpu_count() or 1


def _merge_block(keyed, dedupe):
  """Without a top-k: one (shard, 0) key's edges, deduped if asked."""
  key, parts = keyed
  edges = graph_core.concat_edges(list(parts))
  return key, graph_core.dedupe_max(edges) if dedupe else edges


def _to_shard(keyed, layout):
  (shard, _), edges = keyed
  del shard  # _by_shard finds it again, and cuts the edges into elements.
  yield from _by_shard(edges, layout)


def _reverse_by_shard(keyed, layout, params):
  (shard, _), edges = keyed
  _, names, _ = layout.nodes(shard, _cache_bytes(params))
  reverse = graph_core.Edges(edges.tgt, edges.src, edges.weight,
                             names[edges.src - layout.offsets[shard]])
  for part in (edges, reverse):
    yield from _by_shard(part, layout)


def _gather_shard(keyed, dedupe):
  """One shard's edges, sorted by (source, weight desc, target)."""
  shard, parts = keyed
  edges = graph_core.concat_edges(list(parts))
  if dedupe:
    edges = graph_core.dedupe_max(edges)
  return shard, graph_core.top_k_per_source(edges, None)


# What written shards report for the statistics: edge count, out-degree
# histogram, and the files holding each shard's spanning forest.
_Written = collections.namedtuple('_Written', ['shards', 'part',
                                               'forest_files'])


class _WriteShard(beam.DoFn):
  """Writes one shard's edges as sorted NSL TSV lines."""

  def __init__(self, output_dir, forest_dir, params):
    self._output_dir = output_dir
    self._forest_dir = forest_dir
    self._params = params

  def process(self, keyed, layout):
    shard, edges = keyed
    _, names, _ = layout.nodes(shard, _cache_bytes(self._params))
    path = os.path.join(self._output_dir,
                        graph_io.edge_shard_name(shard, layout.num_shards))
    sources = corpus.decode_ids(names[edges.src - layout.offsets[shard]])
    targets = (corpus.decode_ids(edges.tgt_id) if edges.tgt_id is not None
               else [])
    with tf.io.gfile.GFile(path, 'w') as f:
      f.write(''.join(map(graph_io.EDGE_LINE.__mod__, zip(
          sources, targets, edges.weight.tolist()))))
    _counter('edges_written').inc(len(edges.src))
    part = graph_core.stats_part(edges)
    roots, members = part.forest
    yield _Written({shard}, part._replace(forest=None), [corpus.store_arrays(
        self._forest_dir, f'forest{shard}', roots=roots, members=members)])


class _MergeWritten(beam.CombineFn):
  """_Written of every shard -> one, small: counts, a degree histogram and
  the paths of the forest files."""

  def create_accumulator(self):
    return _Written(set(), graph_core.StatsPart(0, {}, None), [])

  def add_input(self, accumulator, written):
    return self.merge_accumulators([accumulator, written])

  def merge_accumulators(self, accumulators):
    accumulators = list(accumulators)
    num_edges, counts = 0, collections.Counter()
    for a in accumulators:
      num_edges += a.part.num_edges
      counts.update(a.part.degree_counts)
    return _Written(set().union(*(a.shards for a in accumulators)),
                    graph_core.StatsPart(num_edges, dict(counts), None),
                    sorted(f for a in accumulators for f in a.forest_files))

  def extract_output(self, accumulator):
    return accumulator


def _merged_forest(paths):
  """The shards' forests as one, merged a few files at a time: held in
  memory, at most MAX_FOREST_NODES pairs (None past that)."""
  forest = (np.zeros(0, np.int64), np.zeros(0, np.int64))
  for start in range(0, len(paths), 16):
    stored = [corpus.load_arrays(p) for p in paths[start:start + 16]]
    forest = graph_core.merge_forests(
        [forest] + [(s['roots'], s['members']) for s in stored])
    if forest is None:
      break
  return forest


def _finish(written, layout, sampled_recall, output_dir):
  """After all shards are written: empty files for shards without edges (so
  readers see every shard) and the graph statistics."""
  if layout is None:  # No examples; _finish_stats reports it.
    return
  for shard in set(range(layout.num_shards)) - written.shards:
    with tf.io.gfile.GFile(os.path.join(
        output_dir, graph_io.edge_shard_name(shard, layout.num_shards)), 'w'):
      pass
  stats = graph_core.final_stats(layout.num_nodes, written.part._replace(
      forest=_merged_forest(written.forest_files)))
  if stats['connected_components'] is None:
    logging.warning('GraphBuilder: more than %d nodes are on edges; the '
                    'statistics leave out isolated nodes and components',
                    graph_core.MAX_FOREST_NODES)
  if sampled_recall is not None:
    stats['estimated_recall_at_k'] = sampled_recall
  with tf.io.gfile.GFile(os.path.join(output_dir, _PARTIAL_STATS), 'w') as f:
    json.dump(stats, f)


def _recall_sample(layout, params):
  """The fixed node sample of the recall estimate, sorted; O(sample) memory
  (Generator.choice draws a small sample without permuting all nodes)."""
  size = min(params.mode.recall_sample_size, layout.num_nodes)
  return np.sort(np.random.default_rng(params.mode.seed).choice(
      layout.num_nodes, size, replace=False))


def _sample_queries(shard, layout, params):
  """The recall sample's nodes in one shard: (indices, vectors)."""
  ids, _, vectors = layout.nodes(shard, _cache_bytes(params))
  keep = np.isin(ids, _recall_sample(layout, params))
  if keep.any():
    yield ids[keep], vectors[keep]


def _exact_for_sample(shard, layout, queries, params):
  """The sample's exact neighbors among one shard's nodes."""
  ids, _, vectors = layout.nodes(shard, _cache_bytes(params))
  sample_ids, sample_vectors = queries
  yield graph_core.cross_edges(sample_ids, sample_vectors, ids, vectors,
                               params.max_neighbors,
                               params.similarity_threshold)


class _TopK(beam.CombineFn):
  """Edges -> their top-k per source (after a dedupe keeping each pair's
  largest weight, if asked). The accumulator is a list of parts, cut down
  to the top-k once it holds twice as many edges as its last cut (and at
  least _MIN_COMPACT_EDGES): merges stay linear in the edges however many
  units scored them, and no accumulator holds more than a few times the
  sources' top-k."""

  def __init__(self, max_neighbors, dedupe=False):
    self._k = max_neighbors
    self._dedupe = dedupe

  def _cut(self, parts):
    edges = graph_core.concat_edges(parts)
    if self._dedupe:
      edges = graph_core.dedupe_max(edges)
    return [graph_core.top_k_per_source(edges, self._k)]

  def _maybe_cut(self, parts):
    sizes = [len(p.src) for p in parts]
    if len(parts) > 1 and sum(sizes) > max(_MIN_COMPACT_EDGES, 2 * sizes[0]):
      return self._cut(parts)
    return parts

  def create_accumulator(self):
    return []

  def add_input(self, accumulator, edges):
    return self._maybe_cut(accumulator + [edges])

  def merge_accumulators(self, accumulators):
    return self._maybe_cut([p for a in accumulators for p in a])

  def compact(self, accumulator):
    return self._cut(accumulator)

  def extract_output(self, accumulator):
    return self._cut(accumulator)[0]


def _sample_edges(keyed, layout, params):
  """One shard's edges from the recall sample's sources."""
  _, edges = keyed
  mask = np.isin(edges.src, _recall_sample(layout, params))
  if mask.any():
    yield graph_core.Edges(*(a[mask] for a in edges[:3]))


def _sampled_recall(found_parts, exact, layout, params):
  """Recall of the approximate top-k against exact, on a fixed node sample."""
  if layout is None:  # No examples; _finish_stats reports it.
    return None
  return graph_core.recall_at_k(graph_core.concat_edges(found_parts), exact,
                                _recall_sample(layout, params))


def _concat_queries(parts):
  return (np.concatenate([p[0] for p in parts] + [np.zeros(0, np.int64)]),
          np.concatenate([p[1] for p in parts]) if parts else None)


class Executor(beam_executor.BeamExecutor):
  """Builds a similarity graph from example embeddings with Beam."""

  def Do(self, input_dict: Dict[str, List[Any]],
         output_dict: Dict[str, List[Any]],
         exec_properties: Dict[str, Any]) -> None:
    self._log_startup(input_dict, output_dict, exec_properties)
    params = GraphBuilderParams.from_exec_properties(exec_properties)
    examples = artifact_utils.get_single_instance(input_dict['examples'])
    available = artifact_utils.decode_split_names(examples.split_names)
    params = params.resolve_splits(available)
    model = (artifact_utils.get_single_instance(input_dict['model'])
             if input_dict.get('model') else None)
    graph = artifact_utils.get_single_instance(output_dict['graph'])
    output_dir = graph.uri
    tf.io.gfile.makedirs(output_dir)
    corpus_dir = os.path.join(output_dir, _CORPUS_DIR)
    tf.io.gfile.makedirs(corpus_dir)

    # The stored batches, shards and groups go, whether the job succeeds
    # or not.
    try:
      with self._make_beam_pipeline() as pipeline:
        layout_pc = self._corpus(pipeline, examples, model, params,
                                 corpus_dir)
        layout = beam.pvalue.AsSingleton(layout_pc, default_value=None)
        spread = not _single_local_worker(pipeline)
        shards = layout_pc | 'Shards' >> beam.FlatMap(_shards)
        if spread:
          # Spreads the units of work over the workers (else they would stay
          # fused with the one step that made them); a single local worker
          # has nothing to spread them to.
          shards = shards | 'DistributeShards' >> beam.Reshuffle()
        scored = self._score(pipeline, layout_pc, layout, shards, params,
                             corpus_dir, spread)
        # Only LSH rounds meet a pair twice; exact and partition modes score
        # each (query, node) pair once.
        dedupe = params.mode.NAME == LSH
        if params.max_neighbors is None:
          candidates = (scored
                        | 'GroupCandidates' >> beam.GroupByKey()
                        | 'Merge' >> beam.Map(_merge_block, dedupe))
        else:
          candidates = scored | 'TopK' >> beam.CombinePerKey(
              _TopK(params.max_neighbors, dedupe))
        recall = None
        if params.mode.NAME != EXACT:
          recall = beam.pvalue.AsSingleton(
              self._recall(candidates, layout, shards, params))
        # Without a top-k, exact edges come out symmetric.
        symmetric = params.mode.NAME == EXACT and params.max_neighbors is None
        reverse = params.undirected and not symmetric
        final = (candidates
                 | ('AddReverse' if reverse else 'ToShards') >> beam.FlatMap(
                     _reverse_by_shard if reverse else _to_shard, layout,
                     *([params] if reverse else []))
                 | 'GroupShards' >> beam.GroupByKey()
                 | 'Gather' >> beam.Map(_gather_shard, dedupe=reverse))
        _ = (final
             | 'Write' >> beam.ParDo(
                 _WriteShard(output_dir, corpus_dir, params), layout)
             # With defaults: a graph without edges still gets its files.
             | 'MergeWritten' >> beam.CombineGlobally(_MergeWritten())
             | 'Finish' >> beam.Map(_finish, layout, recall, output_dir))
    finally:
      corpus.CACHE.clear()  # This process may have been a worker.
      tf.io.gfile.rmtree(corpus_dir)
    stats = self._finish_stats(pipeline.result, output_dir, params)
    graph.set_int_custom_property('num_nodes', stats['num_nodes'])
    graph.set_int_custom_property('num_edges', stats['num_edges'])
    logging.info('GraphBuilder wrote %d nodes, %d edges to %s',
                 stats['num_nodes'], stats['num_edges'], output_dir)

  def _corpus(self, pipeline, examples, model, params, corpus_dir):
    """Reads the splits and stores the node shards; their Layout."""
    batches = [self._read_split(pipeline, examples, model, split, params)
               for split in params.splits]
    if len(batches) > 1:
      batches = batches | 'Flatten' >> beam.Flatten()
    else:
      batches, = batches
    staged = batches | 'StoreBatches' >> beam.ParDo(_StoreBatches(corpus_dir))
    # Without defaults: no input at all yields no plan, and _finish_stats
    # says so.
    plan = beam.pvalue.AsSingleton(
        staged
        | 'Summarize' >> beam.CombineGlobally(_Summarize()).without_defaults()
        | 'Plan' >> beam.Map(_plan, params), default_value=None)
    validated = staged | 'Validate' >> beam.ParDo(
        _Validate(params), plan).with_outputs(_REJECTED, main='rows')
    rejected = beam.pvalue.AsDict(
        validated[_REJECTED] | 'CountRejected' >> beam.CombinePerKey(sum))
    return (validated.rows
            | 'GroupNodes' >> beam.GroupByKey()
            | 'StoreShards' >> beam.Map(_store_shard, corpus_dir, params)
            | 'CollectShards' >> beam.combiners.ToList()
            | 'Layout' >> beam.FlatMap(_layout, plan, rejected, params))

  def _score(self, pipeline, layout_pc, layout, shards, params, corpus_dir,
             spread):
    """(source shard, Edges) candidates of the mode."""
    def distribute(work, name):
      return work | f'Distribute{name}' >> beam.Reshuffle() if spread else work

    if params.mode.NAME == EXACT:
      units = layout_pc | 'ExactUnits' >> beam.FlatMap(_exact_units, params)
      return (distribute(units, 'Units')
              | 'Score' >> beam.ParDo(_ScoreExact(params), layout))
    if params.mode.NAME == LSH:
      return (shards
              | 'LshCodes' >> beam.ParDo(_LshCodes(params), layout)
              | 'GroupBuckets' >> beam.GroupByKey()
              | 'Score' >> beam.FlatMap(_score_bucket, layout, params))
    model = beam.pvalue.AsSingleton(
        shards
        | 'KmeansSample' >> beam.Map(_kmeans_sample, layout, corpus_dir,
                                     params)
        | 'CollectSample' >> beam.combiners.ToList()
        | 'Kmeans' >> beam.Map(_partition_model, layout, params))
    groups = (shards
              | 'Assign' >> beam.ParDo(_Assign(params), layout, model)
              | 'GroupPartitions' >> beam.GroupByKey()
              | 'StoreGroups' >> beam.Map(_store_group, corpus_dir))
    group_files = beam.pvalue.AsDict(groups)
    return (distribute(groups, 'Groups')
            | 'Score' >> beam.ParDo(
                _ScoreGroup(params, _scoring_threads(pipeline)), layout,
                model, group_files))

  def _recall(self, candidates, layout, shards, params):
    """Recall of the found top-k on a fixed sample of sources."""
    queries = beam.pvalue.AsSingleton(
        shards
        | 'SampleQueries' >> beam.FlatMap(_sample_queries, layout, params)
        | 'CollectQueries' >> beam.combiners.ToList()
        | 'Queries' >> beam.Map(_concat_queries))
    exact = beam.pvalue.AsSingleton(
        shards
        | 'ExactForSample' >> beam.FlatMap(_exact_for_sample, layout,
                                           queries, params)
        | 'MergeExact' >> beam.CombineGlobally(_TopK(params.max_neighbors)))
    return (candidates
            | 'SampleForRecall' >> beam.FlatMap(_sample_edges, layout, params)
            | 'CollectForRecall' >> beam.combiners.ToList()
            | 'Recall' >> beam.Map(_sampled_recall, exact, layout, params))

  def _read_split(self, pipeline, examples, model, split, params):
    pattern = io_utils.all_files_pattern(
        artifact_utils.get_split_uri([examples], split))
    if model is None:
      factory = tfxio_utils.get_tfxio_factory_from_artifact(
          [examples], ['tfx_nsl', 'GraphBuilder'],
          raw_record_column_name=_RAW_RECORD)
      return (pipeline
              | f'Read[{split}]' >> factory(pattern).BeamSource(
                  params.read_batch_size)
              | f'Extract[{split}]' >> beam.ParDo(
                  _ExtractFeatures(split, params)))
    from tfx_bsl.public.beam import run_inference  # pylint: disable=g-import-not-at-top
    from tfx_bsl.public.proto import model_spec_pb2  # pylint: disable=g-import-not-at-top
    spec = model_spec_pb2.InferenceSpecType(
        saved_model_spec=model_spec_pb2.SavedModelSpec(
            model_path=path_utils.serving_model_path(model.uri),
            signature_name=[params.embedding_signature]))
    return (pipeline
            | f'ReadRaw[{split}]' >> beam.io.ReadFromTFRecord(pattern)
            | f'Key[{split}]' >> beam.ParDo(_KeyById(split, params))
            | f'Embed[{split}]' >> run_inference.RunInference(spec)
            | f'Extract[{split}]' >> beam.Map(_embedding_row, params)
            | f'Batch[{split}]' >> beam.BatchElements(
                min_batch_size=params.read_batch_size,
                max_batch_size=params.read_batch_size)
            | f'ToBatch[{split}]' >> beam.Map(_rows_to_batch))

  def _finish_stats(self, result, output_dir, params):
    partial = os.path.join(output_dir, _PARTIAL_STATS)
    if not tf.io.gfile.exists(partial):  # No corpus: no batch was read.
      raise ValueError(_NO_EXAMPLES.format(splits=params.splits))
    with tf.io.gfile.GFile(partial) as f:
      stats = json.load(f)
    tf.io.gfile.remove(partial)
    counters = beam_executor.read_counters(result, NAMESPACE)
    stats['counters'] = counters
    stats['examples_per_split'] = {
        split: counters.get(f'examples_read_{split}', 0)
        for split in params.splits}
    stats['empty_splits'] = sorted(
        s for s, n in stats['examples_per_split'].items() if n == 0)
    for split in stats['empty_splits']:
      logging.warning('GraphBuilder: split %r has no examples', split)
    stats['config'] = params.to_dict()
    graph_io.write_stats(output_dir, stats)
    return stats
