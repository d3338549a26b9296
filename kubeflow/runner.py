"""Compiles the tfx-nsl pipeline into a Kubeflow Pipelines (v2) spec.

The same `create_pipeline(...)` the local runner runs, compiled with TFX's
`KubeflowV2DagRunner` for KFP 2.x on Kubernetes or Vertex AI Pipelines:

  python -m tfx_nsl.kubeflow.runner \\
      --image europe-docker.pkg.dev/PROJECT/REPO/tfx-nsl:0.1.0 \\
      --pipeline-root gs://BUCKET/tfx-nsl \\
      --output build/kfp/tfx-nsl-digits.yaml

A `.yaml` output is a PipelineSpec (what `kfp.Client().upload_pipeline` and
`create_run_from_pipeline_package` read; Vertex reads it too); a `.json`
output is TFX's PipelineJob (PipelineSpec plus runtimeConfig). See
docs/kubeflow.md.
"""
import os

# Before anything imports TensorFlow (docs/design.md, "Keras 2 only"): compiling
# imports the components, and they import TFX, which imports TF.
os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import argparse  # noqa: E402
import inspect  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from typing import Any, Dict, Mapping, Optional, Sequence  # noqa: E402

PIPELINE_NAME = 'tfx-nsl-digits'

# Arguments of `create_pipeline` that this runner sets from its own options;
# every other argument is a pipeline knob (`--pipeline-arg NAME=JSON`).
_RUNNER_ARGS = ('pipeline_name', 'pipeline_root', 'data_root',
                'serving_model_dir', 'metadata_connection_config',
                'beam_pipeline_args', 'enable_cache')


def default_image() -> str:
  import tfx_nsl  # pylint: disable=g-import-not-at-top
  return f'tfx-nsl:{tfx_nsl.__version__}'


def digits_pipeline_args() -> Dict[str, Any]:
  """The knobs `tfx-nsl run` uses for the bundled digits data.

  Read from `run_local`'s own defaults so that the compiled pipeline stays
  the pipeline that runs locally as both grow (graph, augmentation,
  robustness configs, ...).
  """
  from tfx_nsl.pipelines import local_runner  # pylint: disable=g-import-not-at-top
  from tfx_nsl.pipelines import nsl_pipeline  # pylint: disable=g-import-not-at-top
  knobs = set(inspect.signature(nsl_pipeline.create_pipeline).parameters)
  args = {}
  for name, parameter in inspect.signature(
      local_runner.run_local).parameters.items():
    if (name in knobs and name not in _RUNNER_ARGS
        and parameter.default is not inspect.Parameter.empty):
      args[name] = parameter.default
  # run_local's None means "the digits config".
  if args.get('trainer_config') is None:
    args['trainer_config'] = local_runner.DIGITS_TRAINER_CONFIG
  return args


def compile_pipeline(
    pipeline: Any,
    output_path: str,
    image: str,
    env: Optional[Mapping[str, str]] = None,
    pipeline_spec_2_1: bool = True,
) -> Dict[str, Any]:
  """Compiles a TFX pipeline into a KFP v2 spec file; returns the PipelineJob.

  Args:
    pipeline: a `tfx.dsl.Pipeline` without a metadata connection (KFP and
      Vertex provide ML Metadata themselves).
    output_path: `.yaml`/`.yml` writes the PipelineSpec, `.json` the
      PipelineJob; local or any filesystem TFX can write to (gs://...).
    image: container image of every component; it must have this package
      installed (kubeflow/Dockerfile).
    env: environment variables set on every component container, in
      addition to the image's; default `constants.LEGACY_KERAS_ENV`.
    pipeline_spec_2_1: pipeline spec schema 2.1.0 (parameter values as
      `google.protobuf.Value`, what KFP 2.x and Vertex read); False writes
      TFX's older 2.0.0 schema.
  """
  from google.protobuf import json_format  # pylint: disable=g-import-not-at-top
  from kfp.pipeline_spec import pipeline_spec_pb2  # pylint: disable=g-import-not-at-top
  from tfx import v1 as tfx  # pylint: disable=g-import-not-at-top
  from tfx.dsl.io import fileio  # pylint: disable=g-import-not-at-top
  import yaml  # pylint: disable=g-import-not-at-top
  from tfx_nsl import constants  # pylint: disable=g-import-not-at-top

  if pipeline.metadata_connection_config is not None:
    raise ValueError('metadata_connection_config must be None for Kubeflow: '
                     'the orchestrator provides ML Metadata')
  if not output_path.endswith(('.yaml', '.yml', '.json')):
    raise ValueError(f'output must end in .yaml, .yml or .json: {output_path}')
  env = dict(constants.LEGACY_KERAS_ENV if env is None else env)

  runner = tfx.orchestration.experimental.KubeflowV2DagRunner(
      config=tfx.orchestration.experimental.KubeflowV2DagRunnerConfig(
          default_image=image, use_pipeline_spec_2_1=pipeline_spec_2_1))
  try:
    job = runner.run(pipeline, write_out=False)
  except KeyError as e:
    # TFX 1.16 gives custom artifact types the generic schema, which has no
    # properties; its KeyError does not say which type or what to do.
    if 'not expected in artifact type schema' not in str(e):
      raise
    raise ValueError(
        f'{e.args[0]}. The KFP v2 compiler rejects custom artifact types that '
        'declare PROPERTIES; store such values as custom properties '
        '(artifact.set_int_custom_property) instead.') from e
  spec = job['pipelineSpec']
  # A PipelineSpec file has no runtimeConfig; carry the root in the spec.
  spec['defaultPipelineRoot'] = pipeline.pipeline_info.pipeline_root
  # TFX has no per-component env option; the image's ENV covers our image,
  # this covers the step's own environment (a different image, a debug pod).
  # The ExampleGen driver hook runs in the same container.
  for executor in spec['deploymentSpec']['executors'].values():
    container = executor.get('container')
    if container is not None:
      merged = {e['name']: e['value'] for e in container.get('env', [])}
      merged.update(env)
      container['env'] = [{'name': k, 'value': v}
                          for k, v in sorted(merged.items())]
  # Fails here, not at upload, if the edits do not fit the protos.
  json_format.ParseDict(job, pipeline_spec_pb2.PipelineJob())

  parent = os.path.dirname(output_path)
  if parent:
    fileio.makedirs(parent)
  with fileio.open(output_path, 'w') as f:
    if output_path.endswith('.json'):
      json.dump(job, f, sort_keys=True, indent=1)
    else:
      f.write(f'# PIPELINE DEFINITION\n'
              f'# Name: {spec["pipelineInfo"]["name"]}\n'
              f'# Compiled by tfx_nsl.kubeflow.runner '
              f'({spec["sdkVersion"]}).\n')
      yaml.safe_dump(spec, f, sort_keys=True)
  return job


def stage_digits(data_root: str) -> str:
  """Copies the bundled digits TFRecords to `data_root` (e.g. gs://...)."""
  from tfx.dsl.io import fileio  # pylint: disable=g-import-not-at-top
  from tfx_nsl.pipelines import datasets  # pylint: disable=g-import-not-at-top
  with tempfile.TemporaryDirectory() as tmp:
    local = datasets.write_digits(tmp)
    for folder, _, files in os.walk(local):
      target = os.path.join(data_root, os.path.relpath(folder, local))
      fileio.makedirs(target)
      for name in files:
        fileio.copy(os.path.join(folder, name), os.path.join(target, name),
                    overwrite=True)
  return data_root


def build_pipeline(
    pipeline_root: str,
    data_root: Optional[str] = None,
    serving_dir: Optional[str] = None,
    pipeline_name: str = PIPELINE_NAME,
    beam_pipeline_args: Optional[Sequence[str]] = None,
    enable_cache: bool = True,
    pipeline_args: Optional[Mapping[str, Any]] = None,
):
  """`create_pipeline(...)` with the digits knobs, updated by pipeline_args."""
  from tfx_nsl import constants  # pylint: disable=g-import-not-at-top
  from tfx_nsl.pipelines import nsl_pipeline  # pylint: disable=g-import-not-at-top
  knobs = digits_pipeline_args()
  allowed = set(inspect.signature(nsl_pipeline.create_pipeline).parameters)
  for name, value in (pipeline_args or {}).items():
    if name not in allowed or name in _RUNNER_ARGS:
      raise ValueError(
          f'unknown pipeline argument {name!r}; known: '
          f'{sorted(allowed - set(_RUNNER_ARGS))}')
    knobs[name] = value
  root = pipeline_root.rstrip('/')
  return nsl_pipeline.create_pipeline(
      pipeline_name=pipeline_name,
      pipeline_root=root,
      data_root=data_root or f'{root}/data',
      serving_model_dir=serving_dir or f'{root}/serving/{pipeline_name}',
      metadata_connection_config=None,
      beam_pipeline_args=list(beam_pipeline_args or
                              constants.DEFAULT_BEAM_ARGS),
      enable_cache=enable_cache,
      **knobs)


def _pipeline_arg(text):
  name, sep, value = text.partition('=')
  if not sep or not name:
    raise argparse.ArgumentTypeError(f'expected NAME=JSON, got {text!r}')
  try:
    return name, json.loads(value)
  except json.JSONDecodeError as e:
    raise argparse.ArgumentTypeError(
        f'{name}: value is not JSON ({e}); quote strings: {name}=\'"text"\'')


def _parser():
  parser = argparse.ArgumentParser(
      prog='python -m tfx_nsl.kubeflow.runner',
      description='Compile the tfx-nsl pipeline into a Kubeflow Pipelines '
                  'v2 spec (KFP 2.x or Vertex AI Pipelines). See '
                  'docs/kubeflow.md.')
  parser.add_argument('--pipeline-root', required=True,
                      help='where component outputs go, '
                           'e.g. gs://BUCKET/tfx-nsl')
  parser.add_argument('--image', default=None,
                      help='container image with tfx-nsl installed '
                           '(kubeflow/Dockerfile; default: tfx-nsl:VERSION)')
  parser.add_argument('--data-root', default=None,
                      help='folder with train/ and eval/ TFRecords of '
                           'tf.Examples (default: PIPELINE_ROOT/data)')
  parser.add_argument('--serving-dir', default=None,
                      help="Pusher's destination (default: "
                           'PIPELINE_ROOT/serving/PIPELINE_NAME)')
  parser.add_argument('--pipeline-name', default=PIPELINE_NAME)
  parser.add_argument('--output', default=None,
                      help='.yaml (PipelineSpec) or .json (PipelineJob) '
                           '(default: build/kfp/PIPELINE_NAME.yaml)')
  parser.add_argument('--beam-arg', action='append', default=None,
                      help='a Beam pipeline argument for every Beam step, '
                           'repeatable, e.g. '
                           '--beam-arg=--runner=DataflowRunner '
                           '(default: DirectRunner in_memory, one worker)')
  parser.add_argument('--pipeline-arg', action='append', type=_pipeline_arg,
                      default=[], metavar='NAME=JSON',
                      help='override a create_pipeline argument, repeatable, '
                           'e.g. train_steps=2000 or graph_builder_config=null')
  parser.add_argument('--no-cache', action='store_true',
                      help='compile with step caching off')
  parser.add_argument('--spec-2-0', action='store_true',
                      help="write TFX's older pipeline spec schema 2.0.0")
  parser.add_argument('--stage-digits', action='store_true',
                      help='first copy the bundled digits data to the '
                           'data root')
  return parser


def main(argv=None):
  args = _parser().parse_args(argv)
  root = args.pipeline_root.rstrip('/')
  data_root = args.data_root or f'{root}/data'
  if args.stage_digits:
    print(f'Staged digits data under {stage_digits(data_root)}')
  pipeline = build_pipeline(
      pipeline_root=root,
      data_root=data_root,
      serving_dir=args.serving_dir,
      pipeline_name=args.pipeline_name,
      beam_pipeline_args=args.beam_arg,
      enable_cache=not args.no_cache,
      pipeline_args=dict(args.pipeline_arg))
  output = args.output or os.path.join('build', 'kfp',
                                       f'{args.pipeline_name}.yaml')
  image = args.image or default_image()
  job = compile_pipeline(pipeline, output, image,
                         pipeline_spec_2_1=not args.spec_2_0)
  tasks = sorted(job['pipelineSpec']['root']['dag']['tasks'])
  print(f'Wrote {output}: {len(tasks)} tasks ({", ".join(tasks)}), '
        f'image {image}, pipeline root {root}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
