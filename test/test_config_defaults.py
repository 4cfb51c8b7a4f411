"""One source of truth for defaults: the dataclasses. Every field the shipped YAML files write
out holds the value the dataclass would default to (a user of the Python API gets what a user of
the CLI gets), as test_shipped_teacher_yaml_lists_every_oracle_and_projection_field checks for
config/teacher.yaml."""
import dataclasses
from pathlib import Path

import pytest
import yaml

CONFIG = Path(__file__).resolve().parents[1] / 'config'
# Fields whose shipped value is deliberately not the dataclass default, and why.
NOT_DEFAULT = {
    # The shipped training config trains at 128x224 (the labeler's and the demo's model input);
    # ModelConfig() is the 224x224 model of the benchmarks and of a labeler given no model config.
    'model.image_height',
}


def differences(shipped, default, path: str) -> list:
    """'path: yaml X, default Y' for every field of ``shipped`` (a config built from the YAML)
    that differs from ``default``, nested dataclasses field by field."""
    if dataclasses.is_dataclass(default):
        out = []
        for f in dataclasses.fields(default):
            out += differences(getattr(shipped, f.name), getattr(default, f.name),
                               f'{path}.{f.name}')
        return out
    if path in NOT_DEFAULT or shipped == default:
        return []
    return [f'{path}: yaml {shipped!r}, default {default!r}']


def loaders():
    from rsd_drive.closedloop.config import ClosedLoopConfig
    from rsd_drive.model.config import ModelConfig
    from rsd_drive.scenario.config import ScenarioConfig
    from rsd_drive.train.config import TrainConfig

    return {('train.yaml', 'train'): TrainConfig, ('train.yaml', 'model'): ModelConfig,
            ('closedloop.yaml', 'closedloop'): ClosedLoopConfig,
            ('scenario.yaml', 'scenario'): ScenarioConfig}


@pytest.mark.parametrize('file,section', list(loaders()))
def test_shipped_yaml_holds_the_dataclass_defaults(file, section):
    cls = loaders()[(file, section)]
    doc = yaml.safe_load((CONFIG / file).read_text())[section]
    fields = {f.name for f in dataclasses.fields(cls)}
    assert set(doc) <= fields, f'{file} {section}: unknown fields {sorted(set(doc) - fields)}'
    assert not differences(cls.from_dict(doc), cls(), section)


def test_train_defaults_are_the_documented_ones():
    from rsd_drive.train.config import TrainConfig

    cfg = TrainConfig()
    assert (cfg.risk_loss, cfg.risk_weight) == ('kl_scale', 0.2)
