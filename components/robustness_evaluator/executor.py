"""RobustnessEvaluator executor: TFX's Evaluator with attack settings and a
robustness report written next to TFMA's results."""
import contextlib
import json
import threading

from absl import logging
from tfx.components.evaluator import executor as evaluator_executor
from tfx.types import artifact_utils

from tfx_nsl.components.robustness_evaluator import attacks
from tfx_nsl.components.robustness_evaluator import report

ATTACK_SETTINGS_KEY = 'attack_settings'

# The Evaluator calls `tfma_module.custom_extractors` with a fixed signature,
# so the attack settings of the running execution wait here for it; the
# extractors then carry them to the Beam workers.
_CURRENT = threading.local()


def current_attack_settings():
  return getattr(_CURRENT, 'settings', None)


@contextlib.contextmanager
def _attack_settings(settings):
  _CURRENT.settings = settings
  try:
    yield
  finally:
    _CURRENT.settings = None


class Executor(evaluator_executor.Executor):
  """Runs TFMA with attacked predictions, then writes the report."""

  def Do(self, input_dict, output_dict, exec_properties):
    settings = attacks.AttackSettings(
        **json.loads(exec_properties[ATTACK_SETTINGS_KEY]))
    with _attack_settings(settings):
      super().Do(input_dict, output_dict, exec_properties)
    evaluation_uri = artifact_utils.get_single_uri(output_dict['evaluation'])
    blessed, failures = report.load_validation(evaluation_uri)
    accuracies = report.write_report(evaluation_uri, blessed, failures)
    logging.info('Robustness (blessed: %s):\n%s', blessed,
                 report.text_table(accuracies))
    for failure in failures:
      logging.warning('Robustness threshold not met: %s', failure)
