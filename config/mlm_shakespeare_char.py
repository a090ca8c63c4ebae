# A small BERT-style encoder (bidirectional attention, masked-LM objective) on tiny Shakespeare's
# characters, with the default GPT's size, data and ~120 s CPU budget, so the two compare:
#   python train.py config/mlm_shakespeare_char.py
#   python sample.py --out_dir=out-mlm-shakespeare-char --start="to be or not to [MASK]"
#   python train.py config/mlm_shakespeare_char.py --eval_only=True --init_from=resume --mlm_baselines=out-shakespeare-char \
#       --mask_prob=0.15 --eval_iters=50
# The last command scores the encoder's masked-token accuracy next to two baselines at the same val
# positions (masked at BERT's 15%): the most frequent character, and the default GPT reading only
# the left context.
from config.shakespeare_char import *  # noqa: F403 (the default job, then the differences)

out_dir = "out-mlm-shakespeare-char"
objective = "mlm"
mask_prob = 0.4           # Wettig et al. 2023 ("Should You Mask 15% in MLM?"): 40% trains faster; of those,
                          # 80% [MASK], 10% a random character, 10% unchanged (BERT)
# block_size stays 64, at most the GPT's, so that the GPT can be the left-context baseline
