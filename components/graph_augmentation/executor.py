"""GraphAugmentation executor: the Beam wiring of join_core's two joins.

  examples --ReadExamples--> neighbor entries by target bucket, seeds by
                             source bucket (ids only for the other roles)
  edge files --ReadEdges--> (target, source, weight) by target bucket
  GroupByKey(target bucket) --JoinTargets--> (source, weight, target,
      entries) by source bucket
  GroupByKey(source bucket) --JoinSeeds--> augmented seeds, one output per
      seed split --> gzip TFRecord files (records.GzipTFRecordSink)

Two shuffles and nothing collected on the driver; the same steps on every
runner. The top-k holds at most `max_neighbors` candidates per node, so a
node with a huge out-degree costs no more memory than any other.

On the DirectRunner, each batch waits for the next step in a file of a local
temporary folder (removed after the run) and only its path is shuffled: the
in-process runner holds several copies of everything it shuffles. Measured
with benchmarks/bench_augment.py (runs in_memory and in_memory+nospill,
100,000 examples, medians of 3): peak RSS 859 MiB with the folder, 1,424 MiB
without, time within 5%; it writes about 200 MiB there. Other runners
shuffle the batches themselves; tests check that both give the same output.
"""
import collections
import json
import os
import shutil
import tempfile
from typing import Dict, Optional, Tuple

from absl import logging
import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import GlobalWindows
from tfx.dsl.io import fileio
from tfx.types import artifact_utils

from tfx_nsl import beam_executor
from tfx_nsl import graph_io
from tfx_nsl.components.graph_augmentation import augment_core
from tfx_nsl.components.graph_augmentation import config
from tfx_nsl.components.graph_augmentation import join_core
from tfx_nsl.components.graph_augmentation import records
from tfx_nsl.components.graph_augmentation.config import AugmentParams


def _report(counts):
  """Adds a bundle's or a bucket's counts to the Beam counters."""
  for name, value in counts.items():
    if value:
      Metrics.counter(config.METRICS_NAMESPACE, name).inc(value)
  counts.clear()


def _tagged(batches, windowed=False):
  for tag, value in batches:
    yield beam.pvalue.TaggedOutput(
        tag, GlobalWindows.windowed_value(value) if windowed else value)


class _ReadExamples(beam.DoFn):
  """Serialized examples of one split -> batches for both joins."""

  def __init__(self, split, route, spill_dir):
    self._split = split
    self._route = route
    self._spill_dir = spill_dir
    self._logged_no_id = self._logged_missing = 0

  def start_bundle(self):
    self._batcher = join_core.Batcher(self._spill_dir)
    self._counts = collections.Counter()

  def process(self, serialized):
    (node, missing), full = join_core.route_example(
        serialized, self._route, self._counts, self._batcher)
    if node is None and self._logged_no_id < config.MAX_LOGGED:
      self._logged_no_id += 1
      example = augment_core.parse_example(serialized)
      logging.warning(
          'GraphAugmentation: example %s of split %r (named by its digest) '
          'has an unusable id feature %r: %s (one bytes or int64 value '
          'without tabs, line breaks or NUL expected); it gets no neighbors and '
          'cannot be one.', graph_io.derive_example_id(serialized),
          self._split, self._route.id_feature,
          graph_io.describe_example_id(example, self._route.id_feature))
    if missing and self._logged_missing < config.MAX_LOGGED:
      self._logged_missing += 1
      logging.warning(
          'GraphAugmentation: neighbor example %r (split %r) lacks '
          'neighbor_features %s; its NL_nbr_<i>_ copies of them will be '
          'missing.', node, self._split, missing)
    yield from _tagged(full)

  def finish_bundle(self):
    if self._counts:  # Counted by the seed join (join_core.READ_COUNTS).
      yield from _tagged([(join_core.BY_SOURCE, join_core.read_counts_batch(
          self._counts, self._spill_dir))], windowed=True)
    yield from _tagged(self._batcher.flush(), windowed=True)


class _ReadEdges(beam.DoFn):
  """An edge file -> batches of edges by target bucket."""

  def __init__(self, add_undirected_edges, num_buckets, spill_dir):
    self._add_undirected_edges = add_undirected_edges
    self._buckets = num_buckets
    self._spill_dir = spill_dir
    self._logged = 0

  def _warn(self, error):
    if self._logged < config.MAX_LOGGED:
      self._logged += 1
      logging.warning('GraphAugmentation: skipped malformed edge line: %s',
                      error)

  def process(self, path):
    counts = collections.Counter()
    batcher = join_core.Batcher(self._spill_dir)
    for item in join_core.edge_items(records.edge_lines(path),
                                     self._add_undirected_edges, path, counts,
                                     self._warn):
      full = batcher.add(join_core.BY_TARGET, join_core.EDGES,
                         join_core.bucket_of(item[0], self._buckets), item)
      if full is not None:
        yield from _tagged([full])
    _report(counts)
    yield from _tagged(batcher.flush())


class _JoinTargets(beam.DoFn):
  """One target bucket -> candidate neighbors by source bucket."""

  def __init__(self, num_buckets, spill_dir):
    self._buckets = num_buckets
    self._spill_dir = spill_dir
    self._logged = 0

  def process(self, element):
    counts, unknown = collections.Counter(), {}
    batcher = join_core.Batcher(self._spill_dir)
    with join_core.no_cyclic_gc():
      for candidate in join_core.join_targets(element[1], counts, unknown):
        full = batcher.add(None, join_core.CANDIDATES,
                           join_core.bucket_of(candidate[0], self._buckets),
                           candidate)
        if full is not None:
          yield full[1]
    for target in sorted(unknown)[:max(0, config.MAX_LOGGED - self._logged)]:
      self._logged += 1
      logging.warning('GraphAugmentation: %d edge(s) point to id %r, which '
                      'no input example has.', unknown[target], target)
    _report(counts)
    for _, batch in batcher.flush():
      yield batch


class _JoinSeeds(beam.DoFn):
  """One source bucket -> augmented seeds, tagged by output split."""

  def __init__(self, max_neighbors, mark_labeled):
    self._k = max_neighbors
    self._mark_labeled = mark_labeled

  def process(self, element):
    counts = collections.Counter()
    with join_core.no_cyclic_gc():
      for split, record in join_core.join_seeds(element[1], self._k,
                                                self._mark_labeled, counts):
        yield beam.pvalue.TaggedOutput(split, record)
    _report(counts)


def _query_counters(result) -> Dict[str, int]:
  """Counters of METRICS_NAMESPACE, every known one present (0 if unseen)."""
  counters = beam_executor.read_counters(result, config.METRICS_NAMESPACE)
  return {**{name: 0 for name in config.COUNTERS}, **counters} if (
      counters) else {}


class Executor(beam_executor.BeamExecutor):
  """Adds NSL neighbor features to the seed splits of Examples."""

  def Do(self, input_dict, output_dict, exec_properties):
    self._log_startup(input_dict, output_dict, exec_properties)
    examples = artifact_utils.get_single_instance(
        input_dict[config.EXAMPLES_KEY])
    graph = artifact_utils.get_single_instance(input_dict[config.GRAPH_KEY])
    output = artifact_utils.get_single_instance(
        output_dict[config.AUGMENTED_EXAMPLES_KEY])
    records.check_payload_format(examples)
    splits = artifact_utils.decode_split_names(examples.split_names)
    params = AugmentParams.from_exec_properties(exec_properties).resolve(
        splits)
    edge_files = graph_io.edge_files(graph.uri)  # Raises if there are none.
    records.check_ids(examples, params, edge_files)
    output.split_names = artifact_utils.encode_split_names(splits)
    logging.info('GraphAugmentation: seeds %s, neighbors %s, %d edge '
                 'file(s) under %s.', params.seed_splits,
                 params.neighbor_splits, len(edge_files), graph.uri)

    pipeline = self._make_beam_pipeline()
    spill_dir = self._spill_dir(pipeline)
    try:
      with pipeline:
        _augment(pipeline, examples, output, splits, params, edge_files,
                 spill_dir)
    finally:
      if spill_dir is not None:
        shutil.rmtree(spill_dir, ignore_errors=True)
    for split in splits:
      if split not in params.seed_splits:
        records.copy_split(artifact_utils.get_split_uri([examples], split),
                           artifact_utils.get_split_uri([output], split))
    records.copy_properties(examples, output)
    stats = _query_counters(pipeline.result)
    output.set_string_custom_property(config.STATS_PROPERTY,
                                      json.dumps(stats, sort_keys=True))
    logging.info('GraphAugmentation stats: %s', stats)
    config.check_stats(stats, graph.uri, params)

  def _spill_dir(self, pipeline) -> Optional[str]:
    """A fresh local folder for the batches between steps when `pipeline`
    runs on the DirectRunner, whose workers share this host (see the module
    docstring); None on other runners."""
    if not beam_executor.is_local(pipeline):
      return None
    return tempfile.mkdtemp(prefix='tfx_nsl_graph_augmentation-')


def _augment(p, examples, output, splits, params, edge_files, spill_dir):
  """Adds the steps that write the augmented seed splits to `p`."""
  seed_to = {split: (split, True) for split in params.seed_splits}
  if params.unlabeled_seed_split:
    seed_to[params.unlabeled_seed_split] = (params.seed_splits[0], False)
  split_uris = {s: artifact_utils.get_split_uri([examples], s)
                for s in splits}
  num_buckets = join_core.num_buckets(records.input_bytes(
      [f for s in splits for f in fileio.glob(
          os.path.join(split_uris[s], '*'))] + list(edge_files)))
  logging.info('GraphAugmentation: joining in %d bucket(s).', num_buckets)

  by_target, by_source = [], []
  for split in splits:
    preference = None
    if split in params.neighbor_splits:
      preference = (0 if split in params.seed_splits
                    else 1 + params.neighbor_splits.index(split))
    route = join_core.Route(params.id_feature, params.neighbor_features,
                            preference, seed_to.get(split), num_buckets)
    parts = (p
             | f'Read[{split}]' >> beam.io.ReadFromTFRecord(
                 os.path.join(split_uris[split], '*'))
             | f'Examples[{split}]' >> beam.ParDo(
                 _ReadExamples(split, route, spill_dir)).with_outputs(
                     join_core.BY_TARGET, join_core.BY_SOURCE))
    by_target.append(parts[join_core.BY_TARGET])
    by_source.append(parts[join_core.BY_SOURCE])

  edges = (p
           | 'EdgeFiles' >> beam.Create(sorted(edge_files))
           | 'SpreadEdgeFiles' >> beam.Reshuffle()
           | 'ReadEdges' >> beam.ParDo(_ReadEdges(
               params.add_undirected_edges, num_buckets,
               spill_dir)).with_outputs(
                   join_core.BY_TARGET, main='unused'))
  by_target.append(edges[join_core.BY_TARGET])
  by_source.append(
      by_target
      | 'FlattenByTarget' >> beam.Flatten().with_output_types(
          Tuple[int, bytes])
      | 'GroupByTarget' >> beam.GroupByKey()
      | 'JoinTargets' >> beam.ParDo(_JoinTargets(num_buckets, spill_dir)))
  augmented = (by_source
               | 'FlattenBySource' >> beam.Flatten().with_output_types(
                   Tuple[int, bytes])
               | 'GroupBySource' >> beam.GroupByKey()
               | 'JoinSeeds' >> beam.ParDo(_JoinSeeds(
                   params.max_neighbors, params.unlabeled_as_seeds)
                                          ).with_outputs(*params.seed_splits))
  for split in params.seed_splits:
    _ = (augmented[split]
         | f'Write[{split}]' >> beam.io.Write(records.GzipTFRecordSink(
             os.path.join(artifact_utils.get_split_uri([output], split),
                          config.OUTPUT_FILE_PREFIX))))
