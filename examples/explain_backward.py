"""Watch one backward pass through GPT-2, op by op, down to every parameter.

    python examples/explain_backward.py                   # the tiny model
    python examples/explain_backward.py --model 124M      # the book's GPT-2 (162.4M parameters)
    python examples/explain_backward.py --param trf_blocks.0.att.W_query.weight
    python examples/explain_backward.py --dot graph.dot   # and graph.png where Graphviz is installed
    python examples/explain_backward.py --book            # the book's own llms_from_scratch.ch04.GPTModel
    python examples/explain_backward.py --checkpoint runs/small --data my.txt   # a model you trained
    python examples/explain_backward.py --model micro --break layernorm-mean   # find a sabotaged backward
    python examples/explain_backward.py --model micro --values --op LayerNorm --worked LayerNorm
    python examples/explain_backward.py --model micro --optimizer --worked AdamW   # optimizer.step(), by hand
    python examples/explain_backward.py --model micro --use-op examples/walkthrough_solutions.py:LayerNorm --train-steps 20
    python examples/explain_backward.py --help
"""
import sys

try:
    from tinygrad_gpt.explain import main
except KeyboardInterrupt:                # Ctrl-C while the libraries load: quietly, 130
    sys.exit(130)

if __name__ == "__main__":
    sys.exit(main())
