"""The studies: presets (how big, how long), resumable steps, HSF18 Table 2 at matched familiar error
(`viewpoint.run_viewpoint`), and `reproduce` (`pipeline.reproduce`): data → training → clean error →
attacks → report. Only the presets are imported here, so that the CLI starts fast."""

from robustcaps.study.presets import PRESETS, Preset, get_preset

__all__ = ["PRESETS", "Preset", "get_preset"]
