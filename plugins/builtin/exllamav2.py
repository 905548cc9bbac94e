"""ExLlamaV2: GPTQ/EXL2 on consumer and data-center GPUs, layers split across GPUs."""

from __future__ import annotations

from quantplan.plugins.builtin.frameworks import LAYER_SPLIT_HOP_S, PCIE_COPY_BYTES_PER_S, FrameworkPlugin, plugin_for
from quantplan.solver import terms as q
from quantplan.solver.candidates import Config, Step
from quantplan.solver.terms import Term


class ExLlamaV2Plugin(FrameworkPlugin):
    def communication_terms(self, config: Config, step: Step) -> list[Term]:
        if config.gpus <= 1:
            return []
        hop = (LAYER_SPLIT_HOP_S + step.new_tokens / step.passes * config.model.hidden_size * 2
                   / PCIE_COPY_BYTES_PER_S) * step.passes
        return [Term(q.OVERHEAD, (config.gpus - 1) * hop, self.name,
                     f"autosplit: {config.gpus - 1} device hand-offs per step", step.phase)]


def plugin() -> ExLlamaV2Plugin:
    return plugin_for("exllamav2", ExLlamaV2Plugin)
