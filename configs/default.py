"""Every method on every dataset, big_vision style:

    python train.py                                                     # MNS-GAN on digits_halves
    python train.py --config configs/default.py:method=ms2gan,dataset=wikipedia
    python train.py --config configs/default.py:method=mnsgan,dataset=wikipedia,text=wordllama
    python train.py --config configs/default.py:method=acmr,dataset=uci_mfeat/fou_kar_pix
    python train.py --config configs/default.py:method=mnsgan,dataset=wikipedia,labels=false

Arguments (comma-separated key=value after the colon):
  method      a name of the method registry, `mscross.methods.names()` (default mnsgan)
  dataset     a dataset name, `mscross.data.available_datasets()` (default digits_halves)
  labels      true (default) | false: instance-level retrieval, the class labels dropped
  tuned       true (default) | false: the registry's settings, without the stored tuned preset
  <modality>  an extractor (`mscross.extractors.names()`) for one of the dataset's raw modalities,
              e.g. text=wordllama on wikipedia, image=efficientnet_lite0 on web_news

Where the benchmark tuned the (method, dataset, extractors) it builds, the config carries the tuned
values stored in mscross/presets/tuned/ (each file names the command that tuned it).

A wrong method or dataset name is answered with the list of valid ones. Datasets other than
digits_halves need a data directory: --config.data.data_dir or MSCROSS_DATA_DIR.
"""

from mscross import presets

_KEYS = ("method", "dataset", "labels", "tuned")


def get_config(arg=None):
  args = {"method": "mnsgan", "dataset": "digits_halves", "labels": "true", "tuned": "true"}
  extractors = {}
  for item in filter(None, (arg or "").split(",")):
    key, sep, value = item.partition("=")
    key = key.strip()
    if not sep or not key:
      raise ValueError(
        f"configs/default.py takes {', '.join(k + '=...' for k in _KEYS)} and "
        f"<modality>=<extractor>: {item!r}"
      )
    if key in _KEYS:
      args[key] = value.strip()
    else:
      extractors[key] = value.strip()
  return presets.build(
    args["method"],
    args["dataset"],
    labels=_flag(args, "labels"),
    extractors=extractors,
    use_tuned=_flag(args, "tuned"),
  )


def _flag(args, key):
  value = args[key].lower()
  if value not in ("true", "false"):
    raise ValueError(f"{key} must be true or false, got {args[key]!r}")
  return value == "true"
