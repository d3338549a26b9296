"""RobustnessEvaluator parameters: validated once, shared by component and
executor (`tfx_nsl.parameters`). The EvaluatorSpec's own parameters
(eval_config, example_splits, module_path) are TFX's and stay theirs."""
import dataclasses
from typing import Dict, List, Optional

from tfx_nsl import constants
from tfx_nsl import heads
from tfx_nsl import parameters
from tfx_nsl.components.robustness_evaluator import attacks as attacks_lib

COMPONENT = 'RobustnessEvaluator'


@dataclasses.dataclass(frozen=True)
class Gates:
  """What blesses a model: accuracy thresholds per TFMA output."""
  attack_names: List[str]
  label_key: str
  min_clean_accuracy: Optional[float] = None
  min_attacked_accuracy: Dict[str, float] = dataclasses.field(
      default_factory=dict)
  max_accuracy_drop: Optional[float] = None
  with_baseline: bool = False
  # Regression heads: upper bounds on mean squared error.
  max_clean_error: Optional[float] = None
  max_attacked_error: Dict[str, float] = dataclasses.field(
      default_factory=dict)
  max_error_increase: Optional[float] = None
  # Accuracy floors apply to the 95% Wilson interval's lower bound too.
  on_lower_bound: bool = False

  def accuracy_floors(self):
    """{TFMA output name: the candidate's minimum accuracy}."""
    floors = dict(self.min_attacked_accuracy)
    if self.min_clean_accuracy is not None:
      floors[attacks_lib.CLEAN] = self.min_clean_accuracy
    return floors

  def check(self, head):
    """Fails when a gate does not fit the model's head."""
    accuracy = [n for n in ('min_clean_accuracy', 'min_attacked_accuracy',
                            'max_accuracy_drop') if getattr(self, n)]
    error = [n for n in ('max_clean_error', 'max_attacked_error',
                         'max_error_increase') if getattr(self, n) is not None
             and getattr(self, n) != {}]
    if self.on_lower_bound and not head.classification:
      raise ValueError('gate_on_lower_bound applies to accuracy floors; the '
                       "model's head is regression: leave it out")
    if head.classification and error:
      raise ValueError(f'{error} gate regression models; the model\'s head is '
                       f'{head.name}: use min_clean_accuracy / '
                       'min_attacked_accuracy')
    if not head.classification and accuracy:
      raise ValueError(f'{accuracy} gate classifiers; the model\'s head is '
                       'regression: use max_clean_error / max_attacked_error '
                       '(mean squared error)')


def _bound_features(bound):
  """The features a clip bound names; [None] for one bound for all."""
  return list(bound) if isinstance(bound, dict) else [None]


def _bound_of(bound, feature):
  return bound.get(feature) if isinstance(bound, dict) else bound


def _unit_interval(value) -> bool:
  return 0.0 <= value <= 1.0


def _non_negative(value) -> bool:
  return value >= 0.0


@dataclasses.dataclass(frozen=True)
class RobustnessParams:
  """See `RobustnessEvaluator` for the meaning of each field. A threshold
  for every attack is `min_attacked_accuracy` (a float); per attack name,
  `min_attacked_accuracy_by_attack`; likewise `max_attacked_error`."""
  attacks: List[str] = dataclasses.field(default_factory=lambda: [
      'fgsm_linf_eps0.05', 'fgsm_linf_eps0.1'])
  label_key: str = constants.LABEL_FEATURE
  min_clean_accuracy: Optional[float] = None
  min_attacked_accuracy: Optional[float] = None
  min_attacked_accuracy_by_attack: Optional[Dict[str, float]] = None
  max_accuracy_drop: Optional[float] = None
  max_clean_error: Optional[float] = None
  max_attacked_error: Optional[float] = None
  max_attacked_error_by_attack: Optional[Dict[str, float]] = None
  max_error_increase: Optional[float] = None
  perturb_features: Optional[List[str]] = None
  clip_min: Optional[float] = None
  clip_max: Optional[float] = None
  clip_min_by_feature: Optional[Dict[str, float]] = None
  clip_max_by_feature: Optional[Dict[str, float]] = None
  batch_size: int = attacks_lib.DEFAULT_BATCH_SIZE
  head: str = heads.AUTO
  attack_space: str = attacks_lib.MODEL_INPUTS
  fail_on_flags: bool = False
  gate_on_lower_bound: bool = False

  def __post_init__(self):
    check = parameters.check(self, COMPONENT)
    names = [attacks_lib.Attack.parse(name).name for name in self.attacks]
    if len(set(names)) != len(names):
      check.fail(f'attacks {self.attacks} repeat an attack')
    for name in ('min_attacked_accuracy_by_attack',
                 'max_attacked_error_by_attack'):
      unknown = sorted(set(getattr(self, name) or {}) - set(names))
      if unknown:
        check.fail(f'{name} names attacks {unknown} that are not in attacks '
                   f'{names}')
    for name in ('min_clean_accuracy', 'min_attacked_accuracy'):
      check.require(name, _unit_interval, 'an accuracy in [0, 1]')
    for name in ('max_accuracy_drop', 'max_clean_error', 'max_attacked_error',
                 'max_error_increase'):
      check.require(name, _non_negative, 'must be >= 0')
    for name, ok, allowed in (
        ('min_attacked_accuracy_by_attack', _unit_interval,
         'accuracies in [0, 1]'),
        ('max_attacked_error_by_attack', _non_negative, 'errors >= 0')):
      check.require(name, lambda v, ok=ok: all(ok(x) for x in v.values()),
                    allowed)
    check.require('batch_size', lambda v: v >= 1,
                  'must be >= 1 (examples per attack call)')
    check.require('head', lambda v: v == heads.AUTO or v in heads.HEADS,
                  f'one of {(heads.AUTO,) + tuple(heads.HEADS)}')
    check.require('attack_space', lambda v: v in attacks_lib.ATTACK_SPACES,
                  f'one of {attacks_lib.ATTACK_SPACES}')
    check.require('label_key', bool, 'a feature name')
    if (self.gate_on_lower_bound is True and check.known(
        'min_clean_accuracy', 'min_attacked_accuracy',
        'min_attacked_accuracy_by_attack') and self.min_clean_accuracy is None
        and self.min_attacked_accuracy is None and
        not self.min_attacked_accuracy_by_attack):
      check.fail('gate_on_lower_bound=True applies min_clean_accuracy / '
                 'min_attacked_accuracy to the 95% lower bound, and neither '
                 'is set: set one, or leave gate_on_lower_bound out')
    if check.known('clip_min', 'clip_max'):
      low, high = self.clip_bounds()
      for name in sorted(set(_bound_features(low)) | set(
          _bound_features(high)), key=str):
        lo, hi = _bound_of(low, name), _bound_of(high, name)
        if lo is not None and hi is not None and lo >= hi:
          where = '' if name is None else f' of feature {name!r}'
          check.fail(f'clip_min={lo}{where} must be below clip_max={hi}')

  def clip_bounds(self):
    """(clip_min, clip_max), each a float, {feature: float} or None."""
    return (self.clip_min_by_feature or self.clip_min,
            self.clip_max_by_feature or self.clip_max)

  @classmethod
  def from_exec_properties(cls, exec_properties):
    return parameters.from_exec_properties(cls, exec_properties)

  def to_exec_properties(self):
    return parameters.to_exec_properties(self)

  def _per_attack(self, every, by_attack):
    if every is not None:
      return {name: every for name in self.attack_names}
    return dict(by_attack or {})

  @property
  def attack_names(self) -> List[str]:
    return [attacks_lib.Attack.parse(name).name for name in self.attacks]

  def gates(self, with_baseline: bool):
    return Gates(
        attack_names=self.attack_names, label_key=self.label_key,
        min_clean_accuracy=self.min_clean_accuracy,
        min_attacked_accuracy=self._per_attack(
            self.min_attacked_accuracy, self.min_attacked_accuracy_by_attack),
        max_accuracy_drop=self.max_accuracy_drop, with_baseline=with_baseline,
        max_clean_error=self.max_clean_error,
        max_attacked_error=self._per_attack(
            self.max_attacked_error, self.max_attacked_error_by_attack),
        max_error_increase=self.max_error_increase,
        on_lower_bound=self.gate_on_lower_bound)

  def attack_settings(self, transform_graph: Optional[str] = None):
    if self.attack_space == attacks_lib.RAW and transform_graph is None:
      raise ValueError(f"{COMPONENT}: attack_space 'raw' attacks the raw "
                       'features through the Transform graph: pass '
                       'transform_graph')
    return attacks_lib.AttackSettings(
        label_key=self.label_key, perturb_features=self.perturb_features,
        clip_min=self.clip_bounds()[0], clip_max=self.clip_bounds()[1],
        batch_size=self.batch_size, head=self.head,
        transform_graph=transform_graph, attack_space=self.attack_space)
