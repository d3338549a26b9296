"""RobustnessEvaluator: clean vs white-box attacked accuracy, gating a push.

It is TFX's standard Evaluator with our TFMA module: results load with
`tfma.load_eval_result` / `tfma.load_metrics`, TFMA's thresholds and baseline
comparisons produce the standard ModelBlessing, and the standard Pusher
gates on it.
"""
import json
from typing import Dict, List, Optional, Sequence, Union

import tensorflow_model_analysis as tfma
from tfx import types
from tfx.dsl.components.base import base_beam_component
from tfx.dsl.components.base import executor_spec
from tfx.types import standard_artifacts
from tfx.types import standard_component_specs
from tfx.types.component_spec import ChannelParameter
from tfx.types.component_spec import ExecutionParameter
from tfx.utils import json_utils

from tfx_nsl import constants
from tfx_nsl import heads
from tfx_nsl.components.robustness_evaluator import attacks as attacks_lib
from tfx_nsl.components.robustness_evaluator import executor

TFMA_MODULE = 'tfx_nsl.components.robustness_evaluator.tfma_module'
AttackSpec = Union[str, Dict]


class RobustnessEvaluatorSpec(standard_component_specs.EvaluatorSpec):
  INPUTS = {
      **standard_component_specs.EvaluatorSpec.INPUTS,
      executor.TRANSFORM_GRAPH_KEY: ChannelParameter(
          type=standard_artifacts.TransformGraph, optional=True),
  }
  PARAMETERS = {
      **standard_component_specs.EvaluatorSpec.PARAMETERS,
      executor.ATTACK_SETTINGS_KEY: ExecutionParameter(type=str),
      executor.GATES_KEY: ExecutionParameter(type=str),
  }


def _per_attack(name, value, attack_names):
  """{attack name: threshold} of a float (every attack) or a dict."""
  if isinstance(value, dict):
    unknown = sorted(set(value) - set(attack_names))
    if unknown:
      raise ValueError(f'{name} names attacks {unknown} that are not in '
                       f'attacks {attack_names}')
    return {k: float(v) for k, v in value.items()}
  if value is not None:
    return {attack: float(value) for attack in attack_names}
  return {}


class RobustnessEvaluator(base_beam_component.BaseBeamComponent):
  """Clean and attacked metrics of a model (and a baseline), with gating."""
  SPEC_CLASS = RobustnessEvaluatorSpec
  EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(executor.Executor)

  def __init__(
      self,
      examples: types.BaseChannel,
      model: types.BaseChannel,
      baseline_model: Optional[types.BaseChannel] = None,
      transform_graph: Optional[types.BaseChannel] = None,
      label_key: Optional[str] = None,
      attacks: Sequence[AttackSpec] = ('fgsm_linf_eps0.05', 'fgsm_linf_eps0.1'),  # pylint: disable=redefined-outer-name
      min_clean_accuracy: Optional[float] = None,
      min_attacked_accuracy: Optional[Union[float, Dict[str, float]]] = None,
      max_accuracy_drop: Optional[float] = None,
      perturb_features: Optional[List[str]] = None,
      clip_min: Optional[float] = None,
      clip_max: Optional[float] = None,
      example_splits: Optional[List[str]] = None,
      batch_size: int = attacks_lib.DEFAULT_BATCH_SIZE,
      head: str = heads.AUTO,
      eval_config: Optional[tfma.EvalConfig] = None,
      max_clean_error: Optional[float] = None,
      max_attacked_error: Optional[Union[float, Dict[str, float]]] = None,
      attack_space: str = attacks_lib.MODEL_INPUTS):
    """Constructs a RobustnessEvaluator.

    Args:
      examples: Examples to evaluate on (`example_splits`, default eval):
        raw examples when `transform_graph` is given, else examples holding
        the model's inputs.
      model: the candidate Model (a Keras SavedModel, as our Trainer exports).
      baseline_model: optional Model to compare against, e.g. the latest
        blessed model (a Resolver) or a plain model trained alongside.
      transform_graph: the Transform graph the models were trained with; it
        is applied to the raw examples before the models (and the attacks)
        see them.
      label_key: the label: a raw feature, or a Transform output when
        `transform_graph` is given (default: the label_key of `eval_config`'s
        first model spec, else 'label').
      attacks: attack names ('fgsm_linf_eps0.1',
        'pgd_l2_eps0.5_steps10_step0.1_rand') or dicts of
        `attacks.Attack` fields (method, norm, epsilon, steps, step_size,
        random_start). Epsilons are in the units of the model's inputs:
        after Transform, e.g. standard deviations of a z-scored feature.
        Only float inputs are perturbed.
      min_clean_accuracy: bless only at or above this clean accuracy.
      min_attacked_accuracy: bless only at or above this accuracy under every
        attack (a float), or per attack name (a dict).
      max_accuracy_drop: with a baseline, bless only if no accuracy (clean
        or attacked) is more than this below the baseline's.
      perturb_features: model inputs the attacks perturb (default: every
        float input).
      clip_min, clip_max: valid range of perturbed features (e.g. pixels in
        [0, 1]).
      example_splits: splits to evaluate on.
      batch_size: examples per attack call (each model, each attack); the
        Evaluator's read batches are gathered up to it. Larger is faster
        until memory (batch x input size x attack steps' tensors) runs out.
      head: what the model outputs (tfx_nsl.heads): 'auto' (inferred from
        the candidate's output layer), 'multiclass', 'multiclass_logits',
        'binary', 'binary_logits', 'regression'. The gated metric is
        SparseCategoricalAccuracy (multiclass), BinaryAccuracy (binary,
        reported with AUC) or MeanSquaredError (regression, reported with
        MeanAbsoluteError; the attacks then maximize the squared error).
      eval_config: your own tfma.EvalConfig: its metrics (e.g. AUC,
        calibration) are computed on the clean and on every attacked
        prediction alike, its slicing specs and options apply; its
        thresholds gate the clean predictions. Its model specs give only the
        label_key default (this component names the models).
      max_clean_error, max_attacked_error: the gates of a regression model:
        bless only at or below this mean squared error, clean and under every
        attack (a float) or per attack name (a dict).
      attack_space: what the attacks move, and so the units of epsilon:
        'model_inputs' (default), the model's float inputs, after Transform
        (e.g. z-scores); or 'raw' (needs `transform_graph`), the raw dense
        float features, with gradients through the Transform graph, so that
        epsilon is in the raw columns' own units (optional raw features,
        parsed as sparse, are then left alone). `perturb_features`,
        `clip_min` and `clip_max` refer to features of that space.
    """
    if label_key is None:
      label_key = next((spec.label_key for spec in
                        (eval_config.model_specs if eval_config else [])
                        if spec.label_key), constants.LABEL_FEATURE)
    if head != heads.AUTO:
      heads.Head(head)
    if attack_space not in attacks_lib.ATTACK_SPACES:
      raise ValueError(f'attack_space must be one of '
                       f'{attacks_lib.ATTACK_SPACES}, got {attack_space!r}')
    if attack_space == attacks_lib.RAW and transform_graph is None:
      raise ValueError("attack_space 'raw' attacks the raw features through "
                       'the Transform graph: pass transform_graph')
    names = []
    for spec in attacks:
      attack = (attacks_lib.Attack.parse(spec) if isinstance(spec, str)
                else attacks_lib.Attack.from_dict(spec))
      names.append(attack.name)
    if len(set(names)) != len(names):
      raise ValueError(f'attacks {names} repeat an attack')
    per_attack = _per_attack('min_attacked_accuracy', min_attacked_accuracy,
                             names)
    per_attack_error = _per_attack('max_attacked_error', max_attacked_error,
                                   names)
    for name, value in [('max_clean_error', max_clean_error),
                        *per_attack_error.items()]:
      if value is not None and not value >= 0.0:
        raise ValueError(f'error threshold {name} must be >= 0, got {value}')
    for name, value in [('min_clean_accuracy', min_clean_accuracy),
                        *per_attack.items()]:
      if value is not None and not 0.0 <= value <= 1.0:
        raise ValueError(f'accuracy threshold {name} must be in [0, 1], got '
                         f'{value}')
    if (isinstance(batch_size, bool) or not isinstance(batch_size, int) or
        batch_size < 1):
      raise ValueError(f'batch_size must be an int >= 1 (examples per attack '
                       f'call), got {batch_size!r}')
    if max_accuracy_drop is not None and max_accuracy_drop < 0:
      raise ValueError('max_accuracy_drop must be >= 0')
    if (clip_min is not None and clip_max is not None and
        clip_min >= clip_max):
      raise ValueError('clip_min must be below clip_max')
    gates = executor.Gates(
        attack_names=names, min_clean_accuracy=min_clean_accuracy,
        min_attacked_accuracy=per_attack, max_accuracy_drop=max_accuracy_drop,
        with_baseline=baseline_model is not None, label_key=label_key,
        max_clean_error=max_clean_error, max_attacked_error=per_attack_error)
    # The metrics depend on the head, known once the model is: the executor
    # builds the final EvalConfig. This checks the gates and the user's
    # config now, with the head they imply.
    implied = head if head != heads.AUTO else (
        'regression' if max_clean_error is not None or per_attack_error
        else 'multiclass')
    executor.robustness_eval_config(heads.Head(implied), gates, eval_config)
    settings = attacks_lib.AttackSettings(
        label_key=label_key, perturb_features=perturb_features,
        clip_min=clip_min, clip_max=clip_max, batch_size=batch_size,
        head=head, attack_space=attack_space)
    spec = RobustnessEvaluatorSpec(
        examples=examples, model=model, baseline_model=baseline_model,
        transform_graph=transform_graph,
        eval_config=eval_config,
        example_splits=json_utils.dumps(example_splits or
                                        [constants.EVAL_SPLIT]),
        module_path=TFMA_MODULE,
        attack_settings=json.dumps(settings.__dict__),
        gates=json.dumps(gates.__dict__),
        evaluation=types.Channel(type=standard_artifacts.ModelEvaluation),
        blessing=types.Channel(type=standard_artifacts.ModelBlessing))
    super().__init__(spec=spec)
