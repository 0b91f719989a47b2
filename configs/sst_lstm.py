"""python train.py --config sst_lstm  # binary SST test accuracy 0.857 (best of 4 epochs by validation; ~12 min)

A bidirectional LSTM sentence classifier with attention pooling (lstm_classifier; embeddings learned from
scratch) on binary SST (SST-2: 6,920 / 872 / 1,821 sentences, the official dev split as validation),
trained on the training trees' labelled phrases too (Socher et al. 2013's setting): Adam 1e-3, batch 64,
dropout 0.5, early stopping on validation accuracy with the best checkpoint restored.
"""

from zoo.config import Config, shrink_for_smoke


def get_config(smoke: bool = False) -> Config:
  c = Config()
  c.model.name = "lstm_classifier"
  c.model.kwargs = {"dropout": 0.5}
  c.data.name = "sst"
  c.data.kwargs = {"binary": True, "phrases": True, "max_len": 56}
  c.data.batch_size = 64
  c.optimizer.name = "adam"
  c.optimizer.learning_rate = 1e-3
  c.epochs = 4
  c.early_stopping.metric = "accuracy"
  c.early_stopping.mode = "max"
  c.early_stopping.patience = 2
  c.early_stopping.restore_best = True
  if smoke:
    c.model.name = "lstm_classifier_tiny"
    c.data.kwargs = {"binary": True, "max_len": 56}
    shrink_for_smoke(c)
  return c
