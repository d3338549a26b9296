"""examples/penguin: TFX's penguin pipeline, plain and with NSL added, run end
to end on the Palmer penguins CSV (missing values, string columns, a label
that Transform computes, the user's own run_fn). Both push; their serving
contracts are identical; the docs show the real diff between them."""
import csv
import difflib
import os
import re
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(ROOT, 'examples', 'penguin')
DOC = os.path.join(ROOT, 'docs', 'add-nsl.md')
CHANGED_FILES = ('penguin_utils.py', 'pipeline.py')


def example_diff():
  """The unified diff from examples/penguin/plain to examples/penguin/nsl."""
  lines = []
  for name in CHANGED_FILES:
    with open(os.path.join(EXAMPLE, 'plain', name)) as f:
      plain = f.readlines()
    with open(os.path.join(EXAMPLE, 'nsl', name)) as f:
      nsl = f.readlines()
    lines += difflib.unified_diff(plain, nsl, f'plain/{name}', f'nsl/{name}',
                                  n=1)
  return ''.join(lines)


def test_the_docs_show_the_real_diff_and_it_is_small():
  diff = example_diff()
  changed = [l for l in diff.splitlines()
             if l[:1] in '+-' and not l.startswith(('+++', '---'))]
  assert 0 < len(changed) < 30, len(changed)
  with open(DOC) as f:
    doc = f.read()
  shown = re.search(r'```diff\n(.*?)```', doc, re.S)
  assert shown and shown.group(1) == diff, (
      'docs/add-nsl.md must show the current diff; regenerate it with '
      'python -c "import sys; sys.path.insert(0, \'tests\'); '
      'import test_penguin_example as t; print(t.example_diff(), end=\'\')"')


@pytest.fixture(scope='module')
def pushed(tmp_path_factory):
  """Both variants run at once (two processes on two cores)."""
  root = tmp_path_factory.mktemp('penguin')
  runs = {}
  for variant in ('plain', 'nsl'):
    runs[variant] = subprocess.Popen(
        [sys.executable, os.path.join(EXAMPLE, 'run.py'), '--output-root',
         str(root / variant)] + (['--nsl'] if variant == 'nsl' else []),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, 'TF_USE_LEGACY_KERAS': '1'})
  result = {}
  for variant, run in runs.items():
    stdout, stderr = run.communicate(timeout=1500)
    assert run.returncode == 0, stderr[-6000:]
    assert 'pushed: ' in stdout, stdout + stderr[-3000:]
    result[variant] = (root / variant, stdout.split('pushed: ')[1].strip(),
                       stderr)
  return result


def _records(data_root):
  """Raw CSV rows as tf.Examples without the target, as a client sends
  them: missing values are left out (some rows lack sex or measurements)."""
  import tensorflow as tf
  with open(os.path.join(data_root, 'penguins.csv')) as f:
    rows = list(csv.DictReader(f))
  examples = []
  for row in rows:
    feature = {}
    for name, value in row.items():
      if name == 'species' or value == '':
        continue
      if name in ('island', 'sex'):
        feature[name] = tf.train.Feature(bytes_list=tf.train.BytesList(
            value=[value.encode()]))
      elif name in ('year', 'flipper_length_mm', 'body_mass_g'):
        feature[name] = tf.train.Feature(int64_list=tf.train.Int64List(
            value=[int(value)]))
      else:
        feature[name] = tf.train.Feature(float_list=tf.train.FloatList(
            value=[float(value)]))
    examples.append(tf.train.Example(features=tf.train.Features(
        feature=feature)))
  return rows, examples


def _signature(serving):
  args, kwargs = serving.structured_input_signature
  return (args, {k: (v.shape.as_list(), v.dtype) for k, v in kwargs.items()},
          {k: (v.shape.as_list(), v.dtype)
           for k, v in serving.structured_outputs.items()})


@pytest.mark.slow
def test_plain_and_nsl_pipelines_push_models_with_one_serving_contract(pushed):
  import tensorflow as tf
  servings = {variant: tf.saved_model.load(model).signatures['serving_default']
              for variant, (_, model, _) in pushed.items()}
  assert _signature(servings['plain']) == _signature(servings['nsl'])
  rows, examples = _records(pushed['plain'][0] / 'data')
  assert any(r['sex'] == '' for r in rows)  # optional stays optional
  serialized = tf.constant([e.SerializeToString() for e in examples])
  outputs = {v: s(examples=serialized)['logits'].numpy()
             for v, s in servings.items()}
  labels = np.array([{'Adelie': 0, 'Gentoo': 1, 'Chinstrap': 2}[r['species']]
                     for r in rows])
  for variant, logits in outputs.items():
    assert logits.shape == (len(rows), 3)
    # Vocabulary order is by frequency: Adelie, Gentoo, Chinstrap.
    assert (logits.argmax(1) == labels).mean() > 0.9, variant
  # A required column missing: both refuse it, naming it.
  del examples[0].features.feature['island']
  for serving in servings.values():
    with pytest.raises(tf.errors.InvalidArgumentError, match='island'):
      serving(examples=tf.constant([examples[0].SerializeToString()]))


@pytest.mark.slow
def test_nsl_pipeline_gates_on_attacked_accuracy_with_the_users_metrics(pushed):
  import glob
  import tensorflow_model_analysis as tfma
  from tfx_nsl.components.robustness_evaluator import report
  root, _, stderr = pushed['nsl']
  uri, = glob.glob(str(root / 'nsl' / 'pipeline' / 'RobustnessEvaluator' /
                       'evaluation' / '*'))
  accuracies = report.load_accuracies(uri)['candidate']
  assert set(accuracies) == {'clean', 'fgsm_linf_eps0.5',
                             'pgd_linf_eps0.5_steps10_step0.1'}
  assert accuracies['clean'] > 0.9
  assert accuracies['pgd_linf_eps0.5_steps10_step0.1'] < accuracies['clean']
  assert report.load_validation(uri)[0]
  # The user's eval_config: their island slices, on attacked outputs too.
  slices = {tuple(m.slice_key.single_slice_keys[0].column
                  for _ in [0]) if m.slice_key.single_slice_keys else ()
            for m in tfma.load_metrics(uri)}
  assert ('island',) in slices
  assert os.path.exists(os.path.join(uri, report.REPORT_HTML))
  # Integer inputs (island, sex ids) are left alone, without warnings.
  assert 'Cannot perturb' not in stderr
  assert 'watched tensor must be floating' not in stderr


def test_nsl_pipeline_compiles_for_kubeflow_with_the_module_packaged(tmp_path):
  """KubeflowV2DagRunner packages the module file (its run_fn with add_nsl,
  its preprocessing_fn) as a wheel under the pipeline root, as TFX does for
  any user module, so Kubeflow workers install it; no task needs the file."""
  import importlib.util
  import json
  import zipfile
  from tfx import v1 as tfx
  spec = importlib.util.spec_from_file_location(
      'penguin_nsl_pipeline', os.path.join(EXAMPLE, 'nsl', 'pipeline.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  root = tmp_path / 'root'
  pipeline = module.create_pipeline(
      'penguin-nsl', str(root), str(tmp_path / 'data'),
      str(tmp_path / 'serving'), str(tmp_path / 'mlmd.sqlite'))
  output = str(tmp_path / 'spec.json')
  tfx.orchestration.experimental.KubeflowV2DagRunner(
      config=tfx.orchestration.experimental.KubeflowV2DagRunnerConfig(
          default_image='gcr.io/p/tfx-nsl:latest'),
      output_filename=output).run(pipeline)
  with open(output) as f:
    tasks = json.load(f)['pipelineSpec']['root']['dag']['tasks']
  wheels = {}
  for name in ('Trainer', 'Transform'):
    parameters = tasks[name]['inputs']['parameters']
    assert 'module_file' not in parameters, name
    value = parameters['module_path']['runtimeValue']['constantValue'][
        'stringValue']
    module, _, wheels[name] = value.partition('@')
    assert module == 'penguin_utils', value
    assert wheels[name].startswith(str(root / '_wheels')), value
  with zipfile.ZipFile(wheels['Trainer']) as archive:
    source = archive.read('penguin_utils.py').decode()
  assert 'add_nsl(' in source and 'def run_fn' in source
