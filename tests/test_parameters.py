"""RuntimeParameters on every component, their run-time checks, and the code
fingerprint in TFX's cache key."""
import inspect
import json
import os

import numpy as np
import pytest
from tfx import v1 as tfx
from tfx.dsl.compiler import compiler
from tfx.orchestration import data_types
from tfx.orchestration import metadata
from tfx.orchestration.portable import runtime_parameter_utils
from tfx.types import standard_artifacts

import tfx_nsl
from tfx_nsl import parameters
from tfx_nsl.components import GraphAugmentation
from tfx_nsl.components import GraphBuilder
from tfx_nsl.components import RobustnessEvaluator
from tfx_nsl.components.graph_builder import Lsh

from graph_testing import clustered_embeddings, write_examples_artifact

# A valid value of each RuntimeParameter-able parameter whose default is None.
_VALUES = {'max_neighbors': 2, 'embedding_output': 'out', 'label_key': 'label',
           'example_splits': '["eval"]', 'clip_min': 0.0,
           'clip_max': 1.0, 'min_clean_accuracy': 0.5,
           'min_attacked_accuracy': 0.1, 'max_accuracy_drop': 0.1,
           'max_clean_error': 1.0, 'max_attacked_error': 1.0,
           'max_error_increase': 0.1}
# Parameters one cannot give together with the rest (a classifier's gates
# and a regression's; 'raw' needs a transform graph).
_SKIP = {'max_clean_error', 'max_attacked_error', 'max_error_increase',
         'attack_space'}


def _channel(artifact_type, name):
  return tfx.dsl.Importer(source_uri='/nonexistent',
                          artifact_type=artifact_type).with_id(
                              name).outputs['result']


def _runtime_kwargs(component_class):
  """A RuntimeParameter for every int/float/str argument of the component."""
  kwargs = {}
  for name, arg in inspect.signature(component_class.__init__).parameters.items():
    spec = component_class.SPEC_CLASS.PARAMETERS.get(name)
    if spec is None or spec.type not in (int, float, str) or name in _SKIP:
      continue
    default = arg.default if arg.default is not None else _VALUES[name]
    if name == 'mode':
      default = 'exact'
    kwargs[name] = data_types.RuntimeParameter(
        name=f'{component_class.__name__}-{name}', ptype=spec.type,
        default=default)
  return kwargs


@pytest.mark.parametrize('component_class', [GraphBuilder, GraphAugmentation,
                                             RobustnessEvaluator])
def test_every_scalar_parameter_accepts_a_runtime_parameter(component_class,
                                                            tmp_path):
  channels = {
      GraphBuilder: dict(examples=_channel(standard_artifacts.Examples, 'e'),
                         embedding_features=['emb']),
      GraphAugmentation: dict(examples=_channel(standard_artifacts.Examples,
                                                'e'),
                              graph=_channel(tfx_nsl.Graph, 'g')),
      RobustnessEvaluator: dict(examples=_channel(standard_artifacts.Examples,
                                                  'e'),
                                model=_channel(standard_artifacts.Model, 'm'),
                                baseline_model=_channel(
                                    standard_artifacts.Model, 'b')),
  }[component_class]
  kwargs = _runtime_kwargs(component_class)
  assert len(kwargs) >= {GraphBuilder: 9, GraphAugmentation: 2,
                         RobustnessEvaluator: 9}[component_class]
  component = component_class(**channels, **kwargs)
  for name, value in kwargs.items():
    assert component.exec_properties[name] is value
  # And the pipeline compiles with them.
  pipeline = tfx.dsl.Pipeline(
      pipeline_name='p', pipeline_root=str(tmp_path),
      components=[component])
  ir = compiler.Compiler().compile(pipeline)
  node = next(n.pipeline_node for n in ir.nodes
              if n.pipeline_node.node_info.id == component.id)
  for name in kwargs:
    assert node.parameters.parameters[name].HasField('runtime_parameter')
  # Kubeflow (v2) compiles them into pipeline parameters.
  spec_file = str(tmp_path / 'spec.json')
  tfx.orchestration.experimental.KubeflowV2DagRunner(
      config=tfx.orchestration.experimental.KubeflowV2DagRunnerConfig(
          default_image='image'), output_filename=spec_file).run(pipeline)
  with open(spec_file) as f:
    root_inputs = json.load(f)['pipelineSpec']['root']['inputDefinitions'][
        'parameters']
  assert {p.name for p in kwargs.values()} <= set(root_inputs)


def test_evaluator_checks_run_time_values_before_reading_data():
  from tfx_nsl.components.robustness_evaluator import executor
  component = RobustnessEvaluator(
      examples=_channel(standard_artifacts.Examples, 'e'),
      model=_channel(standard_artifacts.Model, 'm'),
      batch_size=data_types.RuntimeParameter('bs', ptype=int, default=64))
  properties = {**component.exec_properties, 'batch_size': 0}
  # Artifacts that do not exist: the check comes before they are read.
  inputs = {'examples': [standard_artifacts.Examples()],
            'model': [standard_artifacts.Model()]}
  with pytest.raises(ValueError, match='RobustnessEvaluator: parameter '
                     r'batch_size=0 is not allowed: must be >= 1'):
    executor.Executor().Do(inputs, {}, properties)


def test_a_runtime_parameter_of_the_wrong_ptype_is_named():
  examples = _channel(standard_artifacts.Examples, 'e')
  with pytest.raises(ValueError, match=r'similarity_threshold is a float; the '
                     r"RuntimeParameter 'thr' has ptype int: declare it with "
                     r'ptype=float'):
    GraphBuilder(examples=examples, embedding_features=['emb'],
                 similarity_threshold=data_types.RuntimeParameter(
                     'thr', ptype=int, default=1))
  with pytest.raises(ValueError, match='undirected cannot be a '
                     'RuntimeParameter'):
    GraphBuilder(examples=examples, embedding_features=['emb'],
                 undirected=data_types.RuntimeParameter('u', ptype=int))


# ------------------------------------------------- run-time values, caching


def _pipeline(tmp_path, examples, enable_cache=False, **graph_kwargs):
  importer = tfx.dsl.Importer(
      source_uri=examples.uri, artifact_type=standard_artifacts.Examples,
      properties={'split_names': examples.split_names}).with_id('examples')
  graph = GraphBuilder(examples=importer.outputs['result'],
                       embedding_features=['emb'], undirected=False,
                       **graph_kwargs)
  augment = GraphAugmentation(
      examples=importer.outputs['result'], graph=graph.outputs['graph'],
      max_neighbors=data_types.RuntimeParameter('nbrs', ptype=int, default=2))
  return tfx.dsl.Pipeline(
      pipeline_name='runtime', pipeline_root=str(tmp_path / 'root'),
      components=[importer, graph, augment], enable_cache=enable_cache,
      metadata_connection_config=metadata.sqlite_metadata_connection_config(
          str(tmp_path / 'mlmd.sqlite')),
      beam_pipeline_args=['--direct_running_mode=in_memory'])


def _run(pipeline, bindings=None):
  ir = compiler.Compiler().compile(pipeline)
  runtime_parameter_utils.substitute_runtime_parameter(ir, bindings or {})
  tfx.orchestration.LocalDagRunner().run_with_ir(ir)


def _executions(tmp_path, type_suffix):
  """States of the executions of one component type, oldest first."""
  from ml_metadata.proto import metadata_store_pb2
  config = metadata.sqlite_metadata_connection_config(
      str(tmp_path / 'mlmd.sqlite'))
  with metadata.Metadata(config) as m:
    types = [t for t in m.store.get_execution_types()
             if t.name.endswith(type_suffix)]
    executions = [e for t in types
                  for e in m.store.get_executions_by_type(t.name)]
    return [metadata_store_pb2.Execution.State.Name(e.last_known_state)
            for e in sorted(executions, key=lambda e: e.id)]


@pytest.fixture(scope='module')
def small_examples(tmp_path_factory):
  vectors = clustered_embeddings(60, 4, 3, 0.3, seed=0)
  rows = [{'id': f'n{i}', 'emb': v, 'label': np.int64(i % 2)}
          for i, v in enumerate(vectors)]
  return write_examples_artifact(tmp_path_factory.mktemp('ex') / 'examples',
                                 {'train': rows})


def test_runtime_values_are_used_and_bad_ones_named_before_reading(
    tmp_path, small_examples):
  kwargs = dict(
      similarity_threshold=data_types.RuntimeParameter('thr', ptype=float,
                                                       default=0.5),
      max_neighbors=data_types.RuntimeParameter('k', ptype=int, default=3),
      mode=data_types.RuntimeParameter('mode', ptype=str, default='exact'))
  _run(_pipeline(tmp_path / 'good', small_examples, **kwargs),
       {'thr': 0.25, 'k': 2, 'mode': '{"lsh": {"rounds": 3, "splits": 2}}'})
  graphs = [d for d, _, files in os.walk(tmp_path / 'good' / 'root')
            if 'stats.json' in files]
  (graph_dir,) = graphs
  with open(os.path.join(graph_dir, 'stats.json')) as f:
    config = json.load(f)['config']
  assert config['similarity_threshold'] == 0.25
  assert config['max_neighbors'] == 2
  assert config['mode'] == {'lsh': {'max_bucket_size': 4096, 'recall_sample_size':
                                    1000, 'rounds': 3, 'seed': 0, 'splits': 2}}
  for bindings, message in [
      ({'thr': 2.0}, r'GraphBuilder: parameter similarity_threshold=2.0 is '
                     r'not allowed: must be in \[-1, 1\] for cosine'),
      ({'k': 0}, 'GraphBuilder: parameter max_neighbors=0 is not allowed'),
      ({'mode': 'fast'}, r"GraphBuilder: parameter mode='fast' is not "
                         r'allowed: give Exact\(\), Lsh'),
      ({'mode': '{"lsh": {"rounds": 0}}'},
       "GraphBuilder mode 'lsh': parameter rounds=0 is not allowed"),
      ({'nbrs': 0}, 'GraphAugmentation: parameter max_neighbors=0 is not '
                    'allowed'),
  ]:
    root = tmp_path / f'bad-{len(os.listdir(tmp_path))}'
    with pytest.raises(ValueError, match=message):
      _run(_pipeline(root, small_examples, **kwargs), bindings)
  # A binding of the wrong Python type never reaches the executor: TFX
  # refuses it when it substitutes the values.
  with pytest.raises(RuntimeError, match='does not match'):
    _run(_pipeline(tmp_path / 'type', small_examples, **kwargs),
         {'thr': 'high'})


def test_a_new_tfx_nsl_version_re_executes_cached_components(
    tmp_path, small_examples, monkeypatch):
  for _ in range(2):
    _run(_pipeline(tmp_path, small_examples, enable_cache=True,
                   mode=Lsh(rounds=2)))
  assert _executions(tmp_path, 'GraphBuilder') == ['COMPLETE', 'CACHED']
  before = parameters.fingerprint()
  monkeypatch.setattr(tfx_nsl, '__version__', tfx_nsl.__version__ + '.post1')
  assert parameters.fingerprint() != before
  _run(_pipeline(tmp_path, small_examples, enable_cache=True,
                 mode=Lsh(rounds=2)))
  assert _executions(tmp_path, 'GraphBuilder') == ['COMPLETE', 'CACHED',
                                                   'COMPLETE']
  assert _executions(tmp_path, 'GraphAugmentation') == ['COMPLETE', 'CACHED',
                                                        'COMPLETE']


def test_fingerprint_sees_the_model_fn_module(tmp_path, monkeypatch):
  module = tmp_path / 'my_models.py'
  module.write_text('def model_fn(specs, config):\n  return None\n')
  monkeypatch.syspath_prepend(str(tmp_path))
  first = parameters.fingerprint('my_models.model_fn')
  assert first.startswith(parameters.fingerprint() + ' my_models+')
  module.write_text('def model_fn(specs, config):\n  return 1\n')
  assert parameters.fingerprint('my_models.model_fn') != first
  # Not importable where the pipeline is built (e.g. only in the image):
  # the name alone, with a warning.
  assert parameters.fingerprint('no_such_module.model_fn') == (
      parameters.fingerprint() + ' no_such_module')
  assert parameters.fingerprint('no_pkg.sub.model_fn').endswith(' no_pkg.sub')


def test_fingerprint_is_the_same_for_a_checkout_and_an_installed_copy(
    tmp_path):
  """An installed wheel nests the subpackages inside tfx_nsl/; the
  editable checkout keeps them beside it: same code, same fingerprint."""
  import shutil
  import subprocess
  import sys
  checkout = os.path.dirname(os.path.dirname(os.path.abspath(
      parameters.__file__)))
  site = tmp_path / 'site'
  ignore = shutil.ignore_patterns('__pycache__', '*.pyc')
  shutil.copytree(os.path.join(checkout, 'tfx_nsl'), site / 'tfx_nsl',
                  ignore=ignore)
  for sub in ('components', 'pipelines', 'trainer_modules', 'kubeflow'):
    shutil.copytree(os.path.join(checkout, sub), site / 'tfx_nsl' / sub,
                    ignore=ignore)
  code = 'from tfx_nsl import parameters; print(parameters.fingerprint())'
  installed = subprocess.run(
      [sys.executable, '-c', code], cwd=str(tmp_path), check=True,
      capture_output=True, text=True,
      env={**os.environ, 'PYTHONPATH': str(site)}).stdout.strip()
  assert installed == parameters.fingerprint()


def test_trainer_custom_config_carries_the_fingerprint(tmp_path):
  from tfx_nsl.pipelines import nsl_pipeline
  from tfx_nsl.trainer_modules.config import TrainerConfig
  pipeline = nsl_pipeline.create_pipeline(
      pipeline_name='p', pipeline_root=str(tmp_path), data_root=str(tmp_path),
      serving_model_dir=str(tmp_path / 'serving'),
      trainer_config={'feature_keys': ['pixels']})
  trainer = next(c for c in pipeline.components if c.id == 'Trainer')
  custom = json.loads(trainer.exec_properties['custom_config'])
  assert custom[parameters.FINGERPRINT_KEY] == parameters.fingerprint()
  TrainerConfig.from_dict(custom)  # The Trainer ignores it.


def test_values_are_normalized_and_bad_ones_named():
  examples = _channel(standard_artifacts.Examples, 'e')
  model = _channel(standard_artifacts.Model, 'm')
  # Ints for floats, tuples for lists, numpy scalars: taken as meant.
  evaluator = RobustnessEvaluator(examples=examples, model=model, clip_min=0,
                                  clip_max=1, perturb_features=('pixels',),
                                  batch_size=np.int64(64))
  assert evaluator.exec_properties['clip_max'] == 1.0
  assert isinstance(evaluator.exec_properties['clip_max'], float)
  assert evaluator.exec_properties['perturb_features'] == ['pixels']
  builder = GraphBuilder(examples=examples, embedding_features=['emb'],
                         similarity_threshold=1, max_neighbors=np.int64(3),
                         splits=('train',))
  assert builder.exec_properties['similarity_threshold'] == 1.0
  assert builder.exec_properties['max_neighbors'] == 3
  bad = [
      (GraphBuilder, dict(embedding_features='emb'),
       r"embedding_features must be a list of names, e.g. \['emb'\]"),
      (GraphBuilder, dict(embedding_features=['emb'], mode=Lsh(
          rounds=data_types.RuntimeParameter('r', ptype=int, default=2))),
       r"knobs \['rounds'\] cannot be RuntimeParameters themselves; make "
       '`mode` a str RuntimeParameter'),
      (GraphBuilder, dict(embedding_features=['emb'], mode=Lsh(seed=-1)),
       r'seed=-1 is not allowed: must be in \[0, 2\*\*32\)'),
      (GraphBuilder, dict(embedding_features=['emb'], splits=[1]),
       r'splits=\[1\] must be of type List\[str\]'),
      (RobustnessEvaluator, dict(model=model, min_attacked_accuracy={
          'fgsm_linf_eps0.05': 'high'}),
       'min_attacked_accuracy_by_attack=.*must be of type Dict'),
      (RobustnessEvaluator, dict(model=model, attacks='fgsm_linf_eps0.1'),
       r"attacks must be a list, e.g. \['fgsm_linf_eps0.1'\]"),
      (RobustnessEvaluator, dict(model=model, example_splits='eval'),
       'example_splits must be a list'),
      (RobustnessEvaluator, dict(model=model, max_accuracy_drop=0.05),
       'max_accuracy_drop compares with a baseline: pass baseline_model'),
      (RobustnessEvaluator, dict(model=model, attacks=[],
                                 min_attacked_accuracy=0.5),
       'attacks is empty'),
  ]
  for component_class, kwargs, message in bad:
    with pytest.raises(ValueError, match=message):
      component_class(examples=examples, **kwargs)
