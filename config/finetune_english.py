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
from config.finetune_sst2 import *  # noqa: F403 (the same recipe; what differs follows)

init_from = "out-mlm-english"
out_dir = "out-sst2-english"
select = "acc"                  # keep the checkpoint with the best dev accuracy, the metric reported
eval_iters = 5                  # train batches evaluated; dev is evaluated whole
