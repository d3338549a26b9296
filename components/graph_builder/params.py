"""GraphBuilder parameters: validated once, shared by component and executor.

The search mode is one section: `Exact()`, `Lsh(...)` or `Partition(...)`,
each holding only its own knobs; it travels as one exec property, the JSON
`{"<mode>": {<knob>: value, ...}}` with sorted keys and every default
written out, so equal settings give equal cache keys.
"""
import dataclasses
import json
import math
from typing import Any, ClassVar, Dict, List, Optional, Union

from tfx_nsl import constants
from tfx_nsl import parameters
from tfx_nsl.components.graph_builder import graph_core

COMPONENT = 'GraphBuilder'
NAMESPACE = 'tfx_nsl.GraphBuilder'

# Beam counters (namespace NAMESPACE), also written to stats.json.
COUNTERS = {
    'examples_read_<split>': 'examples read from that split',
    'ids_derived_from_content': 'examples without the id feature, named by a '
                                'digest of their bytes',
    'unusable_id': 'examples whose id feature is unusable: several values, '
                   'floats, the empty string, tabs, line breaks or NUL (left out, '
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
    'probes': 'regions each node is compared with (partition mode)',
    'edges_written': 'edges written to the edge files',
}


@dataclasses.dataclass(frozen=True)
class Exact:
  """Scores every pair, as blocked matrix products: each unit of work is
  `block_size` query rows of one node shard against one node shard.

  block_size: query rows per unit of Beam work.
  """
  NAME: ClassVar[str] = 'exact'
  block_size: int = 2048


@dataclasses.dataclass(frozen=True)
class Lsh:
  """Scores only pairs that share a random-hyperplane bucket in a round.

  splits: hyperplanes per round (up to 2^splits buckets), 1 to 30.
  rounds: LSH rounds; more rounds, higher recall.
  max_bucket_size: larger buckets are cut, bounding each product.
  recall_sample_size: nodes on which recall against exact is measured.
  seed: seed of the hyperplanes and of the recall sample.
  """
  NAME: ClassVar[str] = 'lsh'
  splits: int = 8
  rounds: int = 8
  max_bucket_size: int = 4096
  recall_sample_size: int = 1000
  seed: int = 0


@dataclasses.dataclass(frozen=True)
class Partition:
  """Scores each node against the members of its nearest k-means regions
  (faster and more accurate than LSH on clustered embeddings).

  size: mean nodes a region.
  probes: regions each node is compared with; more probes, higher recall,
    proportionally more work. None: the fewest probes (at most
    `max_probes`) whose recall@k on a calibration sample of nodes, less
    1.645 standard errors, reaches `target_recall`, chosen on each run
    after the k-means.
  target_recall: the recall@k that probes=None aims for.
  max_probes: the most probes that probes=None may choose.
  recall_sample_size: nodes on which recall against exact is measured (and
    as many again, other nodes, on which probes=None calibrates).
  seed: seed of the k-means and of the samples.
  """
  NAME: ClassVar[str] = 'partition'
  size: int = 500
  probes: Optional[int] = None
  target_recall: float = 0.95
  max_probes: int = 64
  recall_sample_size: int = 1000
  seed: int = 0


MODE_CLASSES = {cls.NAME: cls for cls in (Exact, Lsh, Partition)}
EXACT, LSH, PARTITION = MODE_CLASSES
MODES = tuple(MODE_CLASSES)
Mode = Union[Exact, Lsh, Partition]


def mode_to_json(mode: Mode) -> str:
  return json.dumps({mode.NAME: dataclasses.asdict(mode)}, sort_keys=True)


def parse_mode(value) -> Mode:
  """A mode section from a section, a mode name, or its JSON."""
  if isinstance(value, tuple(MODE_CLASSES.values())):
    mode = value
  elif isinstance(value, str) and value in MODE_CLASSES:
    mode = MODE_CLASSES[value]()
  else:
    try:
      section = json.loads(value) if isinstance(value, str) else value
      (name, knobs), = section.items()
      mode = MODE_CLASSES[name](**knobs)
    except (ValueError, TypeError, KeyError, AttributeError) as e:
      raise ValueError(
          f'{COMPONENT}: parameter mode={value!r} is not allowed: give '
          f'Exact(), Lsh(...) or Partition(...), a mode name {MODES}, or '
          f'the JSON of one section, e.g. \'{{"lsh": {{"rounds": 12}}}}\' '
          f'({e})') from None
  runtime = [f.name for f in dataclasses.fields(mode)
             if parameters.is_runtime(getattr(mode, f.name))]
  if runtime:
    raise ValueError(
        f'{COMPONENT}: mode {mode.NAME!r} knobs {runtime} cannot be '
        'RuntimeParameters themselves; make `mode` a str RuntimeParameter '
        'holding the JSON of the whole section, e.g. '
        f'\'{{"{mode.NAME}": {{"{runtime[0]}": ...}}}}\'')
  checker = parameters.check(mode, f'{COMPONENT} mode {mode.NAME!r}')
  for name in [f.name for f in dataclasses.fields(mode)
               if f.name not in ('seed', 'target_recall')]:
    checker.require(name, lambda v: v >= 1, 'must be >= 1')
  if isinstance(mode, Partition):
    checker.require('target_recall', lambda v: 0.0 < v <= 1.0,
                    'must be in (0, 1]')
  if hasattr(mode, 'seed'):
    checker.require('seed', lambda v: 0 <= v < 2**32, 'must be in [0, 2**32)')
  if isinstance(mode, Lsh):
    checker.require('splits', lambda v: v <= 30, 'must be in [1, 30]')
  return mode


@dataclasses.dataclass(frozen=True)
class GraphBuilderParams:
  """See `GraphBuilder` for the meaning of each field. `mode` is a section
  (or, before execution, a RuntimeParameter holding its JSON)."""
  embedding_features: List[str] = dataclasses.field(default_factory=list)
  splits: Optional[List[str]] = None
  id_feature: str = constants.ID_FEATURE
  similarity: str = graph_core.COSINE
  similarity_threshold: float = 0.8
  max_neighbors: Optional[int] = None
  undirected: bool = True
  mode: Any = dataclasses.field(default_factory=Exact)
  num_shards: int = 0
  memory_budget_mb: int = 1024
  read_batch_size: int = 4096
  embedding_signature: str = constants.SERVING_SIGNATURE
  embedding_output: Optional[str] = None

  def __post_init__(self):
    if not parameters.is_runtime(self.mode):
      object.__setattr__(self, 'mode', parse_mode(self.mode))
    elif self.mode.ptype is not str:
      raise ValueError(f'{COMPONENT}: a RuntimeParameter for mode must have '
                       'ptype=str (a mode name or the JSON of one section)')
    check = parameters.check(self, COMPONENT)
    check.require('similarity', lambda v: v in graph_core.SIMILARITIES,
                  f'one of {graph_core.SIMILARITIES}')
    check.require('max_neighbors', lambda v: v >= 1,
                  'must be >= 1 (or None for every neighbor above the '
                  'threshold)')
    # The scorers mark excluded pairs (self, lower triangle) with -inf.
    check.require('similarity_threshold', math.isfinite, 'a finite number')
    if check.known('similarity') and self.similarity == graph_core.COSINE:
      check.require('similarity_threshold', lambda v: -1.0 <= v <= 1.0,
                    'must be in [-1, 1] for cosine similarity')
    check.require('read_batch_size', lambda v: v >= 1, 'must be >= 1')
    check.require('num_shards', lambda v: v >= 0, 'must be >= 0 (0: one '
                  'shard per 50,000 nodes)')
    check.require('memory_budget_mb', lambda v: v >= 64, 'must be >= 64 '
                  '(MiB a unit of work may hold; more shards if lower)')
    check.require('splits', bool, 'name at least one split (or None for '
                  'the default)')
    check.require('id_feature', bool, 'a feature name')

  @property
  def memory_budget_bytes(self) -> int:
    return self.memory_budget_mb * 2**20

  @property
  def unit_vectors(self) -> bool:
    """Whether the scored vectors are unit (cosine): float64 rechecks near
    the threshold renormalize them (graph_core.reach_threshold)."""
    return self.similarity == graph_core.COSINE

  @classmethod
  def from_exec_properties(cls, exec_properties: Dict[str, Any]):
    return parameters.from_exec_properties(cls, exec_properties)

  def to_exec_properties(self) -> Dict[str, Any]:
    out = parameters.to_exec_properties(self)
    if not parameters.is_runtime(self.mode):
      out['mode'] = mode_to_json(self.mode)
    return out

  def resolve_splits(self, available):
    """Default splits: train, plus unlabeled when present; checks names."""
    splits = self.splits or [s for s in (constants.TRAIN_SPLIT,
                                         constants.UNLABELED_SPLIT)
                             if s in available]
    unknown = [s for s in splits if s not in available]
    if unknown or not splits:
      raise ValueError(f'{COMPONENT}: splits {unknown or splits} are not in '
                       f'the examples, which have {list(available)}')
    return dataclasses.replace(self, splits=list(splits))

  def to_dict(self):
    """For stats.json: plain values, the mode as its section."""
    out = dataclasses.asdict(self)
    out['mode'] = json.loads(mode_to_json(self.mode))
    return out
