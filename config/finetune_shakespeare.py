# Continued causal-LM training on new text: Shakespeare, from the GPT pretrained on the reviews corpus
# (python train.py config/mlm_pretrain_reviews.py --objective=clm --out_dir=out-clm-reviews ...), with
# that model's own BPE. A low constant learning rate and early stopping once val loss stops improving,
# as in nanoGPT's finetune_shakespeare (which starts from GPT-2: config/shakespeare_from_gpt2.py).
#   python prepare.py shakespeare --tokenizer=reviews --name=shakespeare_reviews   # encode with its BPE
#   python finetune.py config/finetune_shakespeare.py
task = "lm"
dataset = "shakespeare_reviews"
init_from = "out-clm-reviews"
out_dir = "out-shakespeare-ft"

eval_interval = 25
eval_iters = 20
log_interval = 5
always_save_checkpoint = False
patience = 3                    # stop after 3 evals without a better val loss

batch_size = 16
gradient_accumulation_steps = 1
dropout = 0.1
learning_rate = 3e-4
decay_lr = False                # constant
max_iters = 500

device = "cpu"
dtype = "float32"
threads = 1
