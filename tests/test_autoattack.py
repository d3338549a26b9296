"""AutoAttack-class attacks (autoattack.py): the paper's schedule and
losses, the eps-ball, the worst case per example, and ART's AutoPGD and
Square on the same digits."""
import numpy as np
import pytest

from tfx_nsl import heads
from tfx_nsl.components.robustness_evaluator import attacks
from tfx_nsl.components.robustness_evaluator import autoattack as aa

EPS = 0.1


@pytest.fixture(scope='module')
def digits():
  """A digits MLP with logits out, trained on the pipeline's train split;
  the 359 eval digits."""
  import tensorflow as tf
  from tfx_nsl.pipelines import datasets
  splits = datasets.digits_splits()
  x, y = ({s: np.stack([r[k] for r in rows]) for s, rows in splits.items()}
          for k in (datasets.DIGITS_FEATURE, 'label'))
  tf.keras.utils.set_random_seed(0)
  inputs = tf.keras.Input((64,), name='pixels')
  hidden = tf.keras.layers.Dense(32, activation='relu')(inputs)
  model = tf.keras.Model(inputs, tf.keras.layers.Dense(10)(hidden))
  model.compile(tf.keras.optimizers.Adam(0.01), tf.keras.losses.
                SparseCategoricalCrossentropy(from_logits=True))
  model.fit(x['train'], y['train'], epochs=15, batch_size=64, verbose=0)
  return model, x['eval'], y['eval']


def _logits_fn(model):
  head = heads.Head('multiclass_logits')
  return lambda x, fixed: aa.class_logits(model(x), head)


def _wrong(model, x, y):
  return model(x).numpy().argmax(1) != y


@pytest.mark.parametrize('name', [
    'apgd-ce_linf_eps0.1', 'apgd-ce_l2_eps1_steps50_restarts2',
    'apgd-t_linf_eps0.1_targets3', 'square_linf_eps0.05_queries1000',
    'square_l2_eps0.5',
    'autoattack_linf_eps0.1', 'autoattack-lite_l2_eps0.5'])
def test_names_round_trip(name):
  attack = attacks.Attack.parse(name)
  assert attack.name == name and attacks.Attack.parse(attack.name) == attack


@pytest.mark.parametrize('bad, message', [
    ('apgd-ce_linf_eps0', "'apgd-ce_linf_eps0': attack epsilon must be > 0"),
    ('apgd-ce_linf_eps-0.1', 'epsilon must be > 0'),
    ('square_l3_eps0.1', 'attack norm must be one of'),
    ('apgd-t_linf_eps0.1_restarts2', "apgd-t attacks take no restarts"),
    ('autoattack_linf_eps0.1_steps5', 'autoattack attacks take no steps'),
    ('apgd-ce_linf_eps0.1_steps0', 'steps must be >= 1'),
    ('apgd_linf_eps0.1', "'apgd_linf_eps0.1' is not an attack name"),
    ('apgd-ce_linf_eps0.1.2', 'is not an attack name'),
    ('autoattack-standard_linf_eps0.1', 'is not an attack name'),
])
def test_bad_names_name_the_attack(bad, message):
  with pytest.raises(ValueError, match=message):
    attacks.Attack.parse(bad)


def test_apgd_checkpoints_are_the_papers():
  # w_j = ceil(p_j N): p = 0.22, 0.41, 0.57, 0.70, 0.80, 0.87, 0.93, 0.99.
  assert [w + 1 for w in aa.checkpoints(100)] == [22, 41, 57, 70, 80, 87,
                                                   93, 99]
  assert [w + 1 for w in aa.checkpoints(10)] == [3, 5, 6, 7, 8, 9]


def test_losses_by_hand():
  import tensorflow as tf
  logits = tf.constant([[4.0, 1.0, 3.0, 0.0], [0.0, 2.0, 1.0, 5.0]])
  labels = tf.constant([0, 1])
  np.testing.assert_allclose(aa.margin(logits, labels), [1.0, -3.0])
  # -(z_y - max other) / (z_pi1 - z_pi3)
  np.testing.assert_allclose(aa.dlr_loss(logits, labels),
                             [-1.0 / (4 - 1), 3.0 / (5 - 1)], rtol=1e-6)
  # targeted: -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)
  np.testing.assert_allclose(
      aa.dlr_loss(logits, labels, tf.constant([2, 3])),
      [-(4 - 3) / (4 - 0.5), -(2 - 5) / (5 - 0.5)], rtol=1e-6)
  # [targets, examples]: the most likely wrong classes, most likely first.
  np.testing.assert_array_equal(aa.top_targets(logits, labels, 2).numpy(),
                                [[2, 3], [1, 2]])
  # A sigmoid head becomes [0, logit]; probabilities become log-probabilities.
  binary = aa.class_logits(tf.constant([[0.5], [0.880797]]),
                           heads.Head('binary'))
  np.testing.assert_allclose(binary, [[0, 0], [0, 2]], atol=1e-4)
  probabilities = aa.class_logits(tf.nn.softmax(logits),
                                  heads.Head('multiclass'))
  np.testing.assert_allclose(aa.dlr_loss(probabilities, labels),
                             aa.dlr_loss(logits, labels), rtol=1e-5)


@pytest.mark.parametrize('method, norm, eps', [
    ('apgd-ce', 'linf', EPS), ('apgd-ce', 'l2', 1.0), ('apgd-t', 'linf', EPS),
    ('square', 'linf', EPS), ('square', 'l2', 1.0)])
def test_attacks_stay_in_the_ball_and_report_what_they_broke(
    digits, method, norm, eps):
  model, x, y = digits
  ball = aa.Ball(norm, eps, 0.0, 1.0)
  options = {'steps': 20, 'restarts': 1, 'targets': 2, 'queries': 300}
  adv, broken = aa._one_attack(  # pylint: disable=protected-access
      _logits_fn(model), x, aa.integer_labels(y), ball, method, options,
      model(x), 0, {})
  delta = adv - x
  if norm == 'linf':
    assert np.abs(delta).max() <= eps + 1e-6
  else:
    assert np.linalg.norm(delta, axis=1).max() <= eps + 1e-5
  assert adv.min() >= 0.0 and adv.max() <= 1.0
  np.testing.assert_array_equal(broken, _wrong(model, adv, y))
  assert broken.mean() > _wrong(model, x, y).mean() + 0.1


def test_apgd_is_at_least_as_strong_as_pgd(digits):
  model, x, y = digits
  settings = attacks.AttackSettings(label_key='label', clip_min=0.0,
                                    clip_max=1.0, head='multiclass_logits')
  import tensorflow as tf
  features, labels = {'pixels': tf.constant(x)}, tf.constant(y[:, None])
  robust = {}
  for name in ('pgd_linf_eps0.1_steps10_step0.025_rand',
               'apgd-ce_linf_eps0.1'):
    adv = attacks.attack_features(model, features, labels,
                                  attacks.Attack.parse(name), settings)
    robust[name] = (~_wrong(model, adv['pixels'], y)).sum()
  assert robust['apgd-ce_linf_eps0.1'] <= robust[
      'pgd_linf_eps0.1_steps10_step0.025_rand'] + 1


def test_suite_is_the_worst_case_per_example(digits):
  model, x, y = digits
  ball = aa.Ball('linf', EPS, 0.0, 1.0)
  suite = attacks.Attack.parse('autoattack-lite_linf_eps0.1').suite
  worst, broken_by = aa.run_suite(_logits_fn(model), x, y, ball, suite)
  wrong = _wrong(model, worst, y)
  np.testing.assert_array_equal(wrong, broken_by != -1)
  np.testing.assert_array_equal(worst[broken_by == -1], x[broken_by == -1])
  assert (broken_by == -2).sum() == _wrong(model, x, y).sum()
  assert np.abs(worst - x).max() <= EPS + 1e-6
  # No attack of the suite alone leaves fewer examples robust.
  for method, options in suite:
    _, broken = aa._one_attack(  # pylint: disable=protected-access
        _logits_fn(model), x, aa.integer_labels(y), ball, method, options,
        model(x), 7, {})
    assert (~wrong).sum() <= (~(broken | _wrong(model, x, y))).sum()


def test_a_model_without_gradients(digits):
  """White-box attacks refuse it with a clear error; Square still runs."""
  import tensorflow as tf
  model, x, y = digits
  inputs = tf.keras.Input((64,), name='pixels')
  frozen = tf.keras.Model(inputs, model(tf.keras.layers.Lambda(
      tf.stop_gradient)(inputs)))
  ball = aa.Ball('linf', EPS, 0.0, 1.0)
  labels = aa.integer_labels(y)
  with pytest.raises(ValueError, match='no gradient with respect to the '
                     'perturbed features.*use square'):
    aa.apgd(_logits_fn(frozen), tf.constant(x), labels, ball, 5)
  _, broken = aa.square(_logits_fn(frozen), tf.constant(x), labels, ball,
                        300)
  assert broken.numpy().mean() > _wrong(model, x, y).mean() + 0.1


def test_autoattack_within_one_example_of_art(digits):
  """Ours (autoattack_linf_eps0.1) against ART 1.20's attacks of the same
  suite, per example worst case, on the 359 eval digits: its
  AutoProjectedGradientDescent with cross-entropy, DLR, and targeted DLR
  towards each of the 9 most likely wrong classes (APGD-T), and its
  SquareAttack (5,000 queries); each ART attack on the examples that the
  previous ones left robust, as AutoAttack runs its suite."""
  import tensorflow as tf
  from art.attacks.evasion import AutoProjectedGradientDescent
  from art.attacks.evasion import SquareAttack
  from art.estimators.classification import TensorFlowV2Classifier
  model, x, y = digits
  # ART's Square takes images only: the digits as 8 x 8 x 1.
  image = tf.keras.Input((8, 8, 1))
  classifier = TensorFlowV2Classifier(
      tf.keras.Model(image, model(tf.keras.layers.Reshape((64,))(image))),
      nb_classes=10, input_shape=(8, 8, 1), clip_values=(0.0, 1.0),
      channels_first=False,
      loss_object=tf.keras.losses.SparseCategoricalCrossentropy(
          from_logits=True))
  targets = aa.top_targets(model(x), aa.integer_labels(y), 9).numpy()
  runs = [(AutoProjectedGradientDescent, dict(loss_type=loss), None)
          for loss in ('cross_entropy', 'difference_logits_ratio')]
  runs += [(SquareAttack, dict(max_iter=5000, p_init=0.8, nb_restarts=1),
            None)]
  runs += [(AutoProjectedGradientDescent, dict(
      loss_type='difference_logits_ratio', targeted=True), t) for t in targets]
  broken = _wrong(model, x, y)
  for attack, options, target in runs:
    if attack is AutoProjectedGradientDescent:
      options = dict(eps_step=2 * EPS, max_iter=100, nb_random_init=1,
                     **options)
    rows = np.flatnonzero(~broken)
    found = attack(classifier, norm=np.inf, eps=EPS, batch_size=512,
                   verbose=False, **options).generate(
                       x[rows].reshape(-1, 8, 8, 1),
                       y[rows] if target is None else target[rows])
    broken[rows] |= _wrong(model, found.reshape(-1, 64), y[rows])
  settings = attacks.AttackSettings(label_key='label', clip_min=0.0,
                                    clip_max=1.0, head='multiclass_logits')
  ours = attacks.attack_features(
      model, {'pixels': tf.constant(x)}, tf.constant(y[:, None]),
      attacks.Attack.parse('autoattack_linf_eps0.1'), settings)['pixels']
  ours_broken = _wrong(model, ours, y)
  assert np.abs(ours - x).max() <= EPS + 1e-6
  robust_ours, robust_art = int((~ours_broken).sum()), int((~broken).sum())
  assert 0.2 * len(y) < robust_art < 0.9 * len(y)  # a non-trivial eps
  # Not weaker than ART's suite by more than one example. Each suite has
  # one random start per attack, so either can break a few that the other
  # misses (ours 121, ART 123 of 359 when this was written; ART's attacks
  # each run on all 359 gave 121); together they leave about as many.
  assert robust_ours <= robust_art + 1, (robust_ours, robust_art)
  assert int((~ours_broken & ~broken).sum()) >= robust_ours - 5


def test_sanity_flags(digits):
  """Each flag counts the examples that show it."""
  import tensorflow as tf
  model, x, y = digits
  ball = aa.Ball('linf', EPS, 0.0, 1.0)
  suite = attacks.Attack.parse('autoattack-lite_linf_eps0.1').suite
  inputs = tf.keras.Input((64,), name='pixels')

  def flags_of(outputs, head='multiclass_logits'):
    wrapped = tf.keras.Model(inputs, outputs)
    found = {}
    logits_fn = lambda x, fixed: aa.class_logits(wrapped(x),  # noqa: E731
                                                 heads.Head(head))
    aa.run_suite(logits_fn, x, y, ball, suite, flags=found)
    return found

  healthy = flags_of(model(inputs))
  assert healthy['zero_gradient'] == healthy['nonfinite_gradient'] == 0
  assert healthy['nondeterministic'] == healthy['saturated_softmax'] == 0
  assert healthy['black_box_only'] <= 2
  # Gradients masked to zero (values unchanged): only Square breaks them.
  masked = flags_of(model(tf.keras.layers.Lambda(
      lambda t: tf.stop_gradient(t) + 0.0 * t)(inputs)))
  assert masked['zero_gradient'] == len(y)
  assert masked['black_box_only'] > 0.1 * len(y)
  # Logits scaled up: a softmax that rounds to 1.
  saturated = flags_of(tf.keras.layers.Softmax()(tf.keras.layers.Lambda(
      lambda t: 1e3 * t)(model(inputs))), 'multiclass')
  assert saturated['saturated_softmax'] > 0.9 * len(y)
  noisy = flags_of(model(tf.keras.layers.Lambda(
      lambda t: t + tf.random.uniform(tf.shape(t), 0, 0.05))(inputs)))
  assert noisy['nondeterministic'] == len(y)


def test_a_batch_of_one(digits):
  """A bundle's last batch can hold one example (this failed in make run:
  the loops' static shapes changed)."""
  model, x, y = digits
  ball = aa.Ball('linf', EPS, 0.0, 1.0)
  suite = attacks.Attack.parse('autoattack-lite_linf_eps0.1').suite
  for rows in (slice(0, 1), slice(1, 3), slice(3, 4)):
    worst, broken_by = aa.run_suite(_logits_fn(model), x[rows], y[rows],
                                    ball, suite)
    assert worst.shape == x[rows].shape and broken_by.shape == y[rows].shape


def test_square_l2_pattern():
  """The 1-D window pattern: unit norm, zero outside its window, two halves
  of opposite sign, each largest at its centre and symmetric about it."""
  import tensorflow as tf
  pattern = aa.l2_pattern(tf.range(20), 3, 10).numpy()
  assert abs(np.linalg.norm(pattern) - 1.0) < 1e-6
  assert not pattern[:3].any() and not pattern[13:].any()
  first, second = pattern[3:8], pattern[8:13]
  assert (first > 0).all() and (second < 0).all()
  np.testing.assert_allclose(first, -second)
  np.testing.assert_allclose(first, first[::-1])
  assert first.argmax() == 2 and first[2] > first[1] > first[0]
  # By hand: distances 2, 1, 0, 1, 2 from the centre; values
  # sum(1/k^2, k = r + 1 .. 3).
  by_hand = np.array([1 / 9, 1 / 4 + 1 / 9, 1 + 1 / 4 + 1 / 9,
                      1 / 4 + 1 / 9, 1 / 9])
  np.testing.assert_allclose(first / first.max(), by_hand / by_hand.max(),
                             rtol=1e-6)


def test_a_model_without_gradients_fails_before_the_evaluation(digits):
  """check_gradients (the executor's start): white-box attacks on a model
  without gradients fail naming the features and the attacks; Square alone
  and a model with gradients pass."""
  import tensorflow as tf
  model, _, _ = digits
  inputs = tf.keras.Input((64,), name='pixels')
  frozen = tf.keras.Model(inputs, model(tf.keras.layers.Lambda(
      tf.stop_gradient)(inputs)))
  settings = attacks.AttackSettings(label_key='label')
  names = ['clean', 'fgsm_linf_eps0.1', 'square_linf_eps0.1']
  with pytest.raises(ValueError, match=r"no gradient with respect to the "
                     r"perturbed features \['pixels'\].*white-box attacks "
                     r"\['fgsm_linf_eps0.1'\] cannot run"):
    attacks.check_gradients(frozen, settings, names)
  attacks.check_gradients(frozen, settings, ['clean', 'square_linf_eps0.1'])
  attacks.check_gradients(model, settings, names)
