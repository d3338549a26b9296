"""What a model's output means: one definition for training, attacks and TFMA.

A head is named by a string (a Trainer `custom_config` key and a
RobustnessEvaluator parameter):

  multiclass           one probability per class (softmax); int labels
  multiclass_logits    one logit per class
  binary               one unit, the probability of class 1 (sigmoid)
  binary_logits        one unit, the logit of class 1
  regression           one or more real values; the loss is mean squared error
  auto                 inferred from the model's output layer (`infer`)

TFMA always receives probabilities for classification (logits go through
softmax or sigmoid first), so its standard metrics apply unchanged.
"""
import dataclasses

from tfx_nsl import constants

HEADS = ('multiclass', 'multiclass_logits', 'binary', 'binary_logits',
         'regression')
AUTO = 'auto'


@dataclasses.dataclass(frozen=True)
class Head:
  """A parsed head name."""
  name: str

  def __post_init__(self):
    if self.name not in HEADS:
      raise ValueError(f'head must be one of {(AUTO,) + HEADS}, got '
                       f'{self.name!r}')

  @property
  def kind(self):
    return self.name.replace('_logits', '')

  @property
  def from_logits(self):
    return self.name.endswith('_logits')

  @property
  def classification(self):
    return self.kind != 'regression'

  @property
  def serving_output(self):
    """Name of the serving signature's output (and of the output layer of
    the built-in model)."""
    if not self.classification:
      return constants.SERVING_OUTPUT_REGRESSION
    return (constants.SERVING_OUTPUT_LOGITS if self.from_logits
            else constants.SERVING_OUTPUT)

  def keras_loss(self, reduction=None):
    """The Keras loss of this head (labels as the data holds them)."""
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    kwargs = {} if reduction is None else {'reduction': reduction}
    if self.kind == 'multiclass':
      return tf.keras.losses.SparseCategoricalCrossentropy(
          from_logits=self.from_logits, **kwargs)
    if self.kind == 'binary':
      loss = tf.keras.losses.BinaryCrossentropy(from_logits=self.from_logits,
                                                **kwargs)
      return lambda labels, outputs, sample_weight=None: loss(
          tf.cast(labels, outputs.dtype), outputs, sample_weight=sample_weight)
    loss = tf.keras.losses.MeanSquaredError(**kwargs)
    return lambda labels, outputs, sample_weight=None: loss(
        tf.cast(labels, outputs.dtype), outputs, sample_weight=sample_weight)

  def keras_metrics(self):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    if self.kind == 'multiclass':
      return [tf.keras.metrics.SparseCategoricalAccuracy(name='accuracy')]
    if self.kind == 'binary':
      return [tf.keras.metrics.BinaryAccuracy(
          name='accuracy', threshold=0.0 if self.from_logits else 0.5)]
    return [tf.keras.metrics.MeanAbsoluteError(name='mae')]

  def predictions(self, outputs):
    """What TFMA receives: probabilities, or the regression values."""
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    if not self.from_logits:
      return outputs
    return (tf.nn.softmax(outputs) if self.kind == 'multiclass'
            else tf.sigmoid(outputs))

  def tfma_metrics(self):
    """TFMA metric class names reported for every attack; the first is the
    one the accuracy (or error) thresholds apply to."""
    if self.kind == 'multiclass':
      return ['SparseCategoricalAccuracy']
    if self.kind == 'binary':
      return ['BinaryAccuracy', 'AUC']
    return ['MeanSquaredError', 'MeanAbsoluteError']

  @property
  def gated_metric(self):
    """TFMA's name of the thresholded metric (`tfma_metrics()[0]`)."""
    return {'multiclass': 'sparse_categorical_accuracy',
            'binary': 'binary_accuracy',
            'regression': 'mean_squared_error'}[self.kind]


def model_inputs(model):
  """{input name: Keras input tensor} of a functional Keras model."""
  return dict(zip(model.input_names, model.inputs))


def _activation_name(layer):
  activation = getattr(layer, 'activation', None)
  if activation is not None:
    return getattr(activation, '__name__', str(activation))
  name = type(layer).__name__.lower()
  return name if name in ('softmax', 'sigmoid') else None


def infer(model, head=AUTO):
  """The Head of a Keras model: `head` unless 'auto', else from the layer
  that makes the (single) output: softmax over >1 units is multiclass,
  linear over >1 units multiclass_logits, sigmoid over one unit binary. One
  linear unit is a logit or a regression value: pass `head` then."""
  if head != AUTO:
    return Head(head)
  if len(model.outputs) != 1:
    raise ValueError(
        f'model {model.name!r} has {len(model.outputs)} outputs; NSL heads '
        'take one. Pass head= one of ' + ', '.join(HEADS))
  units = model.outputs[0].shape[-1]
  layer = model.get_layer(model.output_names[0])
  activation = _activation_name(layer)
  if activation == 'softmax' and units and units > 1:
    return Head('multiclass')
  if activation == 'sigmoid' and units == 1:
    return Head('binary')
  if activation == 'linear' and units and units > 1:
    return Head('multiclass_logits')
  raise ValueError(
      f'cannot infer the head of model {model.name!r}: its output layer '
      f'{layer.name!r} has {units} unit(s) and activation {activation!r}. '
      "Pass head='binary_logits' or 'regression' (one linear unit), or one of "
      f'{HEADS}.')
