"""White-box attacks on a Keras classifier with NSL's attack code.

Epsilons are in the units of the model's inputs: with a Transform graph,
the transformed features (e.g. z-scores), not the raw columns.

Pure TensorFlow + NSL: no TFMA, no Beam. An attack is named by a string,
which is also its TFMA output name, so an EvalConfig alone says which
attacks run and which thresholds apply to them:

  clean                                   no perturbation
  fgsm_linf_eps0.1                        one gradient step of size eps
  pgd_l2_eps0.5_steps10_step0.1[_rand]    projected gradient descent
"""
import dataclasses
import re
from typing import Optional, Sequence

import tensorflow as tf

from tfx_nsl import heads
from tfx_nsl.nsl_compat import import_nsl
from tfx_nsl.nsl_compat import per_feature

CLEAN = 'clean'
# Examples per attack call. TFXIO's adaptive batching starts at a few
# examples per batch, and an attack step costs about as much for 2 examples
# as for hundreds on a CPU: attacking such batches took 55 minutes where
# batches of hundreds took 31 s (5,000 examples).
DEFAULT_BATCH_SIZE = 512
METHODS = ('fgsm', 'pgd')
# What the attacks move (ModelInputs): the model's inputs, after Transform,
# or the raw features, through the Transform graph.
MODEL_INPUTS, RAW = 'model_inputs', 'raw'
ATTACK_SPACES = (MODEL_INPUTS, RAW)
NORMS = {'linf': 'infinity', 'l2': 'l2'}
_NAME = re.compile(
    r'^(?P<method>fgsm|pgd)_(?P<norm>linf|l2)_eps(?P<eps>[0-9.]+)'
    r'(?:_steps(?P<steps>\d+)_step(?P<step>[0-9.]+))?(?P<rand>_rand)?$')


@dataclasses.dataclass(frozen=True)
class Attack:
  """One white-box attack; `name` round-trips through `parse`."""
  method: str
  norm: str
  epsilon: float
  steps: int = 1
  step_size: Optional[float] = None
  random_start: bool = False

  def __post_init__(self):
    if self.method not in METHODS:
      raise ValueError(f'attack method must be one of {METHODS}, got '
                       f'{self.method!r}')
    if self.norm not in NORMS:
      raise ValueError(f'attack norm must be one of {sorted(NORMS)}, got '
                       f'{self.norm!r}')
    if not self.epsilon > 0:
      raise ValueError(f'attack epsilon must be > 0, got {self.epsilon}')
    if self.method == 'pgd' and (self.steps < 1 or not self.step_size or
                                 self.step_size <= 0):
      raise ValueError('a pgd attack needs steps >= 1 and step_size > 0')
    if self.method == 'fgsm' and (self.steps != 1 or self.random_start):
      raise ValueError('fgsm is one step without random start; use pgd')

  @property
  def name(self):
    name = f'{self.method}_{self.norm}_eps{self.epsilon:g}'
    if self.method == 'pgd':
      name += f'_steps{self.steps}_step{self.step_size:g}'
    return name + ('_rand' if self.random_start else '')

  @classmethod
  def parse(cls, name):
    match = _NAME.match(name)
    if not match:
      raise ValueError(
          f'{name!r} is not an attack name like "fgsm_linf_eps0.1" or '
          '"pgd_l2_eps0.5_steps10_step0.1_rand"')
    return cls(method=match['method'], norm=match['norm'],
               epsilon=float(match['eps']),
               steps=int(match['steps'] or 1),
               step_size=float(match['step']) if match['step'] else None,
               random_start=bool(match['rand']))

  @classmethod
  def from_dict(cls, spec):
    return cls(**spec)


@dataclasses.dataclass(frozen=True)
class AttackSettings:
  """What every attack shares: the label, perturbed features, clip range,
  the model's head and Transform graph, and how many examples one attack
  call takes."""
  label_key: str
  perturb_features: Optional[Sequence[str]] = None  # None: all float inputs
  clip_min: Optional[float] = None
  clip_max: Optional[float] = None
  batch_size: int = DEFAULT_BATCH_SIZE
  head: str = heads.AUTO
  transform_graph: Optional[str] = None  # a TFX TransformGraph's uri
  attack_space: str = MODEL_INPUTS


def model_input_spec(model):
  """{input name: tf.io.FixedLenFeature} of a Keras functional model."""
  return {name: tf.io.FixedLenFeature(tensor.shape[1:].as_list(), tensor.dtype)
          for name, tensor in heads.model_inputs(model).items()}


def perturbed_features(features, settings):
  """The inputs an attack moves: dense floats only (ints and strings have no
  gradient; a missing optional value has no place to move), and of those
  `settings.perturb_features` when given."""
  return [k for k, v in features.items()
          if isinstance(v, tf.Tensor) and v.dtype.is_floating and (
              not settings.perturb_features or k in settings.perturb_features)]


def _nsl_config(attack, settings, perturbed):
  nsl = import_nsl()
  if attack.method == 'fgsm':
    step, iterations, epsilon = attack.epsilon, 1, None
  else:
    step, iterations, epsilon = attack.step_size, attack.steps, attack.epsilon
  return nsl.configs.AdvNeighborConfig(
      feature_mask=None, adv_step_size=step, adv_grad_norm=NORMS[attack.norm],
      clip_value_min=per_feature(settings.clip_min, perturbed),
      clip_value_max=per_feature(settings.clip_max, perturbed),
      pgd_iterations=iterations, pgd_epsilon=epsilon,
      random_init=attack.random_start)


def attack_features(model, features, labels, attack, settings, head=None):
  """Features perturbed by `attack` against `model` (a Keras model, or a
  callable when `head` is given) white-box, in the units of `features`;
  the others pass through unchanged."""
  nsl = import_nsl()
  head = head or heads.infer(model, settings.head)
  features = {k: v if isinstance(v, (tf.SparseTensor, tf.RaggedTensor))
              else tf.convert_to_tensor(v) for k, v in features.items()}
  perturbed = perturbed_features(features, settings)
  if not perturbed:
    return features
  fixed = {k: v for k, v in features.items() if k not in perturbed}
  moving = {k: features[k] for k in perturbed}
  loss_fn = head.keras_loss()

  def model_fn(inputs):
    return model({**inputs, **fixed}, training=False)

  with tf.GradientTape() as tape:
    tape.watch(moving)
    loss = loss_fn(labels, model_fn(moving))
  adversarial, _ = nsl.lib.gen_adv_neighbor(
      moving, loss, _nsl_config(attack, settings, perturbed),
      gradient_tape=tape, pgd_model_fn=model_fn, pgd_loss_fn=loss_fn,
      pgd_labels=labels)
  return {**adversarial, **fixed}


class ModelInputs:
  """Serialized examples -> what the attacks need, for one model.

  Raw examples go through the Transform graph first when the evaluator has
  one. In the MODEL_INPUTS space attacks move the model's own (transformed)
  float inputs; in the RAW space they move the raw dense float features,
  with gradients through the Transform graph (a z-score is differentiable; a
  vocabulary lookup is not, and string columns are not moved anyway).
  """

  def __init__(self, model, settings):
    self._spec = model_input_spec(model)
    self._label_key = settings.label_key
    self._regression = settings.head == 'regression'
    self._space = settings.attack_space
    self._transform = None
    if settings.transform_graph:
      import tensorflow_transform as tft  # pylint: disable=g-import-not-at-top
      output = tft.TFTransformOutput(settings.transform_graph)
      self._transform = output.transform_features_layer()
      self._raw_spec = output.raw_feature_spec()
      transformed = output.transformed_feature_spec()
      missing = sorted(set(self._spec) - set(transformed))
      if missing:
        raise ValueError(
            f'model inputs {missing} are not outputs of the Transform graph '
            f'{settings.transform_graph} (it has {sorted(transformed)}); give '
            'the evaluator the transform_graph the model was trained with')
      self._label_from_transform = self._label_key in transformed
      if not self._label_from_transform and self._label_key not in (
          self._raw_spec):
        raise ValueError(
            f'label_key {self._label_key!r} is neither a raw feature nor a '
            f'Transform output; raw features: {sorted(self._raw_spec)}, '
            f'outputs: {sorted(transformed)}')
    elif self._space == RAW:
      raise ValueError("attack_space 'raw' needs the transform_graph; without "
                       "one the model's inputs are the raw features")
    elif self._label_key in self._spec:
      raise ValueError(f'label_key {self._label_key!r} is a model input')

  def _raw_label_spec(self):
    if self._transform is not None:
      dtype = self._raw_spec[self._label_key].dtype
    else:  # class ids, or a regression model's real values
      dtype = tf.float32 if self._regression else tf.int64
    return {self._label_key: tf.io.FixedLenFeature([1], dtype)}

  def _dense_outputs(self, raw):
    transformed = self._transform(raw)
    return {k: v[:, tf.newaxis] if v.shape.rank == 1 else v
            for k, v in transformed.items() if isinstance(v, tf.Tensor)}

  def to_model(self, features):
    """Model inputs from the attack space's features."""
    if self._space != RAW:
      return features
    dense = self._dense_outputs(features)
    return {k: dense[k] for k in self._spec}

  def __call__(self, serialized):
    """(features in the attack space, labels, Transform's dense outputs)."""
    serialized = tf.constant(serialized)
    if self._transform is None:
      parsed = tf.io.parse_example(serialized,
                                   {**self._spec, **self._raw_label_spec()})
      label = parsed.pop(self._label_key)
      return parsed, label, {}
    raw_spec = dict(self._raw_spec)
    if not self._label_from_transform:
      raw_spec.update(self._raw_label_spec())
    raw = tf.io.parse_example(serialized, raw_spec)
    label = None if self._label_from_transform else raw.pop(self._label_key)
    dense = self._dense_outputs(raw)
    if label is None:
      label = dense[self._label_key]
    features = raw if self._space == RAW else {k: dense[k] for k in self._spec}
    return features, label, dense


def predictions_under_attacks(model, serialized, attack_names, settings,
                              seed=0, inputs=None, head=None):
  """({attack name or 'clean': predictions for TFMA}, Transform's dense
  outputs) for serialized examples; `inputs` (a ModelInputs) and `head`
  are derived from the model when not given."""
  inputs = inputs or ModelInputs(model, settings)
  head = head or heads.infer(model, settings.head)
  features, labels, transformed = inputs(serialized)

  def predict(x, training=False):
    return model(inputs.to_model(x), training=training)

  tf.random.set_seed(seed)  # random starts are repeatable
  results = {}
  for name in attack_names:
    attacked = features if name == CLEAN else attack_features(
        predict, features, labels, Attack.parse(name), settings, head)
    results[name] = head.predictions(predict(attacked)).numpy()
  return results, {k: v.numpy() for k, v in transformed.items()}
