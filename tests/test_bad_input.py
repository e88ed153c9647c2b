"""Bad values -> one ConfigError naming the key, before any work. Adding a key to conf/
means adding its row here."""

import pytest
from torch import nn

from initlab.config import validate
from initlab.errors import ConfigError, InitlabError
from initlab.telemetry import Telemetry, TelemetryConfig

BAD = [
    ("optim.name=rmsprop", "optim.name='rmsprop' is invalid: choose from adam, sgd"),
    ("seed=4294967296", "seed=4294967296 is invalid: expected an integer in [0, 4294967295]"),
    ("telemetry.hist.min_abs=-1", "telemetry.hist.min_abs=-1 is invalid: expected a finite number > 0"),
    ("telemetry.hist.max_abs=1e-9", "telemetry.hist.max_abs=1e-09 is invalid: expected a number > telemetry.hist.min_abs"),
    ("telemetry.hist.sample=0", "telemetry.hist.sample=0 is invalid: expected an integer >= 1"),
    ("telemetry.hist.bins_per_decade=0", "telemetry.hist.bins_per_decade=0 is invalid: expected an integer >= 1"),
    ("telemetry.log_points=-1", "telemetry.log_points=-1 is invalid: expected an integer >= 0"),
    ("telemetry.dead.tanh=abc", "telemetry.dead.tanh='abc' is invalid: expected a finite number > 0"),
    ("telemetry.dead.sigmoid_high=0.01", "telemetry.dead.sigmoid_high=0.01 is invalid: expected a number > telemetry.dead.sigmoid_low"),
    ("telemetry.flush_seconds=0", "telemetry.flush_seconds=0 is invalid: expected a finite number > 0"),
    ("telemetry.modules=Conv2d", "telemetry.modules='Conv2d' is invalid: expected a list"),
    ("diagnose.vanishing_ratio=abc", "diagnose.vanishing_ratio='abc' is invalid: expected a finite number > 0"),
    ("optim.lr=inf", "optim.lr=inf is invalid: expected a finite number > 0"),
    ("init=normal init.std=inf", "init.std=inf is invalid: expected a finite number >= 0"),
]


@pytest.mark.parametrize("override,message", BAD, ids=[b[0] for b in BAD])
def test_bad_value_is_one_config_error(make_cfg, override: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        validate(make_cfg(*override.split()))
    assert str(err.value).startswith(message), str(err.value)
    assert "\n" not in str(err.value)


def test_the_shipped_config_is_valid(make_cfg) -> None:
    validate(make_cfg())


def test_modules_matching_nothing_is_an_error_not_an_empty_verdict() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.ReLU())
    with pytest.raises(InitlabError, match=r"telemetry.modules=\['NoSuchLayer'\] matches no module.*Linear, ReLU"):
        Telemetry(model, TelemetryConfig(modules=["NoSuchLayer"]))
