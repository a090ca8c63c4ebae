# config/shakespeare_char.py with LLaMA's architecture (Touvron et al. 2023): rotary position
# embeddings, RMSNorm, a SwiGLU MLP, grouped-query attention (4 query heads share 2 key/value heads),
# no biases and an untied output layer. Everything else -- data, size, optimizer, the ~120 s CPU
# budget -- is the default's, so the two runs compare the architectures. A LLaMA step costs ~18%
# more on a CPU, so 1,300 steps fit in the 120 s where the default fits 1,500.
#   python train.py config/llama_shakespeare_char.py
from config.shakespeare_char import *  # noqa: F403 (the default job, then the differences)

out_dir = "out-llama-shakespeare-char"
n_kv_head = 2             # grouped-query attention (Ainslie et al. 2023)
pos = "rope"              # rotary embeddings (Su et al. 2021), rope_theta = 10000
norm = "rmsnorm"          # Zhang & Sennrich 2019
mlp = "swiglu"            # Shazeer 2020; hidden size 8/3 * n_embd rounded up to a multiple of 64 = 384
tie_embeddings = False
max_iters = 1300
lr_decay_iters = 1300
