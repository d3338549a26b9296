"""Attacks on a Keras model: NSL's FGSM and PGD, and autoattack.py's APGD,
Square and suites.

Epsilons are in the units of the model's inputs: with a Transform graph,
the transformed features (e.g. z-scores), not the raw columns.

Pure TensorFlow + NSL: no TFMA, no Beam. An attack is named by a string,
which is also its TFMA output name, so an EvalConfig alone says which
attacks run and which thresholds apply to them:

  clean                                   no perturbation
  fgsm_linf_eps0.1                        one gradient step of size eps
  pgd_l2_eps0.5_steps10_step0.1[_rand]    projected gradient descent
  apgd-ce_linf_eps0.1[_steps100][_restarts1]   APGD, cross-entropy loss
  apgd-t_linf_eps0.1[_steps100][_targets9]     APGD, targeted DLR loss
  square_linf_eps0.1[_queries5000]        Square (score-based, no gradient;
                                          L-inf or L2)
  autoattack_linf_eps0.1                  a suite (PRESETS), judged per
  autoattack-lite_linf_eps0.1             example by its worst case

fgsm and pgd are NSL's attack code; the others are autoattack.py's.
"""
import dataclasses
import re
from typing import Dict, Optional, Sequence, Union

import numpy as np
import tensorflow as tf

from tfx_nsl import heads
from tfx_nsl.components.robustness_evaluator import autoattack
from tfx_nsl.nsl_compat import import_nsl
from tfx_nsl.nsl_compat import per_feature

CLEAN = 'clean'
# Examples per attack call. TFXIO's adaptive batching starts at a few
# examples per batch, and an attack step costs about as much for 2 examples
# as for hundreds on a CPU: attacking such batches took 55 minutes where
# batches of hundreds took 31 s (5,000 examples).
DEFAULT_BATCH_SIZE = 512
# fgsm, pgd: NSL's attack code. apgd-ce, apgd-t, square: autoattack.py.
# autoattack, autoattack-lite: suites, judged by the worst case per example.
METHODS = ('fgsm', 'pgd', 'apgd-ce', 'apgd-t', 'square', 'autoattack',
           'autoattack-lite')
# The options each method takes, with their defaults (None: required) in
# the order names give them. A name leaves out the new methods' defaults.
_OPTIONS = {
    'fgsm': {},
    'pgd': {'steps': None, 'step_size': None, 'random_start': False},
    'apgd-ce': {'steps': 100, 'restarts': 1},
    'apgd-t': {'steps': 100, 'targets': 9},
    'square': {'queries': 5000},
    'autoattack': {},
    'autoattack-lite': {},
}
# The suites: AutoAttack's standard budgets (Croce & Hein 2020: APGD-CE and
# APGD-T at 100 iterations, 9 target classes, Square at 5,000 queries; FAB-T
# is left out, see autoattack.py), and a cheaper one for quick runs.
PRESETS = {
    'autoattack': (('apgd-ce', {'steps': 100, 'restarts': 1}),
                   ('apgd-t', {'steps': 100, 'targets': 9}),
                   ('square', {'queries': 5000})),
    'autoattack-lite': (('apgd-ce', {'steps': 20, 'restarts': 1}),
                        ('apgd-t', {'steps': 20, 'targets': 3}),
                        ('square', {'queries': 1000})),
}
# What the attacks move (ModelInputs): the model's inputs, after Transform,
# or the raw features, through the Transform graph.
MODEL_INPUTS, RAW = 'model_inputs', 'raw'
ATTACK_SPACES = (MODEL_INPUTS, RAW)
NORMS = {'linf': 'infinity', 'l2': 'l2'}
_NAME = re.compile(
    r'^(?P<method>[a-z-]+)_(?P<norm>[a-z0-9]+)_eps(?P<eps>[0-9.e-]+)'
    r'(?P<options>(?:_[a-z]+[0-9.]*)*)$')
# Option names in attack names.
_IN_NAME = {'steps': 'steps', 'step_size': 'step', 'random_start': 'rand',
            'restarts': 'restarts', 'targets': 'targets',
            'queries': 'queries'}
_FROM_NAME = {v: k for k, v in _IN_NAME.items()}


def _explain(name):
  return (f'{name!r} is not an attack name like "fgsm_linf_eps0.1", '
          '"pgd_l2_eps0.5_steps10_step0.1_rand", "apgd-ce_linf_eps0.1", '
          '"apgd-t_linf_eps0.1_targets9", "square_linf_eps0.1_queries5000" '
          f'or "autoattack_linf_eps0.1" (methods: {METHODS})')


@dataclasses.dataclass(frozen=True)
class Attack:
  """One attack, or a suite (`autoattack`, `autoattack-lite`) judged by
  the worst case per example; `name` round-trips through `parse`."""
  method: str
  norm: str
  epsilon: float
  steps: Optional[int] = None
  step_size: Optional[float] = None
  random_start: bool = False
  restarts: Optional[int] = None
  targets: Optional[int] = None
  queries: Optional[int] = None

  def __post_init__(self):
    if self.method not in METHODS:
      raise ValueError(f'attack method must be one of {METHODS}, got '
                       f'{self.method!r}')
    if self.norm not in NORMS:
      raise ValueError(f'attack norm must be one of {sorted(NORMS)}, got '
                       f'{self.norm!r}')
    if not self.epsilon > 0:
      raise ValueError(f'attack epsilon must be > 0, got {self.epsilon}')
    if self.method == 'fgsm' and (self.steps not in (None, 1) or
                                  self.random_start):
      raise ValueError('fgsm is one step without random start; use pgd')
    options = _OPTIONS[self.method]
    for field in _IN_NAME:
      value = getattr(self, field)
      if field not in options:
        if value not in (None, False) and not (field == 'steps' and
                                               value == 1):
          raise ValueError(f'{self.method} attacks take no {field} (they '
                           f'take {sorted(options) or "no options"})')
        continue
      if value is None:
        object.__setattr__(self, field, options[field])
    if self.method == 'pgd' and (not self.steps or self.steps < 1 or
                                 not self.step_size or self.step_size <= 0):
      raise ValueError('a pgd attack needs steps >= 1 and step_size > 0')
    for field in ('steps', 'restarts', 'targets', 'queries'):
      if field in options and self.method != 'pgd' and getattr(
          self, field) < 1:
        raise ValueError(f'{self.method}: {field} must be >= 1, got '
                         f'{getattr(self, field)}')

  @property
  def name(self):
    name = f'{self.method}_{self.norm}_eps{self.epsilon:g}'
    for field, default in _OPTIONS[self.method].items():
      value = getattr(self, field)
      if self.method != 'pgd' and value == default:
        continue
      if field == 'random_start':
        name += '_rand' if value else ''
      else:
        name += f'_{_IN_NAME[field]}{value:g}'
    return name

  @property
  def suite(self):
    """What autoattack.run_suite runs: (method, options) pairs; None for
    NSL's fgsm and pgd."""
    if self.method in ('fgsm', 'pgd'):
      return None
    if self.method in PRESETS:
      return PRESETS[self.method]
    return ((self.method, {f: getattr(self, f)
                           for f in _OPTIONS[self.method]}),)

  @classmethod
  def parse(cls, name):
    match = _NAME.match(name) if isinstance(name, str) else None
    if not match or match['method'] not in METHODS:
      raise ValueError(_explain(name))
    options = {}
    for part in match['options'].split('_')[1:]:
      key = re.match(r'[a-z]+', part).group()
      value = part[len(key):]
      field = _FROM_NAME.get(key)
      if field is None or field in options or (value == '') != (
          field == 'random_start'):
        raise ValueError(_explain(name))
      try:
        options[field] = (True if field == 'random_start' else
                          float(value) if field == 'step_size' else
                          int(value))
      except ValueError:
        raise ValueError(_explain(name)) from None
    try:
      epsilon = float(match['eps'])
    except ValueError:
      raise ValueError(_explain(name)) from None
    try:
      return cls(method=match['method'], norm=match['norm'],
                 epsilon=epsilon, **options)
    except ValueError as e:
      raise ValueError(f'attack {name!r}: {e}') from None

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
  # One bound for every perturbed feature, or {feature: bound}.
  clip_min: Optional[Union[float, Dict[str, float]]] = None
  clip_max: Optional[Union[float, Dict[str, float]]] = None
  batch_size: int = DEFAULT_BATCH_SIZE
  head: str = heads.AUTO
  transform_graph: Optional[str] = None  # a TFX TransformGraph's uri
  attack_space: str = MODEL_INPUTS
  # Where the workers leave the suites' sanity counts and the per-class
  # tallies (report.store_worker_counts).
  counts_dir: Optional[str] = None


def model_input_spec(model):
  """{input name: tf.io.FixedLenFeature} of a Keras functional model."""
  return {name: tf.io.FixedLenFeature(tensor.shape[1:].as_list(), tensor.dtype)
          for name, tensor in heads.model_inputs(model).items()}


def _movable(value):
  """Whether an attack can move a feature: a dense float (a tensor, a numpy
  array, or a FixedLenFeature of a parsing spec). Ints and strings have no
  gradient; a missing optional value (sparse) has no place to move."""
  if not isinstance(value, (tf.io.FixedLenFeature, tf.Tensor, np.ndarray)):
    return False
  return tf.as_dtype(value.dtype).is_floating


def perturbed_features(features, settings):
  """The inputs an attack moves: the dense floats of `features` (tensors, or
  a parsing spec), and of those `settings.perturb_features` when given.
  A named feature that `features` lacks, or that is not a dense float,
  fails with a ValueError naming it (rather than an attack that moves
  nothing)."""
  movable = [k for k, v in features.items() if _movable(v)]
  named = settings.perturb_features
  moved = [k for k in movable if not named or k in named]
  for option in ('clip_min', 'clip_max'):
    bound = getattr(settings, option)
    stray = sorted(set(bound) - set(moved)) if isinstance(bound, dict) else []
    if stray:
      raise ValueError(f'{option} names features {stray} that the attacks do '
                       f'not perturb (they perturb {moved})')
  if not named:
    return movable
  unknown = [n for n in named if n not in features]
  if unknown:
    raise ValueError(
        f'perturb_features {unknown} are not features of the attack space '
        f'({settings.attack_space}: {sorted(features)}); name the '
        'model\'s float inputs (or, with attack_space="raw", raw dense '
        'float features)')
  frozen = [n for n in named if n not in movable]
  if frozen:
    raise ValueError(
        f'perturb_features {frozen} are not dense float features, and only '
        f'those can be perturbed (dense floats here: {movable})')
  return [k for k in movable if k in named]


def with_observed_ranges(settings, ranges, perturbed):
  """`settings` with each of the `perturbed` features that has no clip bound
  of its own clipped to its observed range: `ranges`, {feature: (min,
  max)}, e.g. from StatisticsGen. A float bound (one for every feature)
  stays. Returns (settings, the perturbed features without a range)."""
  def merged(bound, side):
    if bound is not None and not isinstance(bound, dict):
      return bound
    observed = {f: float(ranges[f][side]) for f in perturbed if f in ranges}
    return {**observed, **(bound or {})} or None

  low, high = merged(settings.clip_min, 0), merged(settings.clip_max, 1)
  for name in perturbed:
    lo = low.get(name) if isinstance(low, dict) else low
    hi = high.get(name) if isinstance(high, dict) else high
    if lo is not None and hi is not None and lo > hi:
      raise ValueError(
          f'feature {name!r}: clip range [{lo}, {hi}] is empty (an explicit '
          'bound against the range its statistics show); fix clip_min / '
          'clip_max')
  return (dataclasses.replace(settings, clip_min=low, clip_max=high),
          [f for f in perturbed if f not in ranges])


def check_gradients(model, settings, attack_names):
  """Fails, naming the features and the attacks, when `model` has no
  gradient with respect to a perturbed input and a white-box attack is
  asked for: the evaluation would otherwise fail at its first batch. One
  call on a zero example of the model's own input spec."""
  white_box = [n for n in attack_names
               if n != CLEAN and Attack.parse(n).method != 'square']
  spec = model_input_spec(model)
  moved = perturbed_features(spec, settings)
  if not white_box or not moved:
    return
  inputs = {k: tf.fill([1, *v.shape], tf.constant('' if v.dtype == tf.string
                                                  else 0, v.dtype))
            for k, v in spec.items()}
  with tf.GradientTape() as tape:
    tape.watch([inputs[k] for k in moved])
    total = tf.reduce_sum(tf.cast(model(inputs, training=False), tf.float32))
  gradients = tape.gradient(total, [inputs[k] for k in moved])
  missing = [k for k, g in zip(moved, gradients) if g is None]
  if missing:
    raise ValueError(
        f'the model has no gradient with respect to the perturbed features '
        f'{missing} (a non-differentiable layer, or a stop_gradient): the '
        f'white-box attacks {white_box} cannot run on it; use square '
        '(square_linf_eps...), which needs only its scores, or leave those '
        'features out of perturb_features')


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


def attack_features(model, features, labels, attack, settings, head=None,
                    seed=0, flags=None, cache=None):
  """Features perturbed by `attack` against `model` (a Keras model, or a
  callable when `head` is given) white-box, in the units of `features`;
  the others pass through unchanged. A suite gives each example its worst
  case: the point of the first attack that broke it (else its clean
  features), and adds its sanity counts to `flags` (a dict) when given.
  `cache` (a dict kept per model) keeps the suite's logits function across
  batches, so that its compiled attacks are traced once, not per batch."""
  head = head or heads.infer(model, settings.head)
  features = {k: v if isinstance(v, (tf.SparseTensor, tf.RaggedTensor))
              else tf.convert_to_tensor(v) for k, v in features.items()}
  perturbed = perturbed_features(features, settings)
  if not perturbed:
    return features
  fixed = {k: v for k, v in features.items() if k not in perturbed}
  moving = {k: features[k] for k in perturbed}
  if attack.suite is not None:
    return {**_suite_features(model, moving, fixed, labels, attack, settings,
                              head, seed, flags, cache), **fixed}
  nsl = import_nsl()
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


def _flat_bound(bound, names, sizes, unbounded):
  """A clip bound over the flat vector of the features `names` (of
  `sizes` values each): a {feature: bound} dict becomes a tuple with one
  bound per value (`unbounded` for a feature it leaves out); a float or
  None stays as it is."""
  if not isinstance(bound, dict):
    return bound
  return tuple(float(bound.get(name, unbounded))
               for name, size in zip(names, sizes) for _ in range(size))


def _suite_features(model, moving, fixed, labels, attack, settings, head,
                    seed, flags, cache=None):
  """`moving` at the worst case of `attack.suite` (autoattack.run_suite),
  as one flat [B, n] vector of the perturbed features."""
  if not head.classification:
    raise ValueError(f'attack {attack.name!r} judges classifiers (its losses '
                     f'are margins between classes); the model\'s head is '
                     f'{head.name}: use fgsm or pgd')
  names = list(moving)
  shapes = [moving[k].shape[1:] for k in names]
  sizes = [int(np.prod(shape)) for shape in shapes]
  x0 = tf.concat([tf.reshape(tf.cast(moving[k], tf.float32), [-1, size])
                  for k, size in zip(names, sizes)], axis=1)

  def unflatten(x):
    return {k: tf.cast(tf.reshape(part, [-1, *shape]), moving[k].dtype)
            for k, shape, part in zip(names, shapes,
                                      tf.split(x, sizes, axis=1))}

  def logits_fn(x, rows_fixed):
    return autoattack.class_logits(
        model({**unflatten(x), **rows_fixed}, training=False), head)

  if cache is not None:  # the first batch's function, of the same model
    logits_fn = cache.setdefault(
        ('logits', tuple(names), tuple(map(tuple, shapes))), logits_fn)

  ball = autoattack.Ball(
      attack.norm, attack.epsilon,
      _flat_bound(settings.clip_min, names, sizes, -np.inf),
      _flat_bound(settings.clip_max, names, sizes, np.inf))
  worst, _ = autoattack.run_suite(logits_fn, x0, labels, ball, attack.suite,
                                  seed, fixed, flags)
  return unflatten(tf.constant(worst))


class ModelInputs:
  """Serialized examples -> what the attacks need, for one model.

  Raw examples go through the Transform graph first when the evaluator has
  one. In the MODEL_INPUTS space attacks move the model's own (transformed)
  float inputs; in the RAW space they move the raw dense float features,
  with gradients through the Transform graph (a z-score is differentiable; a
  vocabulary lookup is not, and string columns are not moved anyway).
  """

  def __init__(self, model, settings, compile_attacks=True, seed=0):
    # Random starts are repeatable: set once per model, not per batch, as
    # set_seed clears TensorFlow's caches, and every compiled attack then
    # started over (10x the time of a batch).
    tf.random.set_seed(seed)
    self._spec = model_input_spec(model)
    self._label_key = settings.label_key
    self._batch_size = settings.batch_size
    self._regression = settings.head == 'regression'
    self._space = settings.attack_space
    self._transform = None
    # Not in the raw space: traced, the Transform layer's gradients came out
    # exactly zero for some raw values that have one eagerly (540 of 8,000
    # in the tabular test), so FGSM there moved the wrong way.
    self._compile = compile_attacks and self._space != RAW
    # Per model: compiled functions, and functions whose identity keys the
    # traces of autoattack's compiled attacks.
    self.cache = {}
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
    # A perturb_features name that cannot move fails here, before any data.
    self.perturbed = perturbed_features(
        self._raw_spec if self._space == RAW else self._spec, settings)

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

  def compiled(self, name, build):
    """The tf.function `build()` returns, built once per `name` for this
    model: later batches reuse its trace instead of running eagerly (or
    `build()` itself, eager, when made with compile_attacks=False: for a
    single small batch, tracing costs more than it saves)."""
    if not self._compile:
      return build()
    if ('compiled', name) not in self.cache:
      # No autograph: the attacks' loops are Python loops over fixed step
      # counts, and converting NSL's code only warns about its imports.
      function = tf.function(build(), autograph=False)
      size = self._batch_size

      def call(*args):
        # Every batch padded to one size (repeating its last example; the
        # attacks are per example), so one trace serves them all: a
        # bundle's last, smaller batch would trace again (about 0.4 s), and
        # a shape-relaxed trace breaks NSL's random start.
        count = int(tf.nest.flatten(args)[0].shape[0])
        if count >= size:
          return function(*args)
        rows = tf.minimum(tf.range(size), count - 1)
        return tf.nest.map_structure(
            lambda t: t[:count],
            function(*tf.nest.map_structure(lambda t: tf.gather(t, rows),
                                            args)))
      call.function = function  # its traces, for tests
      self.cache[('compiled', name)] = call
    return self.cache[('compiled', name)]

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


def add_counts(total, part):
  """Adds `part` into `total`, key by key: nested dicts of counts."""
  for key, value in part.items():
    if isinstance(value, dict):
      add_counts(total.setdefault(key, {}), value)
    else:
      total[key] = total.get(key, 0) + value
  return total


def top_class(scores):
  """Argmax over the last axis as TensorFlow's CPU argmax gives it (and so
  Keras' accuracy): the first of tied maxima, NaN scores skipped (0 when
  all are NaN)."""
  scores = np.asarray(scores)
  return np.argmax(np.where(np.isnan(scores), -np.inf, scores), axis=-1)


def predicted_classes(predictions, head):
  """A classifier's class per example from its TFMA predictions, as TFMA's
  accuracies decide it (top_class; a binary probability above 0.5)."""
  predictions = np.asarray(predictions)
  if head.kind == 'multiclass':
    return top_class(predictions)
  return (predictions.reshape(-1) > 0.5).astype(np.int64)


def class_tally(predictions, labels, head):
  """{'correct': {class: n}, 'total': {class: n}} of a classifier's TFMA
  predictions against `labels`."""
  labels = np.asarray(labels).reshape(-1).astype(np.int64)
  predicted = predicted_classes(predictions, head)
  classes, total = np.unique(labels, return_counts=True)
  correct = np.bincount(np.searchsorted(classes, labels[predicted == labels]),
                        minlength=len(classes))
  return {'correct': {str(c): int(n) for c, n in zip(classes, correct)},
          'total': {str(c): int(n) for c, n in zip(classes, total)}}


def predictions_under_attacks(model, serialized, attack_names, settings,
                              seed=0, inputs=None, head=None, flags=None,
                              classes=None, keep_features=False):
  """({attack name or 'clean': predictions for TFMA}, Transform's dense
  outputs) for serialized examples; `inputs` (a ModelInputs) and `head`
  are derived from the model when not given. `flags`, when given, gains
  {attack name: {flag: examples}} of the suites (autoattack.FLAGS);
  `classes`, of a classifier, {attack name: class_tally(...)}, added.
  With `keep_features`, a third item: {attack name: {feature: the numpy
  values the model saw, in the attack space}}, and the labels."""
  inputs = inputs or ModelInputs(model, settings, seed=seed)
  head = head or heads.infer(model, settings.head)
  features, labels, transformed = inputs(serialized)

  def predict(x, training=False):
    return model(inputs.to_model(x), training=training)

  def single(attack):
    """Clean or NSL's attacks: one compiled graph, attack and prediction."""
    def run(features, labels):
      attacked = features if attack is None else attack_features(
          predict, features, labels, attack, settings, head, seed)
      return attacked, head.predictions(predict(attacked))
    return run

  results, kept = {}, {}
  for name in attack_names:
    attack = None if name == CLEAN else Attack.parse(name)
    if attack is None or attack.suite is None:
      attacked, predictions = inputs.compiled(
          name, lambda a=attack: single(a))(features, labels)
    else:  # its own compiled attacks, and a worst case per example
      found = None if flags is None else flags.setdefault(name, {})
      attacked = attack_features(predict, features, labels, attack, settings,
                                 head, seed, found, inputs.cache)
      predictions = head.predictions(predict(attacked))
    results[name] = predictions.numpy()
    if classes is not None and head.classification:
      add_counts(classes.setdefault(name, {}),
                 class_tally(results[name], labels, head))
    if keep_features:
      kept[name] = {k: v.numpy() for k, v in attacked.items()
                    if isinstance(v, tf.Tensor)}
  dense = {k: v.numpy() for k, v in transformed.items()}
  if keep_features:
    return results, dense, (kept, np.asarray(labels).reshape(-1))
  return results, dense
