"""Export a Mapping as a Python module in MaxText's own form (maxtext.checkpoint_conversion.utils.param_mapping).

The module defines, for MODEL:

- `MODEL_MAXTEXT_TO_HF_PARAM_MAPPING(config, maxtext_config, scan_layers=False)`: MaxText name -> HF name(s).
  Values take MaxText's forms: a str; a tuple of str (several HF tensors make one MaxText tensor); a list (one HF
  entry per slice along a stacked axis); nested lists (several stacked axes, outermost first).
- `MODEL_MAXTEXT_TO_HF_PARAM_HOOK_FN(config, maxtext_config, scan_layers=False, saving_to_hf=False)`: MaxText
  name -> hook `(tensor, target_shape) -> tensor`, called per slice. HF -> MaxText hooks come from each rule's chain
  (`op.to_code`), MaxText -> HF hooks (`saving_to_hf=True`) from its inverse. A rule with several MaxText targets
  gets one hook per target for loading and, for saving, one hook under the tuple of its MaxText names (to_huggingface
  promotes such a key into a composite entry that receives every target at once).

Loops come from the rules' grids and the numbers in the names (ckptmap.export.templates); loop lengths are written
with the HF config's keys (`config["num_hidden_layers"]`), never as numbers, whenever the config has them.

ckptmap mappings run source -> target; a MaxText module reads MaxText -> HF. The exporter takes either direction
and works on HF -> MaxText rules (reversing when the targets are the HF side).

Stacking: MaxText decides where it stacks a list from the name and the config (to_maxtext: a single list stacks on
`param_scan_axis` in a scanned model except for `MoeBlock` names, which stack on 0; nested lists stack on the
leading axes, or at `param_scan_axis` for `-local_layers` names). A rule whose stacked axes differ from that is
written as one tuple of all its HF names with a hook that stacks them itself (`_stack_leaves`), which MaxText
loads as an ordinary composite entry.

The package runs as a pipeline: `plan` (direction, per-rule layout) -> `hooks` (per-slice hook code from the ops)
-> `blocks` (rules folded into loops) -> `render` (the module text); `emitted` is the real, linted module whose
helper functions are copied into exported modules that need them.
"""

from ckptmap.export.plan import (ExportError, hf_to_maxtext, is_scanned, lift_stacked_sources,  # noqa: F401
                                 maxtext_single_axis, plan_rule)
from ckptmap.export.render import export_maxtext_module, load_exported  # noqa: F401
