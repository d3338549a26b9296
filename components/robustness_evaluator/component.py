"""RobustnessEvaluator: clean vs white-box attacked accuracy, gating a push.

It is TFX's standard Evaluator with our TFMA module: results load with
`tfma.load_eval_result` / `tfma.load_metrics`, TFMA's thresholds and baseline
comparisons produce the standard ModelBlessing, and the standard Pusher
gates on it.
"""
from typing import Dict, List, Optional, Sequence, Union

import tensorflow_model_analysis as tfma
from tfx import types
from tfx.dsl.components.base import base_beam_component
from tfx.dsl.components.base import executor_spec
from tfx.types import standard_artifacts
from tfx.types import standard_component_specs
from tfx.types.component_spec import ChannelParameter
from tfx.utils import json_utils

from tfx_nsl import constants
from tfx_nsl import heads
from tfx_nsl import parameters
from tfx_nsl.components.robustness_evaluator import attacks as attacks_lib
from tfx_nsl.components.robustness_evaluator import executor
from tfx_nsl.components.robustness_evaluator.params import RobustnessParams

TFMA_MODULE = 'tfx_nsl.components.robustness_evaluator.tfma_module'
AttackSpec = Union[str, Dict]


# The defaults live in RobustnessParams; the signature shows them.
_DEFAULTS = RobustnessParams()


class RobustnessEvaluatorSpec(standard_component_specs.EvaluatorSpec):
  INPUTS = {
      **standard_component_specs.EvaluatorSpec.INPUTS,
      executor.TRANSFORM_GRAPH_KEY: ChannelParameter(
          type=standard_artifacts.TransformGraph, optional=True),
      executor.STATISTICS_KEY: ChannelParameter(
          type=standard_artifacts.ExampleStatistics, optional=True),
  }
  PARAMETERS = {
      **standard_component_specs.EvaluatorSpec.PARAMETERS,
      # One per RobustnessParams field, so that each scalar may be a
      # RuntimeParameter.
      **parameters.spec_parameters(RobustnessParams),
  }


def _split_by_name(value):
  """(one value for all, by attack or feature name) of a float, a dict or a
  RuntimeParameter; RobustnessParams checks the types."""
  if isinstance(value, dict):
    return None, dict(value)
  return value, None


class RobustnessEvaluator(base_beam_component.BaseBeamComponent):
  """Clean and attacked metrics of a model (and a baseline), with gating.

  Runs TFX's Evaluator (TFMA) with one more extractor: each batch of
  examples is predicted clean and under every attack in `attacks`, on the
  model being judged: white-box FGSM or PGD (NSL's `gen_adv_neighbor`),
  APGD-CE, APGD-T (targeted DLR loss) or the score-based Square attack, L-inf
  or L2, or a suite (`autoattack_linf_eps0.1`, `autoattack-lite_...`:
  APGD-CE, APGD-T and Square in turn, each on the examples still robust),
  whose predictions are each example's worst case, so that its accuracy is
  robust accuracy (the fraction of examples no attack of the suite breaks).
  TFMA computes the metrics of each as an output of its own: `clean`, then
  one per attack name. The head's metric
  (accuracy, or mean squared error for regression) is gated on each with
  the thresholds given here, the user's `eval_config` metrics are computed
  on all of them, and the blessing is TFMA's, so TFX's Pusher gates on it.

  Any int, float or str parameter may be a RuntimeParameter; its value is
  checked when the component runs, before any data is read. The Beam
  counter `examples_attacked` (namespace 'tfx_nsl.Robustness') counts the
  examples each model was attacked on; the log reports progress per batch.

  Outputs:
    evaluation: TFMA's results (`tfma.load_metrics` reads them), the
      suites' sanity counts `robustness_flags.json`, the accuracy per class
      `robustness_classes.json` ({model: {attack: {class: [accuracy,
      examples]}}}), and the report `robustness.html` / `robustness.png`:
      accuracy against epsilon with 95% Wilson intervals (each attack
      beside its norm's autoattack worst case), candidate against baseline,
      each gate with pass/fail, the threshold failures, the sanity flags,
      the accuracy per class, a grid of the first examples a worker
      attacked, clean and under each attack, with the predicted classes
      (for an image-like perturbed
      feature: [h, w], [h, w, 1 or 3], or a flat square of at least 16
      values), and the configuration (model and data URIs, the attacks and
      suites with their budgets, the settings).
    blessing: a ModelBlessing, blessed when every threshold is met.

  Bad input:
    An attack name that does not parse, a repeated attack, a threshold out
    of range, thresholds naming attacks that are not run, a head name that
    does not exist, gates of the wrong head (accuracy on a regression model,
    or error on a classifier), output_names in `eval_config`,
    `attack_space='raw'` without `transform_graph`, or `statistics` (raw
    ranges) with `transform_graph` in the model-input space: ValueError at
    construction (at start, for a RuntimeParameter). When the evaluation
    starts, before any data is read: a label that is neither a raw feature
    nor a Transform output, model inputs that are not among the examples'
    (or Transform's) features, variable-length inputs without Transform, or
    a head that cannot be inferred (it asks for `head=`), a
    `perturb_features` name that is not a feature of the attack space or
    not a dense float, or a per-feature clip bound on a feature that is not
    perturbed, or an explicit bound that empties the range the statistics
    give, or white-box attacks on a model without a gradient with
    respect to a perturbed input (a non-differentiable layer, a
    stop_gradient): ValueError naming the feature (and the attacks, with
    square as what can run instead). While attacking: the same gradient
    check in the raw attack space, or an APGD, Square or suite attack on a
    regression model: ValueError saying what can run instead. Integer and
    string inputs are never perturbed.
  """
  SPEC_CLASS = RobustnessEvaluatorSpec
  EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(executor.Executor)

  def __init__(
      self,
      examples: types.BaseChannel,
      model: types.BaseChannel,
      baseline_model: Optional[types.BaseChannel] = None,
      transform_graph: Optional[types.BaseChannel] = None,
      statistics: Optional[types.BaseChannel] = None,
      label_key: Optional[str] = None,
      attacks: Sequence[AttackSpec] = tuple(_DEFAULTS.attacks),  # pylint: disable=redefined-outer-name
      min_clean_accuracy: Optional[float] = None,
      min_attacked_accuracy: Optional[Union[float, Dict[str, float]]] = None,
      max_accuracy_drop: Optional[float] = None,
      perturb_features: Optional[List[str]] = None,
      clip_min: Optional[Union[float, Dict[str, float]]] = None,
      clip_max: Optional[Union[float, Dict[str, float]]] = None,
      example_splits: Optional[List[str]] = None,
      batch_size: int = _DEFAULTS.batch_size,
      head: str = _DEFAULTS.head,
      eval_config: Optional[tfma.EvalConfig] = None,
      max_clean_error: Optional[float] = None,
      max_attacked_error: Optional[Union[float, Dict[str, float]]] = None,
      attack_space: str = _DEFAULTS.attack_space,
      max_error_increase: Optional[float] = None,
      fail_on_flags: bool = _DEFAULTS.fail_on_flags,
      gate_on_lower_bound: bool = _DEFAULTS.gate_on_lower_bound):
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
      statistics: StatisticsGen's ExampleStatistics of features in the
        attack space (the examples' own features without Transform, the raw
        ones with attack_space='raw'): on each side (min, max) where a
        perturbed feature has no clip bound of its own, it is clipped to
        what they show over all their splits (a float clip_min / clip_max
        still applies to every feature). Perturbed features they have no
        values of stay unbounded, with a warning. Eval values outside that
        range are moved into it by the clip.
      label_key: the label: a raw feature, or a Transform output when
        `transform_graph` is given (default: the label_key of `eval_config`'s
        first model spec, else 'label').
      attacks: attack names ('fgsm_linf_eps0.1',
        'pgd_l2_eps0.5_steps10_step0.1_rand', 'apgd-ce_linf_eps0.1',
        'apgd-t_linf_eps0.1_targets9', 'square_linf_eps0.1_queries5000',
        'autoattack_linf_eps0.1', 'autoattack-lite_l2_eps0.5'; the grammar
        and the suites' budgets: `attacks.py`) or dicts of `attacks.Attack`
        fields (method, norm, epsilon, steps, step_size, random_start,
        restarts, targets, queries). Epsilons are in the units of
        `attack_space`: by
        default the model's inputs, after Transform (e.g. standard
        deviations of a z-scored feature). Only float inputs are perturbed.
      min_clean_accuracy: bless only at or above this clean accuracy.
      min_attacked_accuracy: bless only at or above this accuracy under every
        attack (a float), or per attack name (a dict).
      max_accuracy_drop: with a baseline, bless only if no accuracy (clean
        or attacked) is more than this below the baseline's.
      perturb_features: model inputs the attacks perturb (default: every
        float input).
      clip_min, clip_max: valid range of the perturbed features, in the
        units of `attack_space`: one bound for every feature (e.g. 0.0 and
        1.0 for pixels), or per feature ({'age': 0.0}; a feature left out is
        unbounded on that side). Every attacked point is clipped to it.
        Names must be perturbed features (checked when the model is known).
      example_splits: splits to evaluate on (a list; as a RuntimeParameter,
        a str holding a JSON list such as '["eval"]').
      batch_size: examples per attack call (each model, each attack); the
        Evaluator's read batches are gathered up to it. Larger is faster
        until memory (batch x input size x attack steps' tensors) runs out.
      head: what the model outputs (tfx_nsl.heads): 'auto' (inferred from
        the candidate's output layer), 'multiclass', 'multiclass_logits',
        'binary', 'binary_logits', 'regression'. The gated metric is
        SparseCategoricalAccuracy (multiclass; Keras' value, computed
        natively by tfma_module), BinaryAccuracy (binary,
        reported with AUC) or MeanSquaredError (regression, reported with
        MeanAbsoluteError; the attacks then maximize the squared error).
      eval_config: your own tfma.EvalConfig: its metrics (e.g. AUC,
        calibration) are computed on the clean and on every attacked
        prediction alike, its slicing specs and options apply; its
        thresholds gate the clean predictions. Its model specs give only the
        label_key default (this component names the models).
      max_clean_error: the clean gate of a regression model: bless only at
        or below this mean squared error.
      max_attacked_error: the attacked gate of a regression model: bless
        only at or below this mean squared error under every attack (a
        float) or per attack name (a dict).
      attack_space: what the attacks move, and so the units of epsilon:
        'model_inputs' (default), the model's float inputs, after Transform
        (e.g. z-scores); or 'raw' (needs `transform_graph`), the raw dense
        float features, with gradients through the Transform graph, so that
        epsilon is in the raw columns' own units (optional raw features,
        parsed as sparse, are then left alone). `perturb_features`,
        `clip_min` and `clip_max` refer to features of that space.
      max_error_increase: with a baseline, bless a regression model only if
        no mean squared error (clean or attacked) is more than this above
        the baseline's (the regression counterpart of max_accuracy_drop).
      fail_on_flags: do not bless when a suite (`autoattack...`) raises a
        sanity flag (autoattack.FLAGS: examples that only the black-box
        attack broke, zero or non-finite gradients, non-deterministic
        predictions, saturated softmax). Flags are always counted in
        `robustness_flags.json`, the report and the log.
      gate_on_lower_bound: apply min_clean_accuracy and min_attacked_accuracy
        to the lower bound of each accuracy's 95% Wilson interval as well
        (on the number of examples evaluated), so that a small eval split
        cannot bless a model by luck; a failure names the bound and the
        count.
    """
    if label_key is None:
      label_key = next((spec.label_key for spec in
                        (eval_config.model_specs if eval_config else [])
                        if spec.label_key), constants.LABEL_FEATURE)
    if attack_space == attacks_lib.RAW and transform_graph is None:
      raise ValueError("RobustnessEvaluator: attack_space 'raw' attacks the "
                       'raw features through the Transform graph: pass '
                       'transform_graph')
    if (statistics is not None and transform_graph is not None and
        attack_space != attacks_lib.RAW and
        not parameters.is_runtime(attack_space)):  # else checked at start
      raise ValueError(executor.STATISTICS_NEED_RAW)
    for name, value in (('attacks', attacks), ('example_splits',
                                               example_splits)):
      if isinstance(value, str) or (name == 'attacks' and
                                    parameters.is_runtime(value)):
        raise ValueError(
            f'RobustnessEvaluator: {name} must be a list, e.g. '
            f'[{value!r}]' + (' (a RuntimeParameter of example_splits is a '
                              'str holding a JSON list)'
                              if name == 'example_splits' else ''))
    for name, value in (('max_accuracy_drop', max_accuracy_drop),
                        ('max_error_increase', max_error_increase)):
      if value is not None and baseline_model is None:
        raise ValueError(f'RobustnessEvaluator: {name} compares with a '
                         'baseline: pass baseline_model, or leave it out')
    if not attacks and (min_attacked_accuracy is not None or
                        max_attacked_error is not None):
      raise ValueError('RobustnessEvaluator: min_attacked_accuracy / '
                       'max_attacked_error gate attacks, and attacks is '
                       'empty: list the attacks, or leave the gate out')
    min_attacked, min_attacked_by = _split_by_name(min_attacked_accuracy)
    max_attacked, max_attacked_by = _split_by_name(max_attacked_error)
    clip_min_all, clip_min_by = _split_by_name(clip_min)
    clip_max_all, clip_max_by = _split_by_name(clip_max)
    params = RobustnessParams(
        attacks=[attacks_lib.Attack.parse(spec).name if isinstance(spec, str)
                 else attacks_lib.Attack.from_dict(spec).name
                 for spec in attacks],
        label_key=label_key, min_clean_accuracy=min_clean_accuracy,
        min_attacked_accuracy=min_attacked,
        min_attacked_accuracy_by_attack=min_attacked_by,
        max_accuracy_drop=max_accuracy_drop, max_clean_error=max_clean_error,
        max_attacked_error=max_attacked,
        max_attacked_error_by_attack=max_attacked_by,
        max_error_increase=max_error_increase,
        perturb_features=perturb_features, clip_min=clip_min_all,
        clip_max=clip_max_all, clip_min_by_feature=clip_min_by,
        clip_max_by_feature=clip_max_by, batch_size=batch_size, head=head,
        attack_space=attack_space, fail_on_flags=fail_on_flags,
        gate_on_lower_bound=gate_on_lower_bound)
    # The metrics depend on the head, known once the model is: the executor
    # builds the final EvalConfig. This checks the gates and the user's
    # config now, with the head they imply.
    if parameters.is_runtime(head) or head == heads.AUTO:
      regression = any(v is not None for v in (
          max_clean_error, max_attacked_error, max_error_increase))
      implied = 'regression' if regression else 'multiclass'
    else:
      implied = head
    if not any(parameters.is_runtime(v) for v in params.__dict__.values()):
      executor.robustness_eval_config(
          heads.Head(implied), params.gates(baseline_model is not None),
          eval_config)
    spec = RobustnessEvaluatorSpec(
        examples=examples, model=model, baseline_model=baseline_model,
        transform_graph=transform_graph, statistics=statistics,
        eval_config=eval_config,
        example_splits=(example_splits if parameters.is_runtime(
            example_splits) else json_utils.dumps(example_splits or
                                                  [constants.EVAL_SPLIT])),
        module_path=TFMA_MODULE,
        evaluation=types.Channel(type=standard_artifacts.ModelEvaluation),
        blessing=types.Channel(type=standard_artifacts.ModelBlessing),
        **params.to_exec_properties(),
        **{parameters.FINGERPRINT_KEY: parameters.fingerprint()})
    super().__init__(spec=spec)
