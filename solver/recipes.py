"""Where a replica's weights come from: a public checkpoint, the base model, or the recipe that makes one.

Recipes follow the seed guide's rules: W8A8 activations scaled per token (never per tensor), GPTQ
for Marlin without act-order, calibration data from the user's own domain (COMMON_MISTAKES 1, 2, 6;
DEPLOYMENT_CHECKLIST 5).
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

from pydantic import BaseModel, ConfigDict

from .catalog import read_toml

CALIBRATION_SAMPLES = 512  # llm-compressor's and ModelOpt's usual calibration size
CALIBRATION_TOKENS = 2048


class Checkpoint(BaseModel):
    """What an engine loads, and how to get it: kind 'public', 'base' or 'recipe'."""

    model_config = ConfigDict(frozen=True)

    kind: str
    path: str  # what the engine command names: a repo id, a repo file, or the recipe's output folder
    source: str = ""
    tool: str = ""
    recipe: str = ""  # recipe file text (YAML or Python), empty when none is needed
    steps: list[str] = []  # commands to run, in order
    notes: list[str] = []


class PublicCheckpoint(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str
    method: str
    repo: str
    file: str = ""
    calibration: str
    source: str


@lru_cache(maxsize=1)
def public_checkpoints() -> tuple[PublicCheckpoint, ...]:
    document = read_toml(resources.files("quantplan.catalogs").joinpath("checkpoints.toml"), "checkpoints.toml")
    return tuple(PublicCheckpoint(**row) for row in document.get("checkpoint", []))


# Which checkpoint formats an engine loads for a method, beyond its own recipe.
PUBLIC_FORMAT_ENGINES = {"gguf": ("llama.cpp",), "awq-int4": ("vllm", "sglang"), "fp8": ("vllm", "sglang")}


def checkpoint_for(model_id: str, base_repo: str, method, framework: str, kv_cache_dtype: str,
                   calibration_data: str) -> Checkpoint:
    """The checkpoint a replica of `method` on `framework` loads: a public one from the catalog when
    one fits the engine, the base model for 16-bit methods, else the recipe that makes one."""
    engines = PUBLIC_FORMAT_ENGINES.get("gguf" if method.kind == "gguf" else method.id, ())
    for row in public_checkpoints():
        if row.model == model_id and row.method == method.id and framework in engines:
            if row.file:  # one file of the repository: downloaded into /models, where the engine reads it
                return Checkpoint(kind="public", path=f"/models/{row.file}", source=f"{row.repo}: {row.source}",
                                  steps=[f"huggingface-cli download {row.repo} {row.file} --local-dir /models"],
                                  notes=[f"calibration: {row.calibration}"])
            return Checkpoint(kind="public", path=row.repo, source=row.source, notes=[f"calibration: {row.calibration}"])
    if method.kind == "float" and framework != "llama.cpp":
        return Checkpoint(kind="base", path=base_repo, source=f"the catalog model {model_id}")
    out = f"/models/{model_id}-{method.id}"
    made = _recipe_maker(method, framework, kv_cache_dtype)(base_repo, out, method, kv_cache_dtype, calibration_data)
    if framework == "tensorrt-llm" and made.tool not in ("NVIDIA ModelOpt", TRTLLM_QUANTIZE):
        made = made.model_copy(update={"notes": made.notes + [
            f"not checked here: that TensorRT-LLM's PyTorch backend loads a {made.tool} checkpoint; ModelOpt "
            "INT4_AWQ is its own 4-bit format"]})
    return made


def _recipe_maker(method, framework: str, kv_cache_dtype: str = ""):
    if framework == "llama.cpp":
        return _gguf
    if framework == "tensorrt-llm" and needs_engine_build(method.id, kv_cache_dtype):
        return _trtllm_checkpoint
    if framework == "tensorrt-llm" and method.id in MODELOPT_CONFIGS:
        return _modelopt
    return {"fp8": _llm_compressor_fp8, "int8-w8a8": _llm_compressor_w8a8, "awq-int4": _autoawq,
            "gptq-int4": _gptqmodel, "gptq-int4-actorder": _gptqmodel, "nvfp4": _modelopt}.get(method.id, _unknown)


def _calibration_note(calibration_data: str) -> str:
    return (f"calibration data: {calibration_data} = {CALIBRATION_SAMPLES} samples of your own traffic "
            f"(prompts and answers), up to {CALIBRATION_TOKENS} tokens each; WikiText perplexity is not your task")


def _llm_compressor_fp8(base, out, method, kv, data) -> Checkpoint:
    recipe = ("quant_stage:\n  quant_modifiers:\n    QuantizationModifier:\n      targets: [Linear]\n"
              "      scheme: FP8_DYNAMIC\n      ignore: [lm_head]\n")
    return Checkpoint(kind="recipe", path=out, tool="llm-compressor", recipe=recipe, steps=[
        f"python -c \"from llmcompressor import oneshot; oneshot(model='{base}', recipe='recipe.yaml', "
        f"output_dir='{out}')\""],
        notes=["FP8_DYNAMIC: FP8 weights per output channel, activations scaled per token at run time "
               "(no per-tensor static scales), so no calibration set is needed"])


def _llm_compressor_w8a8(base, out, method, kv, data) -> Checkpoint:
    recipe = ("quant_stage:\n  quant_modifiers:\n    SmoothQuantModifier:\n      smoothing_strength: 0.8\n"
              "    GPTQModifier:\n      targets: [Linear]\n      scheme: W8A8\n      ignore: [lm_head]\n")
    return Checkpoint(kind="recipe", path=out, tool="llm-compressor", recipe=recipe, steps=[
        f"python -c \"from llmcompressor import oneshot; oneshot(model='{base}', dataset='{data}', "
        f"recipe='recipe.yaml', max_seq_length={CALIBRATION_TOKENS}, num_calibration_samples={CALIBRATION_SAMPLES}, "
        f"output_dir='{out}')\""],
        notes=["W8A8 preset: INT8 weights per output channel, INT8 activations scaled per token at run time "
               "(the seed's rule: never per-tensor activation scales)", _calibration_note(data)])


def _autoawq(base, out, method, kv, data) -> Checkpoint:
    recipe = ("from awq import AutoAWQForCausalLM\nfrom transformers import AutoTokenizer\n\n"
              f"model = AutoAWQForCausalLM.from_pretrained('{base}')\n"
              f"tokenizer = AutoTokenizer.from_pretrained('{base}')\n"
              "quant_config = {'zero_point': True, 'q_group_size': 128, 'w_bit': 4, 'version': 'GEMM'}\n"
              f"samples = [line.strip() for line in open('{data}') if line.strip()][:{CALIBRATION_SAMPLES}]\n"
              "model.quantize(tokenizer, quant_config=quant_config, calib_data=samples)\n"
              f"model.save_quantized('{out}')\ntokenizer.save_pretrained('{out}')\n")
    return Checkpoint(kind="recipe", path=out, tool="AutoAWQ", recipe=recipe, steps=["python quantize_awq.py"],
                      notes=["4-bit, group 128, zero point, GEMM layout: the AWQ format vLLM and SGLang run on "
                             "Marlin (--quantization awq_marlin)", _calibration_note(data)])


def _gptqmodel(base, out, method, kv, data) -> Checkpoint:
    act_order = method.id == "gptq-int4-actorder"
    recipe = ("from gptqmodel import GPTQModel, QuantizeConfig\n\n"
              f"config = QuantizeConfig(bits=4, group_size=128, desc_act={act_order}, sym=True)\n"
              f"model = GPTQModel.load('{base}', config)\n"
              f"samples = [line.strip() for line in open('{data}') if line.strip()][:{CALIBRATION_SAMPLES}]\n"
              f"model.quantize(samples)\nmodel.save('{out}')\n")
    note = ("desc_act=True (act-order): better quality, but Marlin does not run it; the engine uses the "
            "ExLlama kernel" if act_order else
            "desc_act=False: act-order off so that Marlin runs it (the seed's rule for Marlin)")
    return Checkpoint(kind="recipe", path=out, tool="GPTQModel", recipe=recipe, steps=["python quantize_gptq.py"],
                      notes=[note, _calibration_note(data)])


MODELOPT_CONFIGS = {"fp8": "FP8_DEFAULT_CFG", "nvfp4": "NVFP4_DEFAULT_CFG", "awq-int4": "INT4_AWQ_CFG",
                    "int8-w8a8": "INT8_SMOOTHQUANT_CFG"}


def _modelopt(base, out, method, kv, data) -> Checkpoint:
    config = MODELOPT_CONFIGS[method.id]
    recipe = ("import modelopt.torch.quantization as mtq\nfrom modelopt.torch.export import export_hf_checkpoint\n"
              "from transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
              f"model = AutoModelForCausalLM.from_pretrained('{base}', torch_dtype='auto', device_map='cuda')\n"
              f"tokenizer = AutoTokenizer.from_pretrained('{base}')\n"
              f"samples = [line.strip() for line in open('{data}') if line.strip()][:{CALIBRATION_SAMPLES}]\n\n"
              "def forward_loop(model):\n    for text in samples:\n"
              f"        model(**tokenizer(text, return_tensors='pt', truncation=True, max_length={CALIBRATION_TOKENS})"
              ".to('cuda'))\n\n"
              f"config = mtq.{config}\n")
    if kv == "fp8":
        recipe += "config['quant_cfg']['*[kv]_bmm_quantizer'] = {'num_bits': (4, 3), 'axis': None, 'enable': True}\n"
    recipe += (f"model = mtq.quantize(model, config, forward_loop)\nexport_hf_checkpoint(model, export_dir='{out}')\n"
               f"tokenizer.save_pretrained('{out}')\n")
    return Checkpoint(kind="recipe", path=out, tool="NVIDIA ModelOpt", recipe=recipe,
                      steps=["python quantize_modelopt.py"],
                      notes=[f"ModelOpt {config}, exported as a Hugging Face checkpoint (hf_quant_config.json) that "
                             "TensorRT-LLM's PyTorch backend, vLLM and SGLang load", _calibration_note(data)])


TRTLLM_QUANTIZE = "TensorRT-LLM examples/quantization/quantize.py (ModelOpt) + trtllm-build"


def needs_engine_build(method_id: str, kv_cache_dtype: str) -> bool:
    """INT8 SmoothQuant and an INT8 KV cache run on TensorRT-LLM's TensorRT engines (a built engine), not on
    its PyTorch backend."""
    return method_id == "int8-w8a8" or kv_cache_dtype == "int8"


def _trtllm_checkpoint(base, out, method, kv, data) -> Checkpoint:
    qformat = "int8_sq" if method.id == "int8-w8a8" else {"fp8": "fp8", "awq-int4": "int4_awq"}.get(method.id, "full_prec")
    kv_flag = f" --kv_cache_dtype {kv}" if kv in ("int8", "fp8") else ""
    return Checkpoint(kind="recipe", path=out + "-engine", tool=TRTLLM_QUANTIZE, steps=[
        f"python examples/quantization/quantize.py --model_dir {base} --qformat {qformat}{kv_flag} "
        f"--calib_dataset {data} --calib_size {CALIBRATION_SAMPLES} --output_dir {out}-checkpoint"],
        notes=["SmoothQuant INT8 (int8_sq): weights per channel, activations per token (the seed's rule)"
               if method.id == "int8-w8a8" else f"{qformat} weights", _calibration_note(data),
               "then build the TensorRT engine (next step) and serve it with the base model's tokenizer"])


GGUF_TYPES = {"gguf-q8_0": "Q8_0", "gguf-q6_k": "Q6_K", "gguf-q5_k_m": "Q5_K_M", "gguf-q4_k_m": "Q4_K_M",
              "gguf-q4_0": "Q4_0", "gguf-q3_k_m": "Q3_K_M", "gguf-q2_k": "Q2_K"}


def _gguf(base, out, method, kv, data) -> Checkpoint:
    name = base.rsplit("/", 1)[-1]
    f16 = f"/models/{name}-F16.gguf"
    if method.kind == "float":
        return Checkpoint(kind="recipe", path=f16, tool="llama.cpp", steps=[
            f"python convert_hf_to_gguf.py {name} --outtype f16 --outfile {f16}"])
    kind = GGUF_TYPES[method.id]
    target = f"/models/{name}-{kind}.gguf"
    steps = [f"python convert_hf_to_gguf.py {name} --outtype f16 --outfile {f16}"]
    if kind == "Q8_0":  # an importance matrix does not change Q8_0
        steps.append(f"llama-quantize {f16} {target} {kind}")
        notes = []
    else:
        steps += [f"llama-imatrix -m {f16} -f {data} -o /models/imatrix.dat",
                  f"llama-quantize --imatrix /models/imatrix.dat {f16} {target} {kind}"]
        notes = ["importance matrix from your own traffic: " + _calibration_note(data).split(": ", 1)[1]]
    return Checkpoint(kind="recipe", path=target, tool="llama.cpp", steps=steps, notes=notes)


def _unknown(base, out, method, kv, data) -> Checkpoint:
    return Checkpoint(kind="recipe", path=out, tool="", notes=[
        f"no recipe known for {method.id}: quantize {base} with the tool its checkpoint format needs"])
