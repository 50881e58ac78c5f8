"""White-box attacks through torchattacks (`adapters`), ε sweeps (`sweep`), integrity checks (`checks`) and
one evaluation end to end (`run.attack_run_dir`). `AttackConfig` says what to run; the rest imports
torchvision, so only the configuration is imported here and the CLI starts fast."""

from robustcaps.attacks.adapters import ATTACKS, AttackConfig

__all__ = ["ATTACKS", "AttackConfig"]
