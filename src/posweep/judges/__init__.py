"""Gold reward models ("judges"): one number per (prompt, response), higher is better.

In: a judge spec (``demo``, ``hf:PATH_OR_ID``, ``oasst:PATH_OR_ID``), then prompts, responses and truncation
flags. Out: one float per response (docs/DESIGN.md section 3).

- ``base``: the protocol, ``load_judge``, batching, truncation.
- ``hf``: single-logit sequence classifiers.
- ``oasst``: the OpenAssistant GPT-NeoX reward models of the paper.
- ``demo``, ``demo_rules``: the demo's stand-in judge and its rules.
"""

from posweep.judges.base import JUDGE_KINDS, Judge, check_inputs, check_judge_spec, load_judge
from posweep.judges.demo import DemoComponents, DemoJudge, declines
from posweep.judges.hf import SequenceClassifierJudge, load_sequence_classifier_judge
from posweep.judges.oasst import OasstJudge, load_oasst_judge, render_oasst

__all__ = ["JUDGE_KINDS", "DemoComponents", "DemoJudge", "Judge", "OasstJudge", "SequenceClassifierJudge",
           "check_inputs", "check_judge_spec", "declines", "load_judge", "load_oasst_judge",
           "load_sequence_classifier_judge", "render_oasst"]
