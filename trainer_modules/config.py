"""`custom_config` of the NSL Trainer: the one place its keys are documented.

`TrainerConfig.from_dict` is called by `create_pipeline` (so a bad key fails
when the pipeline is built, not minutes later inside the Trainer) and again
by `run_fn`. It imports no TensorFlow.

Keys (all optional except `feature_keys`):

  feature_keys       list of the model's input features: raw features, or
                     outputs of Transform's preprocessing_fn when the
                     Trainer has a transform_graph.
  label_key          the label: int class ids (classification) or floats
                     (regression); a raw feature or an output of Transform
                     (default 'label'). A missing label (or -1, or NaN) marks
                     an unlabeled example.
  examples           'auto' (default), 'transformed' or 'raw': whether the
                     Trainer's examples are Transform's transformed_examples
                     or raw examples that Transform's graph is applied to
                     here. 'auto' tells them apart by the first example's
                     feature names and types.
  head               what the model outputs (tfx_nsl.heads): 'auto' (default;
                     the built-in model is then 'multiclass', a model_fn's
                     model is inferred from its output layer), 'multiclass',
                     'multiclass_logits', 'binary', 'binary_logits',
                     'regression'. It picks the loss and the metrics.
  num_classes        number of classes of the built-in multiclass model
                     (default 10).
  model              the built-in classifier: {'type': 'dense' or 'cnn',
                     'hidden_units': [64, 64], 'dropout': 0.0,
                     'image_shape': None, 'filters': [32, 64]}. 'cnn' reshapes
                     the (single) input feature to image_shape, e.g. [8, 8, 1],
                     then conv layers of `filters`, then the dense layers.
  model_fn           'package.module.function' returning a Keras 2 model that
                     takes {feature: tensor} for `feature_keys`; replaces
                     `model`. Called as fn(input_specs, config) with
                     {feature: tf.TensorSpec (batch first, with dtype)} and
                     this TrainerConfig. From a Trainer module_file, use
                     `nsl_trainer.make_run_fn(model_fn)` instead.
  graph              None, or NSL graph regularization settings: max_neighbors
                     (neighbors read per example), multiplier, distance_type
                     ('l2', 'l1', 'cosine', 'kl_divergence',
                     'jensen_shannon_divergence'), sum_over_axis (-1 by
                     default for the last three, which need it).
                     Needs examples from GraphAugmentation; a missing neighbor
                     counts with weight 0, as in NSL.
  adversarial        None, or NSL adversarial regularization settings:
                     multiplier, adv_step_size, adv_grad_norm ('infinity' or
                     'l2'), clip_value_min, clip_value_max, pgd_iterations,
                     pgd_epsilon, perturb_features (default: every float
                     model input; neighbor features are never perturbed).
                     Both `graph` and `adversarial` may be set at once.
  distribution       tf.distribute strategy: 'auto' (TPU if a TPU cluster
                     resolver finds one, else MirroredStrategy over visible
                     GPUs if any, else the default strategy), 'default',
                     'mirrored', 'tpu'. `devices` (list) pins the mirrored
                     devices, e.g. ['/cpu:0', '/cpu:1'].
  devices            see `distribution`.
  optimizer          'adam' (default), 'sgd' or 'rmsprop'.
  learning_rate      Adam learning rate (default 1e-3).
  batch_size         global batch size, split across replicas (default 32).
  epochs             the Trainer's train steps are spread over this many
                     epochs (default 1).
  seed               TensorFlow and shuffle seed (default 0).

Examples without a label (e.g. unlabeled seeds from GraphAugmentation) take
part in graph regularization only: their supervised loss has weight 0.
"""
import dataclasses
from typing import Any, Dict, List, Optional

from tfx_nsl import constants
from tfx_nsl import heads
from tfx_nsl import parameters

_ADVERSARIAL_DEFAULTS = {
    'multiplier': 0.2,
    'adv_step_size': 0.05,
    'adv_grad_norm': 'infinity',
    'clip_value_min': None,
    'clip_value_max': None,
    'pgd_iterations': 1,
    'pgd_epsilon': None,
    'perturb_features': None,
}
_GRAPH_DEFAULTS = {
    'max_neighbors': 2,
    'multiplier': 0.1,
    'distance_type': 'l2',
    'sum_over_axis': None,
}
# NSL needs the axis to sum over for distances between distributions or
# directions; -1 is the class / feature axis of our models' outputs.
_DISTANCES_NEEDING_AXIS = ('cosine', 'kl_divergence', 'jensen_shannon_divergence')
_MODEL_DEFAULTS = {'type': 'dense', 'hidden_units': [64, 64], 'dropout': 0.0,
                   'image_shape': None, 'filters': [32, 64]}
DISTRIBUTIONS = ('auto', 'default', 'mirrored', 'tpu')
EXAMPLES = ('auto', 'transformed', 'raw')
OPTIMIZERS = ('adam', 'sgd', 'rmsprop')


def _merge(name, given, defaults):
  unknown = sorted(set(given) - set(defaults))
  if unknown:
    raise ValueError(f'custom_config[{name!r}] has unknown keys {unknown}; '
                     f'known keys: {sorted(defaults)}')
  return {**defaults, **given}


@dataclasses.dataclass(frozen=True)
class TrainerConfig:
  """Validated Trainer settings; see the module docstring for each key."""
  feature_keys: List[str]
  label_key: str = constants.LABEL_FEATURE
  examples: str = 'auto'
  head: str = heads.AUTO
  num_classes: int = 10
  model: Dict[str, Any] = dataclasses.field(
      default_factory=lambda: dict(_MODEL_DEFAULTS))
  model_fn: Optional[str] = None
  graph: Optional[Dict[str, Any]] = None
  adversarial: Optional[Dict[str, Any]] = None
  distribution: str = 'auto'
  devices: Optional[List[str]] = None
  optimizer: str = 'adam'
  learning_rate: float = 1e-3
  batch_size: int = 32
  epochs: int = 1
  seed: int = 0

  @classmethod
  def from_dict(cls, config):
    if not isinstance(config, dict):
      raise TypeError(f'custom_config must be a dict, got {type(config)}')
    # The pipeline's fingerprint of the code (tfx_nsl.parameters) is for
    # TFX's cache key only.
    config = {k: v for k, v in config.items()
              if k != parameters.FINGERPRINT_KEY}
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(config) - known)
    if unknown:
      raise ValueError(f'custom_config has unknown keys {unknown}; known keys: '
                       f'{sorted(known)} (see tfx_nsl.trainer_modules.config)')
    if not config.get('feature_keys'):
      raise ValueError("custom_config['feature_keys'] must list the model's "
                       'input features, e.g. ["pixels"]')
    values = dict(config)
    values['feature_keys'] = list(config['feature_keys'])
    values['model'] = _merge('model', config.get('model') or {}, _MODEL_DEFAULTS)
    if values['model']['type'] not in ('dense', 'cnn'):
      raise ValueError("model['type'] must be 'dense' or 'cnn', got "
                       f"{values['model']['type']!r}")
    if values['model']['type'] == 'cnn' and (
        not values['model']['image_shape'] or
        len(values['feature_keys']) != 1):
      raise ValueError("model type 'cnn' needs model['image_shape'] (e.g. "
                       '[8, 8, 1]) and exactly one feature in feature_keys')
    if config.get('graph') is not None:
      values['graph'] = _merge('graph', config['graph'], _GRAPH_DEFAULTS)
      if int(values['graph']['max_neighbors']) < 1:
        raise ValueError("graph['max_neighbors'] must be >= 1")
      if (values['graph']['distance_type'] in _DISTANCES_NEEDING_AXIS and
          values['graph']['sum_over_axis'] is None):
        values['graph']['sum_over_axis'] = -1
    if values.get('examples', 'auto') not in EXAMPLES:
      raise ValueError(f"custom_config['examples'] must be one of {EXAMPLES}, "
                       f"got {values['examples']!r}")
    if values.get('head', heads.AUTO) not in (heads.AUTO, *heads.HEADS):
      raise ValueError(f"custom_config['head'] must be one of "
                       f"{(heads.AUTO, *heads.HEADS)}, got {values['head']!r}")
    if values.get('distribution', 'auto') not in DISTRIBUTIONS:
      raise ValueError(f'distribution must be one of {DISTRIBUTIONS}, got '
                       f"{values['distribution']!r}")
    if values.get('optimizer', 'adam') not in OPTIMIZERS:
      raise ValueError(f'optimizer must be one of {OPTIMIZERS}, got '
                       f"{values['optimizer']!r}")
    if config.get('adversarial') is not None:
      values['adversarial'] = _merge('adversarial', config['adversarial'],
                                     _ADVERSARIAL_DEFAULTS)
      if values['adversarial']['adv_grad_norm'] not in ('infinity', 'l2', 'l1'):
        raise ValueError("adversarial['adv_grad_norm'] must be 'infinity', "
                         f"'l2' or 'l1', got {values['adversarial']['adv_grad_norm']!r}")
    if config.get('model_fn') is not None and '.' not in config['model_fn']:
      raise ValueError("custom_config['model_fn'] must be an import path like "
                       f"'package.module.function', got {config['model_fn']!r}")
    for key in ('num_classes', 'batch_size', 'epochs'):
      if int(values.get(key, 1)) < 1:
        raise ValueError(f'custom_config[{key!r}] must be >= 1, got {values[key]}')
    if values.get('label_key', constants.LABEL_FEATURE) in values['feature_keys']:
      raise ValueError(f"label_key {values.get('label_key', 'label')!r} is also "
                       'in feature_keys; the label must not be a model input')
    return cls(**values)

  def to_dict(self):
    return dataclasses.asdict(self)
