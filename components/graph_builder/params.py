"""GraphBuilder parameters: validated once, shared by component and executor."""
import dataclasses
import json
import math
from typing import Any, Dict, List, Optional

from tfx_nsl import constants
from tfx_nsl.components.graph_builder import graph_core

EXACT = 'exact'
LSH = 'lsh'
PARTITION = 'partition'
MODES = (EXACT, LSH, PARTITION)


@dataclasses.dataclass(frozen=True)
class GraphBuilderParams:
  """See `GraphBuilder` for the meaning of each field."""
  embedding_features: List[str] = dataclasses.field(default_factory=list)
  splits: Optional[List[str]] = None
  id_feature: str = constants.ID_FEATURE
  similarity: str = graph_core.COSINE
  similarity_threshold: float = 0.8
  max_neighbors: Optional[int] = None
  undirected: bool = True
  mode: str = EXACT
  lsh_splits: int = 8
  lsh_rounds: int = 8
  lsh_max_bucket_size: int = 4096
  partition_size: int = 500
  partition_probes: int = 8
  recall_sample_size: int = 1000
  seed: int = 0
  num_shards: int = 0
  block_size: int = 2048
  read_batch_size: int = 4096
  embedding_signature: str = constants.SERVING_SIGNATURE
  embedding_output: Optional[str] = None

  def __post_init__(self):
    def fail(message):
      raise ValueError(f'GraphBuilder: {message}')
    if self.similarity not in graph_core.SIMILARITIES:
      fail(f'similarity must be one of {graph_core.SIMILARITIES}, got '
           f'{self.similarity!r}')
    if self.mode not in MODES:
      fail(f'mode must be one of {MODES}, got {self.mode!r}')
    if self.max_neighbors is not None and self.max_neighbors < 1:
      fail(f'max_neighbors must be >= 1 (or None for all above the '
           f'threshold), got {self.max_neighbors}')
    if not math.isfinite(self.similarity_threshold):
      # The scorers mark excluded pairs (self, lower triangle) with -inf.
      fail('similarity_threshold must be a finite number, got '
           f'{self.similarity_threshold}')
    if self.similarity == graph_core.COSINE and not (
        -1.0 <= self.similarity_threshold <= 1.0):
      fail('similarity_threshold must be in [-1, 1] for cosine similarity, '
           f'got {self.similarity_threshold}')
    if self.mode == LSH and not 1 <= self.lsh_splits <= 30:
      fail(f'lsh_splits must be in [1, 30], got {self.lsh_splits}')
    for name in ('lsh_rounds', 'lsh_max_bucket_size', 'partition_size',
                 'partition_probes', 'recall_sample_size',
                 'block_size', 'read_batch_size'):
      if getattr(self, name) < 1:
        fail(f'{name} must be >= 1, got {getattr(self, name)}')
    if self.num_shards < 0:
      fail(f'num_shards must be >= 0 (0: automatic), got {self.num_shards}')
    if self.splits is not None and not self.splits:
      fail('splits must name at least one split (or be None for the default)')

  @classmethod
  def from_exec_properties(cls, exec_properties: Dict[str, Any]):
    values = {}
    for field in dataclasses.fields(cls):
      value = exec_properties.get(field.name)
      if value is None:
        continue
      if field.name in ('embedding_features', 'splits') and isinstance(
          value, str):
        value = json.loads(value)  # list parameters arrive JSON-encoded
      values[field.name] = value
    return cls(**values)

  def resolve_splits(self, available):
    """Default splits: train, plus unlabeled when present; checks names."""
    splits = self.splits or [s for s in (constants.TRAIN_SPLIT,
                                         constants.UNLABELED_SPLIT)
                             if s in available]
    unknown = [s for s in splits if s not in available]
    if unknown or not splits:
      raise ValueError(f'GraphBuilder: splits {unknown or splits} are not in '
                       f'the examples, which have {list(available)}')
    return dataclasses.replace(self, splits=list(splits))

  def to_dict(self):
    return dataclasses.asdict(self)
