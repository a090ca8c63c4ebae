"""
Hugging Face interop: GPT-2 (Radford et al. 2019) and LLaMA (Touvron et al. 2023) weights in the layout of the
transformers library (GPT2LMHeadModel, LlamaForCausalLM; huggingface.co/docs/transformers, model_doc/gpt2 and
model_doc/llama) read and written without depending on it, encoders written as MegatronBertForMaskedLM, and the
tokenizer and generation config beside them. load_pretrained is where train.py, finetune.py and sample.py start
from any `init_from`.

    python hf.py --init_from=out-shakespeare-char --export_hf=hf-shakespeare-char
"""

import json
import math
import os
import pickle
import re
import zipfile
from dataclasses import asdict

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save

from configurator import ConfigError, configure, script_main
from dataset import DataError, atomic_file, atomic_write_text, download
from model import (CheckpointError, GPTConfig, clean_state_dict, load_checkpoint,
                   model_from_checkpoint, state_shapes)
from tokenizer import BERT_SPECIALS, EOT, hf_tokenizer_files, tokenizer_from_spec

# -----------------------------------------------------------------------------
# Hugging Face weight I/O: GPT-2 (Radford et al. 2019) and LLaMA (Touvron et al. 2023) checkpoints in
# the layout of the transformers library (GPT2LMHeadModel, LlamaForCausalLM; huggingface.co/docs/
# transformers, model_doc/gpt2 and model_doc/llama), read and written without depending on it.

GPT2_NAMES = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")
# sha256 of the hub's weights for openai-community/gpt2 (revision 607a30d783df, 548,105,171 bytes);
# the other sizes are not pinned here: their downloads are checked by the safetensors header and by
# the shape of every tensor
HUB_SHA256 = {"gpt2/model.safetensors": "248dfc3911869ec493c76e65bf2fcf7f615828b0254c12b473182f0f81d3a707"}
# tensors that are not weights: GPT-2's causal-mask buffers, LLaMA's rotary inverse frequencies
HF_BUFFERS = re.compile(r"(^|\.)(attn\.bias|attn\.masked_bias|rotary_emb\.inv_freq)$")


def download_gpt2(name):
    """
    The hub's config.json and model.safetensors for `name` in $NANOROOTS_CACHE/hf/<name>/ (default
    ~/.cache/nanoroots), through prepare.download: progress bar, resume of a partial file, retries,
    sha256. HF_ENDPOINT replaces https://huggingface.co (a mirror site); NANOROOTS_MIRROR=<dir> reads
    local copies instead. Returns the folder.
    """
    cache = os.environ.get("NANOROOTS_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "nanoroots")
    folder = os.path.join(cache, "hf", name)
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    checks = {"config.json": json_problem, "model.safetensors": safetensors_problem}
    for file in ("config.json", "model.safetensors"):
        try:  # a cached file that does not parse (a transfer cut short by an older version) is fetched again
            download(f"{endpoint}/{name}/resolve/main/{file}", os.path.join(folder, file), HUB_SHA256.get(f"{name}/{file}"),
                     check=checks[file])
        except DataError as e:
            raise CheckpointError(f"{name}: {e}") from None
    return folder


def json_problem(path):
    """Why the file at path is not a JSON object, or None."""
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except (ValueError, UnicodeDecodeError) as e:
        return f"it is not valid JSON ({e})"
    return None if isinstance(value, dict) else f"it holds a JSON {type(value).__name__}, not an object"


def safetensors_problem(path):
    """Why the file at path is not a whole safetensors file (its header covers the file exactly), or None."""
    try:
        with safe_open(path, "pt"):
            return None
    except (SafetensorError, OSError) as e:
        return f"it is not a whole safetensors file ({e})"


def hf_tensor_names(c, layout):
    """
    How each of our tensors is stored in a Hugging Face model with config c: a list of (our name,
    HF names, transposed, row split). Several HF tensors stacked along the output dimension make one
    of ours: LLaMA's q, k, v projections are our c_attn, its gate and up projections our SwiGLU
    c_fc. GPT-2's Conv1D layers keep (in, out) matrices, the transpose of nn.Linear's. GPT-2 and
    MegatronBERT always have biases: a model without them is written with zero biases.
    """
    if layout == "megatron-bert":
        return megatron_tensor_names(c)
    if layout == "gpt2":  # our names are GPT-2's (nanoGPT kept them), and GPT-2 always has biases
        names = [(n, [n], False, None) for n in ("transformer.wte.weight", "transformer.wpe.weight")]
        modules = [f"transformer.h.{i}.{m}" for i in range(c.n_layer)
                   for m in ("ln_1", "attn.c_attn", "attn.c_proj", "ln_2", "mlp.c_fc", "mlp.c_proj")]
        for m in modules + ["transformer.ln_f"]:
            names += [(m + ".weight", [m + ".weight"], ".c_" in m, None), (m + ".bias", [m + ".bias"], False, None)]
    else:
        names = [("transformer.wte.weight", ["model.embed_tokens.weight"], False, None),
                 ("transformer.ln_f.weight", ["model.norm.weight"], False, None)]
        qkv = [c.n_head * c.head_size, c.n_kv_head * c.head_size, c.n_kv_head * c.head_size]
        for i in range(c.n_layer):
            ours, hf = f"transformer.h.{i}.", f"model.layers.{i}."
            names += [(ours + "ln_1.weight", [hf + "input_layernorm.weight"], False, None),
                      (ours + "ln_2.weight", [hf + "post_attention_layernorm.weight"], False, None)]
            for p in ("weight", "bias") if c.bias else ("weight",):
                names += [(ours + "attn.c_attn." + p, [hf + f"self_attn.{x}_proj.{p}" for x in "qkv"], False, qkv),
                          (ours + "attn.c_proj." + p, [hf + "self_attn.o_proj." + p], False, None),
                          (ours + "mlp.c_fc." + p, [hf + "mlp.gate_proj." + p, hf + "mlp.up_proj." + p], False,
                           [c.hidden_size, c.hidden_size]),
                          (ours + "mlp.c_proj." + p, [hf + "mlp.down_proj." + p], False, None)]
    if not c.tie_embeddings:
        names.append(("lm_head.weight", ["lm_head.weight"], False, None))
    return names


def megatron_tensor_names(c):
    """
    hf_tensor_names for an encoder written as MegatronBertForMaskedLM, whose blocks are ours: a
    LayerNorm before attention and one before the MLP, both inside the residual branch, and one
    final LayerNorm. Its head always transforms the final states (dense, activation, LayerNorm)
    before the output layer. With mlm_transform that is our mlm_transform; without it, our ln_f
    goes into the head's LayerNorm and the two layers before it are nearly the identity
    (megatron_identity_head).
    """
    names = [("transformer.wte.weight", ["bert.embeddings.word_embeddings.weight"], False, None),
             ("transformer.wpe.weight", ["bert.embeddings.position_embeddings.weight"], False, None)]
    for i in range(c.n_layer):
        ours, hf = f"transformer.h.{i}.", f"bert.encoder.layer.{i}."
        for p in ("weight", "bias"):
            names += [(ours + "ln_1." + p, [hf + "attention.ln." + p], False, None),
                      (ours + "attn.c_attn." + p, [hf + f"attention.self.{x}.{p}" for x in ("query", "key", "value")],
                       False, [c.n_embd] * 3),
                      (ours + "attn.c_proj." + p, [hf + "attention.output.dense." + p], False, None),
                      (ours + "ln_2." + p, [hf + "ln." + p], False, None),
                      (ours + "mlp.c_fc." + p, [hf + "intermediate.dense." + p], False, None),
                      (ours + "mlp.c_proj." + p, [hf + "output.dense." + p], False, None)]
    head = "cls.predictions.transform."
    for p in ("weight", "bias"):
        if c.mlm_transform:
            names += [("transformer.ln_f." + p, ["bert.encoder.ln." + p], False, None),
                      ("mlm_transform.0." + p, [head + "dense." + p], False, None),
                      ("mlm_transform.2." + p, [head + "LayerNorm." + p], False, None)]
        else:
            names.append(("transformer.ln_f." + p, [head + "LayerNorm." + p], False, None))
    if not c.tie_embeddings:
        names.append(("lm_head.weight", ["cls.predictions.decoder.weight"], False, None))
    return names


# MegatronBERT's head without our mlm_transform: the final LayerNorm scales the normalised states n by
# HEAD_SCALE, the dense layer adds a shift that makes every entry at least 10, where the tanh GELU is
# exactly the identity in float32 (tanh(0.798 * (10 + 0.0447 * 1000)) rounds to 1), and the head's
# LayerNorm, holding our ln_f's weight and bias, removes the shift and the scale again. What remains is
# ln_f with eps = 0: n / sqrt(v) where ours has n / sqrt(v + eps), v being the variance of the state,
# a relative difference of eps / (2 v) (5e-6 for eps = 1e-5 and v = 1).
HEAD_SCALE = 100.0


def megatron_identity_head(c):
    """The tensors of MegatronBERT's final LayerNorm and head dense layer that pass states through."""
    shift = HEAD_SCALE * math.sqrt(c.n_embd) + 10.0  # |n_i| <= sqrt(n_embd - 1) for a normalised vector
    return {"bert.encoder.ln.weight": torch.full((c.n_embd,), HEAD_SCALE), "bert.encoder.ln.bias": torch.zeros(c.n_embd),
            "cls.predictions.transform.dense.weight": torch.eye(c.n_embd),
            "cls.predictions.transform.dense.bias": torch.full((c.n_embd,), shift)}


def hf_layout(c):
    """The Hugging Face architecture that computes what config c does: 'gpt2' or 'llama' for a GPT,
    'megatron-bert' for an encoder (exact with mlm_transform, else see HEAD_SCALE)."""
    if c.qk_norm:
        raise ValueError("no Hugging Face layout holds a model with qk_norm=True (GPT-2, LLaMA and Megatron-BERT "
                         "have no QK-norm); train with qk_norm=False to export")
    if c.n_decoder_layer:  # its encoder alone would pass as MegatronBERT below, without the decoder
        raise ValueError("an encoder-decoder has no Hugging Face export yet (T5's layout is not written); "
                         "use its checkpoint with sample.py and finetune.py")
    arch = (c.pos, c.norm, c.mlp)
    gpt2_blocks = arch == ("learned", "layernorm", "gelu") and c.n_kv_head == c.n_head
    if c.causal and gpt2_blocks:
        return "gpt2"
    if c.causal and arch == ("rope", "rmsnorm", "swiglu"):
        return "llama"
    if not c.causal and gpt2_blocks:
        return "megatron-bert"
    raise ValueError(f"no Hugging Face layout holds this model exactly (causal={c.causal}, pos={c.pos}, norm={c.norm}, "
                     f"mlp={c.mlp}, n_kv_head={c.n_kv_head}): export needs GPT-2's learned/layernorm/gelu with "
                     f"n_kv_head=n_head (a GPT or an encoder), or LLaMA's rope/rmsnorm/swiglu (a GPT)")


def hf_config_dict(c, tokenizer=None):
    """config.json for config c, in the field names of transformers' GPT2Config, LlamaConfig or MegatronBertConfig."""
    layout = hf_layout(c)
    eot = pad = None
    if tokenizer is not None:
        special_ids = tokenizer_from_spec(tokenizer).special_ids
        eot, pad = special_ids[EOT], special_ids["[PAD]"]
    common = {"vocab_size": c.vocab_size, "tie_word_embeddings": c.tie_embeddings, "bos_token_id": eot,
              "eos_token_id": eot, "pad_token_id": pad,
              "nanoroots": {"bias": c.bias, "tokenizer": tokenizer}}  # what the HF fields cannot say
    if layout == "megatron-bert":
        common["nanoroots"]["mlm_transform"] = c.mlm_transform
        return {"architectures": ["MegatronBertForMaskedLM"], "model_type": "megatron-bert", "is_decoder": False,
                "num_hidden_layers": c.n_layer, "num_attention_heads": c.n_head, "hidden_size": c.n_embd,
                "intermediate_size": c.hidden_size, "hidden_act": "gelu_pytorch_tanh",  # torch's tanh GELU, as ours
                "max_position_embeddings": c.block_size, "type_vocab_size": 1, "layer_norm_eps": c.norm_eps,
                "hidden_dropout_prob": c.dropout, "attention_probs_dropout_prob": c.dropout, **common}
    if layout == "gpt2":
        return {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "n_layer": c.n_layer, "n_head": c.n_head,
                "n_embd": c.n_embd, "n_positions": c.block_size, "n_inner": c.hidden_size,
                "activation_function": "gelu_new", "layer_norm_epsilon": c.norm_eps, "resid_pdrop": c.dropout,
                "embd_pdrop": c.dropout, "attn_pdrop": c.dropout, **common}
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "num_hidden_layers": c.n_layer,
            "num_attention_heads": c.n_head, "num_key_value_heads": c.n_kv_head, "hidden_size": c.n_embd,
            "head_dim": c.head_size, "intermediate_size": c.hidden_size, "hidden_act": "silu",
            "max_position_embeddings": c.block_size, "rms_norm_eps": c.norm_eps, "rope_theta": c.rope_theta,
            "rope_parameters": {"rope_type": "default", "rope_theta": c.rope_theta}, "rope_scaling": None,
            "attention_bias": c.bias, "mlp_bias": c.bias, "attention_dropout": c.dropout, **common}


def model_args_from_hf(hf, where):
    """(GPTConfig fields, layout, tokenizer spec or None, the file's vocabulary size) for a
    Hugging Face config.json dict; a config we cannot reproduce exactly is a one-line error."""
    kind = hf.get("model_type") or ""
    ours = hf.get("nanoroots") or {}
    problems = []
    if kind == "gpt2":
        layout, vocab = "gpt2", hf.get("vocab_size", 50257)
        args = dict(n_layer=hf.get("n_layer", 12), n_head=hf.get("n_head", 12), n_embd=hf.get("n_embd", 768),
                    block_size=hf.get("n_positions", 1024), norm_eps=hf.get("layer_norm_epsilon", 1e-5),
                    mlp_hidden=hf.get("n_inner") or 0, bias=ours.get("bias", True))
        if hf.get("activation_function", "gelu_new") not in ("gelu_new", "gelu_pytorch_tanh"):
            problems.append(f"activation_function={hf['activation_function']!r} (only GPT-2's tanh GELU is supported)")
        for key, want in (("scale_attn_weights", True), ("scale_attn_by_inverse_layer_idx", False), ("add_cross_attention", False)):
            if hf.get(key, want) != want:
                problems.append(f"{key}={hf[key]}")
    elif kind == "llama":
        layout, vocab = "llama", hf.get("vocab_size", 32000)
        rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
        args = dict(pos="rope", norm="rmsnorm", mlp="swiglu", n_layer=hf["num_hidden_layers"],
                    n_head=hf["num_attention_heads"], n_kv_head=hf.get("num_key_value_heads") or hf["num_attention_heads"],
                    n_embd=hf["hidden_size"], mlp_hidden=hf["intermediate_size"], block_size=hf.get("max_position_embeddings", 2048),
                    norm_eps=hf.get("rms_norm_eps", 1e-6), rope_theta=rope.get("rope_theta", hf.get("rope_theta", 10000.0)),
                    bias=bool(hf.get("attention_bias", False)))
        if rope.get("rope_type", rope.get("type", "default")) != "default":
            problems.append(f"rope type {rope.get('rope_type', rope.get('type'))!r} (only plain RoPE is supported)")
        if hf.get("hidden_act", "silu") != "silu":
            problems.append(f"hidden_act={hf['hidden_act']!r} (SwiGLU needs silu)")
        if bool(hf.get("mlp_bias", False)) != args["bias"]:
            problems.append(f"attention_bias={hf.get('attention_bias')} but mlp_bias={hf.get('mlp_bias')}")
        if hf.get("head_dim") not in (None, args["n_embd"] // args["n_head"]):
            problems.append(f"head_dim={hf['head_dim']} is not hidden_size/num_attention_heads")
    elif kind == "megatron-bert":  # an encoder, as write_hf_folder writes one (see megatron_tensor_names)
        layout, vocab = "megatron-bert", hf["vocab_size"]
        args = dict(causal=False, n_layer=hf["num_hidden_layers"], n_head=hf["num_attention_heads"],
                    n_embd=hf["hidden_size"], mlp_hidden=hf["intermediate_size"],
                    block_size=hf.get("max_position_embeddings", 512), norm_eps=hf.get("layer_norm_eps", 1e-12),
                    bias=ours.get("bias", True), mlm_transform=ours.get("mlm_transform", True))
        if hf.get("hidden_act", "gelu") not in ("gelu_new", "gelu_pytorch_tanh"):
            problems.append(f"hidden_act={hf.get('hidden_act', 'gelu')!r} (only the tanh GELU is supported)")
        if hf.get("is_decoder") or hf.get("add_cross_attention"):
            problems.append("is_decoder=True (only the bidirectional encoder is supported)")
    else:
        raise CheckpointError(f"{where} has model_type={kind!r}; only Hugging Face GPT-2 (gpt2), LLaMA (llama) and "
                              f"MegatronBERT (megatron-bert) folders can be read")
    if problems:
        raise CheckpointError(f"{where} describes a {kind} variant this model cannot reproduce: {'; '.join(problems)}")
    tokenizer = ours.get("tokenizer")
    if tokenizer is None and kind == "gpt2" and vocab == 50257:  # OpenAI's GPT-2 BPE: our gpt2 tokenizer
        tokenizer = {"kind": "gpt2"}
    # the tokenizer's own count when known (ours adds BERT's specials after GPT-2's 50257 tokens),
    # so that every id it produces has an embedding; rows the file lacks are filled in on import
    args["vocab_size"] = vocab
    if tokenizer is not None:
        args["vocab_size"] = max(vocab, tokenizer_from_spec(tokenizer).vocab_size)
    args["tie_embeddings"] = bool(hf.get("tie_word_embeddings", kind in ("gpt2", "megatron-bert")))
    return args, layout, tokenizer, vocab


def read_hf_tensors(folder):
    """Every tensor of a Hugging Face folder: model.safetensors or pytorch_model.bin, or their
    sharded forms (an .index.json whose weight_map names the file of each tensor)."""
    for weights in ("model.safetensors", "pytorch_model.bin"):
        index = os.path.join(folder, weights + ".index.json")
        if os.path.isfile(os.path.join(folder, weights)):
            files = [os.path.join(folder, weights)]
        elif os.path.isfile(index):
            files = shard_files(folder, index)
        else:
            continue
        tensors = {}
        for path in files:
            try:  # .bin files are pickles: weights_only=True loads their tensors without running code
                tensors.update(load_file(path) if path.endswith(".safetensors")
                               else torch.load(path, map_location="cpu", weights_only=True))
            except (SafetensorError, pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, OSError) as e:
                raise CheckpointError(f"{path} is truncated, corrupt or not plain tensors ({type(e).__name__}: "
                                      f"{str(e).splitlines()[0][:120]}); download it again") from None
        return tensors
    raise CheckpointError(f"{folder} has a config.json but no model.safetensors or pytorch_model.bin (or their .index.json)")


def shard_files(folder, index):
    """The weight files an .index.json names, each a plain file name inside `folder`: names are data, and one
    such as ../../etc/passwd or /etc/passwd must not make us open a file elsewhere. (Symlinks in the folder
    are followed: the Hugging Face cache links every file of a snapshot to its blobs/ folder.)"""
    try:
        with open(index, encoding="utf-8") as f:
            names = sorted(set(json.load(f)["weight_map"].values()))
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as e:
        raise CheckpointError(f"{index} is not a valid weight index ({type(e).__name__}: {e}); download it again") from None
    for name in names:
        if not isinstance(name, str) or name in ("", ".", "..") or os.path.basename(name) != name or "\\" in name:
            raise CheckpointError(f"{index} names the weight file {name!r}, which is not a file in {folder}; "
                                  f"refusing to read outside the folder")
    return [os.path.join(folder, name) for name in names]


def read_megatron_extras(tensors, state, config, folder):
    """Take MegatronBERT's tensors that have no counterpart here out of `tensors`: the token-type
    embedding (row 0, the type every input gets, is added to the position embeddings), the output
    biases (zero), and for mlm_transform=False the pass-through layers of megatron_identity_head."""
    token_types = tensors.pop("bert.embeddings.token_type_embeddings.weight", None)
    if token_types is not None:
        state["transformer.wpe.weight"] = state["transformer.wpe.weight"] + token_types[0]
    for name in ("cls.predictions.bias", "cls.predictions.decoder.bias"):
        bias = tensors.pop(name, None)
        if bias is not None and bias.any():
            raise CheckpointError(f"{folder} has a nonzero {name}; this model's output layer has no bias")
    if not config.mlm_transform:
        for name, want in megatron_identity_head(config).items():
            t = tensors.pop(name, None)
            if t is None or not torch.equal(t, want.to(t.dtype)):
                raise CheckpointError(f"{folder}/config.json says mlm_transform=false but {name} is not the pass-through "
                                      f"layer the export writes; delete \"mlm_transform\" from its \"nanoroots\" entry "
                                      f"to read the head as an mlm_transform")


def read_hf_folder(folder):
    """A Hugging Face GPT-2, LLaMA or MegatronBERT folder as one of our checkpoint dicts. Every tensor
    of the file is used exactly once and has the shape config.json implies; anything else is an error."""
    path = os.path.join(folder, "config.json")
    try:
        with open(path, encoding="utf-8") as f:
            args, layout, tokenizer, vocab = model_args_from_hf(json.load(f), path)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON ({e}); download it again") from None
    except KeyError as e:
        raise CheckpointError(f"{path} has no {e} field; it is incomplete, download it again") from None
    try:
        config = GPTConfig.from_dict(args)
    except ConfigError as e:
        raise CheckpointError(f"{folder}/config.json: {e}") from None
    tensors = read_hf_tensors(folder)
    layers = {int(m.group(1)) for k in tensors if (m := re.search(r"(?:^|\.)(?:h|layers|layer)\.(\d+)\.", k))}
    if layers != set(range(config.n_layer)):  # before the names and shapes of n_layer layers are built
        raise CheckpointError(f"{folder}/config.json says {config.n_layer} layers but the weights hold {len(layers)}: "
                              f"the weights and the config do not match")
    if layout == "gpt2":  # GPT2Model's files (the original gpt2 ones) lack GPT2LMHeadModel's "transformer." prefix
        tensors = {k if k.startswith(("transformer.", "lm_head.")) else "transformer." + k: v for k, v in tensors.items()}
    # GPT-2 and MegatronBERT files have biases whatever the model has
    file_config = GPTConfig.from_dict(args | {"bias": True}) if layout in ("gpt2", "megatron-bert") else config
    shapes, our_names = state_shapes(file_config), set(state_shapes(config))  # without allocating anything
    state = {}
    for ours, theirs, transposed, _ in hf_tensor_names(config, layout):
        missing = [n for n in theirs if n not in tensors]
        if missing:
            raise CheckpointError(f"{folder} has no tensor {missing[0]}: it is not a complete {layout} checkpoint for its config.json")
        parts = [tensors.pop(n) for n in theirs]
        t = torch.cat([p.t() if transposed else p for p in parts], dim=0)
        want = shapes[ours] if not ours.endswith(("wte.weight", "lm_head.weight")) else torch.Size([vocab, config.n_embd])
        if t.shape != want:
            shown = theirs[0] if len(theirs) == 1 else "+".join(theirs)
            raise CheckpointError(f"{shown} in {folder} has shape {tuple(t.shape)}{' (transposed)' if transposed else ''}, "
                                  f"but config.json implies {tuple(want)}: the weights and the config do not match")
        if ours.endswith(("wte.weight", "lm_head.weight")) and config.padded_vocab_size > vocab:
            # rows for tokens the file lacks (our extra special tokens, the padding to a multiple of 64)
            # start as the mean embedding: their logits are then average, not dominant (Hewitt 2021)
            t = torch.cat([t, t.float().mean(0, keepdim=True).to(t.dtype).expand(config.padded_vocab_size - vocab, -1)])
        state[ours] = t.contiguous()  # in the file's dtype: loading into the model converts it
    for name in [n for n in state if n not in our_names]:  # our export wrote a model's missing biases as zeros
        if state[name].any():
            raise CheckpointError(f"{folder}/config.json says bias=False but {name} is not zero; remove \"nanoroots\" "
                                  f"from config.json to load the biases")
        del state[name]
    if layout == "megatron-bert":
        read_megatron_extras(tensors, state, config, folder)
    head_name = "cls.predictions.decoder.weight" if layout == "megatron-bert" else "lm_head.weight"
    stored_head = tensors.pop(head_name, None) if config.tie_embeddings else None  # some files store a tied head
    if stored_head is not None and not torch.equal(stored_head.float(), state["transformer.wte.weight"][:vocab].float()):
        raise CheckpointError(f"{folder}/config.json ties the embeddings but {head_name} differs from them; "
                              f"set tie_word_embeddings to false in config.json")
    unused = sorted(n for n in tensors if not HF_BUFFERS.search(n))
    if unused:
        raise CheckpointError(f"{folder} has {len(unused)} tensors the {layout} layout does not use ({', '.join(unused[:3])}"
                              f"{', ...' if len(unused) > 3 else ''}): its config.json does not describe these weights")
    return {"model": state, "model_args": asdict(config), "tokenizer": tokenizer, "source": folder}


def hf_generation_config(tok):
    """generation_config.json for a GPT using tokenizer tok: stop at <|endoftext|>, and never generate
    BERT's tokens, which only an encoder's input holds (sample.py suppresses them the same way)."""
    return {"bos_token_id": tok.special_ids[EOT], "eos_token_id": tok.special_ids[EOT],
            "pad_token_id": tok.special_ids["[PAD]"], "suppress_tokens": [tok.special_ids[s] for s in BERT_SPECIALS]}


def write_hf_folder(model, out_dir, tokenizer=None):
    """
    A folder that transformers loads as it is: config.json + model.safetensors in the Hugging Face
    layout of the model's architecture (GPT-2, LLaMA, or MegatronBERT for an encoder) and, given
    the tokenizer spec, the tokenizer (tokenizer.json, tokenizer_config.json) and, for a GPT,
    generation_config.json. Each file is written to a temporary name, fsynced and renamed,
    config.json last. Returns out_dir.
    """
    c = model.config
    layout = hf_layout(c)
    files = {}  # the text files, built before anything is written: a tokenizer that cannot be exported stops the export
    if tokenizer is not None:
        tok = tokenizer_from_spec(tokenizer)
        files = hf_tokenizer_files(tok, c.block_size, encoder=not c.causal)
        if c.causal:
            files["generation_config.json"] = json.dumps(hf_generation_config(tok), indent=2)
    state = {k: v.detach().cpu() for k, v in clean_state_dict(model.state_dict()).items()}
    if layout in ("gpt2", "megatron-bert") and not c.bias:  # these have a bias wherever a model without biases has zeros
        for name in [n for n in state if n.endswith(".weight") and not n.endswith(("wte.weight", "wpe.weight", "lm_head.weight"))]:
            state.setdefault(name[:-len("weight")] + "bias", torch.zeros(state[name].shape[0]))
    tensors = {}
    for ours, theirs, transposed, split in hf_tensor_names(c, layout):
        t = state[ours]
        if ours.endswith(("wte.weight", "lm_head.weight")):
            t = t[:c.vocab_size]  # the padding rows are ours alone
        for name, part in zip(theirs, t.split(split) if split else [t]):
            tensors[name] = (part.t() if transposed else part).contiguous()
    if layout == "megatron-bert":  # one token type, adding nothing; no output bias
        dtype = state["transformer.wte.weight"].dtype
        extra = {"bert.embeddings.token_type_embeddings.weight": torch.zeros(1, c.n_embd),
                 "cls.predictions.bias": torch.zeros(c.vocab_size)}
        if not c.tie_embeddings:
            extra["cls.predictions.decoder.bias"] = torch.zeros(c.vocab_size)
        if not c.mlm_transform:
            extra |= megatron_identity_head(c)
        tensors |= {name: t.to(dtype) for name, t in extra.items()}
    os.makedirs(out_dir, exist_ok=True)
    weights, config = os.path.join(out_dir, "model.safetensors"), os.path.join(out_dir, "config.json")
    with atomic_file(weights, "wb") as f:
        f.write(save(tensors, metadata={"format": "pt"}))
    for name, text in files.items():
        atomic_write_text(os.path.join(out_dir, name), text)
    dtype = str(state["transformer.wte.weight"].dtype).removeprefix("torch.")
    atomic_write_text(config, json.dumps(hf_config_dict(c, tokenizer) | {"torch_dtype": dtype}, indent=2))
    return out_dir


def load_pretrained(source, map_location="cpu"):
    """
    Weights from anywhere `init_from` can point, as a checkpoint dict (`model`, `model_args`,
    `tokenizer`): our checkpoint (a .pt file or an out_dir holding ckpt.pt), a Hugging Face folder
    (config.json + weights, GPT-2 or LLaMA layout), or a GPT-2 name, downloaded once and cached.
    train.py, sample.py and finetune.py all start from this one function.
    """
    if source in GPT2_NAMES and not os.path.exists(source):
        source = download_gpt2(source)
    if not os.path.exists(source):
        raise CheckpointError(f"{source} is neither a checkpoint, an out_dir or a Hugging Face folder, nor one of "
                              f"{', '.join(GPT2_NAMES)}; check --init_from")
    if os.path.isfile(os.path.join(source, "config.json")) and not os.path.isfile(os.path.join(source, "ckpt.pt")):
        return read_hf_folder(source)
    return load_checkpoint(source, map_location)


def from_pretrained(name_or_path):
    """A model from GPT-2 by name (gpt2, gpt2-medium, gpt2-large, gpt2-xl; downloaded once and cached), a Hugging
    Face folder in GPT-2 or LLaMA layout, or one of our checkpoints. See load_pretrained."""
    return model_from_checkpoint(load_pretrained(name_or_path))


def export_hf(model, out_dir, tokenizer=None):
    """Write a folder that transformers loads as GPT2LMHeadModel, LlamaForCausalLM or (an encoder)
    MegatronBertForMaskedLM with the same logits, and, given `tokenizer` (a tokenizer spec), the tokenizer with
    the same ids. See write_hf_folder."""
    return write_hf_folder(model, out_dir, tokenizer)


@script_main
def main(argv=None):
    cfg = configure(dict(init_from="",   # a checkpoint, out_dir, Hugging Face folder or GPT-2 name
                         export_hf=""),  # the folder to write the model, its config and its tokenizer into
                    argv)
    if not cfg.init_from or not cfg.export_hf:
        raise ConfigError("give both --init_from=<checkpoint, out_dir or GPT-2 name> and --export_hf=<new folder>")
    checkpoint = load_pretrained(cfg.init_from)
    model = model_from_checkpoint(checkpoint)
    export_hf(model, cfg.export_hf, checkpoint.get("tokenizer"))
    task = "text-generation" if model.config.causal else "fill-mask"
    print(f"wrote {cfg.export_hf} ({hf_layout(model.config)} layout); in Python: "
          f"transformers.pipeline({task!r}, model={cfg.export_hf!r})")
    if checkpoint.get("tokenizer") is None:
        print(f"note: {cfg.init_from} does not record its tokenizer, so none was written; "
              f"give transformers a tokenizer with the same ids")


if __name__ == "__main__":
    main()
