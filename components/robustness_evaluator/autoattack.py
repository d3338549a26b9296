"""AutoAttack-class attacks in TensorFlow, and the per-example worst case.

Croce & Hein (ICML 2020) judge robustness by a fixed suite: APGD with the
cross-entropy loss (APGD-CE), targeted APGD with the DLR loss over the top
classes (APGD-T), FAB-T and the score-based Square attack; an example
counts as robust only when no attack of the suite breaks it. Here:

- APGD (L-inf, L2): steps of size 2 eps to start, momentum 0.75, and at
  checkpoints p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03,
  0.06) the step halves (restarting from the best point) for every example
  whose loss rose in fewer than 75% of the window's steps, or that neither
  halved nor improved its best loss since the last checkpoint.
- Square (L-inf and L2): random search on the logit margin; the window
  shrinks on the paper's schedule (p_init 0.8). L-inf starts from a random
  corner of the ball and each query moves one window to +-eps; L2 starts
  from signed window patterns at norm eps, and each query moves the
  perturbation of a second window into the first with a new signed
  pattern (two halves of opposite sign, peaked at their centres), then
  scales back to eps. Features are a flat vector here, so the "square" is
  a run of consecutive coordinates.
- FAB-T is not implemented; the AutoAttack authors report that it rarely
  breaks what APGD-T leaves (it is in the suite to make sure).

Every attack works on a batch as one flat [B, n] tensor of the perturbed
features (`Flat`), keeps every iterate inside the eps-ball and the clip
range, and returns for each example the best adversarial point it found and
whether that point is misclassified. The suite runs its attacks in turn,
each on the examples that are still robust, as AutoAttack does.

Models give logits (`class_logits`): a softmax output becomes log-
probabilities (the same differences of logits, so the same margins and DLR),
a sigmoid output [logit of 0, logit of 1].
"""
import dataclasses
import math
from typing import Callable, Sequence, Tuple, Union

import numpy as np
import tensorflow as tf

# Probabilities below this are saturated: their log is no longer a logit.
_MIN_PROBABILITY = 1e-30
# Sanity flags of a suite (as the AutoAttack paper and the adversarial-
# evaluation checklists advise): counts of examples, each a sign that the
# suite's number may overstate robustness.
FLAGS = {
    'black_box_only': 'broken by the score-based Square attack after every '
                      'white-box attack missed them (possible gradient '
                      'masking)',
    'zero_gradient': 'with a loss gradient of exactly zero at the clean input',
    'nonfinite_gradient': 'with a non-finite loss gradient at the clean input',
    'nondeterministic': 'whose clean logits changed between two identical '
                        'calls',
    'saturated_softmax': 'whose top softmax probability is 1 in float32 '
                         '(cross-entropy gradients vanish there)',
}
MOMENTUM = 0.75
RHO = 0.75  # fraction of increasing steps below which the step halves
SQUARE_P_INIT = 0.8


def class_logits(outputs, head):
  """[B, K] logits (K >= 2) from a model's outputs under `head` (heads.Head,
  classification)."""
  outputs = tf.cast(outputs, tf.float32)
  if head.kind == 'multiclass':
    return outputs if head.from_logits else tf.math.log(
        tf.maximum(outputs, _MIN_PROBABILITY))
  logit = outputs if head.from_logits else (
      tf.math.log(tf.maximum(outputs, _MIN_PROBABILITY)) -
      tf.math.log(tf.maximum(1.0 - outputs, _MIN_PROBABILITY)))
  logit = tf.reshape(logit, [-1, 1])
  return tf.concat([tf.zeros_like(logit), logit], axis=1)


def integer_labels(labels):
  return tf.cast(tf.reshape(labels, [-1]), tf.int32)


def _sorted_logits(logits):
  return tf.sort(logits, axis=1, direction='DESCENDING')


def margin(logits, labels):
  """z_y - max_{i != y} z_i: negative when the example is misclassified."""
  true = tf.gather(logits, labels, batch_dims=1)
  others = tf.where(tf.one_hot(labels, tf.shape(logits)[1]) > 0,
                    -np.inf * tf.ones_like(logits), logits)
  return true - tf.reduce_max(others, axis=1)


def _denominator(logits, targeted):
  """DLR's scale: z_pi1 - z_pi3 (untargeted) or z_pi1 - (z_pi3 + z_pi4) / 2,
  the missing ranks of a model with few classes taken as the last one."""
  ranked = _sorted_logits(logits)
  k = tf.shape(ranked)[1]
  third = tf.gather(ranked, tf.minimum(2, k - 1), axis=1)
  if targeted:
    third = 0.5 * (third + tf.gather(ranked, tf.minimum(3, k - 1), axis=1))
  return ranked[:, 0] - third + 1e-12


def ce_loss(logits, labels, targets=None):
  del targets
  return tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits)


def dlr_loss(logits, labels, targets=None):
  """The Difference of Logits Ratio loss (to maximise); targeted towards
  `targets` when given. With two classes the ratio is +-1 everywhere (no
  gradient): the plain logit margin is used instead."""
  if logits.shape[1] is not None and logits.shape[1] < 3:
    return -margin(logits, labels)
  if targets is None:
    return -margin(logits, labels) / _denominator(logits, False)
  true = tf.gather(logits, labels, batch_dims=1)
  target = tf.gather(logits, targets, batch_dims=1)
  return -(true - target) / _denominator(logits, True)


def checkpoints(steps):
  """The iterations (0-based) after which APGD checks its progress."""
  p = [0.0, 0.22]
  while p[-1] < 1.0:
    p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
  # Rounded first: 0.22 + 0.19 is 0.41000000000000003 in floats.
  ends = {math.ceil(round(q * steps, 9)) for q in p[1:]}
  return sorted(w - 1 for w in ends if 0 < w < steps)


@dataclasses.dataclass(frozen=True)
class Ball:
  """Where an attack may go: the eps-ball of `norm` around x0, within the
  clip range [lo, hi]: floats, or tuples with one bound per feature value
  (hashable, as tf.function's arguments must be); None: unbounded."""
  norm: str  # 'linf' or 'l2'
  epsilon: float
  lo: Union[float, Tuple[float, ...], None] = None
  hi: Union[float, Tuple[float, ...], None] = None

  def clip(self, x):
    if self.lo is not None:
      x = tf.maximum(x, tf.constant(self.lo, x.dtype))
    if self.hi is not None:
      x = tf.minimum(x, tf.constant(self.hi, x.dtype))
    return x

  def project(self, x, x0):
    if self.norm == 'linf':
      x = tf.clip_by_value(x, x0 - self.epsilon, x0 + self.epsilon)
    else:
      delta = x - x0
      norms = tf.norm(delta, axis=1, keepdims=True)
      x = x0 + delta * tf.minimum(1.0, self.epsilon / tf.maximum(norms, 1e-12))
    return self.clip(x)

  def direction(self, grad):
    if self.norm == 'linf':
      return tf.sign(grad)
    return grad / tf.maximum(tf.norm(grad, axis=1, keepdims=True), 1e-12)

  def random_start(self, x0, seed):
    noise = tf.random.stateless_uniform(tf.shape(x0), seed, -1.0, 1.0)
    if self.norm == 'linf':
      scale = tf.reduce_max(tf.abs(noise), axis=1, keepdims=True)
    else:
      noise = tf.random.stateless_normal(tf.shape(x0), seed)
      scale = tf.norm(noise, axis=1, keepdims=True)
    return self.project(x0 + self.epsilon * noise / tf.maximum(scale, 1e-12),
                        x0)


def apgd(logits_fn: Callable, x0, labels, ball: Ball, steps, loss='ce',
         targets=None, seed=(0, 0), fixed=None):
  """One run of APGD from a random start: (adversarial points, broken),
  the best misclassified point of each example where there is one (else
  the point of largest loss) and whether there is one. `logits_fn(x,
  fixed)`: the logits of the points x, with the inputs `fixed` (a dict of
  tensors, row i for point i) that the attack does not move."""
  loss_fn = {'ce': ce_loss, 'dlr': dlr_loss}[loss]
  check = np.zeros(steps, bool)
  check[checkpoints(steps)] = True
  return _apgd(logits_fn, x0, labels,
               labels if targets is None else targets, targets is not None,
               ball, loss_fn, tf.constant(check), tf.constant(seed, tf.int32),
               fixed or {})


def _value_and_grad(logits_fn, loss_fn, x, labels, targets, targeted, fixed):
  with tf.GradientTape() as tape:
    tape.watch(x)
    logits = logits_fn(x, fixed)
    losses = loss_fn(logits, labels, targets if targeted else None)
    total = tf.reduce_sum(losses)
  grad = tape.gradient(total, x)
  if grad is None:  # known when the function is traced
    raise ValueError(
        'the model has no gradient with respect to the perturbed features '
        '(a non-differentiable layer, or a stop_gradient): white-box '
        'attacks (fgsm, pgd, apgd-*) cannot run on it; use square, which '
        'needs only its scores')
  return logits, losses, grad


@tf.function(reduce_retracing=True)
def _apgd(logits_fn, x0, labels, targets, targeted, ball, loss_fn, check,
          seed, fixed):
  steps = tf.shape(check)[0]
  x = ball.random_start(x0, seed)
  logits, losses, grad = _value_and_grad(logits_fn, loss_fn, x, labels,
                                         targets, targeted, fixed)
  broken = tf.argmax(logits, axis=1, output_type=tf.int32) != labels
  best_adv = x
  x_best, grad_best, loss_best = x, grad, losses
  step = 2.0 * ball.epsilon * tf.ones_like(losses)
  x_prev = x
  loss_prev = losses
  increases = tf.zeros_like(losses)
  window = tf.zeros([], tf.float32)
  loss_at_check = loss_best
  halved_at_check = tf.zeros_like(broken)
  for i in tf.range(steps):
    momentum = tf.where(i > 0, MOMENTUM, 1.0)
    z = ball.project(x + step[:, None] * ball.direction(grad), x0)
    new = ball.project(x + momentum * (z - x) + (1.0 - momentum) * (x - x_prev),
                       x0)
    x_prev, x = x, new
    logits, losses, grad = _value_and_grad(logits_fn, loss_fn, x, labels,
                                           targets, targeted, fixed)
    wrong = tf.argmax(logits, axis=1, output_type=tf.int32) != labels
    best_adv = tf.where(wrong[:, None], x, best_adv)
    broken = broken | wrong
    better = losses > loss_best
    x_best = tf.where(better[:, None], x, x_best)
    grad_best = tf.where(better[:, None], grad, grad_best)
    loss_best = tf.where(better, losses, loss_best)
    increases += tf.cast(losses > loss_prev, tf.float32)
    loss_prev = losses
    window += 1.0
    x, x_prev, grad, best_adv, x_best, grad_best = (
        tf.ensure_shape(v, x0.shape)
        for v in (x, x_prev, grad, best_adv, x_best, grad_best))
    if check[i]:
      halve = (increases < RHO * window) | (
          ~halved_at_check & (loss_at_check >= loss_best))
      step = tf.where(halve, step / 2.0, step)
      x = tf.where(halve[:, None], x_best, x)
      grad = tf.where(halve[:, None], grad_best, grad)
      halved_at_check, loss_at_check = halve, loss_best
      increases = tf.zeros_like(increases)
      window = tf.zeros([], tf.float32)
  return tf.where(broken[:, None], best_adv, x_best), broken


def square_p(query, queries, p_init=SQUARE_P_INIT):
  """The fraction of the features one Square query changes: p_init halved
  at the paper's query counts (for 10,000 queries, scaled to `queries`)."""
  at = int(query / queries * 10_000)
  halvings = sum(at > b for b in (10, 50, 200, 500, 1000, 2000, 4000, 6000,
                                  8000))
  return p_init / 2 ** halvings


def square(logits_fn: Callable, x0, labels, ball: Ball, queries, seed=0,
           fixed=None):
  """The Square attack in `ball`'s norm (score-based: logits only, no
  gradient): (adversarial points, broken). Each query changes one window
  of consecutive features (two in L2: one gets a new pattern, the other's
  perturbation is moved into it) and is kept where the margin falls."""
  n = int(x0.shape[1])
  rng = np.random.RandomState(seed)
  least = 1 if ball.norm == 'linf' else 2  # an L2 pattern has two halves
  sizes = np.array([max(least, min(n, round(square_p(q, queries) * n)))
                    for q in range(1, queries)], np.int32)
  starts = np.array([[rng.randint(0, n - s + 1) for s in sizes]
                     for _ in range(2)], np.int32)
  run = _square if ball.norm == 'linf' else _square_l2
  return run(logits_fn, tf.convert_to_tensor(x0, tf.float32), labels, ball,
             tf.constant(sizes), tf.constant(starts),
             tf.constant([seed, 1], tf.int32), fixed or {})


@tf.function(reduce_retracing=True)
def _square(logits_fn, x0, labels, ball, sizes, starts, seed, fixed):
  starts = starts[0]
  shape = tf.shape(x0)
  corner = tf.sign(tf.random.stateless_uniform(shape, seed, -1.0, 1.0))
  best = ball.project(x0 + ball.epsilon * corner, x0)
  best_margin = margin(logits_fn(best, fixed), labels)
  columns = tf.range(shape[1])
  for q in tf.range(tf.shape(sizes)[0]):
    inside = (columns >= starts[q]) & (columns < starts[q] + sizes[q])
    signs = _query_signs(shape, seed, q)
    # 2 eps: from any point of the ball, a window goes to a face.
    candidate = ball.project(
        best + tf.where(inside[None, :], 2.0 * ball.epsilon * signs, 0.0), x0)
    best, best_margin = _keep_better(candidate, best, best_margin, logits_fn,
                                     fixed, labels, x0)
  return best, best_margin < 0


def _query_signs(shape, seed, query):
  return tf.sign(tf.random.stateless_uniform(
      [shape[0], 1], seed + tf.stack([0, query + 1]), -1.0, 1.0))


def _keep_better(candidate, best, best_margin, logits_fn, fixed, labels, x0):
  """Square's acceptance: (best, its margin) with `candidate` taken where
  it lowers the margin of an example not yet broken."""
  found = margin(logits_fn(candidate, fixed), labels)
  better = (found < best_margin) & (best_margin > 0)
  # ensure_shape: a batch of one would otherwise change the loop
  # variables' static shapes from (1, n) to (None, n).
  return (tf.ensure_shape(tf.where(better[:, None], candidate, best),
                          x0.shape),
          tf.ensure_shape(tf.where(better, found, best_margin),
                          x0.shape[:1]))


# _PEAK[j] = sum of 1 / k^2 for k = 1..j: the L2 window pattern's profile.
_PEAK = np.r_[0.0, np.cumsum(1.0 / np.arange(1, 4097) ** 2)].astype(np.float32)


def l2_pattern(columns, start, size):
  """[n] the 1-D form of Square L2's window pattern, of unit L2 norm: on
  [start, start + size) two halves of opposite sign, each largest at its
  centre (a value at distance r from a centre is the sum of 1 / k^2 for k
  from r + 1 to the half's widest distance + 1); zero elsewhere."""
  i = columns - start
  half = size // 2
  first = i < half
  local = tf.where(first, i, i - half)
  length = tf.where(first, half, size - half)
  distance = tf.abs(2 * local - (length - 1)) // 2
  widest = tf.minimum((length - 1) // 2 + 1, len(_PEAK) - 1)
  peak = tf.constant(_PEAK)
  value = tf.gather(peak, widest) - tf.gather(peak, tf.minimum(
      distance, widest))
  inside = (i >= 0) & (i < size)
  value = tf.where(inside, tf.where(first, value, -value), 0.0)
  return value / tf.maximum(tf.norm(value), 1e-12)


def _unit(delta):
  return delta / tf.maximum(tf.norm(delta, axis=1, keepdims=True), 1e-12)


@tf.function(reduce_retracing=True)
def _square_l2(logits_fn, x0, labels, ball, sizes, starts, seed, fixed):
  """Square L2 (Andriushchenko et al. 2020) on flat features: start from
  windows of the pattern with random signs at norm eps; each query puts
  window 1's perturbation plus a new signed pattern there, removes window
  2's, gives window 1 the norm both held plus what the ball has left, and
  scales the whole perturbation back to eps."""
  shape = tf.shape(x0)
  n = shape[1]
  columns = tf.range(n)
  width = tf.maximum(2, n // 5)
  start = tf.zeros_like(x0)
  for b in tf.range((n + width - 1) // width):
    signs = tf.sign(tf.random.stateless_uniform(
        [shape[0], 1], seed + tf.stack([1, b]), -1.0, 1.0))
    start += signs * l2_pattern(columns, b * width, width)[None, :]
  best = ball.project(x0 + ball.epsilon * _unit(start), x0)
  best_margin = margin(logits_fn(best, fixed), labels)
  epsilon2 = ball.epsilon ** 2
  for q in tf.range(tf.shape(sizes)[0]):
    delta = best - x0
    one = (columns >= starts[0, q]) & (columns < starts[0, q] + sizes[q])
    two = (columns >= starts[1, q]) & (columns < starts[1, q] + sizes[q])
    both = one | two
    in_one = tf.where(one[None, :], delta, 0.0)
    moved = tf.reduce_sum(tf.where(both[None, :], delta, 0.0) ** 2, axis=1,
                          keepdims=True)
    left = tf.maximum(epsilon2 - tf.reduce_sum(delta ** 2, axis=1,
                                               keepdims=True), 0.0)
    window = _unit(_query_signs(shape, seed, q) *
                   l2_pattern(columns, starts[0, q], sizes[q])[None] +
                   _unit(in_one))
    new = tf.where(both[None, :], 0.0, delta) + window * tf.sqrt(moved + left)
    candidate = ball.project(x0 + ball.epsilon * _unit(new), x0)
    best, best_margin = _keep_better(candidate, best, best_margin, logits_fn,
                                     fixed, labels, x0)
  return best, best_margin < 0


def top_targets(logits, labels, count):
  """[count, B] the `count` most likely wrong classes of each example,
  most likely first (fewer when the model has fewer classes)."""
  ranked = tf.cast(tf.argsort(logits, axis=1, direction='DESCENDING'),
                   tf.int32)
  ranked = tf.reshape(tf.boolean_mask(ranked, ranked != labels[:, None]),
                      [tf.shape(logits)[0], -1])
  return tf.transpose(ranked[:, :count])


def sanity_counts(logits_fn: Callable, x0, labels, clean_logits, fixed=None):
  """{flag: examples} of the FLAGS that the clean inputs show;
  `clean_logits`: an earlier call's logits of x0, compared with this one's."""
  fixed = fixed or {}
  with tf.GradientTape() as tape:
    tape.watch(x0)
    logits = logits_fn(x0, fixed)
    total = tf.reduce_sum(ce_loss(logits, labels))
  grad = tape.gradient(total, x0)
  counts = {
      'nondeterministic': tf.reduce_any(
          tf.abs(clean_logits - logits) > 1e-5 * (1.0 + tf.abs(logits)),
          axis=1),
      'saturated_softmax': tf.reduce_max(tf.nn.softmax(logits), axis=1) >= 1.0,
  }
  if grad is not None:
    counts['zero_gradient'] = tf.reduce_all(grad == 0.0, axis=1)
    counts['nonfinite_gradient'] = ~tf.reduce_all(tf.math.is_finite(grad),
                                                  axis=1)
  return {k: int(tf.reduce_sum(tf.cast(v, tf.int32))) for k, v in
          counts.items()}


def run_suite(logits_fn: Callable, x0, labels, ball: Ball,
              attacks: Sequence, seed=0, fixed=None, flags=None):
  """The suite's attacks in turn, each on the examples still robust:
  (worst-case points, broken_by) with broken_by[i] the index of the attack
  that broke example i first, -1 if none did, -2 if it is misclassified
  clean. `attacks`: (method, options) pairs, method 'apgd-ce', 'apgd-t' or
  'square'. `flags` (a dict), when given, gains the FLAGS counts."""
  x0 = tf.convert_to_tensor(x0, tf.float32)
  labels = integer_labels(labels)
  fixed = fixed or {}
  clean_logits = logits_fn(x0, fixed)
  broken_by = np.where(
      tf.argmax(clean_logits, axis=1, output_type=tf.int32).numpy() ==
      labels.numpy(), -1, -2)
  worst = x0.numpy().copy()
  for index, (method, options) in enumerate(attacks):
    remaining = np.flatnonzero(broken_by == -1)
    if not len(remaining):
      break
    x, y = tf.gather(x0, remaining), tf.gather(labels, remaining)
    found, broken = _one_attack(
        logits_fn, x, y, ball, method, options,
        tf.gather(clean_logits, remaining), seed + 1000 * index,
        {k: tf.gather(v, remaining) for k, v in fixed.items()})
    hit = remaining[broken]
    worst[hit] = found[broken]
    broken_by[hit] = index
  if flags is not None:
    counts = sanity_counts(logits_fn, x0, labels, clean_logits, fixed)
    white_box = [i for i, (method, _) in enumerate(attacks)
                 if method != 'square']
    if white_box:
      counts['black_box_only'] = int(sum(
          (broken_by == i).sum() for i, (method, _) in enumerate(attacks)
          if method == 'square' and i > min(white_box)))
    for name, count in counts.items():
      flags[name] = flags.get(name, 0) + count
  return worst, broken_by


def _one_attack(logits_fn, x0, labels, ball, method, options, clean_logits,
                seed, fixed):
  """(points, broken) as numpy arrays, over the attack's restarts or target
  classes, each run on the examples the previous runs left robust: the
  first point that breaks an example is kept."""
  runs = []
  if method == 'apgd-ce':
    runs = [dict(loss='ce', seed=(seed, r))
            for r in range(options['restarts'])]
  elif method == 'apgd-t':
    runs = [dict(loss='dlr', targets=targets, seed=(seed, r))
            for r, targets in enumerate(top_targets(
                clean_logits, labels, options['targets']))]
  elif method != 'square':
    raise ValueError(f'unknown attack method {method!r}')
  points, broken = np.array(x0, np.float32), np.zeros(len(labels), bool)
  for run in runs or [{}]:
    rows = np.flatnonzero(~broken)
    if not len(rows):
      break
    take = lambda v: tf.gather(v, rows)  # noqa: E731
    subset = {k: take(v) for k, v in fixed.items()}
    if method == 'square':
      found, hit = square(logits_fn, take(x0), take(labels), ball,
                          options['queries'], seed, subset)
    else:
      found, hit = apgd(logits_fn, take(x0), take(labels), ball,
                        options['steps'], fixed=subset,
                        **{k: take(v) if k == 'targets' else v
                           for k, v in run.items()})
    hit = hit.numpy()
    points[rows[hit]], broken[rows[hit]] = found.numpy()[hit], True
  return points, broken
