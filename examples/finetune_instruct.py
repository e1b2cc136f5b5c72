"""Finetune GPT-2 to follow instructions, as in chapter 7 of "Build a Large Language Model From Scratch".

    python examples/finetune_instruct.py --init-from ~/models/gpt2 --data instruction-data.json --out runs/instruct
    python examples/finetune_instruct.py --init-from ~/models/gpt2 --data instruction-data.json --out runs/i --lora 8
    python examples/finetune_instruct.py --help
"""
import sys

try:
    from tinygrad_gpt.cli.finetune import instruct_main
except KeyboardInterrupt:                # Ctrl-C while the libraries load: quietly, 130
    sys.exit(130)

if __name__ == "__main__":
    sys.exit(instruct_main())
