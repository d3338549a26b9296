"""GraphAugmentation's parameters (validated once, shared by component and
executor: `tfx_nsl.parameters`), names and counters."""
import dataclasses
from typing import Any, Dict, List, Optional

from tfx_nsl import constants
from tfx_nsl import parameters
from tfx_nsl.components.graph_augmentation import augment_core

COMPONENT = 'GraphAugmentation'
DEFAULT_MAX_NEIGHBORS = 3

# Keys of the component spec.
EXAMPLES_KEY = 'examples'
GRAPH_KEY = 'graph'
AUGMENTED_EXAMPLES_KEY = 'augmented_examples'
# Custom property of the output Examples: JSON of the counters below.
STATS_PROPERTY = 'augmentation_stats'
METRICS_NAMESPACE = 'tfx_nsl.GraphAugmentation'
OUTPUT_FILE_PREFIX = 'data_tfrecord'
# Examples logged per worker for each kind of bad input; counters carry the
# totals.
MAX_LOGGED = 5

# Counters, all in METRICS_NAMESPACE, and what they count. Every edge line
# ends in exactly one bucket:
#   edge_lines_read = malformed_edge_lines + self_loops + duplicate_edges
#                     + (edges - reverse_edges_added)
#   edges = edges_unknown_target + edges_target_not_neighbor
#           + edges_from_non_seed + edges_beyond_max_neighbors
#           + neighbors_attached
# Per-feature counts MISSING_FEATURE_COUNTER + <name> come on top.
MISSING_FEATURE_COUNTER = 'missing_neighbor_feature:'
COUNTERS = {
    'examples_read': 'examples read, all splits',
    'examples_without_id': 'examples whose id feature is unusable: several '
                           'values, floats, bad UTF-8, the empty string, '
                           'tabs, line breaks or NUL (kept, no neighbors)',
    'ids_derived_from_content': 'examples without the id feature, named by a '
                                'digest of their bytes as GraphBuilder does',
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


def _names_ok(value) -> bool:
  return (bool(value) and all(isinstance(v, str) and v for v in value)
          and len(set(value)) == len(value))


@dataclasses.dataclass(frozen=True)
class AugmentParams:
  """See `GraphAugmentation` for the meaning of each field."""
  max_neighbors: int = DEFAULT_MAX_NEIGHBORS
  add_undirected_edges: bool = False
  id_feature: str = constants.ID_FEATURE
  seed_splits: List[str] = dataclasses.field(
      default_factory=lambda: [constants.TRAIN_SPLIT])
  neighbor_splits: Optional[List[str]] = None
  neighbor_features: Optional[List[str]] = None
  unlabeled_as_seeds: bool = False

  def __post_init__(self):
    check = parameters.check(self, COMPONENT)
    check.require('max_neighbors', lambda v: v >= 1,
                  'must be >= 1; to train without neighbors, leave '
                  'GraphAugmentation out of the pipeline')
    check.require('id_feature', bool, 'a feature name')
    for name in ('seed_splits', 'neighbor_splits', 'neighbor_features'):
      check.require(name, _names_ok, 'distinct non-empty names, at least '
                    'one' + ('' if name == 'seed_splits' else
                             ' (or None for the default)'))
    if self.unlabeled_as_seeds and constants.UNLABELED_SPLIT in (
        self.seed_splits):
      check.fail(f'unlabeled_as_seeds moves the {constants.UNLABELED_SPLIT!r} '
                 f'split into {self.seed_splits[0]!r}; do not also list it in '
                 f'seed_splits {self.seed_splits}')
    reserved = [f for f in self.neighbor_features or []
                if f.startswith(augment_core.NBR_PREFIX)
                or f in (augment_core.NUM_NBRS_FEATURE,
                         augment_core.LABELED_FEATURE)]
    if reserved:
      check.fail(f'neighbor_features {reserved} are features this component '
                 "writes; list the neighbors' own features instead")

  @classmethod
  def from_exec_properties(cls, exec_properties: Dict[str, Any]):
    return parameters.from_exec_properties(cls, exec_properties)

  def to_exec_properties(self) -> Dict[str, Any]:
    return parameters.to_exec_properties(self)

  @property
  def unlabeled_seed_split(self) -> Optional[str]:
    """The split whose examples become seeds of the first seed split."""
    return constants.UNLABELED_SPLIT if self.unlabeled_as_seeds else None

  def resolve(self, splits: List[str]) -> 'AugmentParams':
    """The splits to read, checked against the input's split names."""
    missing = [s for s in self.seed_splits if s not in splits]
    if missing:
      raise ValueError(f'{COMPONENT}: seed_splits {missing} are not splits of '
                       f'the input examples, which has {splits}.')
    if self.neighbor_splits is None:
      # Seeds are neighbors too (pack_nbrs' labeled examples), plus unlabeled.
      wanted = self.seed_splits + [constants.UNLABELED_SPLIT]
      neighbor_splits = [s for s in dict.fromkeys(wanted) if s in splits]
    else:
      missing = [s for s in self.neighbor_splits if s not in splits]
      if missing:
        raise ValueError(f'{COMPONENT}: neighbor_splits {missing} are not '
                         f'splits of the input examples, which has {splits}.')
      neighbor_splits = self.neighbor_splits
    if self.unlabeled_as_seeds and constants.UNLABELED_SPLIT not in splits:
      raise ValueError(
          f'{COMPONENT}: unlabeled_as_seeds is set but the input examples '
          f'have no {constants.UNLABELED_SPLIT!r} split (splits: {splits}).')
    return dataclasses.replace(self, neighbor_splits=neighbor_splits)


def check_stats(stats: Dict[str, int], graph_uri: str, params: AugmentParams):
  """Raises where the output would silently carry no graph at all."""
  if not stats:
    return
  if not stats['edge_lines_read']:
    raise ValueError(
        f'Graph {graph_uri} has no edges, so no example would get a '
        'neighbor. If it came from GraphBuilder, see its stats.json (e.g. a '
        'similarity_threshold that no pair reaches).')
  if stats['edges'] == 0:
    raise ValueError(
        f'No usable edge in graph {graph_uri}: of {stats["edge_lines_read"]} '
        f'lines, {stats["malformed_edge_lines"]} are malformed and '
        f'{stats["self_loops"]} are self-loops. Expected lines '
        '`source<TAB>target[<TAB>weight]`.')
  if stats['seeds_written'] and stats['neighbors_attached'] == 0:
    raise ValueError(
        f'No seed example got a neighbor from graph {graph_uri}: of '
        f'{stats["edges"]} edges, {stats["edges_unknown_target"]} name '
        f'targets that no example has, {stats["edges_target_not_neighbor"]} '
        f'point into splits outside neighbor_splits '
        f'{params.neighbor_splits}, {stats["edges_from_non_seed"]} leave '
        f'non-seed examples; {stats["ids_derived_from_content"]} examples '
        f'lack id_feature {params.id_feature!r} (named by digests). Check '
        'that it holds the ids the graph uses.')
