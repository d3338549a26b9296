"""Runs a compiled KFP v2 pipeline's tasks on this machine, for the tests.

What a KFP 2.x / Vertex backend does for each container task, minus
Kubernetes, caching and ML Metadata: tasks in topological order; each task's
ExecutorInput (the `{{$}}` placeholder) built from the spec and from the
ExecutorOutput its upstream tasks wrote; the container's `command` + `args`
run as a subprocess with the container's `env`; a `lifecycle.preCacheCheck`
hook (TFX's ExampleGen driver) run first, in the same task root.

kfp 2.5's own `kfp.local` cannot do this: it runs single lightweight Python
components only (no pipelines, no input artifacts, no container commands).

Node kinds it does not support (resolvers, which query ML Metadata;
conditions; loops; exit handlers) fail with `UnsupportedSpec` before any task
runs.
"""
import json
import os
import re
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional

from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2

_EXECUTOR_OUTPUT = 'executor_output.json'
# `{{$}}` and the `{{$.…}}` forms TFX emits for container-spec components.
_PLACEHOLDER = re.compile(r'\{\{\$(?:\.[^}]*)?\}\}')
_INPUT_PARAM = re.compile(r"^\{\{\$\.inputs\.parameters\['([^']+)'\]\}\}$")
_ARTIFACT_URI = re.compile(
    r"^\{\{\$\.(inputs|outputs)\.artifacts\['([^']+)'\]\.uri\}\}$")


class UnsupportedSpec(Exception):
  """The spec uses a feature this launcher does not implement."""


class TaskFailed(Exception):
  """A task's process exited non-zero."""


def load_pipeline_job(path: str) -> pipeline_spec_pb2.PipelineJob:
  """Reads a compiled `.json` PipelineJob or `.yaml` PipelineSpec."""
  with open(path) as f:
    text = f.read()
  job = pipeline_spec_pb2.PipelineJob()
  if path.endswith('.json'):
    json_format.Parse(text, job)
  else:
    import yaml  # pylint: disable=g-import-not-at-top
    job.pipeline_spec.update(yaml.safe_load(text))
  return job


def _spec(job):
  spec = pipeline_spec_pb2.PipelineSpec()
  json_format.ParseDict(json_format.MessageToDict(job.pipeline_spec), spec)
  return spec


def _executors(spec) -> Dict[str, Any]:
  return json_format.MessageToDict(spec.deployment_spec)['executors']


def topological_order(spec: pipeline_spec_pb2.PipelineSpec) -> List[str]:
  """Task names, upstream first; ties broken by name so runs are repeatable."""
  tasks = spec.root.dag.tasks
  upstream = {}
  for name, task in tasks.items():
    deps = set(task.dependent_tasks)
    for artifact in task.inputs.artifacts.values():
      if artifact.HasField('task_output_artifact'):
        deps.add(artifact.task_output_artifact.producer_task)
    for parameter in task.inputs.parameters.values():
      if parameter.HasField('task_output_parameter'):
        deps.add(parameter.task_output_parameter.producer_task)
    missing = deps - set(tasks)
    if missing:
      raise UnsupportedSpec(f'task {name} depends on unknown tasks {missing}')
    upstream[name] = deps
  order = []
  while upstream:
    ready = sorted(n for n, deps in upstream.items() if not deps - set(order))
    if not ready:
      raise UnsupportedSpec(f'dependency cycle among {sorted(upstream)}')
    order.append(ready[0])
    del upstream[ready[0]]
  return order


def check_supported(spec: pipeline_spec_pb2.PipelineSpec) -> None:
  """Raises UnsupportedSpec for anything `run_pipeline` would get wrong."""
  executors = _executors(spec)
  for name, task in spec.root.dag.tasks.items():
    component = spec.components[task.component_ref.name]
    if component.HasField('dag'):
      raise UnsupportedSpec(f'task {name}: nested DAGs (exit handlers, '
                            'sub-pipelines) are not supported')
    if task.trigger_policy.condition:
      raise UnsupportedSpec(f'task {name}: conditions are not supported')
    if (task.HasField('artifact_iterator')
        or task.HasField('parameter_iterator')):
      raise UnsupportedSpec(f'task {name}: loops are not supported')
    executor = executors[component.executor_label]
    kind, = executor.keys()
    if kind == 'resolver':
      raise UnsupportedSpec(
          f'task {name}: resolver nodes query ML Metadata, which this '
          'launcher does not have')
    if kind not in ('container', 'importer'):
      raise UnsupportedSpec(f'task {name}: executor kind {kind!r}')
    for key, parameter in task.inputs.parameters.items():
      kind = parameter.WhichOneof('kind')
      if kind not in ('runtime_value', 'component_input_parameter',
                      'task_output_parameter'):
        raise UnsupportedSpec(f'task {name}: parameter {key} of kind {kind}')
    for key, artifact in task.inputs.artifacts.items():
      if not artifact.HasField('task_output_artifact'):
        raise UnsupportedSpec(f'task {name}: input artifact {key} is not a '
                              'task output')


def artifact_title(artifact_type: pipeline_spec_pb2.ArtifactTypeSchema) -> str:
  import yaml  # pylint: disable=g-import-not-at-top
  if artifact_type.WhichOneof('kind') == 'schema_title':
    return artifact_type.schema_title
  return yaml.safe_load(artifact_type.instance_schema).get('title', '')


class _Run:
  """State of one local pipeline run."""

  def __init__(self, job, pipeline_root, python, env, log_dir):
    self.job = job
    self.spec = _spec(job)
    self.executors = _executors(self.spec)
    self.python = python
    self.base_env = env
    self.run_id = time.strftime('run-%Y%m%d-%H%M%S')
    self.run_root = os.path.join(pipeline_root, self.spec.pipeline_info.name,
                                 self.run_id)
    self.log_dir = log_dir or os.path.join(self.run_root, 'logs')
    # task -> ExecutorOutput-like {'artifacts': {key: [RuntimeArtifact]},
    #                              'parameter_values': {key: Value}}
    self.outputs: Dict[str, Dict[str, Any]] = {}
    self.root_parameters = self._root_parameters()

  def _root_parameters(self):
    """Pipeline inputs: spec defaults, overridden by the job's runtimeConfig."""
    values = {}
    for name, parameter in self.spec.root.input_definitions.parameters.items():
      if parameter.HasField('default_value'):
        values[name] = parameter.default_value
    config = self.job.runtime_config
    if config.parameters:
      raise UnsupportedSpec('runtimeConfig.parameters (schema 2.0) are not '
                            'supported; compile with schema 2.1')
    values.update(config.parameter_values)
    return values

  def _parameter_value(self, task_name, key, parameter, executor_input):
    kind = parameter.WhichOneof('kind')
    inputs = executor_input.inputs
    if kind == 'runtime_value':
      value = parameter.runtime_value
      if value.HasField('constant'):  # schema 2.1
        inputs.parameter_values[key].CopyFrom(value.constant)
      elif value.HasField('constant_value'):  # schema 2.0
        inputs.parameters[key].CopyFrom(value.constant_value)
      else:
        raise UnsupportedSpec(f'task {task_name}: parameter {key}: {value}')
    elif kind == 'component_input_parameter':
      name = parameter.component_input_parameter
      if name not in self.root_parameters:
        raise UnsupportedSpec(f'task {task_name}: pipeline parameter {name} '
                              'has no value')
      inputs.parameter_values[key].CopyFrom(self.root_parameters[name])
    else:
      producer = parameter.task_output_parameter
      # TFX names the producer `<node>_task` for dynamic exec properties.
      task = producer.producer_task
      if task not in self.outputs and task.endswith('_task'):
        task = task[:-len('_task')]
      inputs.parameter_values[key].CopyFrom(
          self.outputs[task]['parameter_values'][producer.output_parameter_key])

  def executor_input(self, task_name) -> pipeline_spec_pb2.ExecutorInput:
    """The ExecutorInput KFP would hand this task (the `{{$}}` value)."""
    task = self.spec.root.dag.tasks[task_name]
    component = self.spec.components[task.component_ref.name]
    task_root = os.path.join(self.run_root, task_name)
    result = pipeline_spec_pb2.ExecutorInput()
    for key, parameter in task.inputs.parameters.items():
      self._parameter_value(task_name, key, parameter, result)
    for key, artifact in task.inputs.artifacts.items():
      source = artifact.task_output_artifact
      produced = self.outputs[source.producer_task]['artifacts'][
          source.output_artifact_key]
      wanted = artifact_title(
          component.input_definitions.artifacts[key].artifact_type)
      for runtime_artifact in produced:
        got = artifact_title(runtime_artifact.type)
        if got != wanted:
          raise UnsupportedSpec(
              f'task {task_name}: input {key} wants {wanted}, '
              f'{source.producer_task} produced {got}')
      result.inputs.artifacts[key].artifacts.extend(produced)
    for key, definition in component.output_definitions.artifacts.items():
      output = result.outputs.artifacts[key].artifacts.add()
      output.name = f'{self.run_id}/{task_name}/{key}'
      output.type.CopyFrom(definition.artifact_type)
      output.uri = os.path.join(task_root, key)
      output.metadata.update(json_format.MessageToDict(definition.metadata))
    for key in component.output_definitions.parameters:
      result.outputs.parameters[key].output_file = os.path.join(
          task_root, 'parameters', key)
    result.outputs.output_file = os.path.join(task_root, _EXECUTOR_OUTPUT)
    return result

  def _resolve(self, argv, executor_input):
    """Replaces KFP placeholders in a container command line."""
    as_json = json_format.MessageToJson(executor_input, sort_keys=True)
    resolved = []
    for arg in argv:
      if arg == '{{$}}':
        resolved.append(as_json)
        continue
      match = _INPUT_PARAM.match(arg)
      if match:
        value = json_format.MessageToDict(
            executor_input.inputs.parameter_values[match.group(1)])
        resolved.append(value if isinstance(value, str) else json.dumps(value))
        continue
      match = _ARTIFACT_URI.match(arg)
      if match:
        side = getattr(executor_input, match.group(1))
        resolved.append(side.artifacts[match.group(2)].artifacts[0].uri)
        continue
      if _PLACEHOLDER.search(arg):
        raise UnsupportedSpec(f'placeholder not supported: {arg[:200]}')
      resolved.append(arg)
    # The image's `python` is this interpreter here.
    if resolved and resolved[0] in ('python', 'python3'):
      resolved[0] = self.python
    return resolved

  def _exec(self, task_name, step, argv, env):
    os.makedirs(self.log_dir, exist_ok=True)
    log_path = os.path.join(self.log_dir, f'{task_name}.{step}.log')
    # A neutral working directory: nothing may import from the checkout
    # by accident, as nothing can in the container.
    cwd = os.path.join(self.run_root, task_name)
    os.makedirs(cwd, exist_ok=True)
    start = time.time()
    with open(log_path, 'w') as log:
      code = subprocess.call(argv, cwd=cwd, env=env, stdout=log,
                             stderr=subprocess.STDOUT)
    if code:
      with open(log_path) as log:
        tail = log.read()[-4000:]
      raise TaskFailed(f'task {task_name} ({step}) exited {code}; '
                       f'log {log_path}:\n{tail}')
    return time.time() - start

  def _read_output(self, path) -> pipeline_spec_pb2.ExecutorOutput:
    output = pipeline_spec_pb2.ExecutorOutput()
    if os.path.exists(path):
      with open(path) as f:
        json_format.Parse(f.read(), output, ignore_unknown_fields=True)
    return output

  @staticmethod
  def _merge(executor_input, executor_output):
    """What the backend records: output artifacts updated by the executor."""
    for key, artifacts in executor_output.artifacts.items():
      declared = executor_input.outputs.artifacts[key].artifacts
      for i, artifact in enumerate(artifacts.artifacts):
        if i < len(declared):
          if artifact.uri:
            declared[i].uri = artifact.uri
          declared[i].metadata.update(
              json_format.MessageToDict(artifact.metadata))

  def run_container(self, task_name, container) -> float:
    executor_input = self.executor_input(task_name)
    env = dict(self.base_env)
    for variable in container.get('env', []):
      env[variable['name']] = variable['value']
    seconds = 0.0
    hook = container.get('lifecycle', {}).get('preCacheCheck')
    if hook:
      seconds += self._exec(
          task_name, 'pre_cache_check',
          self._resolve(hook.get('command', []) + hook.get('args', []),
                        executor_input), env)
      # The backend applies the driver's output before the executor runs;
      # the executor also reads the same file for its parameters.
      self._merge(executor_input,
                  self._read_output(executor_input.outputs.output_file))
    seconds += self._exec(
        task_name, 'executor',
        self._resolve(container.get('command', []) + container.get('args', []),
                      executor_input), env)
    output = self._read_output(executor_input.outputs.output_file)
    self._merge(executor_input, output)
    self.outputs[task_name] = {
        'artifacts': {k: list(v.artifacts)
                      for k, v in executor_input.outputs.artifacts.items()},
        'parameter_values': dict(output.parameter_values),
    }
    return seconds

  def run_importer(self, task_name, importer):
    """An importer registers an existing URI as the task's one output."""
    task = self.spec.root.dag.tasks[task_name]
    component = self.spec.components[task.component_ref.name]
    (key, definition), = component.output_definitions.artifacts.items()
    uri = importer['artifactUri']
    if 'constant' in uri:
      uri = uri['constant']
    elif 'constantValue' in uri:
      uri = uri['constantValue']['stringValue']
    else:
      raise UnsupportedSpec(f'task {task_name}: importer uri {uri}')
    artifact = pipeline_spec_pb2.RuntimeArtifact(
        name=f'{self.run_id}/{task_name}/{key}', uri=uri)
    artifact.type.CopyFrom(definition.artifact_type)
    artifact.metadata.update(importer.get('metadata', {}))
    self.outputs[task_name] = {'artifacts': {key: [artifact]},
                               'parameter_values': {}}
    return 0.0


def run_pipeline(
    path: str,
    pipeline_root: str,
    python: str = sys.executable,
    env: Optional[Dict[str, str]] = None,
    log_dir: Optional[str] = None,
) -> Dict[str, Any]:
  """Runs every task of a compiled spec; returns the run's record.

  Args:
    path: compiled `.json` PipelineJob or `.yaml` PipelineSpec.
    pipeline_root: local folder for task outputs (the spec's own root is
      usually gs://).
    python: the interpreter that stands in for the image's `python`.
    env: base environment of every task; each container's `env` from the
      spec is added on top.
    log_dir: per-task logs (default: under the run root).

  Returns:
    {'order': [task], 'seconds': {task: s}, 'run_root': str,
     'outputs': {task: {'artifacts': {key: [RuntimeArtifact]}, ...}}}.
  """
  job = load_pipeline_job(path)
  run = _Run(job, pipeline_root, python,
             dict(os.environ if env is None else env), log_dir)
  check_supported(run.spec)
  order = topological_order(run.spec)
  seconds = {}
  for task_name in order:
    task = run.spec.root.dag.tasks[task_name]
    executor = run.executors[
        run.spec.components[task.component_ref.name].executor_label]
    if 'importer' in executor:
      seconds[task_name] = run.run_importer(task_name, executor['importer'])
    else:
      seconds[task_name] = run.run_container(task_name, executor['container'])
  return {'order': order, 'seconds': seconds, 'run_root': run.run_root,
          'outputs': run.outputs}
