"""config/homeserver.sample.yaml is a valid config that documents every option.

Adding an option to `HomeserverConfig` without describing it in the sample fails here: every
field of every section must appear in the sample at its place, with a comment, and (unless it
is required) with its real default value.
"""

from __future__ import annotations

import re
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel
from twisted.trial import unittest

from homeserver.config import (
    ENV_ALIASES,
    JWT_SECRET_PLACEHOLDER,
    ConfigError,
    HomeserverConfig,
    ListenerConfig,
    load_config,
)

SAMPLE = Path(__file__).resolve().parent.parent / "config" / "homeserver.sample.yaml"

# The options without a default, and the values the sample gives them.
REQUIRED_IN_SAMPLE = {
    ("server_name",): "example.com",
    ("signing_key_path",): "example.com.signing.key",
    ("auth", "jwt_secret"): JWT_SECRET_PLACEHOLDER,
}

# The sample's jwt_secret is a placeholder that start-up refuses; an operator replaces it (here
# through the environment, as a container would).
REAL_SECRET = "s" * 48


def load_sample() -> HomeserverConfig:
    return load_config(str(SAMPLE), environ={"HEDDLE_JWT_SECRET": REAL_SECRET})


def _nested_models(annotation: Any) -> list[type[BaseModel]]:
    """The config sections inside a field's type: `X`, `X | None`, `list[X]`, ..."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found: list[type[BaseModel]] = []
    for arg in typing.get_args(annotation):
        found.extend(_nested_models(arg))
    return found


def option_paths(model: type[BaseModel], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every option in the schema, e.g. ("rate_limits", "login_per_address", "per_second")."""
    paths = []
    for name, field in model.model_fields.items():
        path = (*prefix, name)
        paths.append(path)
        for section in _nested_models(field.annotation):
            paths.extend(option_paths(section, path))
    return paths


def _key_nodes(node: yaml.Node, path: tuple[str, ...]) -> list[yaml.Node]:
    """The YAML key nodes for `path`; inside a list, the key may be in any element."""
    if not path:
        return []
    if isinstance(node, yaml.SequenceNode):
        return [found for item in node.value for found in _key_nodes(item, path)]
    if not isinstance(node, yaml.MappingNode):
        return []
    for key, value in node.value:
        if key.value == path[0]:
            return [key] if len(path) == 1 else _key_nodes(value, path[1:])
    return []


def _all_key_nodes(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return [k for item in node.value for k in _all_key_nodes(item)]
    if isinstance(node, yaml.MappingNode):
        return [k for key, value in node.value for k in [key, *_all_key_nodes(value)]]
    return []


def _value_at(raw: Any, path: tuple[str, ...]) -> Any:
    for part in path:
        raw = raw[part]
    return raw


class SampleConfigTests(unittest.TestCase):
    def setUp(self) -> None:
        self.text = SAMPLE.read_text(encoding="utf-8")
        self.lines = self.text.splitlines()
        self.tree = yaml.compose(self.text)

    def test_sample_config_loads_once_the_secret_is_replaced(self) -> None:
        config = load_sample()
        self.assertEqual(config.server_name, "example.com")
        self.assertEqual(config.auth.jwt_secret, REAL_SECRET)
        self.assertEqual(config.rooms.default_room_version, "11")
        # data_dir "." means the directory of the file.
        self.assertEqual(Path(config.data_dir), SAMPLE.parent)

    def test_placeholder_secret_is_refused_with_a_way_to_make_one(self) -> None:
        with self.assertRaises(ConfigError) as cm:
            load_config(str(SAMPLE), environ={})
        message = str(cm.exception)
        self.assertNotIn("\n", message)
        self.assertIn(f"{SAMPLE}: auth.jwt_secret: is the sample config's placeholder", message)
        self.assertIn("secrets.token_urlsafe", message)
        # The secret, even a placeholder, is never echoed.
        self.assertNotIn(JWT_SECRET_PLACEHOLDER, message)

    def test_schema_walk_finds_nested_sections(self) -> None:
        # Guard the guard: the walk must reach into list[ListenerConfig] and the rate limits.
        paths = option_paths(HomeserverConfig)
        self.assertIn(("listeners", "x_forwarded"), paths)
        self.assertIn(("rate_limits", "login_per_address", "burst_count"), paths)
        self.assertIn(("auth", "jwt_secret"), paths)

    def _documented_by_example(self, path: tuple[str, ...]) -> bool:
        """Entries of lists that default to empty are shown in a commented-out example
        ("#   - server_name: ...") in the comment just above the list's key."""
        parents = _key_nodes(self.tree, path[:-1])
        if not parents:
            return False
        line = parents[0].start_mark.line
        preceding = self.lines[max(0, line - 20) : line]
        return any(
            re.match(rf"\s*#\s+(- )?{re.escape(path[-1])}:", text) for text in preceding
        )

    def test_sample_config_names_every_option(self) -> None:
        missing = [
            ".".join(path)
            for path in option_paths(HomeserverConfig)
            if not _key_nodes(self.tree, path) and not self._documented_by_example(path)
        ]
        self.assertEqual(missing, [], "options missing from config/homeserver.sample.yaml")

    def test_first_listener_lists_every_listener_option(self) -> None:
        raw = yaml.safe_load(self.text)
        self.assertEqual(set(raw["listeners"][0]), set(ListenerConfig.model_fields))

    def test_every_option_has_a_comment(self) -> None:
        undocumented = []
        for key in _all_key_nodes(self.tree):
            line = key.start_mark.line
            above = self.lines[line - 1].strip() if line > 0 else ""
            # The comment is on the line above, or after the value on the same line.
            if not above.startswith("#") and " #" not in self.lines[line]:
                undocumented.append(f"line {line + 1}: {key.value}")
        self.assertEqual(undocumented, [], "options in the sample without a comment")

    def test_sample_values_are_the_defaults(self) -> None:
        """What the sample shows is what you get by leaving an option out."""
        minimal: dict[str, Any] = {}
        for path, value in REQUIRED_IN_SAMPLE.items():
            target = minimal
            for part in path[:-1]:
                target = target.setdefault(part, {})
            target[path[-1]] = value
        minimal["auth"]["jwt_secret"] = REAL_SECRET
        defaults = HomeserverConfig.model_validate(minimal).model_dump()
        sample = load_sample().model_dump()
        # The sample adds a metrics listener after the (default) client listener.
        self.assertEqual(sample["listeners"][0], defaults["listeners"][0])
        self.assertEqual(len(defaults["listeners"]), 1)
        for dump in (defaults, sample):
            del dump["listeners"]
            del dump["data_dir"]  # resolved against the file's directory when loaded
        self.assertEqual(sample, defaults)

    def test_required_options_are_the_ones_the_test_knows(self) -> None:
        required = [
            path
            for path in option_paths(HomeserverConfig)
            if _is_required(HomeserverConfig, path) and not _is_section(HomeserverConfig, path)
        ]
        self.assertEqual(sorted(required), sorted(REQUIRED_IN_SAMPLE))
        raw = yaml.safe_load(self.text)
        for path, value in REQUIRED_IN_SAMPLE.items():
            self.assertEqual(_value_at(raw, path), value)

    def test_environment_aliases_are_mentioned(self) -> None:
        for name in ENV_ALIASES:
            self.assertIn(name, self.text, f"{name} is not mentioned in the sample")


def _field(model: type[BaseModel], path: tuple[str, ...]) -> Any:
    for part in path[:-1]:
        (model,) = _nested_models(model.model_fields[part].annotation)
    return model.model_fields[path[-1]]


def _is_section(model: type[BaseModel], path: tuple[str, ...]) -> bool:
    return bool(_nested_models(_field(model, path).annotation))


def _is_required(model: type[BaseModel], path: tuple[str, ...]) -> bool:
    """Whether leaving the option out of a config file is an error.

    A required field inside a section with a default (RateLimit's per_second inside
    rate_limits.login_per_address) is not: the whole section has a default.
    """
    for i, part in enumerate(path):
        field = model.model_fields[part]
        if not field.is_required():
            return False
        if i < len(path) - 1:
            (model,) = _nested_models(field.annotation)
    return True
