"""Chat fine-tuning (`goushi sft`): conversations in a JSONL file -> a chat run.

    goushi.sft.data  rows, the loss mask per row, packing, the ChatData batch source
    goushi.sft.run   defaults, running the trainer on a base run, the mask table of `--show-mask`

Preference tuning (`goushi dpo`) sits beside it, through the same trainer:

    goushi.sft.prefs    preference rows (TRL's formats, the page's rated answers), masks, the PrefData batch source
    goushi.sft.dpo      the DPO loss, its held-out metrics and the frozen reference (LoRA: adapters off)
    goushi.sft.dpo_run  defaults, running the trainer on a chat run, the mask table of `--show-mask`
"""

from goushi.sft.data import ChatData, read_chat_file
from goushi.sft.run import SftOptions, mask_table, run_sft, sft_train_config

__all__ = ["ChatData", "read_chat_file", "SftOptions", "run_sft", "sft_train_config", "mask_table"]
