from __future__ import annotations

from datetime import date
from pathlib import Path

from retailml.simulate import SimulationConfig, saved_config
from retailml.simulate.state import initial_state, save_state


def test_config_round_trips_through_json() -> None:
    config = SimulationConfig(seed=7, start_date=date(2024, 3, 1), drift_start=date(2024, 6, 1))
    assert SimulationConfig.from_json_dict(config.to_json_dict()) == config


def test_saved_config_is_what_the_state_was_written_with(tmp_path: Path) -> None:
    assert saved_config(tmp_path) is None
    config = SimulationConfig(seed=3, initial_customers=50, n_products=16)
    save_state(tmp_path, initial_state(config), config)
    assert saved_config(tmp_path) == config
