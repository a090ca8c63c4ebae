# A small character-level GPT on 6,003 Tang poems (traditional script), sized for a 2-core CPU:
# 600 steps of 2,048 characters (about 3 epochs): 2 minutes when the machine is otherwise idle.
# `python prepare.py tang_poems` writes the data (train.py runs it when data/tang_poems is missing);
# each poem is a document: title, author, then one couplet per line.
out_dir = "out-tang-poems-char"
dataset = "tang_poems"
eval_interval = 250
eval_iters = 20
log_interval = 25
always_save_checkpoint = False
sample_tokens = 200

batch_size = 32
block_size = 64    # the median poem is 65 characters with its title and author; the 5,600-way softmax
                   # over every position is most of the cost, so short windows buy more steps
gradient_accumulation_steps = 1

n_layer = 4
n_head = 4
n_embd = 128
dropout = 0.0      # 3 epochs of 443k characters: too little training to overfit
bias = False

learning_rate = 2e-3
max_iters = 600
lr_decay_iters = 600
min_lr = 2e-4
beta2 = 0.99
warmup_iters = 50
weight_decay = 0.1

device = "cpu"
dtype = "float32"
compile = False
max_time = 300.0   # on a busy machine, stop (and print poems) after 5 minutes anyway
