"""White-box attacks on a Keras classifier with NSL's attack code.

Pure TensorFlow + NSL: no TFMA, no Beam. An attack is named by a string,
which is also its TFMA output name, so an EvalConfig alone says which
attacks run and which thresholds apply to them:

  clean                                   no perturbation
  fgsm_linf_eps0.1                        one gradient step of size eps
  pgd_l2_eps0.5_steps10_step0.1[_rand]    projected gradient descent
"""
import dataclasses
import re
from typing import Dict, Optional, Sequence

import numpy as np
import tensorflow as tf

from tfx_nsl.nsl_compat import import_nsl
from tfx_nsl.nsl_compat import per_feature

CLEAN = 'clean'
# Examples per attack call. TFXIO's adaptive batching starts at a few
# examples per batch, and an attack step costs about as much for 2 examples
# as for hundreds on a CPU: attacking such batches took 55 minutes where
# batches of hundreds took 31 s (5,000 examples).
DEFAULT_BATCH_SIZE = 512
METHODS = ('fgsm', 'pgd')
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
  and how many examples one attack call takes."""
  label_key: str
  perturb_features: Optional[Sequence[str]] = None  # None: all float inputs
  clip_min: Optional[float] = None
  clip_max: Optional[float] = None
  batch_size: int = DEFAULT_BATCH_SIZE


def model_input_spec(model):
  """{input name: tf.io.FixedLenFeature} of a Keras functional model."""
  spec = {}
  for tensor in model.inputs:
    name = tensor.name.split(':')[0]
    spec[name] = tf.io.FixedLenFeature(tensor.shape[1:].as_list(),
                                       tensor.dtype)
  return spec


def _nsl_config(attack, settings, features):
  nsl = import_nsl()
  perturbed = settings.perturb_features or [
      k for k, v in features.items() if v.dtype.is_floating]
  mask = {k: (1.0 if k in perturbed else 0.0) for k in features}
  if attack.method == 'fgsm':
    step, iterations, epsilon = attack.epsilon, 1, None
  else:
    step, iterations, epsilon = attack.step_size, attack.steps, attack.epsilon
  return nsl.configs.AdvNeighborConfig(
      feature_mask=mask, adv_step_size=step, adv_grad_norm=NORMS[attack.norm],
      clip_value_min=per_feature(settings.clip_min, perturbed),
      clip_value_max=per_feature(settings.clip_max, perturbed),
      pgd_iterations=iterations, pgd_epsilon=epsilon,
      random_init=attack.random_start)


def _loss(labels, probabilities):
  return tf.reduce_mean(tf.keras.losses.sparse_categorical_crossentropy(
      labels, probabilities))


def attack_features(model, features, labels, attack, settings):
  """Features perturbed by `attack` against `model` (white-box)."""
  nsl = import_nsl()
  features = {k: tf.convert_to_tensor(v) for k, v in features.items()}
  with tf.GradientTape() as tape:
    tape.watch(features)
    loss = _loss(labels, model(features, training=False))
  adversarial, _ = nsl.lib.gen_adv_neighbor(
      features, loss, _nsl_config(attack, settings, features),
      gradient_tape=tape, pgd_model_fn=lambda x: model(x, training=False),
      pgd_loss_fn=_loss, pgd_labels=labels)
  return adversarial


def predictions_under_attacks(model, serialized, attack_names, settings,
                              seed=0) -> Dict[str, np.ndarray]:
  """{attack name or 'clean': class probabilities} for serialized examples."""
  spec = model_input_spec(model)
  label_spec = {settings.label_key: tf.io.FixedLenFeature([1], tf.int64)}
  parsed = tf.io.parse_example(tf.constant(serialized), {**spec, **label_spec})
  labels = parsed.pop(settings.label_key)
  tf.random.set_seed(seed)  # random starts are repeatable
  results = {}
  for name in attack_names:
    features = parsed if name == CLEAN else attack_features(
        model, parsed, labels, Attack.parse(name), settings)
    results[name] = model(features, training=False).numpy()
  return results
