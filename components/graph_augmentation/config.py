"""GraphAugmentation parameters: validated once, shared by component and
executor (`tfx_nsl.parameters`)."""
import dataclasses
from typing import Any, Dict, List, Optional

from tfx_nsl import constants
from tfx_nsl import parameters
from tfx_nsl.components.graph_augmentation import augment_core

COMPONENT = 'GraphAugmentation'
DEFAULT_MAX_NEIGHBORS = 3


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
