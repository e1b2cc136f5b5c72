"""Finetune GPT-2 as a text classifier, as in chapter 6 of "Build a Large Language Model From Scratch".

    python examples/finetune_classifier.py --init-from ~/models/gpt2 --data train.csv --out runs/classifier
    python examples/finetune_classifier.py --init-from runs/pretrain --data reviews/ --out runs/c --lora 8
    python examples/finetune_classifier.py --help
"""
import sys

try:
    from tinygrad_gpt.cli.finetune import classifier_main
except KeyboardInterrupt:                # Ctrl-C while the libraries load: quietly, 130
    sys.exit(130)

if __name__ == "__main__":
    sys.exit(classifier_main())
