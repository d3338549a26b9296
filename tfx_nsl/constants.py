"""Names and defaults shared by components, trainer modules and pipelines."""

# Feature that names an example in graph edges (docs/design.md, "Example ids").
ID_FEATURE = 'id'
LABEL_FEATURE = 'label'

# Split names.
TRAIN_SPLIT = 'train'
EVAL_SPLIT = 'eval'
UNLABELED_SPLIT = 'unlabeled'

# Signature the pushed model serves; it parses serialized tf.Examples.
SERVING_SIGNATURE = 'serving_default'
SERVING_INPUT = 'examples'
SERVING_OUTPUT = 'probabilities'  # heads.Head.serving_output, per head
SERVING_OUTPUT_LOGITS = 'logits'
SERVING_OUTPUT_REGRESSION = 'predictions'

# NSL's neighbor feature names (nsl.configs.GraphNeighborConfig's defaults):
# GraphAugmentation writes them, the Trainer reads them.
NBR_PREFIX = 'NL_nbr_'
NBR_WEIGHT_SUFFIX = '_weight'

# Beam on one machine: always explicit (Beam >= 2.68 changes the default).
DEFAULT_BEAM_ARGS = ('--direct_running_mode=in_memory', '--direct_num_workers=1')

# Every process that imports TensorFlow for NSL needs Keras 2.
LEGACY_KERAS_ENV = {'TF_USE_LEGACY_KERAS': '1'}
