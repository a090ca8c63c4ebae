# A small BERT-style encoder (bidirectional attention, masked-LM objective) on tiny Shakespeare's
# characters, with the default GPT's size, data and ~120 s CPU budget, so the two compare:
#   python train.py config/mlm_shakespeare_char.py
#   python sample.py --out_dir=out-mlm-shakespeare-char --start="to be or not to [MASK]"
#   python train.py config/mlm_shakespeare_char.py --eval_only=True --init_from=resume --mlm_baselines=out-shakespeare-char \
#       --mask_prob=0.15 --eval_iters=50
# The last command scores the encoder's masked-token accuracy next to two baselines at the same val
# positions (masked at BERT's 15%): the most frequent character, and the default GPT reading only
# the left context.
out_dir = "out-mlm-shakespeare-char"
dataset = "shakespeare_char"
objective = "mlm"
mask_prob = 0.4           # Wettig et al. 2023 ("Should You Mask 15% in MLM?"): 40% trains faster; of those,
                          # 80% [MASK], 10% a random character, 10% unchanged (BERT)
eval_interval = 250
eval_iters = 20
log_interval = 25
always_save_checkpoint = False

batch_size = 32
block_size = 64           # at most the GPT's, so that the GPT can be the left-context baseline
gradient_accumulation_steps = 1

n_layer = 4
n_head = 4
n_embd = 128
dropout = 0.0
bias = False

learning_rate = 6e-3
max_iters = 1500
lr_decay_iters = 1500
min_lr = 6e-4
beta2 = 0.99
warmup_iters = 100
weight_decay = 0.1

device = "cpu"
dtype = "float32"
compile = False
max_time = 120.0
