"""Robustness results: read from TFMA's output, shown as table, PNG and HTML."""
import base64
import collections
import html
import io
import os

from tfx_nsl.components.robustness_evaluator import attacks

REPORT_HTML = 'robustness.html'
REPORT_PNG = 'robustness.png'
# TFMA's names of the accuracy the gates apply to (heads.Head.gated_metric);
# a regression head's is 'mean_squared_error'.
ACCURACIES = ('sparse_categorical_accuracy', 'binary_accuracy')
CANDIDATE = 'candidate'
BASELINE = 'baseline'


def load_accuracies(evaluation_uri, metric=None):
  """{model name: {attack name: accuracy}} of the overall slice (or of
  `metric`, a TFMA metric name)."""
  import tensorflow_model_analysis as tfma  # pylint: disable=g-import-not-at-top
  result = collections.defaultdict(dict)
  for metrics in tfma.load_metrics(evaluation_uri):
    if metrics.slice_key.single_slice_keys:
      continue
    for item in metrics.metric_keys_and_values:
      key = item.key
      if (key.name == metric if metric else key.name in ACCURACIES) and (
          not key.is_diff):
        model = key.model_name or CANDIDATE
        result[model][key.output_name or attacks.CLEAN] = (
            item.value.double_value.value)
  return dict(result)


def load_validation(evaluation_uri):
  """(passed, [failure descriptions]) of TFMA's threshold validation."""
  import tensorflow_model_analysis as tfma  # pylint: disable=g-import-not-at-top
  validation = tfma.load_validation_result(evaluation_uri)
  failures = []
  for failure in validation.metric_validations_per_slice:
    for metric in failure.failures:
      failures.append(
          f'{metric.metric_key.model_name or CANDIDATE}/'
          f'{metric.metric_key.output_name or attacks.CLEAN}: '
          f'{metric.metric_key.name} {"change " if metric.metric_key.is_diff else ""}'
          f'= {metric.metric_value.double_value.value:.4f} fails '
          f'{_threshold_text(metric.metric_threshold)}')
  return validation.validation_ok, failures


def _threshold_text(threshold):
  if threshold.HasField('value_threshold'):
    bounds = threshold.value_threshold
    return ' and '.join(
        [f'>= {bounds.lower_bound.value:g}'] * bounds.HasField('lower_bound') +
        [f'<= {bounds.upper_bound.value:g}'] * bounds.HasField('upper_bound'))
  if threshold.HasField('change_threshold'):
    return f'change >= {threshold.change_threshold.absolute.value:g}'
  return str(threshold).replace('\n', ' ')


def _ordered(names):
  def key(name):
    if name == attacks.CLEAN:
      return ('', '', 0.0, name)
    attack = attacks.Attack.parse(name)
    return (attack.method, attack.norm, attack.epsilon, name)
  return sorted(names, key=key)


def text_table(accuracies, blessed=None, metric='accuracy'):
  """A one-screen table: rows are attacks, columns are models."""
  models = sorted(accuracies, key=lambda m: (m != CANDIDATE, m))
  names = _ordered({n for values in accuracies.values() for n in values})
  width = max([len(n) for n in names] + [10])
  lines = ['  ' + metric.ljust(width) + ''.join(f'{m:>12}' for m in models)]
  for name in names:
    cells = ''.join(
        f'{accuracies[m][name]:>12.4f}' if name in accuracies[m] else
        f'{"-":>12}' for m in models)
    lines.append('  ' + name.ljust(width) + cells)
  if blessed is not None:
    lines.append(f'  blessed: {blessed}')
  return '\n'.join(lines)


def _curves(accuracies):
  """{(method, norm): {model: [(eps, acc)]}}, eps 0 being clean accuracy."""
  curves = collections.defaultdict(lambda: collections.defaultdict(list))
  for model, values in accuracies.items():
    groups = {(a.method, a.norm) for a in (attacks.Attack.parse(n)
                                           for n in values
                                           if n != attacks.CLEAN)}
    for name, accuracy in values.items():
      if name == attacks.CLEAN:
        for group in groups:
          curves[group][model].append((0.0, accuracy))
        continue
      attack = attacks.Attack.parse(name)
      curves[(attack.method, attack.norm)][model].append(
          (attack.epsilon, accuracy))
  return curves


def plot_png(accuracies, metric='accuracy'):
  """PNG bytes: `metric` vs epsilon per attack, one line per model."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  curves = _curves(accuracies)
  groups = sorted(curves) or [('clean', '')]
  figure, axes = plt.subplots(1, len(groups), figsize=(4.5 * len(groups), 3.6),
                              squeeze=False)
  for axis, group in zip(axes[0], groups):
    for model, points in sorted(curves.get(group, {}).items()):
      points.sort()
      axis.plot([p[0] for p in points], [p[1] for p in points], marker='o',
                label=model)
    axis.set_title(f'{group[0].upper()} {group[1]}')
    axis.set_xlabel('epsilon')
    axis.set_ylabel(metric)
    if metric == 'accuracy':
      axis.set_ylim(0.0, 1.02)
    axis.grid(alpha=0.3)
    if axis.lines:
      axis.legend()
  figure.tight_layout()
  buffer = io.BytesIO()
  figure.savefig(buffer, format='png', dpi=100)
  plt.close(figure)
  return buffer.getvalue()


def write_report(evaluation_uri, blessed, failures, metric=None):
  """Writes robustness.png and robustness.html next to TFMA's output;
  `metric` (a TFMA name) is the gated one, default the accuracy."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  accuracies = load_accuracies(evaluation_uri, metric)
  label = metric.replace('_', ' ') if metric else 'accuracy'
  png = plot_png(accuracies, label)
  with tf.io.gfile.GFile(os.path.join(evaluation_uri, REPORT_PNG), 'wb') as f:
    f.write(png)
  models = sorted(accuracies, key=lambda m: (m != CANDIDATE, m))
  rows = ''.join(
      '<tr><td>{}</td>{}</tr>'.format(html.escape(name), ''.join(
          '<td>{:.4f}</td>'.format(accuracies[m][name])
          if name in accuracies[m] else '<td>-</td>' for m in models))
      for name in _ordered({n for v in accuracies.values() for n in v}))
  page = f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Robustness report</title>
<style>body{{font-family:sans-serif;margin:2em}}td,th{{padding:2px 10px;
text-align:right}}td:first-child{{text-align:left}}</style></head>
<body>
<h1>Clean vs attacked {html.escape(label)}</h1>
<p>White-box attacks on each model being judged (NSL's attack code).
Blessed: <b id="blessed">{blessed}</b></p>
<img id="curve" alt="{html.escape(label)} vs epsilon" src="data:image/png;base64,{base64.b64encode(png).decode()}">
<table id="accuracy"><tr><th>attack</th>{''.join(f'<th>{html.escape(m)}</th>' for m in models)}</tr>
{rows}</table>
<h2>Threshold failures</h2>
<ul id="failures">{''.join(f'<li>{html.escape(f)}</li>' for f in failures) or '<li>none</li>'}</ul>
<script>
const img = document.getElementById('curve');
function mark() {{ document.body.dataset.plot =
    img.complete && img.naturalWidth > 0 ? 'rendered' : 'broken'; }}
if (img.complete) mark(); else img.addEventListener('load', mark);
img.addEventListener('error', mark);
</script>
</body></html>
"""
  with tf.io.gfile.GFile(os.path.join(evaluation_uri, REPORT_HTML), 'w') as f:
    f.write(page)
  return accuracies
