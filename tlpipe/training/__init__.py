"""What the train and finetune stages run: their data, the epoch loop, backups, optimizers, reports."""
