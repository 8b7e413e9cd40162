"""Per-head measurements: the engine, usable on any model of a supported family.

    from headplast.measure import ablation_importance, head_gates
    res = ablation_importance(model, get_adapter(model), enc, task, pad_id)   # res.importance: [L, H]

Everything here takes a model and tokenised examples; nothing reads or writes run directories
(that is headplast.steps)."""

from headplast.measure.ablation import ablation_importance, example_losses, head_means  # noqa: F401
from headplast.measure.config import MeasureConfig  # noqa: F401
from headplast.measure.declare import Measurement  # noqa: F401
from headplast.measure.gating import capture_o_inputs, head_gates  # noqa: F401
from headplast.measure.gradfisher import grad_fisher  # noqa: F401
from headplast.measure.update import merged_peft_model, qkvo_weights, update_magnitude  # noqa: F401

__all__ = ["ablation_importance", "example_losses", "head_means", "MeasureConfig", "Measurement", "capture_o_inputs",
           "head_gates", "grad_fisher", "merged_peft_model", "qkvo_weights", "update_magnitude"]
