# seq2seq finetuning of an encoder-decoder on Alpaca-format records: the encoder reads the instruction
# (and its input, after a blank line), the decoder learns to write the response and <|endoftext|>; the
# loss is on the response only, which is all the decoder writes.
#   python finetune.py config/seq2seq_alpaca.py
#   python sample.py --out_dir=out-seq2seq-alpaca --start="Give three tips for staying healthy."
# The data are 999 GPT-4-written records (CC BY-NC 4.0; see ../shared/data/instruction_tuning/PROVENANCE.md).
# From a fresh clone there is no pretrained encoder-decoder with a word-level vocabulary, so this starts
# from scratch with GPT-2's bundled BPE: it shows the mechanics, not useful answers. To finetune a span-
# corruption checkpoint instead, give init_from=<its out_dir> (its tokenizer and block_size are used).
task = "seq2seq"
dataset = "../shared/data/instruction_tuning/alpaca_en_demo.json"
init_from = "scratch"
tokenizer = "gpt2"
out_dir = "out-seq2seq-alpaca"

# a small T5-like model: 4 encoder and 4 decoder blocks, 128 tokens in and out (about a quarter of the
# responses are cut: the 50k-token output layer is most of the cost on a CPU)
block_size = 128
n_layer = 4
n_decoder_layer = 4
n_head = 4
n_embd = 128
bias = False

eval_interval = 50
eval_iters = 5
log_interval = 10
always_save_checkpoint = False
patience = 4

batch_size = 8
gradient_accumulation_steps = 1
dropout = 0.1
learning_rate = 1e-3
max_iters = 300
lr_decay_iters = 300
warmup_iters = 20
min_lr = 1e-4

device = "cpu"
dtype = "float32"
threads = 1
