# Instruction tuning (SFT) on Alpaca-format records: each example is finetune.py's Alpaca prompt
# template, the response and <|endoftext|>; the loss counts the response tokens only.
#   python finetune.py config/sft_alpaca.py
#   python sample.py --out_dir=out-sft-alpaca --template=alpaca --start="Give three tips for staying healthy."
# The data are 999 GPT-4-written records (CC BY-NC 4.0; see ../shared/data/instruction_tuning/PROVENANCE.md).
# The small reviews GPT has a 128-token context and little knowledge: this run shows the mechanics
# (truncation is counted and reported); init_from=gpt2 (GPT-2's weights, read by hf.py)
# gives answers worth reading.
task = "sft"
dataset = "../shared/data/instruction_tuning/alpaca_en_demo.json"
template = "alpaca"
init_from = "out-clm-reviews"
out_dir = "out-sft-alpaca"

eval_interval = 50
eval_iters = 10
log_interval = 10
always_save_checkpoint = False
patience = 4

batch_size = 8
gradient_accumulation_steps = 2
dropout = 0.1
learning_rate = 3e-4
max_iters = 300
lr_decay_iters = 300
warmup_iters = 20
min_lr = 3e-5

device = "cpu"
dtype = "float32"
threads = 1
