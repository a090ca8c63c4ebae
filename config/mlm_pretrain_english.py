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
out_dir = "out-mlm-english"
dataset = "english"
objective = "mlm"
mask_prob = 0.4           # Wettig et al. 2023
pos = "rope"
eval_interval = 250
eval_iters = 10
log_interval = 50
always_save_checkpoint = False

batch_size = 32
block_size = 128          # covers every SST-2 sentence and TREC question with its [CLS] and [SEP]
gradient_accumulation_steps = 1

n_layer = 4
n_head = 4
n_embd = 128
dropout = 0.0             # 1,500 steps are ~4.7 passes over 1.29M tokens: underfitting, not overfitting
bias = False

learning_rate = 2e-3
max_iters = 1500          # 13.7 CPU-minutes (14.7 for the GPT) on one thread, under load: val masked-token acc 26.5%
lr_decay_iters = 1500
warmup_iters = 100
min_lr = 2e-4
beta2 = 0.99
weight_decay = 0.1

device = "cpu"
dtype = "float32"
compile = False
threads = 1
