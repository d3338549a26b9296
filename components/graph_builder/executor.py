"""GraphBuilder executor: embeddings -> similarity graph, as one Beam pipeline.

Stages (each element is a batch of arrays, never one Python object per pair):
  read     TFXIO RecordBatches (or RunInference outputs) -> EmbeddingBatch,
           stored per bundle as files beside the output
  corpus   all batch files -> one id-sorted, validated, normalized corpus,
           stored once as a file beside the output; only its path and size
           travel through the runner. The steps that run per bundle load it
           once per worker process. (As elements, the batches and the corpus
           would be held whole in the heap of one runner process, e.g. by
           Flink's grouping, and as a side input the corpus would be sent to
           the SDK workers again for every bundle on portable runners such as
           Flink, Spark and Dataflow, which cache no side inputs across
           bundles.)
  score    exact: fixed index ranges of query rows, one matrix product per
           chunk against the corpus; lsh: one matrix product per bucket;
           partition: the nodes of one k-means partition against the
           members of the partitions nearest to them
  merge    edges keyed by source shard: dedupe (max weight; LSH only, the
           other modes never meet a pair twice), top-k per source, reverse
           edges if undirected (not needed for exact graphs without a top-k,
           symmetric by construction), then sorted TSV shards; statistics
           merged from per-shard parts, the recall estimate from the edges
           of a fixed sample of sources.
"""
import collections
import functools
import io
import json
import os
import threading
import uuid
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

# ids: object array of str; lengths: [n, num_features] int (-1: missing);
# flats: per feature, the concatenated values of the rows that have it.
EmbeddingBatch = collections.namedtuple('EmbeddingBatch',
                                        ['ids', 'lengths', 'flats'])
Corpus = collections.namedtuple('Corpus', ['ids', 'vectors'])
# What the runner carries of a stored corpus.
CorpusInfo = collections.namedtuple('CorpusInfo', ['path', 'num_nodes'])
# Rows a read bundle holds before it stores them.
_STORE_ROWS = 1 << 18


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
    yield EmbeddingBatch(ids, np.stack(lengths, axis=1), flats)


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
  return EmbeddingBatch(ids, lengths, [flat.astype(np.float32)])


def _store_arrays(directory, prefix, **arrays) -> str:
  """Writes numpy `arrays` to a new .npz file in `directory`; its path."""
  path = os.path.join(directory, f'{prefix}-{uuid.uuid4().hex}.npz')
  buffer = io.BytesIO()
  np.savez(buffer, **arrays)  # Callers pass no object arrays: no pickle.
  with tf.io.gfile.GFile(path, 'wb') as f:
    f.write(buffer.getvalue())
  return path


def _load_arrays(path):
  with tf.io.gfile.GFile(path, 'rb') as f:
    return np.load(io.BytesIO(f.read()))


def store_batches(batches, directory) -> str:
  """Stores EmbeddingBatches (one feature layout) as one file; its path."""
  ids = np.concatenate([b.ids for b in batches])
  unusable = np.equal(ids, None)
  return _store_arrays(
      directory, 'batch', ids=np.where(unusable, '', ids).astype(str),
      unusable=unusable,
      lengths=np.concatenate([b.lengths for b in batches]),
      **{f'flat{f}': np.concatenate([b.flats[f] for b in batches])
         for f in range(len(batches[0].flats))})


def load_batch(path) -> EmbeddingBatch:
  stored = _load_arrays(path)
  ids = stored['ids'].astype(object)
  ids[stored['unusable']] = None
  lengths = stored['lengths']
  return EmbeddingBatch(ids, lengths, [stored[f'flat{f}']
                                       for f in range(lengths.shape[1])])


class _StoreBatches(beam.DoFn):
  """EmbeddingBatches -> paths of files that hold them, a few per bundle."""

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
    path = store_batches(self._batches, self._directory)
    self._batches, self._rows = [], 0
    return path


def _matrix(batch, dims, keep):
  """[kept rows, sum(dims)] from a batch's per-feature flat values."""
  columns = []
  for f, d in enumerate(dims):
    lengths = np.maximum(batch.lengths[:, f], 0)
    offsets = np.cumsum(lengths) - lengths
    columns.append(batch.flats[f][offsets[keep][:, None] + np.arange(d)])
  return np.concatenate(columns, axis=1)


class _BuildCorpus(beam.DoFn):
  """All batch files -> one validated Corpus sorted by id, stored in
  `directory`; yields its CorpusInfo."""

  def __init__(self, params, directory):
    self._params = params
    self._directory = directory

  def process(self, paths: List[str]):
    corpus = self.build([load_batch(p) for p in sorted(paths)])
    path = store_corpus(corpus, self._directory)
    _remember_corpus(path, corpus)
    yield CorpusInfo(path, len(corpus.ids))

  def build(self, batches: List[EmbeddingBatch]) -> Corpus:
    params = self._params
    batches = [b for b in batches if len(b.ids)]
    if not batches:
      raise ValueError(_NO_EXAMPLES.format(splits=params.splits))
    lengths = np.concatenate([b.lengths for b in batches])
    ids = np.concatenate([b.ids for b in batches])
    unusable_id = np.equal(ids, None)  # Named in the log when read.
    _counter('unusable_id').inc(int(unusable_id.sum()))
    present = lengths >= 0
    missing = ~present.all(axis=1) | unusable_id
    # With an embedding model, its output is the one "feature".
    features = params.embedding_features or [
        f'model output {params.embedding_output or params.embedding_signature}']
    dims = []
    for f, feature in enumerate(features):
      values, counts = np.unique(lengths[present[:, f], f], return_counts=True)
      if not len(values):
        raise ValueError(f'embedding feature {feature!r} is in none of the '
                         f'examples of splits {params.splits}')
      # The most common length is the dimension; ties go to the larger one.
      dims.append(int(values[np.lexsort((values, counts))[-1]]))
    wrong_dim = ~missing & (lengths != np.array(dims)).any(axis=1)
    self._report('missing_embedding', ids[missing & ~unusable_id],
                 f'lack one of the embedding features {features}')
    self._report('wrong_dimension', ids[wrong_dim],
                 f'have embedding lengths other than {dims}')
    keep = ~missing & ~wrong_dim
    keep_per_batch = np.split(keep, np.cumsum([len(b.ids) for b in batches])[:-1])
    vectors = np.concatenate([_matrix(b, dims, k)
                              for b, k in zip(batches, keep_per_batch)])
    ids = ids[keep]
    vectors, usable = graph_core.prepare_vectors(vectors, params.similarity)
    nonfinite = ~np.isfinite(vectors).all(axis=1)
    self._report('non_finite_embedding', ids[nonfinite],
                 'have NaN or infinite embedding values')
    if params.similarity == graph_core.COSINE:
      self._report('zero_embedding', ids[~usable & ~nonfinite],
                   'have an all-zero embedding (no direction for cosine)')
    else:
      self._report('embedding_too_large', ids[~usable & ~nonfinite],
                   f'have an embedding norm above '
                   f'{graph_core.MAX_DOT_NORM:.3g}, whose dot products '
                   'overflow float32 (scale the embeddings down)')
    ids, vectors = ids[usable], vectors[usable]
    if not len(ids):
      raise ValueError(
          f'GraphBuilder: none of the {len(keep)} examples of splits '
          f'{params.splits} is usable: {int(unusable_id.sum())} have an '
          f'unusable id feature {params.id_feature!r}, '
          f'{int((missing & ~unusable_id).sum())} lack an embedding feature, '
          f'{int(wrong_dim.sum())} have the wrong dimension and '
          f'{int((~usable).sum())} are not finite, all zero or too large (see the log '
          'for examples of each)')
    order = np.argsort(ids, kind='stable')
    ids, vectors = ids[order], vectors[order]
    duplicated = ids[1:][ids[1:] == ids[:-1]]
    if len(duplicated) and all(d.startswith(graph_io.DERIVED_ID_PREFIX)
                               for d in duplicated):
      raise ValueError(
          f'{len(duplicated)} examples in splits {params.splits} have neither '
          f'an id feature {params.id_feature!r} nor different bytes from '
          f'another example (identical records), e.g. '
          f'{sorted(set(duplicated.tolist()))[:_EXAMPLES_NAMED_IN_LOGS]}; '
          'graph nodes must be unique: give the examples ids or drop the '
          'copies')
    if len(duplicated):
      raise ValueError(
          f'{len(duplicated)} duplicate example ids in splits {params.splits}, '
          f'e.g. {sorted(set(duplicated.tolist()))[:_EXAMPLES_NAMED_IN_LOGS]}; '
          f'graph nodes must be unique: fix the {params.id_feature!r} feature')
    _counter('nodes').inc(len(ids))
    logging.info('GraphBuilder corpus: %d nodes, %d dimensions', len(ids),
                 vectors.shape[1])
    return Corpus(ids, np.ascontiguousarray(vectors))

  def _report(self, name, ids, what):
    _counter(name).inc(len(ids))
    if len(ids):
      logging.warning('GraphBuilder left out %d examples that %s, e.g. %s',
                      len(ids), what, ids[:_EXAMPLES_NAMED_IN_LOGS].tolist())


def _num_shards(params, num_nodes):
  return params.num_shards or max(1, min(256, num_nodes // 50_000))


def _by_shard(edges, num_nodes, num_shards):
  shard = edges.src * num_shards // max(1, num_nodes)
  for s in np.unique(shard):
    mask = shard == s
    yield int(s), graph_core.Edges(*(a[mask] for a in edges))


class _ScoreRange(beam.DoFn):
  """Exact: a fixed range of query rows against the whole corpus."""

  def __init__(self, params):
    self._params = params

  def process(self, index_range, info):
    corpus = load_corpus(info.path)
    start, end = index_range
    num = len(corpus.ids)
    if self._params.max_neighbors is None:
      edges = graph_core.pair_edges(start, end, corpus.vectors,
                                    self._params.similarity_threshold)
      pairs = (end - start) * (num - 1) - (start + end - 1) * (end - start) // 2
    else:
      edges = graph_core.exact_edges(
          np.arange(start, end), corpus.vectors, self._params.max_neighbors,
          self._params.similarity_threshold)
      pairs = (end - start) * num
    _counter('scored_pairs').inc(pairs)
    yield from _by_shard(edges, len(corpus.ids),
                         _num_shards(self._params, len(corpus.ids)))


class _ScoreBucket(beam.DoFn):
  """LSH: all pairs of one bucket as one matrix product."""

  def __init__(self, params):
    self._params = params

  def process(self, members, info):
    corpus = load_corpus(info.path)
    edges = graph_core.bucket_edges(members, corpus.vectors,
                                    self._params.max_neighbors,
                                    self._params.similarity_threshold)
    _counter('scored_pairs').inc(len(members) ** 2)
    yield from _by_shard(edges, len(corpus.ids),
                         _num_shards(self._params, len(corpus.ids)))


class _ScoreBlock(beam.DoFn):
  """Partition: the nodes of one partition, each against the members of
  its `probes` nearest partitions, as matrix products."""

  def __init__(self, params, threads):
    self._params = params
    self._threads = threads

  def process(self, block, info, parts):
    corpus = load_corpus(info.path)
    queries, query_probes = block
    # Many small products: one BLAS thread each is several times faster
    # than BLAS threads contending for the cores (OpenBLAS: the limit is
    # process-wide), so threads score several partitions at once instead.
    with threadpoolctl.threadpool_limits(1, user_api='blas'):
      edges, pairs = graph_core.block_edges(
          queries, query_probes, parts, corpus.vectors,
          self._params.max_neighbors, self._params.similarity_threshold,
          threads=self._threads)
    _counter('scored_pairs').inc(pairs)
    yield from _by_shard(edges, len(corpus.ids),
                         _num_shards(self._params, len(corpus.ids)))


def store_corpus(corpus, directory) -> str:
  """Writes `corpus` to a new file in `directory`; returns its path."""
  return _store_arrays(directory, 'corpus', ids=corpus.ids.astype(str),
                       vectors=corpus.vectors)


# The corpus this process loaded last: every bundle of a job on this worker
# uses the same one, and the next job's replaces it.
_loaded_corpus = {}
_loaded_corpus_lock = threading.RLock()


def load_corpus(path) -> Corpus:
  """The corpus stored at `path`, read once per process."""
  with _loaded_corpus_lock:
    corpus = _loaded_corpus.get(path)
    if corpus is None:
      stored = _load_arrays(path)
      corpus = _remember_corpus(path, Corpus(stored['ids'].astype(object),
                                             stored['vectors']))
    return corpus


def _remember_corpus(path, corpus):
  with _loaded_corpus_lock:
    _loaded_corpus.clear()
    _loaded_corpus[path] = corpus
  return corpus


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


def _partitioning(info, params):
  corpus = load_corpus(info.path)
  num_partitions = max(1, info.num_nodes // params.mode.size)
  centroids = graph_core.partition_centroids(corpus.vectors, num_partitions,
                                             params.mode.seed)
  probes = graph_core.nearest_partitions(corpus.vectors, centroids,
                                         params.mode.probes)
  _counter('partitions').inc(len(centroids))
  return graph_core.partitioning(probes, centroids, params.mode.seed)


def _query_ranges(info, params):
  for start in range(0, info.num_nodes, params.mode.block_size):
    yield start, min(info.num_nodes, start + params.mode.block_size)


def _lsh_buckets(info, params):
  vectors = load_corpus(info.path).vectors
  for round_index in range(params.mode.rounds):
    buckets = graph_core.lsh_buckets(
        vectors, params.mode.splits, params.mode.seed + round_index,
        params.mode.max_bucket_size)
    _counter('lsh_buckets').inc(len(buckets))
    yield from buckets


def _merge_shard(keyed, max_neighbors, dedupe):
  shard, parts = keyed
  edges = graph_core.concat_edges(list(parts))
  if dedupe:
    edges = graph_core.dedupe_max(edges)
  return shard, graph_core.top_k_per_source(edges, max_neighbors)


def _reverse_by_shard(keyed, info, params):
  _, edges = keyed
  reverse = graph_core.Edges(edges.tgt, edges.src, edges.weight)
  for part in (edges, reverse):
    yield from _by_shard(part, info.num_nodes,
                         _num_shards(params, info.num_nodes))


def _dedupe_shard(keyed):
  shard, parts = keyed
  return shard, graph_core.top_k_per_source(
      graph_core.dedupe_max(graph_core.concat_edges(list(parts))), None)


# What a written shard reports for the statistics: its StatsPart, and the
# file with its (source, target) pairs for the connected components.
_Written = collections.namedtuple('_Written', ['shards', 'part', 'pair_files'])


class _WriteShard(beam.DoFn):
  """Writes one shard's edges as sorted NSL TSV lines."""

  def __init__(self, output_dir, pairs_dir, params):
    self._output_dir = output_dir
    self._pairs_dir = pairs_dir
    self._params = params

  def process(self, keyed, info):
    ids = load_corpus(info.path).ids
    shard, edges = keyed
    num_shards = _num_shards(self._params, info.num_nodes)
    path = os.path.join(self._output_dir,
                        graph_io.edge_shard_name(shard, num_shards))
    with tf.io.gfile.GFile(path, 'w') as f:
      f.write(''.join(map(graph_io.EDGE_LINE.__mod__, zip(
          ids[edges.src], ids[edges.tgt], edges.weight.tolist()))))
    _counter('edges_written').inc(len(edges.src))
    pairs = _store_arrays(self._pairs_dir, f'pairs{shard}',
                          src=edges.src.astype(np.int32),
                          tgt=edges.tgt.astype(np.int32))
    yield _Written({shard}, graph_core.stats_part(info.num_nodes, edges),
                   [pairs])


class _MergeWritten(beam.CombineFn):
  """_Written of every shard -> one; small enough for any runner (the parts
  hold counts and a bit per node, the pairs stay in their files)."""

  def create_accumulator(self):
    return _Written(set(), graph_core.StatsPart(0, {}, None), [])

  def add_input(self, accumulator, written):
    return self.merge_accumulators([accumulator, written])

  def merge_accumulators(self, accumulators):
    accumulators = list(accumulators)
    return _Written(
        set().union(*(a.shards for a in accumulators)),
        graph_core.merge_stats_parts(a.part for a in accumulators),
        sorted(f for a in accumulators for f in a.pair_files))

  def extract_output(self, accumulator):
    return accumulator


def _finish(written, info, sampled_recall, output_dir, params):
  """After all shards are written: empty files for shards without edges (so
  readers see every shard) and the graph statistics."""
  if info is None:  # No examples; _finish_stats reports it.
    return
  num_shards = _num_shards(params, info.num_nodes)
  for shard in set(range(num_shards)) - written.shards:
    with tf.io.gfile.GFile(os.path.join(
        output_dir, graph_io.edge_shard_name(shard, num_shards)), 'w'):
      pass
  components = None
  if written.part.num_edges <= graph_core.MAX_COMPONENTS_EDGES:
    pairs = [_load_arrays(path) for path in written.pair_files]
    components = graph_core.connected_components(
        info.num_nodes,
        np.concatenate([p['src'] for p in pairs] + [np.zeros(0, np.int32)]),
        np.concatenate([p['tgt'] for p in pairs] + [np.zeros(0, np.int32)]))
  stats = graph_core.final_stats(info.num_nodes, written.part, components)
  if sampled_recall is not None:
    stats['estimated_recall_at_k'] = sampled_recall
  with tf.io.gfile.GFile(os.path.join(output_dir, _PARTIAL_STATS), 'w') as f:
    json.dump(stats, f)


def _recall_sample(num_nodes, params):
  """The fixed node sample of the recall estimate, sorted."""
  return _sample_of(num_nodes, params.mode.seed,
                    min(params.mode.recall_sample_size, num_nodes))


@functools.lru_cache(maxsize=4)
def _sample_of(num_nodes, seed, size):
  # Drawn once per process, not once per shard: choice() without
  # replacement permutes all num_nodes indices. Read-only for callers.
  sample = np.sort(np.random.RandomState(seed).choice(num_nodes, size,
                                                      replace=False))
  sample.flags.writeable = False
  return sample


def _sample_edges(keyed, info, params):
  """One shard's edges from the recall sample's sources."""
  _, edges = keyed
  mask = np.isin(edges.src, _recall_sample(info.num_nodes, params))
  if mask.any():
    yield graph_core.Edges(*(a[mask] for a in edges))


def _sampled_recall(found_parts, info, params):
  """Recall of the approximate top-k against exact, on a fixed node sample."""
  if info is None:  # No examples; _finish_stats reports it.
    return None
  sample = _recall_sample(info.num_nodes, params)
  exact = graph_core.exact_edges(sample, load_corpus(info.path).vectors,
                                 params.max_neighbors,
                                 params.similarity_threshold)
  return graph_core.recall_at_k(graph_core.concat_edges(found_parts), exact,
                                sample)


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

    # The stored batches, corpus and pairs go, whether the job succeeds
    # or not.
    try:
      with self._make_beam_pipeline() as pipeline:
        batches = [self._read_split(pipeline, examples, model, split, params)
                   for split in params.splits]
        # Without defaults (one stage fewer): no input at all yields no
        # corpus, and _finish_stats says so.
        if len(batches) > 1:
          batches = batches | 'Flatten' >> beam.Flatten()
        else:
          batches, = batches
        corpus = (batches
                  | 'StoreBatches' >> beam.ParDo(_StoreBatches(corpus_dir))
                  | 'CollectBatches' >> (
                      beam.combiners.ToList().without_defaults())
                  | 'BuildCorpus' >> beam.ParDo(_BuildCorpus(params,
                                                             corpus_dir)))
        info = beam.pvalue.AsSingleton(corpus, default_value=None)
        extra_side = []
        if params.mode.NAME == EXACT:
          work = corpus | 'QueryRanges' >> beam.FlatMap(_query_ranges, params)
          scorer = _ScoreRange(params)
        elif params.mode.NAME == LSH:
          work = corpus | 'LshBuckets' >> beam.FlatMap(_lsh_buckets, params)
          scorer = _ScoreBucket(params)
        else:
          parts = corpus | 'Partition' >> beam.Map(_partitioning, params)
          work = parts | 'Blocks' >> beam.FlatMap(graph_core.partition_blocks)
          scorer = _ScoreBlock(params, _scoring_threads(pipeline))
          extra_side = [beam.pvalue.AsSingleton(parts)]
        if not _single_local_worker(pipeline):
          # Spreads the units of work over the workers (else they would stay
          # fused with the one step that made them); a single local worker has
          # nothing to spread them to.
          work = work | 'Distribute' >> beam.Reshuffle()
        candidates = (work
                      | 'Score' >> beam.ParDo(scorer, info, *extra_side)
                      | 'GroupCandidates' >> beam.GroupByKey()
                      # Only LSH rounds meet a pair twice; exact and
                      # partition modes score each (query, node) pair once.
                      | 'TopK' >> beam.Map(_merge_shard, params.max_neighbors,
                                           params.mode.NAME == LSH))
        recall = None
        if params.mode.NAME != EXACT:
          recall = beam.pvalue.AsSingleton(
              candidates
              | 'SampleForRecall' >> beam.FlatMap(_sample_edges, info, params)
              | 'CollectForRecall' >> beam.combiners.ToList()
              | 'Recall' >> beam.Map(_sampled_recall, info, params))
        final = candidates
        # Without a top-k, exact edges come out symmetric (pair_edges).
        symmetric = params.mode.NAME == EXACT and params.max_neighbors is None
        if params.undirected and not symmetric:
          final = (candidates
                   | 'AddReverse' >> beam.FlatMap(_reverse_by_shard, info,
                                                  params)
                   | 'GroupUndirected' >> beam.GroupByKey()
                   | 'Dedupe' >> beam.Map(_dedupe_shard))
        _ = (final
             | 'Write' >> beam.ParDo(
                 _WriteShard(output_dir, corpus_dir, params), info)
             # With defaults: a graph without edges still gets its files.
             | 'MergeWritten' >> beam.CombineGlobally(_MergeWritten())
             | 'Finish' >> beam.Map(_finish, info, recall, output_dir, params))
    finally:
      with _loaded_corpus_lock:  # This process may have been a worker.
        _loaded_corpus.clear()
      tf.io.gfile.rmtree(corpus_dir)
    stats = self._finish_stats(pipeline.result, output_dir, params)
    graph.set_int_custom_property('num_nodes', stats['num_nodes'])
    graph.set_int_custom_property('num_edges', stats['num_edges'])
    logging.info('GraphBuilder wrote %d nodes, %d edges to %s',
                 stats['num_nodes'], stats['num_edges'], output_dir)

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
