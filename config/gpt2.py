# GPT-2 124M from scratch, the recipe of nanoGPT's train_gpt2.py and llm.c's GPT-2 (124M) run:
#   python prepare.py c4                                     # ~10B GPT-2 tokens of English C4, streamed shard by shard
#   torchrun --standalone --nproc_per_node=8 train.py config/gpt2.py
# 16 sequences x 1024 tokens x 32 micro-steps = 524,288 tokens per step (~0.5M, GPT-3 paper's batch for
# this size), split over the ranks: with 8 GPUs each does 4 micro-steps. 19,073 steps = 10B tokens,
# the budget llm.c used to match GPT-2 124M.
out_dir = "out-gpt2"
dataset = "c4"
eval_interval = 250
eval_iters = 40
log_interval = 10
always_save_checkpoint = True
keep_last = 3

batch_size = 16
block_size = 1024
gradient_accumulation_steps = 32  # global: divided by the number of processes

n_layer = 12
n_head = 12
n_embd = 768
dropout = 0.0
bias = True

learning_rate = 6e-4
max_iters = 19073
lr_decay_iters = 19073
warmup_iters = 700
min_lr = 6e-5
weight_decay = 0.1
beta1 = 0.9
beta2 = 0.95
grad_clip = 1.0

dtype = "bfloat16"
compile = True
