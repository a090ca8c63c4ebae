"""Hugging Face interop: GPT-2 and LLaMA folders in and out, the hub download path, GQA generation.

Folders are built here from random tensors with the Hugging Face names (safetensors only); the
comparisons against transformers' own GPT2LMHeadModel and LlamaForCausalLM run when it is installed.
Downloads go to a local http.server on 127.0.0.1: nothing here touches the internet.
"""

import hashlib
import http.server
import json
import os
import re
import threading

import pytest
import torch
from safetensors.torch import save_file

import hf as hf_module
import prepare
import sample
import train
from configurator import configure
from conftest import ROOT
from hf import export_hf, from_pretrained, hf_layout, load_pretrained, read_hf_folder
from model import GPT, CheckpointError, GPTConfig, model_from_checkpoint, save_checkpoint
from tokenizer import gpt2_tokenizer

try:
    import transformers
except ImportError:  # the comparisons below are skipped, with this reason
    transformers = None
needs_transformers = pytest.mark.skipif(transformers is None, reason="transformers is not installed "
                                        "(pip install -r requirements-dev.txt): the comparison with its models is skipped")

LAYERS = ("ln_1", "attn.c_attn", "attn.c_proj", "ln_2", "mlp.c_fc", "mlp.c_proj")


def gpt2_tensors(n_layer=2, n_embd=32, vocab=96, n_positions=64, prefix="transformer.", seed=0):
    """Random tensors named and shaped as a Hugging Face GPT-2 file: Conv1D weights are (in, out)."""
    g = torch.Generator().manual_seed(seed)
    C = n_embd
    shapes = {"wte.weight": (vocab, C), "wpe.weight": (n_positions, C), "ln_f.weight": (C,), "ln_f.bias": (C,)}
    for i in range(n_layer):
        shapes |= {f"h.{i}.ln_1.weight": (C,), f"h.{i}.ln_1.bias": (C,), f"h.{i}.ln_2.weight": (C,), f"h.{i}.ln_2.bias": (C,),
                   f"h.{i}.attn.c_attn.weight": (C, 3 * C), f"h.{i}.attn.c_attn.bias": (3 * C,),
                   f"h.{i}.attn.c_proj.weight": (C, C), f"h.{i}.attn.c_proj.bias": (C,),
                   f"h.{i}.mlp.c_fc.weight": (C, 4 * C), f"h.{i}.mlp.c_fc.bias": (4 * C,),
                   f"h.{i}.mlp.c_proj.weight": (4 * C, C), f"h.{i}.mlp.c_proj.bias": (C,)}
    tensors = {prefix + name: torch.randn(shape, generator=g) * 0.2 for name, shape in shapes.items()}
    for i in range(n_layer):  # the causal-mask buffer old GPT-2 files carry: not a weight
        tensors[f"{prefix}h.{i}.attn.bias"] = torch.ones(1, 1, n_positions, n_positions).tril()
    return tensors


def write_gpt2_folder(path, tensors, n_layer=2, n_head=4, n_embd=32, vocab=96, n_positions=64, **config):
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "n_layer": n_layer, "n_head": n_head,
                   "n_embd": n_embd, "vocab_size": vocab, "n_positions": n_positions, **config}, f)
    save_file(tensors, os.path.join(path, "model.safetensors"))
    return str(path)


def reference_gpt2_logits(t, idx, n_layer=2, n_head=4, prefix="transformer."):
    """GPT-2's forward written out from the HF tensors themselves (x @ W for Conv1D), independent of model.py."""
    w = lambda name: t[prefix + name]  # noqa: E731
    T = idx.size(1)
    x = w("wte.weight")[idx] + w("wpe.weight")[:T]
    ln = lambda x, n: torch.nn.functional.layer_norm(x, x.shape[-1:], w(n + ".weight"), w(n + ".bias"))  # noqa: E731
    for i in range(n_layer):
        h = ln(x, f"h.{i}.ln_1") @ w(f"h.{i}.attn.c_attn.weight") + w(f"h.{i}.attn.c_attn.bias")
        q, k, v = (a.view(*idx.shape, n_head, -1).transpose(1, 2) for a in h.chunk(3, dim=-1))
        att = (q @ k.transpose(-1, -2) / q.size(-1) ** 0.5).masked_fill(torch.ones(T, T).triu(1).bool(), float("-inf"))
        y = (att.softmax(-1) @ v).transpose(1, 2).reshape(x.shape)
        x = x + y @ w(f"h.{i}.attn.c_proj.weight") + w(f"h.{i}.attn.c_proj.bias")
        h = torch.nn.functional.gelu(ln(x, f"h.{i}.ln_2") @ w(f"h.{i}.mlp.c_fc.weight") + w(f"h.{i}.mlp.c_fc.bias"), approximate="tanh")
        x = x + h @ w(f"h.{i}.mlp.c_proj.weight") + w(f"h.{i}.mlp.c_proj.bias")
    return ln(x, "ln_f") @ w("wte.weight").T


# -----------------------------------------------------------------------------
# import of a GPT-2 folder built here

@pytest.mark.parametrize("prefix", ["transformer.", ""])  # GPT2LMHeadModel files, and GPT2Model ones (the hub's gpt2)
def test_gpt2_import_maps_every_tensor(tmp_path, prefix):
    tensors = gpt2_tensors(prefix=prefix)
    ckpt = read_hf_folder(write_gpt2_folder(tmp_path, tensors))
    state = ckpt["model"]
    for i in range(2):
        for m in LAYERS:
            hf_w, ours_w = tensors[f"{prefix}h.{i}.{m}.weight"], state[f"transformer.h.{i}.{m}.weight"]
            assert torch.equal(ours_w, hf_w.t() if ".c_" in m else hf_w), m  # Conv1D (in, out) -> Linear (out, in)
            assert torch.equal(state[f"transformer.h.{i}.{m}.bias"], tensors[f"{prefix}h.{i}.{m}.bias"])
    assert torch.equal(state["transformer.wpe.weight"], tensors[prefix + "wpe.weight"])
    assert torch.equal(state["transformer.wte.weight"][:96], tensors[prefix + "wte.weight"])
    # every HF weight became one of ours and nothing else did (tied head, so no lm_head.weight)
    weights = [k for k in tensors if not k.endswith(".attn.bias")]
    assert len(state) == len(weights)
    assert ckpt["model_args"]["vocab_size"] == 96 and ckpt["tokenizer"] is None and ckpt["model_args"]["bias"]


def test_gpt2_import_computes_gpt2(tmp_path):
    tensors = gpt2_tensors()
    model = from_pretrained(write_gpt2_folder(tmp_path, tensors)).eval()
    idx = torch.randint(0, 96, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = model(idx)[0]
    torch.testing.assert_close(ours, reference_gpt2_logits(tensors, idx), atol=1e-4, rtol=1e-4)


def test_gpt2_vocabulary_gets_our_tokenizer_and_mean_rows(tmp_path):
    """The hub's GPT-2 has 50257 tokens; our gpt2 tokenizer adds BERT's four specials after them,
    so the import keeps vocab_size=50261 and gives the new rows the mean embedding."""
    tensors = gpt2_tensors(n_layer=1, n_embd=16, vocab=50257, prefix="")
    ckpt = read_hf_folder(write_gpt2_folder(tmp_path, tensors, n_layer=1, n_embd=16, vocab=50257))
    assert ckpt["tokenizer"] == {"kind": "gpt2"}
    assert ckpt["model_args"]["vocab_size"] == gpt2_tokenizer().vocab_size == 50261
    wte = ckpt["model"]["transformer.wte.weight"]
    assert wte.shape == (50304, 16)  # padded to a multiple of 64
    assert torch.allclose(wte[50257:], tensors["wte.weight"].mean(0).expand(47, -1))


def test_import_errors_name_the_tensor(tmp_path):
    tensors = gpt2_tensors()
    missing = {k: v for k, v in tensors.items() if k != "transformer.h.1.mlp.c_fc.weight"}
    with pytest.raises(CheckpointError, match=r"no tensor transformer\.h\.1\.mlp\.c_fc\.weight"):
        read_hf_folder(write_gpt2_folder(tmp_path / "missing", missing))
    with pytest.raises(CheckpointError, match=r"does not use \(transformer\.h\.0\.attn\.extra\):"):
        read_hf_folder(write_gpt2_folder(tmp_path / "extra", tensors | {"transformer.h.0.attn.extra": torch.zeros(3)}))
    wrong = tensors | {"transformer.h.0.attn.c_proj.weight": torch.zeros(32, 16)}
    with pytest.raises(CheckpointError, match=r"c_proj\.weight in .* has shape \(16, 32\) \(transposed\), but config\.json implies \(32, 32\)"):
        read_hf_folder(write_gpt2_folder(tmp_path / "shape", wrong))
    with pytest.raises(CheckpointError, match="activation_function='relu'"):
        read_hf_folder(write_gpt2_folder(tmp_path / "relu", tensors, activation_function="relu"))
    folder = write_gpt2_folder(tmp_path / "bert", tensors)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump({"model_type": "bert"}, f)
    with pytest.raises(CheckpointError, match="model_type='bert'"):
        read_hf_folder(folder)


def test_sharded_safetensors_are_read_through_their_index(tmp_path):
    tensors = gpt2_tensors()
    folder = write_gpt2_folder(tmp_path, tensors)
    os.remove(os.path.join(folder, "model.safetensors"))
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for file, part in shards.items():
        save_file({n: tensors[n] for n in part}, os.path.join(folder, file))
    with open(os.path.join(folder, "model.safetensors.index.json"), "w") as f:
        json.dump({"weight_map": {n: file for file, part in shards.items() for n in part}}, f)
    state = read_hf_folder(folder)["model"]
    assert torch.equal(state["transformer.h.1.mlp.c_proj.weight"], tensors["transformer.h.1.mlp.c_proj.weight"].t())
    assert torch.equal(state["transformer.h.0.ln_1.bias"], tensors["transformer.h.0.ln_1.bias"])


def test_truncated_weights_are_a_clear_error(tmp_path):
    folder = write_gpt2_folder(tmp_path, gpt2_tensors())
    path = os.path.join(folder, "model.safetensors")
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
    with pytest.raises(CheckpointError, match="truncated, corrupt"):
        read_hf_folder(folder)


def test_pytorch_model_bin_is_read_as_data(tmp_path):
    tensors = gpt2_tensors()
    folder = write_gpt2_folder(tmp_path, tensors)
    os.remove(os.path.join(folder, "model.safetensors"))
    torch.save(tensors, os.path.join(folder, "pytorch_model.bin"))
    state = read_hf_folder(folder)["model"]
    assert torch.equal(state["transformer.h.0.attn.c_attn.weight"], tensors["transformer.h.0.attn.c_attn.weight"].t())
    torch.save({"weights": tensors, "code": GPTConfig}, os.path.join(folder, "pytorch_model.bin"))  # a pickled class
    with pytest.raises(CheckpointError, match="not plain tensors"):
        read_hf_folder(folder)


# -----------------------------------------------------------------------------
# export, and re-import

CONFIGS = {
    "gpt2": dict(bias=True),
    "gpt2_no_bias_untied": dict(bias=False, tie_embeddings=False),
    "llama_gqa": dict(pos="rope", norm="rmsnorm", mlp="swiglu", n_kv_head=2, bias=False, tie_embeddings=False, rope_theta=500.0),
    "llama_bias_tied": dict(pos="rope", norm="rmsnorm", mlp="swiglu", bias=True),
    "encoder": dict(causal=False, bias=False),  # MegatronBERT, with the pass-through head
    "encoder_mlm_transform_untied": dict(causal=False, mlm_transform=True, tie_embeddings=False),
}


def random_model(seed=0, **overrides):
    torch.manual_seed(seed)
    model = GPT(GPTConfig(block_size=64, vocab_size=90, n_layer=2, n_head=4, n_embd=32, **overrides)).eval()
    with torch.no_grad():  # biases and norm gains away from their 0/1 initial values, so a mix-up shows
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


@pytest.mark.parametrize("name", CONFIGS)
def test_export_then_import_gives_identical_logits(tmp_path, name):
    model = random_model(**CONFIGS[name])
    export_hf(model, tmp_path, tokenizer={"kind": "char", "chars": "".join(chr(32 + i) for i in range(85))})
    ckpt = load_pretrained(str(tmp_path))
    back = model_from_checkpoint(ckpt).eval()
    assert ckpt["model_args"] == {k: getattr(model.config, k) for k in ckpt["model_args"]} | {"mlp_hidden": model.config.hidden_size}
    assert ckpt["tokenizer"]["kind"] == "char"
    idx = torch.randint(0, 90, (2, 20))
    with torch.no_grad():
        assert torch.equal(back(idx)[0], model(idx)[0])


def test_export_refuses_what_no_layout_holds(tmp_path):
    with pytest.raises(ValueError, match="no Hugging Face layout holds this model"):
        export_hf(random_model(pos="rope"), tmp_path)  # rope with layernorm and gelu: neither GPT-2 nor LLaMA
    with pytest.raises(ValueError, match="n_kv_head=2"):
        export_hf(random_model(n_kv_head=2), tmp_path)  # GPT-2 has no grouped-query attention
    with pytest.raises(ValueError, match="causal=False, pos=rope"):
        export_hf(random_model(**CONFIGS["llama_gqa"], causal=False), tmp_path)  # MegatronBERT's blocks are GPT-2's


def test_checkpoint_folder_wins_over_its_export(tmp_path):
    """An out_dir that holds ckpt.pt and an HF export loads the checkpoint (resume needs it)."""
    model = random_model()
    export_hf(model, tmp_path)
    save_checkpoint({"model": model.state_dict(), "model_args": {"vocab_size": 90}, "iter_num": 7}, str(tmp_path))
    assert load_pretrained(str(tmp_path))["iter_num"] == 7


# -----------------------------------------------------------------------------
# against transformers itself

def greedy(model, idx, n):
    return model.generate(idx, n, temperature=0.0)[:, idx.size(1):]


@needs_transformers
def test_gpt2_matches_transformers_both_ways(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel
    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=4, n_embd=32, n_positions=64, vocab_size=96,
                                    bos_token_id=0, eos_token_id=0)).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.normal_(0, 0.2)
    hf.save_pretrained(tmp_path / "hf")
    ours = from_pretrained(str(tmp_path / "hf")).eval()
    idx = torch.randint(0, 96, (2, 10))
    with torch.no_grad():
        torch.testing.assert_close(ours(idx)[0], hf(idx).logits, atol=1e-4, rtol=1e-4)
        hf_tokens = hf.generate(idx, max_new_tokens=20, do_sample=False, min_new_tokens=20, pad_token_id=0)[:, 10:]
    assert torch.equal(greedy(ours, idx, 20), hf_tokens)

    exported = random_model(bias=False, tie_embeddings=False)  # zero biases and an untied head in GPT-2 layout
    export_hf(exported, tmp_path / "export")
    loaded = GPT2LMHeadModel.from_pretrained(tmp_path / "export").eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(idx % 90).logits, exported(idx % 90)[0], atol=1e-4, rtol=1e-4)


@needs_transformers
def test_llama_matches_transformers_both_ways(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    hf = LlamaForCausalLM(LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                      rope_theta=500.0, bos_token_id=0, eos_token_id=0)).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.normal_(0, 0.2)
    hf.save_pretrained(tmp_path / "hf")
    ours = from_pretrained(str(tmp_path / "hf")).eval()
    assert (ours.config.n_kv_head, ours.config.rope_theta, ours.config.tie_embeddings) == (2, 500.0, False)
    idx = torch.randint(0, 96, (2, 10))
    with torch.no_grad():
        torch.testing.assert_close(ours(idx)[0], hf(idx).logits, atol=1e-4, rtol=1e-4)
        hf_tokens = hf.generate(idx, max_new_tokens=20, do_sample=False, min_new_tokens=20, pad_token_id=0)[:, 10:]
    assert torch.equal(greedy(ours, idx, 20), hf_tokens)

    for name in ("llama_gqa", "llama_bias_tied"):
        exported = random_model(**CONFIGS[name])
        export_hf(exported, tmp_path / name)
        loaded = LlamaForCausalLM.from_pretrained(tmp_path / name).eval()
        with torch.no_grad():
            torch.testing.assert_close(loaded(idx % 90).logits, exported(idx % 90)[0], atol=1e-4, rtol=1e-4)


@needs_transformers
def test_megatron_bert_matches_transformers_both_ways(tmp_path):
    """A MegatronBertForMaskedLM made by transformers (tanh GELU, two token types) reads as our encoder
    with mlm_transform, its token type 0 added to the positions; our encoders export to it."""
    from transformers import MegatronBertConfig, MegatronBertForMaskedLM
    torch.manual_seed(0)
    hf = MegatronBertForMaskedLM(MegatronBertConfig(vocab_size=96, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                                    intermediate_size=48, max_position_embeddings=64, type_vocab_size=2,
                                                    hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-5)).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if name != "cls.predictions.bias":  # the one tensor we have no place for: it must stay zero
                p.normal_(0, 0.2)
    hf.save_pretrained(tmp_path / "hf")
    ours = from_pretrained(str(tmp_path / "hf")).eval()
    c = ours.config
    assert (c.causal, c.mlm_transform, c.mlp_hidden, c.tie_embeddings, c.bias) == (False, True, 48, True, True)
    idx = torch.randint(0, 96, (2, 10))
    with torch.no_grad():
        torch.testing.assert_close(ours(idx)[0], hf(idx).logits, atol=1e-4, rtol=1e-4)

    for name in ("encoder", "encoder_mlm_transform_untied"):
        exported = random_model(**CONFIGS[name])
        export_hf(exported, tmp_path / name)
        loaded = MegatronBertForMaskedLM.from_pretrained(tmp_path / name).eval()
        with torch.no_grad():
            torch.testing.assert_close(loaded(idx % 90).logits, exported(idx % 90)[0], atol=1e-4, rtol=1e-4)


def test_encoder_export_with_a_changed_head_is_not_read_as_pass_through(tmp_path):
    export_hf(random_model(**CONFIGS["encoder"]), tmp_path)
    path = os.path.join(tmp_path, "model.safetensors")
    from safetensors.torch import load_file
    tensors = load_file(path)
    tensors["cls.predictions.transform.dense.weight"] *= 1.01  # as finetuning in transformers would
    save_file(tensors, path)
    with pytest.raises(CheckpointError, match="says mlm_transform=false but cls.predictions.transform.dense.weight is not "
                                              "the pass-through layer"):
        read_hf_folder(str(tmp_path))


# -----------------------------------------------------------------------------
# grouped-query attention through the KV cache

def test_gqa_kv_cache_greedy_matches_no_cache():
    model = random_model(**CONFIGS["llama_gqa"])
    caches = model.new_caches(1, 8)
    assert caches[0].k.shape == (1, 2, 8, 8)  # the cache holds the 2 kv heads, not the 4 query heads
    idx = torch.randint(0, 90, (3, 5), generator=torch.Generator().manual_seed(3))
    with_cache = model.generate(idx, 40, temperature=0.0, use_kv_cache=True)  # prefill, then one token at a time
    without = model.generate(idx, 40, temperature=0.0, use_kv_cache=False)   # the whole sequence every step
    assert torch.equal(with_cache, without)


# -----------------------------------------------------------------------------
# GPT-2 by name: download from a local server standing in for the hub

class Hub(http.server.ThreadingHTTPServer):
    """Serves {path: bytes} with Range support; the first full GET of model.safetensors is cut off
    halfway, as a dropped connection would."""

    def __init__(self, files):
        self.files, self.requests, self.cut_first = files, [], True
        super().__init__(("127.0.0.1", 0), HubHandler)


class HubHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        hub = self.server
        hub.requests.append((self.path, self.headers.get("Range")))
        body = hub.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        start = int(self.headers["Range"].split("=")[1].rstrip("-")) if self.headers.get("Range") else 0
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        self.send_header("Content-Length", str(len(body) - start))
        self.send_header("ETag", '"%s"' % hashlib.sha1(body).hexdigest())  # what lets a client resume safely
        self.end_headers()
        if self.path.endswith(".safetensors") and not start and hub.cut_first:
            hub.cut_first = False
            self.wfile.write(body[:len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body[start:])

    def log_message(self, *args):
        pass


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """A GPT-2 "gpt2" folder served at http://127.0.0.1:<port>/gpt2/resolve/main/, with the cache in tmp_path."""
    tensors = gpt2_tensors(n_layer=1, n_embd=16, vocab=50257, prefix="")
    write_gpt2_folder(tmp_path / "src", tensors, n_layer=1, n_embd=16, vocab=50257)
    files = {f"/gpt2/resolve/main/{name}": (tmp_path / "src" / name).read_bytes() for name in ("config.json", "model.safetensors")}
    server = Hub(files)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
    monkeypatch.setenv("NANOROOTS_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("NANOROOTS_MIRROR", raising=False)
    monkeypatch.setattr(hf_module, "HUB_SHA256", {f"gpt2/{name}": hashlib.sha256(body).hexdigest()
                                                     for name, body in (("config.json", files["/gpt2/resolve/main/config.json"]),
                                                                        ("model.safetensors", files["/gpt2/resolve/main/model.safetensors"]))})
    yield server, tensors
    server.shutdown()
    server.server_close()


def test_gpt2_by_name_downloads_resumes_and_caches(hub, tmp_path):
    server, tensors = hub
    model = from_pretrained("gpt2")
    weights = tmp_path / "cache" / "hf" / "gpt2" / "model.safetensors"
    assert weights.is_file() and not os.path.exists(str(weights) + ".part")
    ranges = [r for path, r in server.requests if path.endswith(".safetensors")]
    size = len(server.files["/gpt2/resolve/main/model.safetensors"])
    assert len(ranges) == 2 and ranges[0] is None  # one full request, cut off halfway, then one more
    resumed_at = int(ranges[1].removeprefix("bytes=").rstrip("-"))
    assert 0 < resumed_at <= size // 2  # it asked only for what the .part file lacked
    assert torch.equal(model.transformer.h[0].attn.c_attn.weight.detach(), tensors["h.0.attn.c_attn.weight"].t())
    n = len(server.requests)
    from_pretrained("gpt2")
    assert len(server.requests) == n  # served from the cache


def test_gpt2_download_with_wrong_sha256_is_rejected(hub, tmp_path, monkeypatch):
    monkeypatch.setitem(hf_module.HUB_SHA256, "gpt2/model.safetensors", "0" * 64)
    with pytest.raises(CheckpointError, match="sha256 of .*model.safetensors is [0-9a-f]{64}, expected 0{64}"):
        from_pretrained("gpt2")
    folder = tmp_path / "cache" / "hf" / "gpt2"
    assert not (folder / "model.safetensors").exists() and not (folder / "model.safetensors.part").exists()


def test_gpt2_by_name_reads_a_mirror(hub, tmp_path, monkeypatch):
    server, tensors = hub
    mirror = tmp_path / "mirror" / "127.0.0.1" / "gpt2" / "resolve" / "main"  # <mirror>/<host>/<path>
    mirror.mkdir(parents=True)
    for path, body in server.files.items():
        (mirror / os.path.basename(path)).write_bytes(body)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1")
    monkeypatch.setenv("NANOROOTS_MIRROR", str(tmp_path / "mirror"))
    ckpt = load_pretrained("gpt2")
    assert server.requests == [] and ckpt["tokenizer"] == {"kind": "gpt2"}
    assert torch.equal(ckpt["model"]["transformer.wpe.weight"], tensors["wpe.weight"])


# -----------------------------------------------------------------------------
# end to end: finetune from a Hugging Face GPT-2 folder, sample, export, load the export

def test_finetune_from_hf_folder_then_export(tmp_path, capsys, monkeypatch):
    with open(os.path.join(ROOT, "data", "tinyshakespeare", "input.txt"), encoding="utf-8") as f:
        text = f.read(20000)
    (tmp_path / "text.txt").write_text(text)
    prepare.main([f"--input={tmp_path / 'text.txt'}", "--name=tiny", "--tokenizer=gpt2", f"--data_root={tmp_path}"])
    hf_dir = write_gpt2_folder(tmp_path / "gpt2-tiny", gpt2_tensors(n_layer=1, n_embd=16, vocab=50257, prefix=""),
                               n_layer=1, n_embd=16, vocab=50257)
    out = tmp_path / "out"
    train.main([f"--dataset={tmp_path / 'tiny'}", f"--init_from={hf_dir}", f"--out_dir={out}", "--block_size=32",
                "--batch_size=4", "--gradient_accumulation_steps=1", "--max_iters=4", "--eval_interval=4", "--eval_iters=2",
                "--warmup_iters=0", "--learning_rate=1e-3", "--sample_tokens=5", "--device=cpu", "--dtype=float32"])
    ckpt = torch.load(out / "ckpt.pt", weights_only=True)
    assert ckpt["iter_num"] == 4 and ckpt["tokenizer"] == {"kind": "gpt2"}
    assert ckpt["model_args"]["n_embd"] == 16 and ckpt["model_args"]["block_size"] == 32  # the folder's shape, cropped
    tuned = model_from_checkpoint(ckpt).eval()
    start = from_pretrained(hf_dir)
    assert not torch.equal(tuned.transformer.h[0].attn.c_attn.weight, start.transformer.h[0].attn.c_attn.weight)

    capsys.readouterr()
    sample.main([f"--init_from={hf_dir}", "--start=ROMEO:", "--num_samples=1", "--max_new_tokens=4", "--device=cpu"])
    printed = capsys.readouterr().out
    assert re.search(r"(^|\n)ROMEO:\S", printed)  # the prompt, then what the model wrote after it

    export = tmp_path / "export"  # the command a user runs: python hf.py --init_from=... --export_hf=...
    hf_module.main([f"--init_from={out}", f"--export_hf={export}"])
    assert f"wrote {export} (gpt2 layout)" in capsys.readouterr().out
    config = json.loads((export / "config.json").read_text())
    assert config["model_type"] == "gpt2" and config["vocab_size"] == 50261 and config["eos_token_id"] == 50256
    assert from_pretrained(str(export)).config.block_size == 32
    if transformers is not None:
        loaded = transformers.GPT2LMHeadModel.from_pretrained(export).eval()
        idx = torch.randint(0, 50261, (1, 16))
        with torch.no_grad():
            torch.testing.assert_close(loaded(idx).logits, tuned(idx)[0], atol=1e-4, rtol=1e-4)


def test_llama_import_stacks_qkv_and_gate_up(tmp_path):
    """LLaMA's separate projections become our fused ones: c_attn = [q; k; v], SwiGLU c_fc = [gate; up]."""
    C, hidden, kv = 32, 48, 16  # 4 query heads and 2 kv heads of size 8
    g = torch.Generator().manual_seed(0)
    shapes = {"model.embed_tokens.weight": (96, C), "model.norm.weight": (C,), "lm_head.weight": (96, C)}
    for i in range(2):
        p = f"model.layers.{i}."
        shapes |= {p + "input_layernorm.weight": (C,), p + "post_attention_layernorm.weight": (C,),
                   p + "self_attn.q_proj.weight": (C, C), p + "self_attn.k_proj.weight": (kv, C),
                   p + "self_attn.v_proj.weight": (kv, C), p + "self_attn.o_proj.weight": (C, C),
                   p + "mlp.gate_proj.weight": (hidden, C), p + "mlp.up_proj.weight": (hidden, C),
                   p + "mlp.down_proj.weight": (C, hidden)}
    tensors = {name: torch.randn(shape, generator=g) for name, shape in shapes.items()}
    os.makedirs(tmp_path, exist_ok=True)
    with open(tmp_path / "config.json", "w") as f:
        json.dump({"model_type": "llama", "vocab_size": 96, "hidden_size": C, "intermediate_size": hidden,
                   "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                   "max_position_embeddings": 64, "rope_theta": 500.0, "rms_norm_eps": 1e-6}, f)
    save_file(tensors, tmp_path / "model.safetensors")
    ckpt = read_hf_folder(str(tmp_path))
    state, p = ckpt["model"], "model.layers.1."
    assert torch.equal(state["transformer.h.1.attn.c_attn.weight"], torch.cat(
        [tensors[p + "self_attn.q_proj.weight"], tensors[p + "self_attn.k_proj.weight"], tensors[p + "self_attn.v_proj.weight"]]))
    assert torch.equal(state["transformer.h.1.mlp.c_fc.weight"],
                       torch.cat([tensors[p + "mlp.gate_proj.weight"], tensors[p + "mlp.up_proj.weight"]]))
    assert torch.equal(state["transformer.h.1.ln_2.weight"], tensors[p + "post_attention_layernorm.weight"])
    assert torch.equal(state["lm_head.weight"][:96], tensors["lm_head.weight"])
    assert len(state) == 3 + 2 * 6  # 21 HF tensors, each used once (an unused one is an error), make 15 of ours
    args = ckpt["model_args"]
    assert (args["pos"], args["norm"], args["mlp"], args["n_kv_head"], args["mlp_hidden"], args["rope_theta"], args["norm_eps"],
            args["bias"], args["tie_embeddings"]) == ("rope", "rmsnorm", "swiglu", 2, 48, 500.0, 1e-6, False, False)


def test_interop_configs_are_valid_for_train():
    llama = configure(train.DEFAULTS, [os.path.join(ROOT, "config", "llama_shakespeare_char.py")], verbose=False)
    gpt2 = configure(train.DEFAULTS, [os.path.join(ROOT, "config", "shakespeare_char.py")], verbose=False)
    differ = {k for k in vars(llama) if getattr(llama, k) != getattr(gpt2, k)}
    # the architecture, and the step count that fits the same 120 s budget
    assert differ == {"out_dir", "n_kv_head", "pos", "norm", "mlp", "tie_embeddings", "max_iters", "lr_decay_iters"}
    c = GPTConfig.from_dict({k: getattr(llama, k) for k in train.MODEL_KEYS} | {"vocab_size": 70})
    assert (c.hidden_size, c.n_kv_head, hf_layout(c)) == (384, 2, "llama")
    finetune = configure(train.DEFAULTS, [os.path.join(ROOT, "config", "shakespeare_from_gpt2.py")], verbose=False)
    assert (finetune.init_from, finetune.dataset, finetune.device) == ("gpt2", "shakespeare", "auto")
