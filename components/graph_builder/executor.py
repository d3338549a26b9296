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
  score     (scoring.py) exact: a block of one shard's rows against one shard;
            lsh: the rows of one (round, bucket) grouped, one matrix product
            per bucket piece; partition: k-means centroids, each Lloyd
            step summed over the stored sample by the workers, probes
            chosen on a calibration sample (unless given), nodes shuffled
            to groups of neighbouring partitions, each group scored
            against the groups its nodes probe
  merge     edges keyed by (source shard, block of sources): exact and
            lsh meet a source in several units of work, so a top-k
            combiner merges them (after a dedupe keeping the largest
            weight: LSH only, the other modes never meet a pair twice);
            partition scores each source once, its top-k is final (a
            combiner would hold a bundle's share of the graph: Beam lifts
            it into the producing worker); without a top-k, no merge until
            the shard's edges meet; then reverse edges if undirected
            (not needed for exact graphs without a top-k, symmetric by
            construction), grouped per shard and written as sorted TSV
  stats     counts and the degree histogram merged by a combiner, each
            shard's spanning forest stored as a file and streamed through a
            union-find at the end (isolated nodes, components), after
            contraction rounds on the workers where every node's label
            would not fit the memory budget (connectivity.py); recall on
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
from tfx.components.util import tfxio_utils
from tfx.types import artifact_utils
from tfx.utils import io_utils
from tfx.utils import path_utils

from tfx_nsl import beam_executor
from tfx_nsl import graph_io
from tfx_nsl.components.graph_builder import connectivity
from tfx_nsl.components.graph_builder import corpus
from tfx_nsl.components.graph_builder import graph_core
from tfx_nsl.components.graph_builder import scoring
from tfx_nsl.components.graph_builder.params import EXACT
from tfx_nsl.components.graph_builder.params import GraphBuilderParams
from tfx_nsl.components.graph_builder.params import LSH
from tfx_nsl.components.graph_builder.params import NAMESPACE
from tfx_nsl.components.graph_builder.params import PARTITION

_RAW_RECORD = '__raw_record__'
_PARTIAL_STATS = '.stats-partial.json'
_CORPUS_DIR = '.corpus'  # Removed when the pipeline is done.
_CONTRACTION = 'contraction_plan'  # in the partial stats, for _contract
_EXAMPLES_NAMED_IN_LOGS = 5
_NO_EXAMPLES = ('GraphBuilder found no examples in splits {splits}; nothing to '
                'build a graph from')
# Embedding bytes a read bundle holds before it stores them.
_STORE_BYTES = 64 << 20
_REJECTED = 'rejected'
def _column(record_batch, name):
  index = record_batch.schema.get_field_index(name)
  return None if index < 0 else record_batch.column(index)


def _warn_unusable_id(serialized, id_feature, values):
  logging.warning(
      'GraphBuilder left out example %s (named by its digest): its id '
      'feature %r holds %s, not one int64 or one non-empty UTF-8 value '
      'without tabs, line breaks or NUL',
      graph_io.derive_example_id(serialized), id_feature, values)


def _plain_text_ids(column):
  """The ids as str where every example has one UTF-8 bytes value that
  graph_io.node_id takes as it is (the common case, checked by arrow
  kernels: a Python loop over the rows took 2 s a million); else None."""
  # A feature without a value kind in a batch decodes as pa.null().
  if column is None or not (pa.types.is_list(column.type) or
                            pa.types.is_large_list(column.type)):
    return None
  if not (pa.types.is_binary(column.type.value_type) or
          pa.types.is_large_binary(column.type.value_type)):
    return None
  if pc.any(pc.not_equal(pc.list_value_length(column).fill_null(0),
                         1)).as_py():
    return None
  values = column.flatten()
  text = pa.large_string() if pa.types.is_large_binary(values.type) else (
      pa.string())
  try:
    values = values.cast(text)  # validates UTF-8
  except pa.ArrowInvalid:
    return None
  if (pc.any(pc.equal(pc.binary_length(values), 0)).as_py() or
      pc.any(pc.match_substring_regex(values, '[\t\n\r\x00]')).as_py()):
    return None
  return values.to_numpy(zero_copy_only=False).astype(object)


def _ids_from(record_batch, id_feature):
  """Example ids as str (graph_io.node_id; None: unusable) and how many were
  derived from the example's bytes."""
  column = _column(record_batch, id_feature)
  plain = _plain_text_ids(column)
  if plain is not None:
    return plain, 0
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
    self._read = scoring.counter(f'examples_read_{split}')
    self._derived = scoring.counter('ids_derived_from_content')

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
    self._read = scoring.counter(f'examples_read_{split}')
    self._derived = scoring.counter('ids_derived_from_content')
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


class _StoreBatches(beam.DoFn):
  """EmbeddingBatches -> Staged batch files, a few per bundle."""

  def __init__(self, directory):
    self._directory = directory
    self._batches = []
    self._bytes = 0

  def start_bundle(self):
    self._batches, self._bytes = [], 0

  def process(self, batch):
    if len(batch.ids):
      self._batches.append(batch)
      self._bytes += sum(flat.nbytes for flat in batch.flats)
    if self._bytes >= _STORE_BYTES:
      yield self._store()

  def finish_bundle(self):
    if self._batches:
      yield GlobalWindows.windowed_value(self._store())

  def _store(self):
    batch = corpus.concat_batches(self._batches)
    self._batches, self._bytes = [], 0
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
                       params.memory_budget_bytes)
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

  def __init__(self, params, directory):
    self._params = params
    self._directory = directory
    self._logged = collections.Counter()

  def process(self, staged, plan):
    batch = corpus.load_batch(staged.path)
    ids, vectors, rejected = corpus.validate(batch, plan.dims,
                                             self._params.similarity)
    for name, left_out in rejected.items():
      scoring.counter(name).inc(len(left_out))
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
    yield from corpus.route(ids, vectors, plan.boundaries, self._directory)


def _store_shard(keyed, directory, params):
  shard, shard_runs = keyed
  ids, vectors = corpus.sort_shard(shard_runs, graph_io.DERIVED_ID_PREFIX,
                                   params.id_feature, params.splits)
  scoring.counter('nodes').inc(len(ids))
  return corpus.ShardFile(shard, corpus.store_arrays(
      directory, f'shard{shard}', ids=ids, vectors=vectors), len(ids),
                          ids.itemsize)


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


def _to_shard(keyed, layout, directory):
  """Edges keyed by their source shard, as stored Runs."""
  return scoring.store_by_shard(keyed[1], layout, directory)


def _reverse_by_shard(keyed, layout, directory, params):
  """Edges and their reverses keyed by their source shard, as stored Runs."""
  (shard, _), edges = keyed
  _, names, _ = layout.nodes(shard, scoring.cache_bytes(params))
  return scoring.store_by_shard(scoring.with_reverses(
      edges, names[edges.src - layout.offsets[shard]]), layout, directory)


# What written shards report for the statistics: edge count, out-degree
# histogram, and the files holding each shard's spanning forest.
_Written = collections.namedtuple('_Written', ['shards', 'part',
                                               'forest_files'])


class _WriteShard(beam.DoFn):
  """Gathers one shard's edges from their stored Runs (deduped, if asked)
  and writes them as NSL TSV lines sorted by (source, weight desc,
  target). One step: a shard's edges handed from a gather step to the
  writer cross the runner as one element (14 MB at 50,000 nodes and k =
  10), and at 10M nodes a Flink TaskManager's heap failed on them."""

  def __init__(self, output_dir, forest_dir, params, dedupe):
    self._output_dir = output_dir
    self._forest_dir = forest_dir
    self._params = params
    self._dedupe = dedupe

  def process(self, keyed, layout):
    shard, edge_runs = keyed
    edges = graph_core.merge_edges(
        [graph_core.Edges(**corpus.load_runs(edge_runs))], None, self._dedupe)
    _, names, _ = layout.nodes(shard, scoring.cache_bytes(self._params))
    path = os.path.join(self._output_dir,
                        graph_io.edge_shard_name(shard, layout.num_shards))
    targets = edges.tgt_id if edges.tgt_id is not None else names[:0]
    with tf.io.gfile.GFile(path, 'wb') as f:
      f.write(graph_io.edge_lines(names[edges.src - layout.offsets[shard]],
                                  targets, edges.weight))
    scoring.counter('edges_written').inc(len(edges.src))
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
    # The parts carry no forest (None): merging them only adds the counts.
    return _Written(set().union(*(a.shards for a in accumulators)),
                    graph_core.merge_stats_parts(a.part for a in accumulators),
                    sorted(f for a in accumulators for f in a.forest_files))

  def extract_output(self, accumulator):
    return accumulator


def _forests(paths):
  """The shards' spanning forests, loaded one at a time."""
  for path in paths:
    stored = corpus.load_arrays(path)
    yield stored['roots'], stored['members']


def _finish(written, layout, sampled_recall, probes, output_dir, params):
  """After all shards are written: empty files for shards without edges (so
  readers see every shard) and the graph statistics. Their components come
  from the forests in this process where every node's label fits the
  budget; else the plan for Executor._contract goes with them."""
  if layout is None:  # No examples; _finish_stats reports it.
    return
  for shard in set(range(layout.num_shards)) - written.shards:
    with tf.io.gfile.GFile(os.path.join(
        output_dir, graph_io.edge_shard_name(shard, layout.num_shards)), 'w'):
      pass
  # The components take one process COMPONENT_BYTES_PER_NODE a node, in
  # place of the node files it may still hold.
  corpus.CACHE.clear()
  fits = (layout.num_nodes * graph_core.COMPONENT_BYTES_PER_NODE <=
          params.memory_budget_bytes)
  stats = graph_core.final_stats(
      layout.num_nodes, written.part,
      _forests(written.forest_files) if fits else None)
  if not fits:
    stats[_CONTRACTION] = {
        'buckets': connectivity.num_buckets(
            layout.num_nodes, written.part.num_edges,
            params.memory_budget_bytes),
        'forest_files': written.forest_files}
  if sampled_recall is not None:
    stats['estimated_recall_at_k'] = sampled_recall
  if probes is not None:
    stats['partition_probes'] = probes.probes
    if probes.calibrated_recall is not None:
      stats['calibration_recall_at_k'] = probes.calibrated_recall
  with tf.io.gfile.GFile(os.path.join(output_dir, _PARTIAL_STATS), 'w') as f:
    json.dump(stats, f)


def _summarize(partial, finished, residue, stats, buckets, params):
  """The contraction's components into the partial statistics."""
  components, left = connectivity.summarize(finished, residue,
                                            params.memory_budget_bytes)
  logging.info('GraphBuilder: components of %d nodes by %d contraction '
               'rounds over %d buckets; %d nodes left for the union-find',
               stats['num_nodes'], connectivity.CONTRACTION_ROUNDS, buckets,
               left)
  if components is None:
    logging.warning(
        'GraphBuilder: %d nodes are left after %d contraction rounds, and '
        'their union-find needs more than memory_budget_mb=%d; the '
        'statistics leave out isolated nodes and components', left,
        connectivity.CONTRACTION_ROUNDS, params.memory_budget_mb)
  else:
    stats.update(components)
  with tf.io.gfile.GFile(partial, 'w') as f:
    json.dump(stats, f)


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
        shards = layout_pc | 'Shards' >> beam.FlatMap(scoring.shards_of)
        if spread:
          # Spreads the units of work over the workers (else they would stay
          # fused with the one step that made them); a single local worker
          # has nothing to spread them to.
          shards = shards | 'DistributeShards' >> beam.Reshuffle()
        # Without a top-k, exact edges come out symmetric.
        symmetric = params.mode.NAME == EXACT and params.max_neighbors is None
        reverse = params.undirected and not symmetric
        dedupe = params.mode.NAME == LSH
        queries, exact = (None, None) if params.mode.NAME == EXACT else (
            self._exact_for_sample(layout, shards, params))
        probes = None
        if params.mode.NAME == PARTITION:
          # MergeFound merges a source's candidates in its own group, so
          # its top-k is final, and stores them by shard itself.
          stored, sample, probes = self._partition(
              pipeline, layout, shards, params, corpus_dir, spread, reverse,
              queries, exact)
        else:
          # Exact units meet a source once per shard, LSH rounds meet it
          # (and a pair) several times: their candidates go through a top-k
          # combiner. Without a top-k, the edges are merged (and deduped)
          # once, per shard, before they are written.
          candidates = self._score(layout_pc, layout, shards, params,
                                   corpus_dir, spread)
          if params.max_neighbors is not None:
            candidates = candidates | 'TopK' >> beam.CombinePerKey(
                scoring.TopK(params.max_neighbors, dedupe))
          sample = None
          if params.mode.NAME != EXACT:
            sample = candidates | 'SampleForRecall' >> beam.FlatMap(
                scoring.sample_edges, layout, params)
          stored = candidates | (
              'AddReverse' if reverse else 'ToShards') >> beam.FlatMap(
                  _reverse_by_shard if reverse else _to_shard, layout,
                  corpus_dir, *([params] if reverse else []))
        recall = None
        if sample is not None:
          recall = beam.pvalue.AsSingleton(
              sample
              | 'CollectForRecall' >> beam.combiners.ToList()
              | 'Recall' >> beam.Map(scoring.sampled_recall, exact, layout,
                                     params))
        _ = (stored
             | 'GroupShards' >> beam.GroupByKey()
             | 'Write' >> beam.ParDo(
                 _WriteShard(output_dir, corpus_dir, params, dedupe=reverse or (
                     dedupe and params.max_neighbors is None)), layout)
             # With defaults: a graph without edges still gets its files.
             | 'MergeWritten' >> beam.CombineGlobally(_MergeWritten())
             | 'Finish' >> beam.Map(_finish, layout, recall, probes,
                                    output_dir, params))
      self._contract(output_dir, params, corpus_dir)
    finally:
      corpus.CACHE.clear()  # This process may have been a worker.
      tf.io.gfile.rmtree(corpus_dir)
    stats = self._finish_stats(pipeline.result, output_dir, params)
    graph.set_int_custom_property('num_nodes', stats['num_nodes'])
    graph.set_int_custom_property('num_edges', stats['num_edges'])
    logging.info('GraphBuilder wrote %d nodes, %d edges to %s',
                 stats['num_nodes'], stats['num_edges'], output_dir)

  def _contract(self, output_dir, params, corpus_dir):
    """Where _finish left a plan (every node's label past the budget): the
    components by connectivity.py's contraction rounds, as a second job on
    the same runner (none otherwise, so graphs within the budget pay no
    extra steps), then the union-find of what they leave, within the
    budget, or none."""
    partial = os.path.join(output_dir, _PARTIAL_STATS)
    if not tf.io.gfile.exists(partial):
      return
    with tf.io.gfile.GFile(partial) as f:
      stats = json.load(f)
    plan = stats.pop(_CONTRACTION, None)
    if plan is None:
      return
    buckets, num_nodes = plan['buckets'], stats['num_nodes']
    step = connectivity.ContractBucket
    with self._make_beam_pipeline() as pipeline:
      spread = not _single_local_worker(pipeline)
      forests = pipeline | 'Forests' >> beam.Create(plan['forest_files'])
      ranges = pipeline | 'NodeRanges' >> beam.Create(
          connectivity.node_ranges(num_nodes))
      if spread:
        forests = forests | 'DistributeForests' >> beam.Reshuffle()
        ranges = ranges | 'DistributeRanges' >> beam.Reshuffle()
      pairs = forests | 'ForestPairs' >> beam.FlatMap(
          connectivity.forest_to_buckets, buckets, corpus_dir)
      weights = ranges | 'NodeWeights' >> beam.FlatMap(
          connectivity.range_weights_to_buckets, buckets, corpus_dir)
      finished = []
      for r in range(connectivity.CONTRACTION_ROUNDS):
        out = ({'pairs': pairs, 'weights': weights}
               | f'JoinRound{r}' >> beam.CoGroupByKey()
               | f'Contract{r}' >> beam.ParDo(
                   step(r, corpus_dir), buckets).with_outputs(
                       step.LABELS, step.WEIGHTS, step.REQUESTS,
                       step.FINISHED))
        pairs = ({'requests': out[step.REQUESTS], 'labels': out[step.LABELS]}
                 | f'JoinLabels{r}' >> beam.CoGroupByKey()
                 | f'Relabel{r}' >> beam.FlatMap(
                     connectivity.relabel_to_buckets, buckets, corpus_dir))
        weights = out[step.WEIGHTS]
        finished.append(out[step.FINISHED])
      residue = ({'pairs': pairs, 'weights': weights}
                 | 'JoinResidue' >> beam.CoGroupByKey()
                 | 'Residue' >> beam.FlatMap(connectivity.residue_bucket,
                                             corpus_dir))
      if not finished:
        finished = [pipeline | 'NoRounds' >> beam.Create([])]
      _ = (pipeline
           | 'Once' >> beam.Create([partial])
           | 'Summarize' >> beam.Map(
               _summarize, beam.pvalue.AsList(
                   finished | 'Finished' >> beam.Flatten()),
               beam.pvalue.AsList(residue), stats, buckets, params))

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
        _Validate(params, corpus_dir), plan).with_outputs(_REJECTED, main='rows')
    rejected = beam.pvalue.AsDict(
        validated[_REJECTED] | 'CountRejected' >> beam.CombinePerKey(sum))
    return (validated.rows
            | 'GroupNodes' >> beam.GroupByKey()
            | 'StoreShards' >> beam.Map(_store_shard, corpus_dir, params)
            | 'CollectShards' >> beam.combiners.ToList()
            | 'Layout' >> beam.FlatMap(_layout, plan, rejected, params))

  def _score(self, layout_pc, layout, shards, params, corpus_dir, spread):
    """(key, Edges) candidates of exact or LSH mode, by source shard."""
    if params.mode.NAME == EXACT:
      units = layout_pc | 'ExactUnits' >> beam.FlatMap(scoring.exact_units, params)
      if spread:
        units = units | 'DistributeUnits' >> beam.Reshuffle()
      return units | 'Score' >> beam.ParDo(scoring.ScoreExact(params), layout)
    return (shards
            | 'LshCodes' >> beam.ParDo(scoring.LshCodes(params, corpus_dir),
                                       layout)
            | 'GroupBuckets' >> beam.GroupByKey()
            | 'Score' >> beam.FlatMap(scoring.score_bucket, layout, params))

  def _partition(self, pipeline, layout, shards, params, corpus_dir, spread,
                 reverse, queries, exact):
    """Partition mode: ((source shard, stored Run) of the final edges, the
    recall sample's edges, the probes as a side input)."""
    model_pc = self._kmeans(layout, shards, params, corpus_dir)
    model = beam.pvalue.AsSingleton(model_pc)
    if scoring.calibrates(params):
      probes = (shards
                | 'NeighborHomes' >> beam.FlatMap(
                    scoring.neighbor_homes, layout, exact, model, params)
                | 'CollectHomes' >> beam.combiners.ToList()
                | 'Calibrate' >> beam.Map(scoring.calibrate, queries, exact,
                                          model, layout, params))
    else:
      probes = model_pc | 'Probes' >> beam.Map(scoring.fixed_probes, params)
    probes = beam.pvalue.AsSingleton(probes)
    groups = (shards
              | 'Assign' >> beam.ParDo(scoring.Assign(params, corpus_dir),
                                       layout, model, probes)
              | 'GroupPartitions' >> beam.GroupByKey()
              | 'StoreGroups' >> beam.Map(scoring.store_group, corpus_dir))
    group_files = beam.pvalue.AsDict(groups)
    if spread:
      groups = groups | 'DistributeGroups' >> beam.Reshuffle()
    threads = _scoring_threads(pipeline)
    home = groups | 'ScoreHome' >> beam.ParDo(
        scoring.ScoreHome(params, corpus_dir, threads), layout,
        model).with_outputs(scoring.ScoreHome.VISITS, main='edges')
    found = (home[scoring.ScoreHome.VISITS]
             | 'GroupVisits' >> beam.GroupByKey()
             | 'ScoreVisits' >> beam.ParDo(
                 scoring.ScoreVisits(params, corpus_dir, threads), layout,
                 model, group_files))
    merged = ((home.edges, found)
              | 'FlattenFound' >> beam.Flatten()
              | 'GroupFound' >> beam.GroupByKey()
              | 'MergeFound' >> beam.ParDo(
                  scoring.MergeFound(params, corpus_dir, reverse), layout,
                  group_files).with_outputs(scoring.MergeFound.SAMPLE,
                                            main='stored'))
    return merged.stored, merged[scoring.MergeFound.SAMPLE], probes

  def _kmeans(self, layout, shards, params, corpus_dir):
    """Partition mode's model: spherical k-means on a sample stored by
    shard, each Lloyd step summed over the sample files by the workers, so
    no process holds the sample (only the centroids)."""
    samples = shards | 'KmeansSample' >> beam.Map(
        scoring.kmeans_sample, layout, corpus_dir, params)
    centroids = (samples
                 | 'CollectSamples' >> beam.combiners.ToList()
                 | 'KmeansStart' >> beam.Map(scoring.initial_centroids))
    steps = [phase for phase, (_, iterations) in enumerate(
        graph_core.KMEANS_SCHEDULE) for _ in range(iterations)]
    for step, phase in enumerate(steps):
      centroids = (samples
                   | f'Lloyd{step}' >> beam.ParDo(
                       scoring.LloydSums(corpus_dir, phase),
                       beam.pvalue.AsSingleton(centroids))
                   | f'CollectLloyd{step}' >> beam.combiners.ToList()
                   | f'Update{step}' >> beam.Map(
                       scoring.lloyd_update, beam.pvalue.AsSingleton(centroids)))
    return centroids | 'Kmeans' >> beam.Map(scoring.partition_model, params)

  def _exact_for_sample(self, layout, shards, params):
    """The sampled query nodes (indices, vectors) and their exact top-k, as
    side inputs: for the recall estimate and the probes' calibration."""
    queries = beam.pvalue.AsSingleton(
        shards
        | 'SampleQueries' >> beam.FlatMap(scoring.sample_queries, layout, params)
        | 'CollectQueries' >> beam.combiners.ToList()
        | 'Queries' >> beam.Map(scoring.concat_by_node))
    exact = beam.pvalue.AsSingleton(
        shards
        | 'ExactForSample' >> beam.FlatMap(scoring.exact_for_sample, layout,
                                           queries, params)
        | 'MergeExact' >> beam.CombineGlobally(scoring.TopK(params.max_neighbors)))
    return queries, exact

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
