# config/shakespeare_char.py with LLaMA's architecture (Touvron et al. 2023): rotary position
# embeddings, RMSNorm, a SwiGLU MLP, grouped-query attention (4 query heads share 2 key/value heads),
# no biases and an untied output layer. Everything else -- data, size, optimizer, the ~120 s CPU
# budget -- is the same as the GPT-2-style default, so the two runs compare the architectures. A
# LLaMA step costs ~15% more on a CPU, so 1,300 steps fit in the 120 s where the default fits 1,500.
#   python train.py config/llama_shakespeare_char.py
out_dir = "out-llama-shakespeare-char"
dataset = "shakespeare_char"
eval_interval = 250
eval_iters = 20
log_interval = 25
always_save_checkpoint = False

batch_size = 32
block_size = 64
gradient_accumulation_steps = 1

n_layer = 4
n_head = 4
n_kv_head = 2             # grouped-query attention (Ainslie et al. 2023)
n_embd = 128
dropout = 0.0
bias = False
pos = "rope"              # rotary embeddings (Su et al. 2021), rope_theta = 10000
norm = "rmsnorm"          # Zhang & Sennrich 2019
mlp = "swiglu"            # Shazeer 2020; hidden size 8/3 * n_embd rounded up to a multiple of 64 = 384
tie_embeddings = False

learning_rate = 6e-3
max_iters = 1300
lr_decay_iters = 1300
min_lr = 6e-4
beta2 = 0.99
warmup_iters = 100
weight_decay = 0.1

device = "cpu"
dtype = "float32"
compile = False
max_time = 120.0
