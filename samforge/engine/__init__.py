"""The data engine (SAM paper, section 4): assisted, semi-automatic and automatic annotation rounds, the model
retrained between rounds. This layer joins models, data, predict, train and evaluate; the faces (cli/, serve/)
drive it.

* :mod:`samforge.engine.rounds`: each round's model reference, labelled-image snapshot and metrics in a work folder;
* :mod:`samforge.engine.proposals`: the semi-automatic stage's filter on automatic masks;
* :mod:`samforge.engine.simulated_annotator`: the clicks and accept/reject decisions of a simulated person;
* :mod:`samforge.engine.round_model`: the model a round refers to (checkpoint, random weights, LoRA adapter);
* :mod:`samforge.engine.auto_report`: masks per image and score histograms of the automatic stage.
* :mod:`samforge.engine.retrain`: the decoder-only fine-tune between rounds (embedding cache, the trainer's step);
* :mod:`samforge.engine.pseudo_label_quality`: the automatic stage's pseudo-labels scored against ground truth;
* :mod:`samforge.engine.simulate`: the whole loop with a simulated person, measured round by round.
"""

from samforge.engine.auto_report import auto_report
from samforge.engine.proposals import filter_proposals
from samforge.engine.rounds import IncompleteRoundError, ModelRef, Round, current_round, finish_round, list_rounds
from samforge.engine.rounds import pending_round, start_round
from samforge.engine.simulated_annotator import ProposalVerdict, annotate_objects, judge_proposals

__all__ = [
    "IncompleteRoundError",
    "ModelRef",
    "ProposalVerdict",
    "Round",
    "annotate_objects",
    "auto_report",
    "current_round",
    "filter_proposals",
    "finish_round",
    "judge_proposals",
    "list_rounds",
    "pending_round",
    "start_round",
]
