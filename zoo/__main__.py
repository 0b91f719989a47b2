"""`python -m zoo list [KIND] [PATTERN]`: what the zoo holds (configs, models, optimizers, schedules, ...).
`python -m zoo summary MODEL [--input-shape H,W,C] [--depth N] [FIELD=VALUE ...]`: a model's layers, output
shapes, parameters and FLOPs.
`python -m zoo sample --workdir DIR [--prompt TEXT] [--length N] ...`: text from a trained language model.
`python -m zoo score-samples --samples FILE --classifier DIR`: a GAN's samples scored by a classifier.
`python -m zoo export --workdir DIR [--out DIR]`: a trained model as serialized StableHLO plus its variables.
`python -m zoo predict --workdir DIR FILES... [--text TEXT]`: a trained model's predictions (images, text).
`python -m zoo import-weights MODEL WEIGHTS_FILE --workdir DIR`: PyTorch weights as a run directory.
"""

from __future__ import annotations

import argparse
import sys


def _catalogue():
  import zoo
  from zoo.models import ACTIVATIONS

  return {
    "configs": zoo.list_configs,
    "models": zoo.list_models,
    "optimizers": zoo.list_optimizers,
    "schedules": zoo.list_schedules,
    "datasets": zoo.list_datasets,
    "tasks": zoo.list_tasks,
    "activations": ACTIVATIONS.list,
  }


def cmd_list(args: argparse.Namespace) -> int:
  from zoo.config import describe_config

  catalogue = _catalogue()
  words = list(args.terms)
  kinds = list(catalogue)
  if words and words[0] in catalogue:
    kinds = [words.pop(0)]
  elif words and words[0].rstrip("s") + "s" in catalogue:
    kinds = [words.pop(0).rstrip("s") + "s"]
  pattern = words[0] if words else "*"
  found = 0
  for kind in kinds:
    names = catalogue[kind](pattern)
    found += len(names)
    if not names and len(kinds) > 1:
      continue
    print(f"{kind} ({len(names)}):")
    for name in names:
      if kind == "configs":
        first = describe_config(name).splitlines()[0] if describe_config(name) else ""
        print(f"  {name:24s} {first}")
      else:
        print(f"  {name}")
  if not found:
    print(f"nothing matches {pattern!r}", file=sys.stderr)
    return 1
  return 0


def cmd_summary(args: argparse.Namespace) -> int:
  from zoo.config import parse_value
  from zoo.models import create_model, model_spec
  from zoo.models.summary import registered_inputs, summarize
  from zoo.registry import ZooError

  overrides = {}
  for item in args.overrides:
    key, sep, value = item.partition("=")
    if not sep:
      raise ZooError(f"model overrides look like FIELD=VALUE (e.g. num_classes=10), got {item!r}")
    overrides[key] = parse_value(value)
  model = create_model(args.model, **overrides)
  spec = model_spec(args.model)
  inputs = registered_inputs(args.model)
  if args.input_shape:
    if spec.example is not None:
      raise ZooError(f"model {args.model!r} reads {spec.kind} inputs, not images: no --input-shape")
    try:
      inputs = tuple(int(n) for n in args.input_shape.replace("x", ",").split(","))
    except ValueError:
      raise ZooError(f"--input-shape takes sizes like 224,224,3; got {args.input_shape!r}") from None
  print(summarize(model, inputs, depth=args.depth, name=args.model).format())
  return 0


SAMPLE_HELP = """Prints text sampled from the character language model trained in --workdir (a GPT or a
recurrent CharLM, e.g. `python train.py --config shakespeare_gpt --workdir runs/gpt`): the prompt, then
--length sampled characters, for each of --num-samples samples. The newest checkpoint is used (the
weights' EMA when the run kept one).

The prompt must use only characters of the model's vocabulary (those of its training text). An empty
prompt starts the text at a line break, which is not printed. A GPT conditions on the prompt's last
block_size characters only (its context; the whole prompt is still printed), and once the text outgrows
its context, on the last block_size characters so far; a recurrent model reads all of it. The same --seed
gives the same text; --temperature 0 takes the most likely character at each step (greedy)."""


def cmd_sample(args: argparse.Namespace) -> int:
  from zoo.train.restore import load_run, sample_texts

  run = load_run(args.workdir, args.step)
  options = dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed)
  texts = sample_texts(run, args.prompt, args.length, num_samples=args.num_samples, **options)
  for i, text in enumerate(texts):
    if len(texts) > 1:
      print(f"--- sample {i + 1} of {len(texts)} ---")
    print(text)
  return 0


SCORE_HELP = """Scores the samples a GAN run wrote (RUN/samples.npz, task 'gan') with a trained classifier run
(e.g. `python train.py --config mnist_cnn --workdir runs/mnist_cnn`): the share of samples whose top class
probability is at least --threshold, the histogram of predicted classes and its entropy (ln 10 = 2.303
nats when the ten digits are equally frequent, 0 when one class takes all), and the Inception Score's
formula with that classifier. Prints them and writes sample_score.json beside the samples (or --out)."""


def cmd_score_samples(args: argparse.Namespace) -> int:
  from zoo.train.sample_score import format_score, score_samples_file

  score = score_samples_file(args.samples, args.classifier, threshold=args.threshold, out=args.out)
  print(format_score(score))
  return 0


EXPORT_HELP = """Writes the model of the run in --workdir (the newest checkpoint, or --step) into --out
(default DIR/export): model.stablehlo, jax.export's serialization of the run's input normalisation and its
model in eval mode, with a symbolic batch size; variables.npz; manifest.json with both files' sha256, the
input and output shapes and the preprocessing. zoo.interop.export.load_exported(DIR/export) loads it back,
checking the sums, and runs it: the model's Python code is not needed."""


def cmd_export(args: argparse.Namespace) -> int:
  from zoo.interop.export import MODEL_FILE, export_run, load_exported
  from zoo.registry import ZooError

  shape = None
  if args.input_shape:
    try:
      shape = tuple(int(n) for n in args.input_shape.replace("x", ",").split(","))
    except ValueError:
      raise ZooError(f"--input-shape takes sizes like 28,28,1; got {args.input_shape!r}") from None
  platforms = args.platforms.split(",") if args.platforms else None
  out = export_run(
    args.workdir, args.out, step=args.step, input_shape=shape, batch_size=args.batch_size, platforms=platforms
  )
  manifest = load_exported(out).manifest
  inputs, outputs = manifest["input"], manifest["outputs"]
  shapes = ", ".join(f"({', '.join(map(str, o['shape']))}) {o['dtype']}" for o in outputs)
  print(
    f"wrote {out}: {manifest['model']} (step {manifest['step']}) for {', '.join(manifest['platforms'])}, "
    f"({', '.join(map(str, inputs['shape']))}) {inputs['dtype']} -> {shapes}; "
    f"{MODEL_FILE} {manifest['files'][MODEL_FILE]['bytes']:,} bytes"
  )
  return 0


PREDICT_HELP = """Prints the predictions of the model trained in --workdir, one tab-separated line per input
after a header: for classifiers the label and its probability; for language models the most likely next
character, its probability and a greedy continuation of --length characters. Inputs are read as the run
trained on them: image files (PNG, JPEG, ...) for image models (an image-folder or imported run's images
resized and centre-cropped as its evaluation images; other runs' must have the training images' size),
.npy arrays or .csv rows of features, and for text models each non-blank line of a text file, or --text."""


def cmd_predict(args: argparse.Namespace) -> int:
  from zoo.interop.predict import format_predictions, load
  from zoo.registry import ZooError

  predictor = load(args.workdir, step=args.step, length=args.length)
  names, inputs = predictor.read_files(args.files)
  for i, text in enumerate(args.text or []):
    names.append(f"--text {i + 1}")
    inputs.append(text)
  if not inputs:
    raise ZooError("nothing to predict: name input files (or --text TEXT for a text model)")
  print(format_predictions(names, predictor(inputs)))
  return 0


IMPORT_HELP = """Converts PyTorch weights (a torchvision or timm state dict, .safetensors or .pth) of a zoo
model into a run directory --workdir (new or empty): config.json, model.json (the model's kwargs, the input
normalisation's mean and std) and checkpoints/0, which `python -m zoo predict`, `python -m zoo export` and
zoo.train.restore.load_run read as a trained run's. `python -m zoo list models` names the models; the
importable ones have a converter (zoo.interop.list_importable())."""


def cmd_import_weights(args: argparse.Namespace) -> int:
  from zoo.interop.workdir import import_to_workdir

  workdir = import_to_workdir(args.model, args.weights, args.workdir, normalization=args.normalization)
  print(f"wrote {workdir}: {args.model} from {args.weights} (normalisation {args.normalization})")
  return 0


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m zoo", description=__doc__)
  sub = parser.add_subparsers(dest="command", required=True)
  p_list = sub.add_parser("list", help="list configs, models, optimizers, schedules, datasets, tasks")
  p_list.add_argument(
    "terms",
    nargs="*",
    metavar="[KIND] [PATTERN]",
    help="optional kind (configs, models, ...) then a pattern like 'mnist*' or a substring",
  )
  p_list.set_defaults(func=cmd_list)
  p_sum = sub.add_parser("summary", help="a model's layers, output shapes, parameters and FLOPs")
  p_sum.add_argument("model", help="a registered model name (python -m zoo list models)")
  p_sum.add_argument("overrides", nargs="*", metavar="FIELD=VALUE", help="model fields, e.g. num_classes=10")
  p_sum.add_argument("--input-shape", help="one example's shape, e.g. 224,224,3 (default: the model's own)")
  p_sum.add_argument("--depth", type=int, default=1, help="how deep to list nested modules (default 1)")
  p_sum.set_defaults(func=cmd_summary)
  p_sample = sub.add_parser(
    "sample",
    help="text from a trained language model (GPT or CharLM run)",
    description=SAMPLE_HELP,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  p_sample.add_argument("--workdir", required=True, help="the run's directory (train.py's --workdir)")
  p_sample.add_argument("--prompt", default="", help="the text to continue (default: none, a new line)")
  p_sample.add_argument("--length", type=int, default=500, metavar="N", help="characters to sample (500)")
  p_sample.add_argument("--temperature", type=float, default=1.0, metavar="T", help="0 is greedy (1.0)")
  p_sample.add_argument("--top-k", type=int, metavar="K", help="sample among the K most likely characters")
  p_sample.add_argument("--top-p", type=float, metavar="P", help="nucleus sampling (GPT only)")
  p_sample.add_argument("--seed", type=int, default=0, metavar="S", help="random seed (0)")
  p_sample.add_argument("--num-samples", type=int, default=1, metavar="N", help="how many texts (1)")
  p_sample.add_argument("--step", type=int, help="the checkpoint's step (default: the newest)")
  p_sample.set_defaults(func=cmd_sample)
  p_score = sub.add_parser(
    "score-samples",
    help="score a GAN run's samples with a trained classifier",
    description=SCORE_HELP,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  p_score.add_argument("--samples", required=True, help="a GAN run's samples.npz (task 'gan' writes it)")
  p_score.add_argument("--classifier", required=True, help="a classifier run's workdir (runs/mnist_cnn)")
  p_score.add_argument("--threshold", type=float, default=0.9, metavar="P", help="confidence threshold (0.9)")
  p_score.add_argument("--out", help="the JSON to write (default: sample_score.json beside --samples)")
  p_score.set_defaults(func=cmd_score_samples)
  raw = argparse.RawDescriptionHelpFormatter
  p_export = sub.add_parser(
    "export",
    help="a trained model as serialized StableHLO + variables",
    description=EXPORT_HELP,
    formatter_class=raw,
  )
  p_export.add_argument("--workdir", required=True, help="the run's directory (train.py's --workdir)")
  p_export.add_argument("--out", help="the directory to write (default: WORKDIR/export)")
  p_export.add_argument("--step", type=int, help="the checkpoint's step (default: the newest)")
  p_export.add_argument(
    "--input-shape", help="one example's shape, e.g. 28,28,1 (default: the training data's)"
  )
  p_export.add_argument("--batch-size", type=int, metavar="N", help="a fixed batch size (default: symbolic)")
  p_export.add_argument("--platforms", help="comma-separated, e.g. cpu,cuda (default: this machine's)")
  p_export.set_defaults(func=cmd_export)
  p_predict = sub.add_parser(
    "predict", help="a trained model's predictions for files", description=PREDICT_HELP, formatter_class=raw
  )
  p_predict.add_argument("--workdir", required=True, help="the run's directory (train.py's --workdir)")
  p_predict.add_argument("files", nargs="*", metavar="FILES", help="images, .npy, .csv, or text files")
  p_predict.add_argument("--text", action="append", metavar="TEXT", help="a text to predict for (repeatable)")
  p_predict.add_argument("--length", type=int, default=20, metavar="N", help="continuation length (20)")
  p_predict.add_argument("--step", type=int, help="the checkpoint's step (default: the newest)")
  p_predict.set_defaults(func=cmd_predict)
  p_import = sub.add_parser(
    "import-weights", help="PyTorch weights as a run directory", description=IMPORT_HELP, formatter_class=raw
  )
  p_import.add_argument("model", help="the zoo model the weights are for, e.g. resnet50")
  p_import.add_argument("weights", metavar="WEIGHTS_FILE", help="a .safetensors or .pth state dict")
  p_import.add_argument("--workdir", required=True, help="the run directory to write (new or empty)")
  p_import.add_argument(
    "--normalization",
    default="imagenet",
    help="imagenet (default), inception, scale or none: as the weights trained",
  )
  p_import.set_defaults(func=cmd_import_weights)
  args = parser.parse_args(argv)
  from zoo.registry import ZooError

  try:
    return args.func(args)
  except ZooError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main())
