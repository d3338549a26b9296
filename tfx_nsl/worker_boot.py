"""`tfx-nsl-beam-worker`: starts a Beam Python SDK worker as a process.

Beam's PROCESS environment runs a command with the Fn API endpoints as
flags (`--id --provision_endpoint --artifact_endpoint --control_endpoint
--logging_endpoint`). Beam's own boot for that is a Go binary shipped only in
its SDK container image; this does the same in Python, from the environment
it is installed in: it reads the pipeline options from the provision
service, fetches the job's staged artifacts (the pickled main session,
TFX's packaged user code) into a scratch folder, installs staged Python
packages there, and runs `apache_beam.runners.worker.sdk_worker_main`.
"""
import argparse
import os
import subprocess
import sys
import tempfile

from tfx_nsl import constants

_TIMEOUT_S = 60
_PACKAGE_SUFFIXES = ('.tar.gz', '.whl', '.zip')
# Staged names Beam gives files that are not Python packages to install.
_NOT_PACKAGES = ('pickled_main_session', 'requirements.txt',
                 'submission_environment_dependencies.txt')


def _flags(argv):
  parser = argparse.ArgumentParser(prog='tfx-nsl-beam-worker')
  for name in ('id', 'provision_endpoint', 'artifact_endpoint',
               'control_endpoint', 'logging_endpoint', 'semi_persist_dir'):
    parser.add_argument(f'--{name}', default='')
  flags, _ = parser.parse_known_args(argv)
  if not flags.provision_endpoint:
    parser.error('--provision_endpoint is required (Beam passes it)')
  return flags


def _provision_info(flags):
  # pylint: disable=g-import-not-at-top
  import grpc
  from apache_beam.portability.api import beam_provision_api_pb2
  from apache_beam.portability.api import beam_provision_api_pb2_grpc
  channel = grpc.insecure_channel(flags.provision_endpoint)
  grpc.channel_ready_future(channel).result(timeout=_TIMEOUT_S)
  return beam_provision_api_pb2_grpc.ProvisionServiceStub(
      channel).GetProvisionInfo(
          beam_provision_api_pb2.GetProvisionInfoRequest(),
          metadata=[('worker_id', flags.id)], timeout=_TIMEOUT_S).info


def _fetch_artifacts(info, flags, staged_dir):
  """Writes the job's artifacts into `staged_dir` under their staged names;
  returns those names."""
  # pylint: disable=g-import-not-at-top
  import grpc
  from apache_beam.portability import common_urns
  from apache_beam.portability.api import beam_artifact_api_pb2
  from apache_beam.portability.api import beam_artifact_api_pb2_grpc
  from apache_beam.portability.api import beam_runner_api_pb2
  if not info.dependencies:
    return []
  endpoint = info.artifact_endpoint.url or flags.artifact_endpoint
  service = beam_artifact_api_pb2_grpc.ArtifactRetrievalServiceStub(
      grpc.insecure_channel(endpoint))
  names = []
  for i, artifact in enumerate(info.dependencies):
    name = f'artifact-{i}'
    if artifact.role_urn == common_urns.artifact_roles.STAGING_TO.urn:
      name = beam_runner_api_pb2.ArtifactStagingToRolePayload.FromString(
          artifact.role_payload).staged_name
    with open(os.path.join(staged_dir, name), 'wb') as out:
      for chunk in service.GetArtifact(
          beam_artifact_api_pb2.GetArtifactRequest(artifact=artifact),
          timeout=600):
        out.write(chunk.data)
    names.append(name)
  return names


def _already_here(name):
  """Whether staged package `name` is TFX's copy of the very TFX installed
  here (TFX stages `tfx_ephemeral-<version>` for workers that lack it)."""
  if not name.startswith('tfx_ephemeral-'):
    return False
  from tfx import version  # pylint: disable=g-import-not-at-top
  return name == f'tfx_ephemeral-{version.__version__}.tar.gz'


def _install(staged_dir, names, site_dir):
  """Installs staged Python packages (extra packages, setup files) into
  `site_dir`, without dependencies: this environment has them, pinned."""
  packages = []
  for name in names:
    if not name.endswith(_PACKAGE_SUFFIXES) or name in _NOT_PACKAGES:
      continue
    if _already_here(name):
      print(f'tfx-nsl-beam-worker: {name} is the TFX installed here; not '
            'reinstalled', file=sys.stderr)
      continue
    packages.append(os.path.join(staged_dir, name))
  if not packages:
    return False
  print(f'tfx-nsl-beam-worker: installing {packages} into {site_dir}',
        file=sys.stderr)
  subprocess.run([sys.executable, '-m', 'pip', 'install', '--quiet',
                  '--no-deps', '--no-build-isolation',
                  '--disable-pip-version-check', '--target', site_dir,
                  *packages], check=True, timeout=600)
  return True


def main(argv=None):
  flags = _flags(sys.argv[1:] if argv is None else argv)
  # pylint: disable=g-import-not-at-top
  from google.protobuf import json_format
  info = _provision_info(flags)
  root = os.environ.get('TFX_NSL_WORKER_ROOT') or None
  if root:
    os.makedirs(root, exist_ok=True)
  scratch = flags.semi_persist_dir or tempfile.mkdtemp(
      prefix=f'worker-{flags.id}-', dir=root)
  staged = os.path.join(scratch, 'staged')
  os.makedirs(staged, exist_ok=True)
  env = dict(os.environ)
  names = _fetch_artifacts(info, flags, staged)
  site_dir = os.path.join(scratch, 'site-packages')
  if _install(staged, names, site_dir):
    env['PYTHONPATH'] = os.pathsep.join(
        [site_dir] + [p for p in [env.get('PYTHONPATH')] if p])
  env.update({
      'WORKER_ID': flags.id,
      'PIPELINE_OPTIONS': json_format.MessageToJson(info.pipeline_options),
      'SEMI_PERSISTENT_DIRECTORY': scratch,
      'LOGGING_API_SERVICE_DESCRIPTOR':
          f'url: "{info.logging_endpoint.url or flags.logging_endpoint}"',
      'CONTROL_API_SERVICE_DESCRIPTOR':
          f'url: "{info.control_endpoint.url or flags.control_endpoint}"',
      'RUNNER_CAPABILITIES': ' '.join(info.runner_capabilities),
      **constants.LEGACY_KERAS_ENV,
  })
  os.execve(sys.executable, [sys.executable, '-m',
                             'apache_beam.runners.worker.sdk_worker_main'], env)


if __name__ == '__main__':
  main()
