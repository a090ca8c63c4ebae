# Continued causal-LM training on new text: Shakespeare (GPT-2 tokens) from the GPT pretrained on the
# reviews corpus (python train.py config/mlm_pretrain_reviews.py --objective=clm --out_dir=out-clm-reviews ...).
# A low constant learning rate and early stopping once val loss stops improving, as in nanoGPT's
# finetune_shakespeare; init_from=gpt2 works the same once model.py imports Hugging Face weights.
#   python finetune.py config/finetune_shakespeare.py
task = "lm"
dataset = "shakespeare"         # prepared on first use: python prepare.py shakespeare
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
