"""The validation protocols of `mscross.data.splits`, against NumPy loops: a query's nearest
cosine to a reference set, near-duplicates of train moved out of validation, and a config's
`data.validation` as `runs.inputs.DataSource` applies it."""

import numpy as np
import pytest
from helpers import cosine64, synthetic_split

from mscross import config as config_lib
from mscross import presets
from mscross.data import splits
from mscross.errors import ConfigError, DataError
from mscross.runs import inputs


def test_nearest_cosine_is_the_highest_cosine_to_a_reference_row():
  rng = np.random.default_rng(1)
  reference, query = rng.normal(size=(50, 6)), rng.normal(size=(9, 6))
  query[0] = 3.0 * reference[4]  # a near-duplicate at any scale
  query[1] = 0.0  # a zero row is near nothing
  got = splits.nearest_cosine(query, reference, block=4)
  expected = [max(cosine64(query[i : i + 1], reference)[0]) for i in range(2, 9)]
  np.testing.assert_allclose(got[2:], expected, atol=1e-12)
  assert got[0] == pytest.approx(1.0) and got[1] == 0.0


def test_near_duplicates_of_train_move_from_validation_to_train():
  train, validation = synthetic_split(40, seed=0), synthetic_split(12, seed=1)
  validation.features["a"][3] = train.features["a"][7] * 2.0  # modality a only
  validation.features["b"][8] = train.features["b"][0] + 1e-4  # modality b only
  new_train, new_val = splits.move_near_duplicates(train, validation)
  assert list(new_val.ids) == [i for i in validation.ids if i not in ("3", "8")]
  assert len(new_train) == 42 and list(new_train.ids[40:]) == ["3", "8"]
  for m in ("a", "b"):
    np.testing.assert_array_equal(new_train.features[m][40], validation.features[m][3])
    np.testing.assert_array_equal(new_train.features[m][:40], train.features[m])
  np.testing.assert_array_equal(new_train.label[41], validation.label[8])
  # No validation row left lies within the threshold of a train row, in either modality.
  for m in ("a", "b"):
    assert cosine64(new_val.features[m], train.features[m]).max() < splits.NEAR_DUPLICATE_COSINE


def test_a_validation_split_of_near_duplicates_only_is_an_error():
  train = synthetic_split(20, seed=0)
  copy = splits.subset(train, np.arange(5))
  with pytest.raises(DataError, match="every one of the 5 validation items"):
    splits.move_near_duplicates(train, copy, where="toy")


def test_the_novel_protocol_as_a_config_setting(tmp_path):
  config = presets.build("mnsgan", "digits_halves")
  as_prepared, _ = inputs.DataSource.of(config).load()
  with config.unlocked():
    config.data.validation = "novel"
  novel, _ = inputs.DataSource.of(config).load(("validation", "test"))
  only_train, _ = inputs.DataSource.of(config).load(("train",))
  moved = set(as_prepared["validation"].ids) - set(novel["validation"].ids)
  assert moved  # digits_halves repeats itself: 59 of its 359 validation items
  # Each moved item has a near-duplicate in train, and no kept one has.
  for name, x in as_prepared["validation"].features.items():
    near = cosine64(x, as_prepared["train"].features[name]).max(axis=1)
    dup = set(as_prepared["validation"].ids[near >= splits.NEAR_DUPLICATE_COSINE])
    assert dup <= moved
  assert list(only_train["train"].ids) == [*as_prepared["train"].ids, *sorted(moved, key=int)]
  np.testing.assert_array_equal(
    novel["test"].features["left"], as_prepared["test"].features["left"]
  )
  with config.unlocked():
    config.data.validation = "latest"
  with pytest.raises(ConfigError, match="data.validation"):
    config_lib.validate(config)
