"""An example quantplan plugin: the NVIDIA RTX A6000 (a device) and GPTQ INT8 on Marlin (a method) for vLLM."""

from __future__ import annotations

from quantplan.plugins.builtin.devices import DevicePlugin
from quantplan.plugins.builtin.methods import MethodPlugin
from quantplan.plugins.hookspecs import hookimpl
from quantplan.solver.candidates import Config, Execution, QualityBook, Step
from quantplan.solver.specs import GPUSpec, MethodQualitySpec, MethodSpec, PriceSpec
from quantplan.solver.terms import Term

RTX_A6000 = GPUSpec(
    id="rtx-a6000", name="NVIDIA RTX A6000", aliases=("RTX A6000", "A6000"),
    kind="gpu", device_class="datacenter", vendor="NVIDIA", architecture="Ampere (GA102)",
    compute_capability=8.6, memory_gb=48, bandwidth_tb_s=0.768,
    tflops_fp16=154.8, tflops_bf16=154.8, tflops_fp8=0, tops_int8=309.7, tflops_fp4=0,
    interconnect="pcie", interconnect_gb_s=32, max_devices_per_node=8,
    source=("NVIDIA RTX A6000 datasheet (2020), as tabulated by servethehome.com 'NVIDIA RTX A6000 48GB GPU "
            "drops Quadro designation': 48 GB GDDR6 ECC, 384-bit, 768 GB/s, PCIe 4.0 x16 (32 GB/s per "
            "direction; its NVLink bridge joins only two cards, so tensor parallel beyond 2 runs over PCIe); "
            "tensor rates dense, from Microway's Ampere comparison as quoted at llmperf.net: FP16/BF16 "
            "154.8 TFLOPS (309.7 with 2:4 sparsity), INT8 309.7 TOPS; GA102 is compute capability 8.6"),
)

RTX_A6000_PRICE = PriceSpec(
    gpu="rtx-a6000", usd_per_hour=1.99, provider="runcomfy", as_of="2026-12",
    source=("docs.runcomfy.com/about-billing, 'X-Large' machine (one A6000 48 GB, 48 GB RAM, 28 vCPUs), Pro "
            "price per hour, read 2026-12-03: the machine's price, CPU and RAM included"),
)

GPTQ_INT8 = MethodSpec(
    id="gptq-int8", name="GPTQ INT8 g128 (symmetric, Marlin)", aliases=("GPTQ INT8", "gptq-int8-g128"),
    kind="weight-only", linear_bits_per_weight=8.125, embedding_bits_per_weight=16.0,
    lm_head_bits_per_weight=16.0,
    bits_derivation="8 bits + one FP16 scale per group of 128 (symmetric) = 8 + 16/128 = 8.125; embeddings and "
                    "lm_head FP16",
    compute_dtype="fp16", weight_only=True, kernel="marlin", min_compute_capability=8.0,
    efficiency_source="the kernel it runs on: quantplan's [[kernel]] marlin (catalogs/methods.toml)",
    source="GPTQ (Frantar et al., ICLR 2023); vLLM gptq_marlin runs 4- and 8-bit symmetric GPTQ on sm_80+",
)

GPTQ_INT8_QUALITY = MethodQualitySpec(
    method="gptq-int8", relative_ppl_increase_at_7b=0.0001132, size_exponent=0.0,
    fitted_on="none: taken over from gguf-q8_0",
    source=("estimate: no WikiText-2 row for 8-bit GPTQ; 8-bit weights with per-group scales sit at the "
            "measurement noise floor, so the value is quantplan's gguf-q8_0 point (catalogs/quality.toml, "
            "from llama.cpp's perplexity scoreboards)"),
)


class ExamplePlugin:
    """Declares the device and the method and contributes their terms, reusing quantplan's own helpers:
    DevicePlugin (capacity, bandwidth, peak, price) and MethodPlugin (weight bytes, bytes read, kernel
    efficiency, quality)."""

    name = "example"

    def __init__(self) -> None:
        self.devices = DevicePlugin(self.name, [RTX_A6000], [RTX_A6000_PRICE])
        self.methods = MethodPlugin(self.name, ("weight-only",), [GPTQ_INT8])

    def owns(self, config: Config) -> bool:
        """Per-candidate hooks are called only for configurations on the device or with the method."""
        return self.devices.owns(config) or self.methods.owns(config)

    @hookimpl
    def quantplan_gpus(self) -> list[GPUSpec]:
        return [RTX_A6000]

    @hookimpl
    def quantplan_prices(self) -> list[PriceSpec]:
        return [RTX_A6000_PRICE]

    @hookimpl
    def quantplan_methods(self) -> list[MethodSpec]:
        return [GPTQ_INT8]

    @hookimpl
    def quantplan_quality_data(self) -> list[MethodQualitySpec]:
        return [GPTQ_INT8_QUALITY]

    @hookimpl
    def quantplan_execution(self, method: MethodSpec, gpu: GPUSpec, framework) -> Execution | None:
        """vLLM runs GPTQ INT8 on Marlin (sm_80+); other pairs are left to the framework plugins (None)."""
        if method.id != GPTQ_INT8.id or framework.id != "vllm":
            return None
        if gpu.kind != "gpu" or (gpu.compute_capability or 0) < GPTQ_INT8.min_compute_capability:
            return Execution(reason=f"vllm's gptq_marlin needs compute capability 8.0 or more ({gpu.id})")
        return Execution(compute_dtype="fp16", weight_only=True, kernel="marlin",
                         note="GPTQ INT8 on vLLM's Marlin kernel (weight-only, FP16 tensor cores)")

    @hookimpl
    def quantplan_incompatibility(self, config: Config) -> list[str]:
        return self.devices.quantplan_incompatibility(config)

    @hookimpl
    def quantplan_memory_terms(self, config: Config, context_tokens: int) -> list[Term]:
        return (self.devices.quantplan_memory_terms(config, context_tokens)
                + self.methods.quantplan_memory_terms(config, context_tokens))

    @hookimpl
    def quantplan_step_terms(self, config: Config, step: Step) -> list[Term]:
        return self.devices.quantplan_step_terms(config, step) + self.methods.quantplan_step_terms(config, step)

    @hookimpl
    def quantplan_quality_terms(self, config: Config, quality: QualityBook) -> list[Term]:
        return self.methods.quantplan_quality_terms(config, quality)

    @hookimpl
    def quantplan_cost_terms(self, config: Config, prices: dict[str, PriceSpec]) -> list[Term]:
        return self.devices.quantplan_cost_terms(config, prices)
