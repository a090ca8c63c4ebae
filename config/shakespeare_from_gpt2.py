# Finetune OpenAI's GPT-2 (124M) on tiny Shakespeare in GPT-2's own tokens, as nanoGPT's
# config/finetune_shakespeare.py does with gpt2-xl. The weights (~550 MB) are downloaded once into
# ~/.cache/nanoroots; init_from also takes gpt2-medium/-large/-xl or a Hugging Face folder.
#   python train.py config/shakespeare_from_gpt2.py
#   python sample.py --out_dir=out-shakespeare-from-gpt2 --start="ROMEO:"
#   python hf.py --init_from=out-shakespeare-from-gpt2 --export_hf=hf-shakespeare-from-gpt2
# A GPU does this in about a minute; a 2-core CPU needs one to two minutes per step (try --max_iters=5).
init_from = "gpt2"
out_dir = "out-shakespeare-from-gpt2"
dataset = "shakespeare"       # prepared on first use: python prepare.py shakespeare
eval_interval = 10
eval_iters = 20
log_interval = 1
always_save_checkpoint = False

# 32 sequences of 256 tokens per step; the architecture comes from the weights
batch_size = 4
gradient_accumulation_steps = 8
block_size = 256              # GPT-2's 1024-token context, cropped
dropout = 0.0

# a small constant learning rate, as nanoGPT uses for finetuning
learning_rate = 3e-5
decay_lr = False
max_iters = 50
