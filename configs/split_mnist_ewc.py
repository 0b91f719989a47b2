"""python train.py --config split_mnist_ewc  # 5 tasks: average accuracy 0.9924, BWT -0.0023 (~16 s, 2 CPUs)

Elastic weight consolidation (Kirkpatrick et al. 2017) on split-MNIST, task-incremental: five 2-way tasks
{0,1}, {2,3}, {4,5}, {6,7}, {8,9} learned in turn, two epochs each, by one MLP 784-256-256 with a 2-way
head per task (evaluation is told the task). After each task the diagonal Fisher (labels sampled from the
model, over 1024 of the task's examples) and the trained parameters add a quadratic penalty, one per
earlier task, with lambda = 1000 (of 100, 1000, 1e4, 1e5 tried at one epoch per task, the best average
accuracy: 0.9874, 0.9912, 0.9903, 0.9875). The same run without the penalty, split_mnist_finetune, ends
at 0.9300 (BWT -0.0822); split_mnist_progressive at 0.9963 (BWT 0). zoo/train/continual.py trains all
three; the accuracy matrix is in the workdir's result.json and accuracy_matrix.png.
"""

from zoo.config import Config


def get_config(smoke: bool = False) -> Config:
  c = Config()
  c.model.name = "mlp"
  c.model.kwargs = dict(hidden_sizes=(256, 256))
  c.data.name = "mnist"
  c.data.normalization = "scale"  # Fixed statistics: nothing is fitted on the tasks still to come.
  c.data.batch_size = 128
  c.task.name = "continual"
  c.task.kwargs = dict(
    method="ewc",
    ewc_lambda=1000.0,
    fisher_samples=1024,
    fisher="true",
    epochs_per_task=2,
    splits=((0, 1), (2, 3), (4, 5), (6, 7), (8, 9)),
  )
  # Plain Adam: decoupled weight decay would shrink the heads of the tasks not being trained.
  c.optimizer.name = "adam"
  c.optimizer.learning_rate = 1e-3
  c.log_every_steps = 50
  if smoke:  # The first two tasks, two small steps each.
    c.task.kwargs.update(splits=c.task.kwargs["splits"][:2], fisher_samples=64)
    c.steps = 4
    c.data.batch_size = 32
    c.data.max_train_examples = 2000
    c.data.max_test_examples = 500
    c.model.kwargs = dict(hidden_sizes=(32, 32))
  return c
