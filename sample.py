"""
Use a trained model: generate text from a GPT or an encoder-decoder, or fill [MASK] tokens with a
masked-LM encoder.

    python sample.py --out_dir=out-shakespeare-char --start="ROMEO:" --num_samples=3
    python sample.py --out_dir=out-mlm-shakespeare-char --start="to be or not to [MASK]"
    python sample.py --start=FILE:prompt.txt --top_p=0.9 --temperature=0.7
    python sample.py --out_dir=out-sft-alpaca --template=alpaca --start="Name three primary colors."
    python sample.py --out_dir=out-sft-alpaca --chat=True        # one instruction per line on stdin
    python sample.py --init_from=gpt2 --start="The meaning of life is"   # GPT-2 weights from the hub
    python sample.py --init_from=path/to/hf-folder                         # a Hugging Face GPT-2/LLaMA folder
    python sample.py --start="Write to me" --safe=True   # no flagged words, personal data redacted (safety.py)
    python sample.py --out_dir=out-seq2seq-alpaca --start="Name three primary colors."   # encoder-decoder: the output
    python sample.py --out_dir=out-span-shakespeare-char --start="To be, or not to be, <extra_id_0> the question"

Samples are generated together as one batch through the KV cache; the first is streamed to the
terminal as it is produced. An encoder-decoder reads the prompt as its input and writes a separate
output, which ends at <|endoftext|>; --attention then draws its cross-attention (output over input).
"""

import codecs
import json
import math
import sys

import torch

from configurator import ConfigError, configure, file_or_text, script_main
from hf import load_pretrained
from model import checkpoint_tokenizer, model_from_checkpoint
from safety import SafeGeneration
from tokenizer import BERT_SPECIALS, EOT, TEMPLATES, format_prompt
from spans import restore_spans
from train import sample_start, setup_system, show_fill_mask

DEFAULTS = dict(
    init_from="resume",         # resume: the checkpoint in out_dir | gpt2[-medium|-large|-xl] | a .pt file or Hugging Face folder
    out_dir="out-shakespeare-char",  # the checkpoint to load with init_from=resume (out_dir/ckpt.pt, or an HF folder)
    start="\n",                 # the prompt, or FILE:path to read it from a file
    num_samples=3,              # generated together as one batch
    max_new_tokens=500,
    temperature=0.8,            # 0 = greedy; <1 sharper, >1 more random
    top_k=200,                  # keep the k most likely tokens (0 = all)
    top_p=1.0,                  # nucleus sampling: keep the smallest set with this much probability (1 = off)
    stop="",                    # a token that ends a sample, e.g. <|endoftext|> (empty = none)
    seed=1337,
    use_kv_cache=True,
    fill_order="left_to_right",  # masked LM: fill several [MASK]s left_to_right or most_confident first
    template="",                # alpaca: --start is an instruction, put in the prompt template finetune.py trained with
    chat=False,                 # read instructions from stdin and answer each (template alpaca unless given)
    safe=False,                 # never generate ROOTS' flagged words, redact personal data (off: research use)
    safe_phone=False,           # with safe: redact phone numbers too (off by default, as in prepare.py)
    attention="",               # write the prompt's attention map to this PNG instead of sampling
    attention_json="",          # ... and/or its raw attention probabilities to this JSON file
    attention_layer=-1,         # which layer (-1 = the last)
    attention_head=-1,          # which head (-1 = all heads in a grid)
    device="auto",
    dtype="auto",
)


def load_for_inference(source, device):
    """Model and tokenizer from a checkpoint, Hugging Face folder or GPT-2 name, ready for inference."""
    checkpoint = load_pretrained(source, map_location="cpu")
    tok = checkpoint_tokenizer(checkpoint, source)
    return model_from_checkpoint(checkpoint, device).eval(), tok, checkpoint


def check_options(cfg):
    """Sampling settings that cannot work, as one line before the model is loaded."""
    problems = []
    if cfg.num_samples < 1 or cfg.max_new_tokens < 0:
        problems.append(f"num_samples={cfg.num_samples} must be at least 1 and max_new_tokens={cfg.max_new_tokens} at least 0")
    if cfg.temperature < 0:
        problems.append(f"temperature={cfg.temperature} must be 0 (greedy) or more")
    if cfg.top_k < 0:
        problems.append(f"top_k={cfg.top_k} must be 0 (all tokens) or more")
    if not 0 <= cfg.top_p <= 1:
        problems.append(f"top_p={cfg.top_p} must be between 0 and 1 (1 = off; 0 keeps only the most likely token)")
    if problems:
        raise ConfigError("; ".join(problems))


def prompt_ids(tok, prompt, causal):
    """The prompt's token ids. Special tokens may be written out ([MASK] for an encoder); an empty prompt
    starts a new document (<|endoftext|>), and the default new line does so for a character vocabulary
    without one. A causal model never saw BERT's tokens, so they are refused in its prompt."""
    if prompt == DEFAULTS["start"]:
        return sample_start(tok) if causal else []  # an encoder is told to put a [MASK] in its prompt
    if not prompt:
        return [tok.special_ids[EOT]]
    ids = tok.encode(prompt, allow_special=True)
    found = [s for s in BERT_SPECIALS if tok.special_ids[s] in ids]
    if causal and found:
        raise ConfigError(f"the prompt contains {found[0]}, which only a masked-LM encoder reads; this model is causal: "
                          f"it continues the prompt (remove {found[0]})")
    return ids


def crop_prompt(ids, block_size):
    if len(ids) > block_size:
        print(f"note: the prompt has {len(ids)} tokens, more than the context of {block_size}; "
              f"keeping its last {block_size}", file=sys.stderr)
        return ids[-block_size:]
    return ids


def read_instructions():
    """Lines typed on stdin until end of input (Ctrl-D)."""
    while True:
        try:
            line = input("\ninstruction> ")
        except EOFError:
            return
        if line.strip():
            yield line


def generate_samples(model, tok, prompt_ids, num_samples, max_new_tokens, temperature, top_k, top_p,
                     stop_token, use_kv_cache, generator, autocast, stream=None, safe=None):
    """Generate num_samples continuations of prompt_ids as one batch; stream sample 0's text to
    `stream` as it is produced (through safe's redaction, with safe's filter on the logits: a
    safety.SafeGeneration). Returns the generated token lists, cut at stop_token."""
    device = model.lm_head.weight.device
    idx = torch.tensor([prompt_ids] * num_samples, dtype=torch.long, device=device)
    # an encoder-decoder reads the prompt as its input and writes its output after <|endoftext|> (its start token)
    seq2seq = {}
    if model.config.n_decoder_layer:
        seq2seq["decoder_idx"] = torch.full((num_samples, 1), tok.special_ids[EOT], device=device)
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")  # a character may span tokens
    rows, finished = [[] for _ in range(num_samples)], [False] * num_samples
    with autocast:
        for nxt in model.generate_tokens(idx, max_new_tokens, temperature=temperature, top_k=top_k or None,
                                         top_p=top_p, stop_token=stop_token, use_kv_cache=use_kv_cache,
                                         generator=generator, suppress_tokens=[tok.special_ids[s] for s in BERT_SPECIALS],
                                         logits_processor=safe and safe.filter, **seq2seq):
            for i, t in enumerate(nxt.tolist()):
                if finished[i] or t == stop_token:
                    finished[i] = True
                    continue
                rows[i].append(t)
                if i == 0 and stream:
                    text = decoder.decode(tok.decode_bytes([t]))
                    stream.write(safe.stream(text) if safe else text)
                    stream.flush()
    if safe and stream:
        stream.write(safe.stream(decoder.decode(b"", final=True), final=True))
    return rows


# -----------------------------------------------------------------------------
# attention maps

def token_labels(tok, ids):
    """One readable label per token: whitespace made visible, specials kept as they are."""
    specials = {i: s for s, i in tok.special_ids.items()}
    labels = []
    for i in ids:
        text = specials.get(i) or tok.decode_bytes([i]).decode("utf-8", errors="replace")
        labels.append(text.replace(" ", "␣").replace("\n", "\\n").replace("\t", "\\t") or "∅")
    return labels


def font_covering(text):
    """Path of an installed font that has a glyph for every character of text, or None."""
    from matplotlib import font_manager
    from matplotlib.ft2font import FT2Font
    needed = {ord(c) for c in text}
    cjk_first = sorted(font_manager.fontManager.ttflist,
                       key=lambda f: not any(k in f.name for k in ("CJK", "Hei", "Han", "Ming", "Song", "Kai", "Fallback")))
    for font in cjk_first:
        try:
            charmap = FT2Font(font.fname).get_charmap()
        except (RuntimeError, OSError):  # an unreadable font file is simply not a candidate
            continue
        if needed <= charmap.keys():
            return font.fname
    return None


def plot_attention(maps, labels, path, layer, heads, title, row_labels=None):
    """A heatmap per head: row i is how token i spreads its attention over the tokens (columns); with
    row_labels (cross-attention), row i is how the i-th output token spread it over the input tokens."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import PowerNorm
    from matplotlib.font_manager import FontProperties
    font = None
    if any(ord(c) > 0x2E7F for label in labels for c in label):  # CJK and beyond: DejaVu lacks them
        found = font_covering("".join(labels))
        if found:
            font = FontProperties(fname=found)
        else:
            print("note: no installed font has glyphs for these characters (install e.g. fonts-noto-cjk); "
                  "labels show code points instead", file=sys.stderr)
            labels = ["".join(c if ord(c) <= 0x2E7F else f"U+{ord(c):04X}" for c in label) for label in labels]
    cross, row_labels = row_labels is not None, labels if row_labels is None else row_labels
    cols = math.ceil(math.sqrt(len(heads)))
    rows = math.ceil(len(heads) / cols)
    width, height = 2.2 + 0.16 * len(labels), 2.2 + 0.16 * len(row_labels)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * width + 1, rows * height), squeeze=False, layout="constrained")
    ticks = range(0, len(labels), max(1, len(labels) // 48))  # at most ~48 labels per axis
    row_ticks = range(0, len(row_labels), max(1, len(row_labels) // 48))
    for ax in axes.flat[len(heads):]:
        ax.axis("off")
    for ax, h in zip(axes.flat, heads):
        im = ax.imshow(maps[h], cmap="viridis", norm=PowerNorm(gamma=0.5, vmin=0, vmax=1))  # sqrt: weak links stay visible
        ax.set_title(f"layer {layer} head {h}", fontsize=9)
        ax.set_xticks(list(ticks), [labels[i] for i in ticks], rotation=90, fontsize=7, fontproperties=font)
        ax.set_yticks(list(row_ticks), [row_labels[i] for i in row_ticks], fontsize=7, fontproperties=font)
        ax.set_xlabel("input token (key)" if cross else "attended token (key)", fontsize=8)
        ax.set_ylabel("output token written (query)" if cross else "token (query)", fontsize=8)
    fig.colorbar(im, ax=axes, shrink=0.6, label="attention probability (square-root colour scale)")
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


@torch.no_grad()
def write_attention(model, tok, ids, cfg, device):
    """Run the prompt once, collecting attention probabilities; write the PNG and/or JSON asked for. An
    encoder-decoder first writes its output (greedy), then shows its decoder's cross-attention over the input."""
    x = torch.tensor([ids], dtype=torch.long, device=device)
    cross, rows = bool(model.config.n_decoder_layer), ids
    if cross:  # row i: the decoder reading output token i - 1, as it wrote token i
        eot = tok.special_ids[EOT]
        out = model.generate(x, cfg.max_new_tokens, decoder_idx=torch.full((1, 1), eot, device=device), temperature=0,
                             stop_token=eot, suppress_tokens=[tok.special_ids[s] for s in BERT_SPECIALS])
        maps, rows = model.cross_attention_maps(x, out[:, :-1]), out[0, 1:].tolist()
    else:
        maps = model.attention_maps(x)
    n_layer, n_head = len(maps), maps[0].size(1)
    layer = cfg.attention_layer % n_layer if -n_layer <= cfg.attention_layer < n_layer else None
    if layer is None or not -1 <= cfg.attention_head < n_head:
        raise ConfigError(f"attention_layer must be in [-{n_layer}, {n_layer - 1}] and attention_head in [-1, {n_head - 1}]")
    heads = list(range(n_head)) if cfg.attention_head == -1 else [cfg.attention_head]
    probs = maps[layer][0].float().cpu()  # (nh, T, T), or (nh, T_out, T) for cross-attention
    labels = token_labels(tok, ids)
    if cfg.attention_json:
        with open(cfg.attention_json, "w", encoding="utf-8") as f:
            json.dump({"tokens": labels, "token_ids": ids, "layer": layer, "heads": heads, "causal": model.config.causal,
                       **({"cross": True, "output_tokens": token_labels(tok, rows), "output_ids": rows} if cross else {}),
                       "weights": [probs[h].tolist() for h in heads]}, f, ensure_ascii=False)
        print(f"wrote {cfg.attention_json}")
    if cfg.attention:
        kind = "cross" if cross else "causal" if model.config.causal else "bidirectional"
        plot_attention(probs.numpy(), labels, cfg.attention, layer, heads, f"{cfg.out_dir}: {kind} attention, {len(ids)} tokens"
                       + (f" in, {len(rows)} out" if cross else ""), token_labels(tok, rows) if cross else None)
        print(f"wrote {cfg.attention}")


def stop_token_id(tok, stop):
    """The token id that ends a sample, or None."""
    if not stop:
        return None
    stop_ids = tok.encode(stop, allow_special=True)
    if len(stop_ids) != 1:
        raise ConfigError(f"stop={stop!r} is {len(stop_ids)} tokens; give a single token such as {EOT}")
    return stop_ids[0]


def safety_for(cfg, tok, text, stop_token):
    """With --safe=True, the guard of one generation, whose word list follows the language of `text`."""
    return SafeGeneration(tok, text, cfg.max_new_tokens, stop_token, cfg.safe_phone) if cfg.safe else None


def generate_text(model, tok, prompt, ids, cfg, system):
    """Print num_samples continuations of the prompt (the first streamed), or, with a template, answer the
    instruction (with chat, every instruction typed on stdin) as finetune.py's sft taught the model."""
    stop_token = stop_token_id(tok, cfg.stop)
    generator = torch.Generator(device=system.device).manual_seed(cfg.seed)
    options = (cfg.max_new_tokens, cfg.temperature, cfg.top_k, cfg.top_p)
    user_text = prompt  # --safe takes the word list of its language, not of the template's
    if cfg.template or cfg.chat:  # instruction-tuned: the sft template; responses end at <|endoftext|>
        template = cfg.template or "alpaca"
        if template not in TEMPLATES:
            raise ConfigError(f"template={template!r} is not one of {', '.join(TEMPLATES)}")
        stop_token = tok.special_ids[EOT] if stop_token is None else stop_token
        if cfg.chat:
            for instruction in read_instructions():
                ids = crop_prompt(tok.encode(format_prompt(instruction, template=template)), model.config.block_size)
                safe = safety_for(cfg, tok, instruction, stop_token)
                generate_samples(model, tok, ids, 1, *options, stop_token, cfg.use_kv_cache, generator, system.autocast,
                                 stream=sys.stdout, safe=safe)
                if safe:
                    print("\n" + safe.summary(), file=sys.stderr)
            return
        prompt = format_prompt(prompt, template=template)
        ids = crop_prompt(tok.encode(prompt), model.config.block_size)
    safe = safety_for(cfg, tok, user_text, stop_token)
    print(safe.stream(prompt) if safe else prompt, end="", flush=True)
    samples = generate_samples(model, tok, ids, cfg.num_samples, *options, stop_token, cfg.use_kv_cache, generator,
                               system.autocast, stream=sys.stdout, safe=safe)
    print("\n" + "-" * 40)
    for row in samples[1:]:
        text = prompt + tok.decode(row)
        print((safe.redact(text) if safe else text) + "\n" + "-" * 40)
    if safe:
        print(safe.summary(), file=sys.stderr)


def generate_outputs(model, tok, ids, cfg, system):
    """An encoder-decoder's outputs for the input ids (the first streamed), or with chat one for every line
    typed on stdin; each ends at stop (default <|endoftext|>, as training ends them). Where the input has
    sentinels (a span-corruption model), also the input with the spans it wrote filled in."""
    if cfg.template:
        raise ConfigError("an encoder-decoder reads its input as it is (task=seq2seq uses no prompt template): drop --template")
    stop_token = stop_token_id(tok, cfg.stop)
    stop_token = tok.special_ids[EOT] if stop_token is None else stop_token
    generator = torch.Generator(device=system.device).manual_seed(cfg.seed)
    options = (cfg.max_new_tokens, cfg.temperature, cfg.top_k, cfg.top_p, stop_token, cfg.use_kv_cache, generator,
               system.autocast)
    sentinels = set(tok.sentinel_ids.values())
    inputs = (crop_prompt(tok.encode(line), model.config.block_size) for line in read_instructions()) if cfg.chat else [ids]
    for ids in inputs:
        safe = safety_for(cfg, tok, tok.decode(ids), stop_token)  # the output starts a text of its own
        show = safe.redact if safe else str
        rows = generate_samples(model, tok, ids, 1 if cfg.chat else cfg.num_samples, *options, stream=sys.stdout,
                                safe=safe)
        print("\n" + "-" * 40)
        for row in rows[1:]:
            print(show(tok.decode(row)) + "\n" + "-" * 40)
        for row in rows if sentinels & set(ids) else []:
            print("filled: " + show(tok.decode(restore_spans(ids, row, sentinels))))
        if safe:
            print(safe.summary(), file=sys.stderr)


@script_main
def main(argv=None):
    cfg = configure(DEFAULTS, argv, verbose=False)  # stdout carries only the samples
    check_options(cfg)
    system = setup_system(cfg)  # the same device and precision choices as training
    source = cfg.out_dir if cfg.init_from == "resume" else cfg.init_from
    model, tok, _ = load_for_inference(source, system.device)
    prompt = file_or_text(cfg.start, "prompt")
    ids = crop_prompt(prompt_ids(tok, prompt, model.config.causal), model.config.block_size)
    if cfg.attention or cfg.attention_json:
        with system.autocast:
            return write_attention(model, tok, ids, cfg, system.device)
    if model.config.n_decoder_layer:
        return generate_outputs(model, tok, ids, cfg, system)
    if model.config.causal:
        return generate_text(model, tok, prompt, ids, cfg, system)
    if tok.special_ids["[MASK]"] not in ids:
        raise ConfigError(f"{source} is a masked-LM encoder: put [MASK] where a token should be predicted, "
                          f'e.g. --start="to be or not to [MASK]"')
    top_k = cfg.top_k if 0 < cfg.top_k <= 20 else 5
    with system.autocast:
        show_fill_mask(tok, *model.fill_mask(ids, tok.special_ids["[MASK]"], tok.special_ids.values(), top_k, cfg.fill_order))


if __name__ == "__main__":
    main()
