"""The run record, by concern:

directory.py  RunRecord: the run directory claimed, locked and written (config, history,
              summary, checkpoint, log)
resume.py     whether a directory is started, carried on or left: a pure decision
summary.py    the history's CSV and the summary's numbers: pure functions of the history
"""

from vitsweep.record.directory import RunRecord
from vitsweep.record.summary import DONE, FINISHED, per_class_top1, summarise_history

__all__ = ["DONE", "FINISHED", "RunRecord", "per_class_top1", "summarise_history"]
