"""GraphAugmentation executor: a Beam join of graph edges with examples.

Data flow (every step keyed, nothing collected on the driver):

  edge lines --parse--> ((source, target), (weight, from_input))
             --CombinePerKey: max weight per pair--> (target, (source, weight))
  CoGroupByKey on target with neighbor examples (id -> payload) and with the
  ids of all other examples --> (source, (weight, target, payload)) for edges
  whose target is a neighbor example, counters for the rest
             --CombinePerKey: bounded top-k per source--> (source, top k)
  CoGroupByKey on id with seed examples --> augmented seeds, one output per
  seed split.

The top-k combiner holds at most `max_neighbors` candidates per key, so a node
with a huge degree costs no more memory than any other.
"""
import json
import os
from typing import Any, Dict, List, Optional

from absl import logging
import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.metrics.metric import MetricsFilter
from tfx.components.util import examples_utils
from tfx.dsl.components.base import base_beam_executor
from tfx.dsl.io import fileio
from tfx.proto import example_gen_pb2
from tfx.types import artifact_utils

from tfx_nsl import constants
from tfx_nsl import graph_io
from tfx_nsl.components.graph_augmentation import augment_core

# Keys of the component spec (component.py re-exports them).
EXAMPLES_KEY = 'examples'
GRAPH_KEY = 'graph'
AUGMENTED_EXAMPLES_KEY = 'augmented_examples'
MAX_NEIGHBORS_KEY = 'max_neighbors'
ADD_UNDIRECTED_EDGES_KEY = 'add_undirected_edges'
ID_FEATURE_KEY = 'id_feature'
SEED_SPLITS_KEY = 'seed_splits'
NEIGHBOR_SPLITS_KEY = 'neighbor_splits'
NEIGHBOR_FEATURES_KEY = 'neighbor_features'
UNLABELED_AS_SEEDS_KEY = 'unlabeled_as_seeds'

# Custom property of the output Examples: JSON of the counters below.
STATS_PROPERTY = 'augmentation_stats'
METRICS_NAMESPACE = 'tfx_nsl.GraphAugmentation'
OUTPUT_FILE_PREFIX = 'data_tfrecord'
_MISSING_FEATURE_COUNTER = 'missing_neighbor_feature:'
# Examples logged per worker for each kind of bad input; counters carry the
# totals.
_MAX_LOGGED = 5

# Counters, all in METRICS_NAMESPACE, and what they count. Every edge line
# ends in exactly one bucket:
#   edge_lines_read = malformed_edge_lines + self_loops + duplicate_edges
#                     + (edges - reverse_edges_added)
#   edges = edges_unknown_target + edges_target_not_neighbor
#           + edges_from_non_seed + edges_beyond_max_neighbors
#           + neighbors_attached
# Per-feature counts 'missing_neighbor_feature:<name>' come on top.
COUNTERS = {
    'examples_read': 'examples read, all splits',
    'examples_without_id': 'examples with no usable id (kept, no neighbors)',
    'edge_lines_read': 'lines of the graph files',
    'malformed_edge_lines': 'lines that are not source<TAB>target[<TAB>w] '
                            'with a finite weight (skipped)',
    'self_loops': 'edges from a node to itself (dropped)',
    'duplicate_edges': 'repeated (source, target) lines (max weight kept)',
    'reverse_edges_added': 'edges that only add_undirected_edges created',
    'edges': 'distinct directed edges after merging',
    'edges_unknown_target': 'edges to ids no example has (skipped)',
    'edges_target_not_neighbor': 'edges to examples outside neighbor_splits',
    'edges_from_non_seed': 'edges leaving examples that are not seeds',
    'edges_unknown_source': 'of those, edges leaving ids no example has',
    'unknown_source_nodes': 'ids with usable out-edges but no example',
    'edges_beyond_max_neighbors': 'usable edges past a seed\'s top k',
    'neighbors_attached': 'neighbors merged, once per seed id',
    'duplicate_seed_ids': 'extra seed examples sharing an id (all kept)',
    'duplicate_neighbor_ids': 'extra neighbor examples sharing an id (one '
                              'is used, seed splits first)',
    'neighbor_examples_missing_features': 'neighbor examples lacking one of '
                                          'neighbor_features',
    'seeds_written': 'examples written to seed splits',
    'seeds_with_neighbors': 'of those, with at least one neighbor',
    'seeds_without_neighbors': 'of those, with none',
    'unlabeled_seeds_written': 'of those, from the unlabeled split',
}


def _counter(name):
  return Metrics.counter(METRICS_NAMESPACE, name)


def _as_list(value) -> Optional[List[str]]:
  """A list parameter as the executor gets it: a list or its JSON."""
  if value is None or value == '':
    return None
  if isinstance(value, str):
    value = json.loads(value)
  return list(value)


class _Config:
  """Execution properties, resolved against the input's split names."""

  def __init__(self, exec_properties: Dict[str, Any], splits: List[str]):
    self.max_neighbors = int(exec_properties[MAX_NEIGHBORS_KEY])
    self.add_undirected_edges = bool(
        exec_properties.get(ADD_UNDIRECTED_EDGES_KEY, False))
    self.id_feature = exec_properties.get(ID_FEATURE_KEY) or (
        constants.ID_FEATURE)
    self.neighbor_features = _as_list(
        exec_properties.get(NEIGHBOR_FEATURES_KEY))
    self.unlabeled_as_seeds = bool(
        exec_properties.get(UNLABELED_AS_SEEDS_KEY, False))
    self.seed_splits = (_as_list(exec_properties.get(SEED_SPLITS_KEY))
                        or [constants.TRAIN_SPLIT])
    missing = [s for s in self.seed_splits if s not in splits]
    if missing:
      raise ValueError(f'seed_splits {missing} are not splits of the input '
                       f'examples, which has {splits}.')
    explicit = _as_list(exec_properties.get(NEIGHBOR_SPLITS_KEY))
    if explicit is None:
      # Seeds are neighbors too (pack_nbrs' labeled examples), plus unlabeled.
      wanted = self.seed_splits + [constants.UNLABELED_SPLIT]
      self.neighbor_splits = [s for s in dict.fromkeys(wanted) if s in splits]
    else:
      missing = [s for s in explicit if s not in splits]
      if missing:
        raise ValueError(f'neighbor_splits {missing} are not splits of the '
                         f'input examples, which has {splits}.')
      self.neighbor_splits = explicit
    self.unlabeled_seed_split = None
    if self.unlabeled_as_seeds:
      if constants.UNLABELED_SPLIT not in splits:
        raise ValueError(
            f'unlabeled_as_seeds is set but the input examples have no '
            f'{constants.UNLABELED_SPLIT!r} split (splits: {splits}).')
      self.unlabeled_seed_split = constants.UNLABELED_SPLIT


class _KeyById(beam.DoFn):
  """serialized -> (id, serialized); examples without an id go to 'no_id'."""
  NO_ID = 'no_id'

  def __init__(self, id_feature, split):
    self._id_feature = id_feature
    self._split = split
    self._read = _counter('examples_read')
    self._no_id = _counter('examples_without_id')
    self._logged = 0

  def process(self, serialized):
    self._read.inc()
    node = augment_core.example_id(
        augment_core.parse_example(serialized), self._id_feature)
    if node is None:
      self._no_id.inc()
      if self._logged < _MAX_LOGGED:
        self._logged += 1
        logging.warning(
            'GraphAugmentation: an example of split %r has no usable id '
            'feature %r (missing, not one value, or float); it gets no '
            'neighbors and cannot be one.', self._split, self._id_feature)
      yield beam.pvalue.TaggedOutput(self.NO_ID, serialized)
    else:
      yield node, serialized


class _ToPayload(beam.DoFn):
  """(id, serialized) -> (id, (preference, neighbor payload))."""

  def __init__(self, preference, features, split):
    self._preference = preference
    self._features = features
    self._split = split
    self._lacking = _counter('neighbor_examples_missing_features')
    self._logged = 0

  def process(self, element):
    node, serialized = element
    payload, missing = augment_core.neighbor_payload(serialized,
                                                     self._features)
    if missing:
      self._lacking.inc()
      for name in missing:
        _counter(_MISSING_FEATURE_COUNTER + name).inc()
      if self._logged < _MAX_LOGGED:
        self._logged += 1
        logging.warning(
            'GraphAugmentation: neighbor example %r (split %r) lacks '
            'neighbor_features %s; its NL_nbr_<i>_ copies of them will be '
            'missing.', node, self._split, missing)
    yield node, (self._preference, payload)


class _ParseEdges(beam.DoFn):
  """(file, line) -> ((source, target), (weight, from_input))."""

  def __init__(self, add_undirected_edges):
    self._add_undirected_edges = add_undirected_edges
    self._read = _counter('edge_lines_read')
    self._malformed = _counter('malformed_edge_lines')
    self._self_loops = _counter('self_loops')
    self._logged = 0

  def process(self, element):
    path, line = element
    self._read.inc()
    try:
      source, target, weight = augment_core.parse_edge(line, path)
    except ValueError as e:
      self._malformed.inc()
      if self._logged < _MAX_LOGGED:
        self._logged += 1
        logging.warning('GraphAugmentation: skipped malformed edge line: %s',
                        e)
      return
    if source == target:
      self._self_loops.inc()
      return
    yield from augment_core.directed_edges(source, target, weight,
                                           self._add_undirected_edges)


class _CountMerged(beam.DoFn):
  """((source, target), (weight, inputs)) -> (target, (source, weight))."""

  def __init__(self):
    self._edges = _counter('edges')
    self._duplicates = _counter('duplicate_edges')
    self._reversed = _counter('reverse_edges_added')

  def process(self, element):
    (source, target), (weight, from_input) = element
    self._edges.inc()
    if from_input > 1:
      self._duplicates.inc(from_input - 1)
    elif from_input == 0:
      self._reversed.inc()
    yield target, (source, weight)


class _ResolveTargets(beam.DoFn):
  """Per target id: edges x neighbor examples -> candidates per source."""

  def __init__(self):
    self._unknown = _counter('edges_unknown_target')
    self._excluded = _counter('edges_target_not_neighbor')
    self._duplicates = _counter('duplicate_neighbor_ids')
    self._logged = 0

  def process(self, element):
    target, grouped = element
    edges = grouped['edges']
    pool = list(grouped['pool'])
    if pool:
      if len(pool) > 1:
        self._duplicates.inc(len(pool) - 1)
      payload = augment_core.pick_example(pool)
      for source, weight in edges:
        yield source, (weight, target, payload)
      return
    count = sum(1 for _ in edges)
    if not count:
      return
    if any(True for _ in grouped['other']):
      self._excluded.inc(count)
    else:
      self._unknown.inc(count)
      if self._logged < _MAX_LOGGED:
        self._logged += 1
        logging.warning('GraphAugmentation: %d edge(s) point to id %r, which '
                        'no input example has.', count, target)


class _TopNeighbors(beam.CombineFn):
  """Bounded top-k of (weight, id, payload) per source, and a count."""

  def __init__(self, k):
    self._k = k

  def create_accumulator(self):
    return augment_core.top_create()

  def add_input(self, accumulator, candidate):
    return augment_core.top_add(accumulator, candidate, self._k)

  def merge_accumulators(self, accumulators):
    return augment_core.top_merge(accumulators, self._k)

  def extract_output(self, accumulator):
    return augment_core.top_extract(accumulator)


class _Augment(beam.DoFn):
  """Per id: seed example(s) x top neighbors -> augmented, tagged by split."""

  def __init__(self, mark_labeled):
    self._mark_labeled = mark_labeled
    self._c = {name: _counter(name) for name in (
        'edges_from_non_seed', 'edges_unknown_source', 'unknown_source_nodes',
        'edges_beyond_max_neighbors', 'neighbors_attached',
        'duplicate_seed_ids', 'seeds_written', 'seeds_with_neighbors',
        'seeds_without_neighbors', 'unlabeled_seeds_written')}

  def process(self, element):
    node, grouped = element
    seeds = list(grouped['seeds'])
    top = list(grouped['top'])
    seen, neighbors = top[0] if top else (0, [])
    if not seeds:
      if seen:
        self._c['edges_from_non_seed'].inc(seen)
        if not any(True for _ in grouped['present']):
          self._c['unknown_source_nodes'].inc()
          self._c['edges_unknown_source'].inc(seen)
      return
    if len(seeds) > 1:
      self._c['duplicate_seed_ids'].inc(len(seeds) - 1)
    self._c['neighbors_attached'].inc(len(neighbors))
    self._c['edges_beyond_max_neighbors'].inc(seen - len(neighbors))
    for out_split, labeled, serialized in seeds:
      self._c['seeds_written'].inc()
      self._c['seeds_with_neighbors' if neighbors
              else 'seeds_without_neighbors'].inc()
      if not labeled:
        self._c['unlabeled_seeds_written'].inc()
      yield beam.pvalue.TaggedOutput(out_split, augment_core.augment(
          serialized, neighbors, labeled if self._mark_labeled else None))


class _AugmentWithoutId(beam.DoFn):
  """A seed without an id: kept, with NL_num_nbrs = 0 (pack_nbrs fails)."""

  def __init__(self, labeled):
    self._labeled = labeled
    self._c = {name: _counter(name) for name in (
        'seeds_written', 'seeds_without_neighbors', 'unlabeled_seeds_written')}

  def process(self, serialized):
    self._c['seeds_written'].inc()
    self._c['seeds_without_neighbors'].inc()
    if self._labeled is False:
      self._c['unlabeled_seeds_written'].inc()
    yield augment_core.augment(serialized, [], self._labeled)


def _query_counters(result) -> Dict[str, int]:
  """Committed counters of METRICS_NAMESPACE, summed over steps."""
  stats = {name: 0 for name in COUNTERS}
  try:
    counters = result.metrics().query(
        MetricsFilter().with_namespace(METRICS_NAMESPACE))['counters']
  except (NotImplementedError, AttributeError) as e:
    logging.warning('GraphAugmentation: this runner reports no metrics (%s).',
                    e)
    return {}
  for counter in counters:
    value = counter.committed
    if value is None:
      value = counter.attempted or 0
    stats[counter.key.metric.name] = (
        stats.get(counter.key.metric.name, 0) + value)
  return stats


def _first_examples(split_uri, limit=20):
  """Up to `limit` parsed examples of one split, for an early id check."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  files = sorted(fileio.glob(os.path.join(split_uri, '*')))
  if not files:
    return []
  dataset = tf.data.TFRecordDataset(
      files[:1], compression_type='GZIP' if files[0].endswith('.gz') else '')
  return [augment_core.parse_example(r.numpy()) for r in dataset.take(limit)]


def _copy_split(source_uri, dest_uri):
  fileio.makedirs(dest_uri)
  for name in fileio.listdir(source_uri):
    fileio.copy(os.path.join(source_uri, name), os.path.join(dest_uri, name),
                overwrite=True)


class Executor(base_beam_executor.BaseBeamExecutor):
  """Adds NSL neighbor features to the seed splits of Examples."""

  def Do(self, input_dict, output_dict, exec_properties):
    self._log_startup(input_dict, output_dict, exec_properties)
    examples = artifact_utils.get_single_instance(input_dict[EXAMPLES_KEY])
    graph = artifact_utils.get_single_instance(input_dict[GRAPH_KEY])
    output = artifact_utils.get_single_instance(
        output_dict[AUGMENTED_EXAMPLES_KEY])

    payload_format = examples_utils.get_payload_format(examples)
    if payload_format != example_gen_pb2.PayloadFormat.FORMAT_TF_EXAMPLE:
      raise ValueError(
          'GraphAugmentation reads tf.Example records, but the input examples '
          f'have payload format '
          f'{example_gen_pb2.PayloadFormat.Name(payload_format)}.')
    splits = artifact_utils.decode_split_names(examples.split_names)
    config = _Config(exec_properties, splits)
    edge_files = graph_io.edge_files(graph.uri)  # Raises if there are none.
    self._check_ids(examples, config)
    output.split_names = artifact_utils.encode_split_names(splits)
    logging.info('GraphAugmentation: seeds %s, neighbors %s, %d edge '
                 'file(s) under %s.', config.seed_splits,
                 config.neighbor_splits, len(edge_files), graph.uri)

    pipeline = self._make_beam_pipeline()
    self._build(pipeline, examples, graph, output, splits, config)
    result = pipeline.run()
    result.wait_until_finish()

    for split in splits:
      if split not in config.seed_splits:
        _copy_split(artifact_utils.get_split_uri([examples], split),
                    artifact_utils.get_split_uri([output], split))
    examples_utils.set_payload_format(output, payload_format)
    examples_utils.set_file_format(
        output, examples_utils.get_file_format(examples))

    stats = _query_counters(result)
    output.set_string_custom_property(STATS_PROPERTY,
                                      json.dumps(stats, sort_keys=True))
    logging.info('GraphAugmentation stats: %s', stats)
    _check_stats(stats, graph.uri, config)

  def _check_ids(self, examples, config):
    """Fails early when the id feature is plainly wrong."""
    for split in config.seed_splits:
      sample = _first_examples(artifact_utils.get_split_uri([examples], split))
      if not sample:
        continue
      if all(augment_core.example_id(e, config.id_feature) is None
             for e in sample):
        found = sorted(sample[0].features.feature)
        raise ValueError(
            f'No example among the first {len(sample)} of split {split!r} has '
            f'a usable id feature {config.id_feature!r} (one bytes or int64 '
            f'value). Its features are {found}; set id_feature to the feature '
            'that the graph names nodes by.')
      return

  def _build(self, p, examples, graph, output, splits, config):
    pool_splits = config.neighbor_splits
    seed_inputs = list(config.seed_splits)
    if config.unlabeled_seed_split:
      seed_inputs.append(config.unlabeled_seed_split)

    keyed, no_id = {}, {}
    for split in splits:
      pattern = os.path.join(artifact_utils.get_split_uri([examples], split),
                             '*')
      parts = (
          p
          | f'Read[{split}]' >> beam.io.ReadFromTFRecord(pattern)
          | f'KeyById[{split}]' >> beam.ParDo(
              _KeyById(config.id_feature, split)).with_outputs(
                  _KeyById.NO_ID, main='keyed'))
      keyed[split], no_id[split] = parts.keyed, parts[_KeyById.NO_ID]

    # Neighbor examples: seed splits first, as pack_nbrs prefers labeled ones.
    pool = [
        keyed[split] | f'Payload[{split}]' >> beam.ParDo(_ToPayload(
            0 if split in config.seed_splits else 1 + i,
            config.neighbor_features, split))
        for i, split in enumerate(pool_splits)]
    pool = pool | 'FlattenPool' >> beam.Flatten(pipeline=p)
    # Ids of the other examples only tell unknown ids from excluded ones.
    other = ([keyed[s] for s in splits if s not in pool_splits]
             | 'FlattenOther' >> beam.Flatten(pipeline=p)
             | 'OtherIds' >> beam.Map(lambda kv: (kv[0], None)))
    present = ([keyed[s] for s in splits if s not in seed_inputs]
               | 'FlattenPresent' >> beam.Flatten(pipeline=p)
               | 'PresentIds' >> beam.Map(lambda kv: (kv[0], None)))

    edges = (
        p
        | 'ReadEdges' >> beam.io.ReadFromTextWithFilename(
            os.path.join(graph.uri, graph_io.EDGE_FILE_GLOB))
        | 'ParseEdges' >> beam.ParDo(_ParseEdges(config.add_undirected_edges))
        | 'MergeEdges' >> beam.CombinePerKey(augment_core.merge_edge_values)
        | 'ByTarget' >> beam.ParDo(_CountMerged()))
    top = (
        {'edges': edges, 'pool': pool, 'other': other}
        | 'JoinTargets' >> beam.CoGroupByKey()
        | 'ResolveTargets' >> beam.ParDo(_ResolveTargets())
        | 'TopNeighbors' >> beam.CombinePerKey(
            _TopNeighbors(config.max_neighbors)))

    mark = config.unlabeled_as_seeds
    seeds = []
    for split in seed_inputs:
      labeled = split != config.unlabeled_seed_split
      out_split = split if labeled else config.seed_splits[0]
      seeds.append(keyed[split] | f'Seeds[{split}]' >> beam.Map(
          lambda kv, o=out_split, l=labeled: (kv[0], (o, l, kv[1]))))
    seeds = seeds | 'FlattenSeeds' >> beam.Flatten(pipeline=p)
    augmented = (
        {'seeds': seeds, 'top': top, 'present': present}
        | 'JoinSeeds' >> beam.CoGroupByKey()
        | 'Augment' >> beam.ParDo(_Augment(mark)).with_outputs(
            *config.seed_splits))

    for split in config.seed_splits:
      parts = [augmented[split]]
      for source in seed_inputs:
        labeled = source != config.unlabeled_seed_split
        if (source if labeled else config.seed_splits[0]) != split:
          continue
        parts.append(no_id[source] | f'NoIdSeeds[{source}->{split}]' >> (
            beam.ParDo(_AugmentWithoutId(labeled if mark else None))))
      _ = (parts
           | f'FlattenOut[{split}]' >> beam.Flatten(pipeline=p)
           | f'Write[{split}]' >> beam.io.WriteToTFRecord(
               os.path.join(artifact_utils.get_split_uri([output], split),
                            OUTPUT_FILE_PREFIX),
               file_name_suffix='.gz'))


def _check_stats(stats, graph_uri, config):
  """Raises where the output would silently carry no graph at all."""
  if not stats:
    return
  if stats['edge_lines_read'] and stats['edges'] == 0:
    raise ValueError(
        f'No usable edge in graph {graph_uri}: of {stats["edge_lines_read"]} '
        f'lines, {stats["malformed_edge_lines"]} are malformed and '
        f'{stats["self_loops"]} are self-loops. Expected lines '
        '`source<TAB>target[<TAB>weight]`.')
  if (stats['edges'] and stats['seeds_written']
      and stats['neighbors_attached'] == 0):
    raise ValueError(
        f'No seed example got a neighbor from graph {graph_uri}: of '
        f'{stats["edges"]} edges, {stats["edges_unknown_target"]} name '
        f'targets that no example has, {stats["edges_target_not_neighbor"]} '
        f'point into splits outside neighbor_splits '
        f'{config.neighbor_splits}, {stats["edges_from_non_seed"]} leave '
        f'non-seed examples. Check that id_feature {config.id_feature!r} '
        'holds the ids the graph uses.')
