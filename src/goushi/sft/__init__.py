"""Chat fine-tuning (`goushi sft`): conversations in a JSONL file -> a chat run.

    goushi.sft.data  rows, the loss mask per row, packing, the ChatData batch source
    goushi.sft.run   defaults, running the trainer on a base run, the mask table of `--show-mask`
"""

from goushi.sft.data import ChatData, read_chat_file
from goushi.sft.run import SftOptions, mask_table, run_sft, sft_train_config

__all__ = ["ChatData", "read_chat_file", "SftOptions", "run_sft", "sft_train_config", "mask_table"]
