"""
T5's span corruption (Raffel et al. 2020, sec. 3.1.4), the batches of train.py's objective='span': a window
of text loses 15% of its tokens in spans of mean length 3; the encoder reads the window with a sentinel
where each span was, and the decoder learns to write the sentinels, each followed by its span.

    span = span_lengths(block_size=64, noise=0.15, mean_span=3.0)   # the fixed sizes of every batch
    src, decoder_in, target = corrupt_spans(windows, span, sentinel_ids, eot, generator)
    restore_spans(src[0].tolist(), target[0, :-1].tolist(), sentinel_ids) == windows[0].tolist()

The sentinels are tokenizer.SENTINELS (T5's <extra_id_N>); their ids follow every other token's.
"""

from types import SimpleNamespace

import torch

from configurator import ConfigError
from tokenizer import SENTINELS


def span_lengths(block_size, noise, mean_span):
    """
    The fixed sizes of span corruption for inputs of at most block_size tokens, chosen as T5 does (the t5
    library's random_spans_helper): the longest raw window whose corrupted input fits. A window of n tokens
    loses round(noise * n) of them in round(dropped / mean_span) spans, each replaced by a sentinel; the
    target is each sentinel and its span, then <|endoftext|>. All batches then have the same shapes.
    """
    def sizes(n):
        dropped = min(max(round(n * noise), 1), n - 1)
        spans = max(1, min(round(dropped / mean_span), dropped, n - dropped))  # no span and no kept stretch is empty
        return SimpleNamespace(window=n, dropped=dropped, spans=spans, input_len=n - dropped + spans,
                               target_len=dropped + spans + 1)
    if mean_span < 1 or not 0 < noise < 1:
        raise ConfigError(f"span corruption needs mean_span >= 1 (got {mean_span}) and 0 < mask_prob < 1 (got {noise})")
    n = block_size
    while sizes(n + 1).input_len <= block_size:
        n += 1
    if sizes(n).spans > len(SENTINELS) or sizes(n).target_len > block_size:
        raise ConfigError(f"span corruption of {n}-token windows makes {sizes(n).spans} spans and {sizes(n).target_len}-token "
                          f"targets, more than the {len(SENTINELS)} sentinels or than block_size; lower block_size or "
                          f"mask_prob, or raise mean_span")
    return sizes(n)


def random_partition(total, parts, generator):
    """total split into `parts` positive lengths, every such split equally likely (parts - 1 distinct cuts)."""
    cuts = torch.randperm(total - 1, generator=generator)[:parts - 1].sort().values + 1
    return torch.cat([torch.tensor([0]), cuts, torch.tensor([total])]).diff().tolist()


def corrupt_spans(x, lengths, sentinel_ids, eot, generator):
    """
    T5's span corruption (Raffel et al. 2020, sec. 3.1.4, Fig. 2) of windows x (B, lengths.window): spans and
    the kept stretches between them of random lengths, a kept stretch first (as the t5 library). The input
    puts sentinel k where span k was; the target is sentinel k and span k's tokens for every k, then
    <|endoftext|>, which also starts the decoder's input (as BART's </s>). Returns (input (B, input_len),
    decoder input (B, target_len) = the target shifted right behind <|endoftext|>, target (B, target_len)).
    """
    inputs, targets = [], []
    for row in x.tolist():
        drop = random_partition(lengths.dropped, lengths.spans, generator)
        keep = random_partition(len(row) - lengths.dropped, lengths.spans, generator)
        src, tgt, i = [], [], 0
        for k, (n_keep, n_drop) in enumerate(zip(keep, drop)):
            src += row[i:i + n_keep] + [sentinel_ids[k]]
            tgt += [sentinel_ids[k]] + row[i + n_keep:i + n_keep + n_drop]
            i += n_keep + n_drop
        inputs.append(src)
        targets.append(tgt + [eot])
    src, tgt = torch.tensor(inputs), torch.tensor(targets)
    return src, torch.cat([torch.full_like(tgt[:, :1], eot), tgt[:, :-1]], dim=1), tgt


def restore_spans(inputs, target, sentinel_ids):
    """The window corrupt_spans started from, as a list of ids: each sentinel of `inputs` replaced by the
    tokens that follow it in `target` (the sentinels and spans, without the final <|endoftext|>)."""
    sentinels, spans, current = set(sentinel_ids), {}, None
    for t in target:
        if t in sentinels:
            current = spans[t] = []
        elif current is not None:
            current.append(t)
    return [u for t in inputs for u in (spans.get(t, [t]) if t in sentinels else [t])]
