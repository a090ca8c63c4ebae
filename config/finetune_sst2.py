# SST-2 sentiment (Socher et al. 2013; binary, sentence level) from the MLM encoder that
# config/mlm_pretrain_reviews.py pretrains: a linear head on the mean of the encoder's hidden states,
# the whole model finetuned, dev accuracy at every eval. About 2 CPU-minutes on one thread.
#   python train.py config/mlm_pretrain_reviews.py && python finetune.py config/finetune_sst2.py
# The transfer table in the README runs this file with overrides:
#   --init_from=scratch --tokenizer=reviews --causal=False --block_size=128 --pos=rope   (same model, no pretraining)
#   --init_from=out-clm-reviews                                               (CLM-pretrained: last-token pooling)
#   --lora_rank=8 --learning_rate=3e-3 --min_lr=3e-4                          (adapters only)
task = "classify"
dataset = "sst2"                # ../shared/data/sst2: stsa.binary.train (6,920), evaluated on stsa.binary.dev (872)
init_from = "out-mlm-reviews"
out_dir = "out-sst2"
pool = "auto"                   # mean over real tokens for an encoder, the last real token for a causal model

eval_interval = 50
eval_iters = 10                 # train batches evaluated; the 872 dev sentences are evaluated whole
log_interval = 25
always_save_checkpoint = False  # ckpt.pt keeps the step with the best dev loss

# the architecture of the pretrained model (used by init_from=scratch; a checkpoint brings its own)
n_layer = 4
n_head = 4
n_embd = 128
bias = False

batch_size = 32
gradient_accumulation_steps = 1
dropout = 0.1
learning_rate = 1e-3            # 3e-4 and 1e-3 tie from scratch; 1e-4 is too slow for 500 steps
max_iters = 500                 # ~2.3 epochs of SST-2 train
lr_decay_iters = 500
warmup_iters = 50
min_lr = 1e-4
weight_decay = 0.01

device = "cpu"
dtype = "float32"
threads = 1
