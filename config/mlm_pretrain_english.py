# A small BERT-style encoder pretrained with masked-LM on all the English training text in ../shared/data
# (prepare.py's `english` recipe: SST-2 and TREC training sentences without labels, C4, Wikipedia, Alpaca,
# the curated crawl; 1.29M tokens of a 2,048-token BPE), the starting point of config/finetune_english.py.
# Under 20 CPU-minutes on one thread (README, "Transfer learning").
#   python prepare.py crawl_en && python prepare.py english && python train.py config/mlm_pretrain_english.py
#   python train.py config/mlm_pretrain_english.py --objective=clm --pos=learned --out_dir=out-clm-english  # the GPT
# pos = "rope" is the fix for config/mlm_pretrain_reviews.py's 13% masked-token accuracy: with learned
# absolute positions (N(0, 0.02) at init) an encoder's attention cannot find a masked token's neighbours,
# so for its first 600+ steps it predicts only the most frequent tokens (',', 'the', '.') at [MASK], a
# bag-of-words plateau; rotary positions give attention relative offsets from step 0 (README).
from config.mlm_pretrain_reviews import *  # noqa: F403 (the same encoder and optimizer; what differs follows)

out_dir = "out-mlm-english"
dataset = "english"
eval_interval = 250
eval_iters = 10
dropout = 0.0             # 1,500 steps are ~4.7 passes over 1.29M tokens: underfitting, not overfitting
max_iters = 1500          # 13.7 CPU-minutes (14.7 for the GPT) on one thread, under load: val masked-token acc 26.5%
lr_decay_iters = 1500
