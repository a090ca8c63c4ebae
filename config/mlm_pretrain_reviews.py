# A small BERT-style encoder pretrained with masked-LM on unlabelled review-like text: the SST-2 train
# sentences without their labels plus clean English (prepare.py's `reviews` recipe, GPT-2 BPE), as
# the starting point of config/finetune_sst2.py. About 30 CPU-minutes on one thread.
#   python train.py config/mlm_pretrain_reviews.py
#   python train.py config/mlm_pretrain_reviews.py --objective=clm --out_dir=out-clm-reviews --max_iters=1200 --lr_decay_iters=1200
# GPT-2's tokenizer: SST-2 sentences are ~23 tokens instead of ~104 characters, so every finetuning
# step is ~5x cheaper than with characters, and words are units the encoder can relate. The price is a
# 50k x 128 embedding (6.4M of the 7.2M parameters); the MLM head is computed at masked positions only.
out_dir = "out-mlm-reviews"
dataset = "reviews"
objective = "mlm"
eval_interval = 250
eval_iters = 20
log_interval = 50
always_save_checkpoint = False

batch_size = 16
block_size = 128          # covers every SST-2 sentence (the longest is 76 tokens) with its [CLS] and [SEP]
gradient_accumulation_steps = 1

n_layer = 4
n_head = 4
n_embd = 128
dropout = 0.0
bias = False

learning_rate = 1e-3
max_iters = 4500
lr_decay_iters = 4500
warmup_iters = 100
min_lr = 1e-4
beta2 = 0.99
weight_decay = 0.1

device = "cpu"
dtype = "float32"
compile = False
threads = 1
