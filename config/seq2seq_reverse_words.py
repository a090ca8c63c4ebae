# A seq2seq task a CPU learns in a minute, to see an encoder-decoder work end to end: write each word
# of tiny Shakespeare backwards. Make the pairs and the character vocabulary, then train and sample:
#   python -c "import json, re; words = sorted({w for w in re.findall('[A-Za-z]+', open('data/tinyshakespeare/input.txt').read()) if 3 <= len(w) <= 10}); open('reverse.jsonl', 'w').writelines(json.dumps({'input': w, 'output': w[::-1]}) + '\n' for w in words)"
#   python prepare.py shakespeare_char
#   python finetune.py config/seq2seq_reverse_words.py
#   python sample.py --out_dir=out-reverse --start=Juliet --temperature=0          # teiluJ
#   python sample.py --out_dir=out-reverse --start=Verona --attention=cross.png    # an anti-diagonal
# The decoder sees the word only through cross-attention, so its map shows which letter it reads as
# it writes each one: the last first.
task = "seq2seq"
dataset = "reverse.jsonl"        # 12,602 words of 3-10 letters; val_fraction of them held out
init_from = "scratch"
tokenizer = "shakespeare_char"
out_dir = "out-reverse"

block_size = 16
n_layer = 2
n_decoder_layer = 2
n_head = 4
n_embd = 64
dropout = 0.0

batch_size = 32
learning_rate = 3e-3
min_lr = 3e-4
max_iters = 600
lr_decay_iters = 600
warmup_iters = 30
eval_interval = 200
eval_iters = 5
log_interval = 100

device = "cpu"
dtype = "float32"
threads = 1                      # a model this small runs fastest on one thread
