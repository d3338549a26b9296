"""Names and defaults shared by components, trainer modules and pipelines."""

# Feature that names an example in graph edges (design.md, "Example ids").
ID_FEATURE = 'id'
LABEL_FEATURE = 'label'

# Split names.
TRAIN_SPLIT = 'train'
EVAL_SPLIT = 'eval'
UNLABELED_SPLIT = 'unlabeled'

# Signature the pushed model serves; it parses serialized tf.Examples.
SERVING_SIGNATURE = 'serving_default'
SERVING_INPUT = 'examples'
SERVING_OUTPUT = 'probabilities'

# Beam on one machine: always explicit (Beam >= 2.68 changes the default).
DEFAULT_BEAM_ARGS = ('--direct_running_mode=in_memory', '--direct_num_workers=1')

# Every process that imports TensorFlow for NSL needs Keras 2.
LEGACY_KERAS_ENV = {'TF_USE_LEGACY_KERAS': '1'}
