# A small T5-style encoder-decoder pretrained by span corruption (Raffel et al. 2020) on tiny
# Shakespeare's characters, with the default GPT's data, optimizer and budget, so the three families compare:
#   python train.py config/span_shakespeare_char.py
#   python sample.py --out_dir=out-span-shakespeare-char --start="To be, or not to be, <extra_id_0> is the question"
# The encoder reads a 64-character input in which 15% of a ~70-character window was dropped in spans of
# mean length 3, each span replaced by a sentinel; the decoder writes the sentinels with their spans.
from config.shakespeare_char import *  # noqa: F403 (the default job, then the differences)

out_dir = "out-span-shakespeare-char"
objective = "span"
mask_prob = 0.15          # T5: 15% of the tokens, in spans of mean length 3
mean_span = 3.0
n_decoder_layer = 4       # as deep as the encoder (n_layer=4), as T5; each token passes through one stack
