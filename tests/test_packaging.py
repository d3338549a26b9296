"""The built wheel is complete: installed alone into a fresh virtualenv, every
public name and module imports from it, and the console script runs."""
import glob
import os
import subprocess
import sys
import sysconfig

import shutil

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_CHECK = r'''
import importlib, os, pkgutil, sys
import tfx_nsl
assert tfx_nsl.__file__.startswith(sys.prefix), tfx_nsl.__file__
for name in tfx_nsl.__all__:
  getattr(tfx_nsl, name)
modules = [m.name for m in pkgutil.walk_packages(tfx_nsl.__path__, 'tfx_nsl.')]
for sub in ('components', 'pipelines', 'trainer_modules', 'kubeflow'):
  assert 'tfx_nsl.' + sub in modules, (sub, modules)
for name in modules:
  module = importlib.import_module(name)
  assert module.__file__.startswith(sys.prefix), module.__file__
assert tfx_nsl.Graph.TYPE_NAME == 'tfx_nsl.Graph'
print('imported', len(modules), 'modules')
'''


@pytest.mark.slow
def test_wheel_installs_into_fresh_venv_and_imports(tmp_path):
  # Build from a clean copy: a stale build/ folder could hide a missing file.
  source = tmp_path / 'source'
  shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(
      '.venv', '.git', 'build', 'dist', '*.egg-info', 'runs', '__pycache__'))
  subprocess.run(
      [sys.executable, '-m', 'pip', 'wheel', '--no-deps', '--no-build-isolation',
       '--quiet', '--wheel-dir', str(tmp_path / 'dist'), str(source)],
      check=True)
  wheel, = glob.glob(str(tmp_path / 'dist' / 'tfx_nsl-*.whl'))
  venv = tmp_path / 'venv'
  subprocess.run([sys.executable, '-m', 'venv', str(venv)], check=True)
  python = str(venv / 'bin' / 'python')
  subprocess.run([python, '-m', 'pip', 'install', '--quiet', '--no-deps',
                  '--no-index', wheel], check=True)
  # Dependencies come from the project's venv, but not its editable tfx_nsl:
  # a plain path entry does not run that venv's .pth files.
  site = subprocess.run(
      [python, '-c', 'import sysconfig; print(sysconfig.get_path("purelib"))'],
      check=True, capture_output=True, text=True).stdout.strip()
  with open(os.path.join(site, 'project_deps.pth'), 'w') as f:
    f.write(sysconfig.get_path('purelib') + '\n')
  env = {**os.environ, 'TF_USE_LEGACY_KERAS': '1'}
  result = subprocess.run([python, '-c', _CHECK], cwd=str(tmp_path), env=env,
                          capture_output=True, text=True)
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'imported' in result.stdout
  cli = subprocess.run([str(venv / 'bin' / 'tfx-nsl'), 'run', '--help'],
                       cwd=str(tmp_path), env=env, capture_output=True,
                       text=True)
  assert cli.returncode == 0, cli.stderr[-3000:]
  assert '--output-root' in cli.stdout
