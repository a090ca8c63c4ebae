# The default job: a small character-level GPT on tiny Shakespeare, tuned for a 2-core CPU and a
# ~120 s budget. `python train.py` applies this file when no config file is given.
out_dir = "out-shakespeare-char"
dataset = "shakespeare_char"
eval_interval = 250
eval_iters = 20
log_interval = 25
always_save_checkpoint = False

batch_size = 32
block_size = 128
gradient_accumulation_steps = 1

n_layer = 4
n_head = 4
n_embd = 128
dropout = 0.0
bias = False

learning_rate = 2e-3
max_iters = 5000
lr_decay_iters = 5000
min_lr = 2e-4
beta2 = 0.99
warmup_iters = 100
weight_decay = 0.1

device = "cpu"
dtype = "float32"
compile = False
max_time = 120.0
