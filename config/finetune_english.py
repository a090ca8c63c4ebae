# SST-2 (or --dataset=trec) from the encoder config/mlm_pretrain_english.py pretrains, with the checkpoint
# chosen by dev accuracy. bench.py's transfer section runs this file for its learning curves, with the
# training budget scaled to the number of labels (README, "Transfer learning"):
#   python prepare.py crawl_en && python prepare.py english && python train.py config/mlm_pretrain_english.py
#   python finetune.py config/finetune_english.py                                   # all 6,920 sentences
#   python finetune.py config/finetune_english.py --train_examples=300 --max_iters=104 --lr_decay_iters=104
#   python finetune.py config/finetune_english.py --dataset=trec --out_dir=out-trec-english
#   python finetune.py config/finetune_english.py --init_from=out-clm-english        # the GPT: last-token pooling
#   python finetune.py config/finetune_english.py --init_from=scratch --tokenizer=english --causal=False \
#       --block_size=128 --pos=rope                                                 # the same model, no pretraining
task = "classify"
dataset = "sst2"
init_from = "out-mlm-english"
out_dir = "out-sst2-english"
pool = "auto"                   # mean for an encoder, the last real token for a causal model
select = "acc"                  # keep the checkpoint with the best dev accuracy, the metric reported

eval_interval = 50
eval_iters = 5                  # train batches evaluated; dev is evaluated whole
log_interval = 25
always_save_checkpoint = False

# the architecture of the pretrained model (used by init_from=scratch; a checkpoint brings its own)
n_layer = 4
n_head = 4
n_embd = 128
bias = False

batch_size = 32
gradient_accumulation_steps = 1
dropout = 0.1
learning_rate = 1e-3
max_iters = 500                 # ~2.3 epochs of SST-2 train
lr_decay_iters = 500
warmup_iters = 50
min_lr = 1e-4
weight_decay = 0.01

device = "cpu"
dtype = "float32"
threads = 1
